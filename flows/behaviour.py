"""The behaviour path as Prefect flows: evaluate the champion, and on a behaviour regression emit an event
(a deployment trigger starts the fine-tune from it) or, inside `pipeline`, run the fine-tune as a subflow."""

from __future__ import annotations

import json

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from components.behaviour.evaluate import Evaluation
from components.behaviour.loop import data_lineage, evaluate_model
from components.behaviour.training import TruncatedTraining, machine_info
from components.config import Params, Settings, load_params
from components.hashing import folder_digest
from components.tracking.lineage import write_plot
from components.tracking.mlflow_runs import evaluation_note, log_evaluation_run
from flows.deployments import TRAINING_LIMIT, slot
from flows.events import BEHAVIOUR_REGRESSION, MODEL_PROMOTED, MODEL_RESOURCE

IO_RETRIES = {"retries": 3, "retry_delay_seconds": [2, 5, 15]}


@task(name="load champion", cache_policy=NO_CACHE, **IO_RETRIES)
def load_champion(params: Params, settings: Settings):  # type: ignore[no-untyped-def]
    from components.tracking.registry import champion

    return champion(params, settings)


@task(name="evaluate on the gate set", cache_policy=NO_CACHE)
def evaluate_gate(params: Params, settings: Settings, champ) -> Evaluation:  # type: ignore[no-untyped-def]
    adapter = champ.adapter_dir if champ else None
    baseline = (champ.results or {}).get("behaviour") if champ else None
    version = f"v{champ.version}" if champ else "base"
    return evaluate_model(params, settings, adapter, baseline, version)


@task(name="record evaluation in mlflow", cache_policy=NO_CACHE, **IO_RETRIES)
def record(params: Params, settings: Settings, ev: Evaluation, reason: str, baseline: dict | None) -> str:
    """The evaluation's MLflow run; `baseline` is the champion's recorded slice rates (None: no champion)."""
    rows = [
        {"id": o.id, "question": o.question, "intent": o.intent, "slices": ", ".join(sorted(o.checks)),
         "failed_slices": ", ".join(sorted(k for k, ok in o.checks.items() if not ok)), "diagnosis": o.diagnosis,
         "passed": all(o.checks.values()), "output": o.output, "retrieved_sources": ", ".join(o.retrieved),
         "gold_sources": ", ".join(o.gold_docs)}
        for o in ev.outcomes
    ]  # fmt: skip
    run_id = log_evaluation_run(params, settings, ev.summary, rows, data_lineage(params), reason, baseline)
    if params.tracking.evaluation_traces:
        from components.tracking.evaluation_traces import trace_evaluation

        trace_evaluation(params, settings, ev.outcomes, ev.summary, run_id, ev.seconds)
    return run_id


def champion_baseline(champ) -> dict | None:  # type: ignore[no-untyped-def]
    """The champion's slice rates as recorded when it was registered (its gate-set evaluation)."""
    if champ is None or not champ.results:
        return None
    slices = champ.results.get("summary", {}).get("slices")
    return dict(slices) if slices else None


@task(name="write dvc metrics", cache_policy=NO_CACHE)
def write_metrics(params: Params, ev: Evaluation) -> None:
    params.paths.metrics.mkdir(parents=True, exist_ok=True)
    (params.paths.metrics / "evaluation.json").write_text(json.dumps(ev.summary, indent=2) + "\n")
    slices = [{"slice": name, **s} for name, s in sorted(ev.summary["slices"].items())]
    retrieval = [{"metric": name, "value": v} for name, v in sorted(ev.summary["retrieval"].items())]
    write_plot(params.paths.metrics, "slices.json", slices)
    write_plot(params.paths.metrics, "retrieval.json", retrieval)
    results = {"behaviour": ev.results, "summary": ev.summary, "fingerprint": _fingerprint(params)}
    (params.paths.metrics / "evaluation_results.json").write_text(json.dumps(results) + "\n")


@flow(name="evaluate", flow_run_name="evaluate-{reason}")
def evaluate(params_file: str = "params.yaml", reason: str = "manual") -> dict:
    """Evaluate the champion (or the base model) on the gate set and decide: none, reindex or finetune."""
    params, settings = load_params(params_file), Settings.from_env()
    champ = load_champion(params, settings)
    ev = evaluate_gate(params, settings, champ)
    baseline = champion_baseline(champ)
    ev.summary["mlflow_run_id"] = record(params, settings, ev, reason, baseline)
    write_metrics(params, ev)
    _announce(ev.summary, evaluation_note(ev.summary, baseline, reason))
    return ev.summary


def _announce(summary: dict, note: str) -> None:
    table = [{"slice": name, **s} for name, s in summary["slices"].items()]
    create_table_artifact(key="evaluation-slices", table=table, description=f"decision: {summary['decision']}")
    create_markdown_artifact(key="evaluation-decision", markdown=note, description=f"decision: {summary['decision']}")
    if summary["decision"] == "finetune":
        emit_event(
            event=BEHAVIOUR_REGRESSION,
            resource={"prefect.resource.id": f"{MODEL_RESOURCE}.{summary['model_version']}"},
            payload={"regressed_slices": summary["regressed_slices"], "reasons": summary["reasons"]},
        )


@task(name="build training pairs", cache_policy=NO_CACHE, **IO_RETRIES)
def build_pairs(params: Params, settings: Settings, champ) -> tuple[list[tuple[str, str]], int]:  # type: ignore[no-untyped-def]
    """The training set's (prompt, target) pairs, plus `failing_case_repeats` more copies of each training case
    the champion fails on behaviour (never a gate case: they come from train.jsonl, proven disjoint). With no
    champion yet there is nothing to mine: the base model fails every case alike."""
    from components.behaviour.assistant import Generator
    from components.behaviour.evaluate import run_cases
    from components.behaviour.finetune import training_pairs
    from components.behaviour.loop import load_suite
    from components.knowledge.retrieval import Retriever

    _, train = load_suite(params)
    k = params.generator.context_chunks
    with Retriever(params, settings) as retriever:
        hits = retriever.search([c.question for c in train], max(k, params.finetune.gold_context_depth))
        pairs = training_pairs(train, hits, params.generator)
        repeats = params.finetune.failing_case_repeats
        if not repeats or champ is None:  # the untrained base fails every case: repeating all of them is no signal
            return pairs, 0
        generator = Generator(params, champ.adapter_dir)
        outcomes = run_cases(train, retriever, generator, params.generator, k)
    failing = [i for i, o in enumerate(outcomes) if o.diagnosis == "behaviour"]
    extra = training_pairs([train[i] for i in failing], [hits[i] for i in failing], params.generator)
    return pairs + extra * repeats, len(failing)


@task(name="train lora adapter", cache_policy=NO_CACHE)
def train_adapter(params: Params, pairs: list[tuple[str, str]]):  # type: ignore[no-untyped-def]
    """In this process on one device; with several GPUs, data-parallel under `accelerate launch`."""
    from components.behaviour.assistant import Generator
    from components.behaviour.finetune import gpus, launch_multi_gpu, save_adapter, train_lora

    out = params.paths.models / "candidate"
    with slot(TRAINING_LIMIT):
        if gpus() > 1 and params.generator.device in {"auto", "cuda"}:
            return out, launch_multi_gpu(params.source, pairs, out, gpus())
        generator = Generator(params)
        peft_model, log = train_lora(generator.model, generator.tokenizer, pairs, params.finetune)
    return save_adapter(peft_model, out, params.generator.model), log


@task(name="evaluate candidate on the gate set", cache_policy=NO_CACHE)
def evaluate_candidate(params: Params, settings: Settings, adapter, champion_eval: Evaluation) -> Evaluation:  # type: ignore[no-untyped-def]
    return evaluate_model(params, settings, adapter, champion_eval.results, "candidate")


@task(name="register candidate", cache_policy=NO_CACHE, **IO_RETRIES)
def register_candidate(params: Params, settings: Settings, run_id: str, adapter, lineage: dict, ev: Evaluation) -> str:  # type: ignore[no-untyped-def]
    from components.behaviour.assistant import resolve_generator
    from components.tracking import registry

    results = {"behaviour": ev.results, "summary": ev.summary}
    return registry.log_adapter(params, settings, run_id, adapter, resolve_generator(params), lineage, results)


@flow(name="finetune", flow_run_name="finetune-{reason}")
def finetune(params_file: str = "params.yaml", reason: str = "manual", run_gate: bool = True) -> dict:
    """Train a LoRA candidate on the training set, evaluate it on the gate set and register it; then (unless
    `run_gate` is off, as in the DVC stage `finetune`, which leaves it to the stage `gate`) gate it against the
    champion and promote it only if it wins. Any failure leaves the champion exactly as it was."""
    from components.tracking import mlflow_runs

    params, settings = load_params(params_file), Settings.from_env()
    champ = load_champion(params, settings)
    champion_eval = _champion_evaluation(params, settings, champ, None)  # the evaluate flow's, when current
    lineage = {**data_lineage(params), "index_version": str(champion_eval.summary["index_version"]),
               "parent_version": champ.version if champ else "base"}  # fmt: skip
    run_id = mlflow_runs.start_finetune_run(params, settings, lineage, reason)
    ok = False
    try:
        pairs, failing = build_pairs(params, settings, champ)
        adapter, log = train_adapter(params, pairs)
        mlflow_runs.log_training(
            params, settings, run_id, log.losses, training_figures(log, len(pairs), failing), machine_info()
        )
        if log.truncated:
            mlflow_runs.mark_truncated(params, settings, run_id, log.steps, log.planned_steps)
            raise TruncatedTraining(
                f"finetune.max_seconds ({params.finetune.max_seconds} s) stopped the fine-tune after {log.steps} of "
                f"{log.planned_steps} planned steps: the candidate was not registered (it would not reproduce); "
                "raise or remove the cap"
            )
        candidate_eval = evaluate_candidate(params, settings, adapter, champion_eval)
        record(
            params, settings, candidate_eval, f"candidate of fine-tune run {run_id}", champion_eval.summary["slices"]
        )
        rates = {f"gate_{k}_pass_rate": v["pass_rate"] for k, v in candidate_eval.summary["slices"].items()}
        mlflow_runs.log_figures(params, settings, run_id, rates)
        version = register_candidate(params, settings, run_id, adapter, lineage, candidate_eval)
        ok = True
    finally:
        mlflow_runs.end_run(params, settings, run_id, ok)
    outcome = {
        "version": version, "regressed_slices": champion_eval.summary["regressed_slices"],
        "candidate": candidate_eval.summary, "mlflow_run_id": run_id, "training_pairs": len(pairs),
        "failing_train_cases": failing, "train_steps": log.steps, "train_tokens": log.tokens,
        "train_seconds": round(log.seconds, 1), "train_tokens_per_s": round(log.tokens_per_second, 1),
        "adapter_sha256": folder_digest(adapter, None),
    }  # fmt: skip
    create_markdown_artifact(key="finetune-run", markdown=finetune_markdown(outcome, champion_eval.summary),
                             description=f"LoRA candidate version {version}")  # fmt: skip
    if run_gate:
        outcome.update(gate_version(params, settings, version, champion_eval))
    return outcome


def training_figures(log, pairs: int, failing: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """The work a fine-tune did (steps, tokens: the same on any machine) and what it cost here (seconds)."""
    return {"train_steps": log.steps, "train_planned_steps": log.planned_steps, "train_tokens": log.tokens,
            "train_padding_ratio": 1 - log.tokens / log.padded_tokens if log.padded_tokens else 0.0,
            "train_seconds": log.seconds, "train_tokens_per_s": log.tokens_per_second,
            "trainable_parameters": log.trainable_parameters, "training_pairs": pairs,
            "failing_train_cases": failing}  # fmt: skip


def finetune_markdown(outcome: dict, champion: dict) -> str:
    lines = [f"# Fine-tune: candidate version {outcome['version']}", "",
             f"Why: regressed slices {', '.join(outcome['regressed_slices']) or 'none'} "
             f"(champion {champion['model_version']}).", "",
             f"Trained on {outcome['training_pairs']} pairs ({outcome['failing_train_cases']} hard cases repeated) "
             f"for {outcome['train_seconds']} s at {outcome['train_tokens_per_s']} tokens/s; MLflow run "
             f"`{outcome['mlflow_run_id']}`.", "", "| slice | champion | candidate |", "|---|---|---|"]  # fmt: skip
    for k, v in sorted(outcome["candidate"]["slices"].items()):
        old = champion["slices"].get(k, {}).get("pass_rate")
        lines.append(f"| {k} | {'-' if old is None else f'{old:.2f}'} | {v['pass_rate']:.2f} |")
    return "\n".join(lines) + "\n"


@flow(name="gate", flow_run_name="gate-v{version}")
def gate(version: str, params_file: str = "params.yaml") -> dict:
    """Gate a registered candidate against the champion, paired case by case on the same index version; promote
    it only if every regressed slice improved significantly and nothing got significantly worse. The verdict
    and its reasons go into the version's description; a rejected candidate stays registered."""
    return gate_version(load_params(params_file), Settings.from_env(), version, None)


@task(name="load candidate", cache_policy=NO_CACHE, **IO_RETRIES)
def load_candidate(params: Params, settings: Settings, version: str):  # type: ignore[no-untyped-def]
    from components.tracking.registry import fetch_version

    return fetch_version(params, settings, version)


def gate_version(params: Params, settings: Settings, version: str, champion_eval: Evaluation | None) -> dict:
    from components.behaviour.stats import gate as decide
    from components.tracking import registry

    candidate = load_candidate(params, settings, version)
    if not candidate.results:
        raise registry.RegistryError(f"version {version} has no evaluation results to gate on")
    cand_summary = candidate.results["summary"]
    if champion_eval is None:
        champion_eval = _champion_evaluation(params, settings, load_champion(params, settings),
                                             cand_summary["index_version"])  # fmt: skip
    verdict = decide(champion_eval.results, candidate.results["behaviour"], champion_eval.summary["regressed_slices"],
                     params.regression, champion_eval.summary["retrieval"], cand_summary["retrieval"])  # fmt: skip
    before = champion_eval.summary["slices"]
    rates = {k: (before[k]["pass_rate"] if k in before else None, v["pass_rate"])
             for k, v in cand_summary["slices"].items()}  # fmt: skip
    label = "promoted" if verdict.promote else "rejected"
    registry.describe_version(params, settings, version, label, verdict.reasons, rates)
    aliases = registry.promote(params, settings, version) if verdict.promote else None
    if candidate.run_id:
        record_verdict(params, settings, candidate.run_id, label, rates)
    if verdict.promote:
        emit_event(event=MODEL_PROMOTED, resource={"prefect.resource.id": f"{MODEL_RESOURCE}.v{version}"},
                   payload={"aliases": aliases, "reasons": verdict.reasons})  # fmt: skip
    champion_label = champion_eval.summary["model_version"]
    create_markdown_artifact(key="gate-verdict", markdown=gate_markdown(version, champion_label, label,
                             verdict.reasons, rates), description=f"version {version}: {label}")  # fmt: skip
    create_table_artifact(
        key="gate-slices", description=f"version {version} against {champion_label}",
        table=[{"slice": k, "champion": old, "candidate": new, "change": None if old is None else round(new - old, 4)}
               for k, (old, new) in sorted(rates.items())],
    )  # fmt: skip
    return {"version": version, "promoted": verdict.promote, "reasons": verdict.reasons, "aliases": aliases,
            "champion_before": champion_label}  # fmt: skip


@task(name="record verdict on the fine-tune run", cache_policy=NO_CACHE, **IO_RETRIES)
def record_verdict(params: Params, settings: Settings, run_id: str, label: str,
                   rates: dict[str, tuple[float | None, float]]) -> None:  # fmt: skip
    """What the fine-tune bought at the gate, on its own MLflow run (read back by `ragloop advise`)."""
    from components.tracking import mlflow_runs

    gains = {f"gate_gain_{k}": new - old for k, (old, new) in rates.items() if old is not None}
    mlflow_runs.log_verdict(params, settings, run_id, label, gains)


def gate_markdown(version: str, champion_label: str, label: str, reasons: list[str],
                  rates: dict[str, tuple[float | None, float]]) -> str:  # fmt: skip
    lines = [f"# Gate: version {version} {label}", "", f"Paired case by case against the champion ({champion_label}).",
             "", "| slice | champion | candidate | change |", "|---|---|---|---|"]  # fmt: skip
    for k, (old, new) in sorted(rates.items()):
        change = "-" if old is None else f"{new - old:+.2f}"
        lines.append(f"| {k} | {'-' if old is None else f'{old:.2f}'} | {new:.2f} | {change} |")
    lines += ["", "## Reasons", ""] + [f"- {r}" for r in reasons]
    return "\n".join(lines) + "\n"


def _fingerprint(params: Params) -> str:
    """What an evaluation's results depend on besides the model and the index: generation, the regression
    test, how retrieval ranks, and the gate set's content."""
    import hashlib

    from components.behaviour.suite import suite_hash

    parts = [params.generator.model_dump_json(), params.regression.model_dump_json(),
             params.retrieval.model_dump_json(),
             suite_hash(params.paths.behaviour / "gate.jsonl")]  # fmt: skip
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _champion_evaluation(params: Params, settings: Settings, champ, index_version: int | None) -> Evaluation:  # type: ignore[no-untyped-def]
    """The champion's evaluation on `index_version` (None: the published one): the evaluate flow's saved results
    when they are for this champion and this index version, else a fresh evaluation. A pairing across index
    versions would be meaningless, so a fresh one on another version is an error."""
    from components.knowledge.session import PUBLISHED_MARKER

    label = f"v{champ.version}" if champ else "base"
    marker = params.paths.index / PUBLISHED_MARKER
    if index_version is None and marker.is_file():
        index_version = json.loads(marker.read_text())["index_version"]
    saved = params.paths.metrics / "evaluation_results.json"
    if saved.is_file():
        data = json.loads(saved.read_text())
        summary = data["summary"]
        same = (summary["model_version"], summary["index_version"], data.get("fingerprint"))
        if same == (label, index_version, _fingerprint(params)):
            return Evaluation(summary, [], data["behaviour"])
    ev = evaluate_gate(params, settings, champ)
    baseline = champion_baseline(champ)
    ev.summary["mlflow_run_id"] = record(params, settings, ev, "the champion, paired with a candidate", baseline)
    if index_version is not None and ev.summary["index_version"] != index_version:
        raise RuntimeError(
            f"the index moved from version {index_version} to {ev.summary['index_version']} since the candidate "
            "was evaluated: re-run the fine-tune (or `ragloop evaluate` then `ragloop gate`) on one index version"
        )
    return ev


@flow(name="pipeline", flow_run_name="pipeline-{reason}")
def pipeline(params_file: str = "params.yaml", reason: str = "manual") -> dict:
    """reindex -> evaluate -> finetune (a subflow) only when the evaluation found a behaviour regression."""
    from flows.reindex import reindex

    index_report = reindex(params_file=params_file, reason=reason)
    summary = evaluate(params_file=params_file, reason=reason)
    tuned = finetune(params_file=params_file, reason=f"regression: {', '.join(summary['regressed_slices'])}") if (
        summary["decision"] == "finetune") else None  # fmt: skip
    return {"index": index_report, "evaluation": summary, "finetune": tuned}
