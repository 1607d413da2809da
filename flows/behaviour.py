"""The behaviour path as Prefect flows: evaluate the champion, and on a behaviour regression emit an event
(a deployment trigger starts the fine-tune from it) or, inside `pipeline`, run the fine-tune as a subflow."""

from __future__ import annotations

import json

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from components.behaviour.evaluate import Evaluation
from components.behaviour.loop import data_lineage, evaluate_model
from components.config import Params, Settings, load_params
from components.tracking.mlflow_runs import log_evaluation_run
from flows.events import BEHAVIOUR_REGRESSION, MODEL_PROMOTED

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
def record(params: Params, settings: Settings, ev: Evaluation, reason: str) -> str:
    rows = [
        {"id": o.id, "question": o.question, "intent": o.intent, "diagnosis": o.diagnosis,
         "passed": all(o.checks.values()), "checks": json.dumps(o.checks), "output": o.output,
         "retrieved": ", ".join(o.retrieved)}
        for o in ev.outcomes
    ]  # fmt: skip
    return log_evaluation_run(params, settings, ev.summary, rows, data_lineage(params), reason)


@task(name="write dvc metrics", cache_policy=NO_CACHE)
def write_metrics(params: Params, ev: Evaluation) -> None:
    params.paths.metrics.mkdir(parents=True, exist_ok=True)
    (params.paths.metrics / "evaluation.json").write_text(json.dumps(ev.summary, indent=2) + "\n")
    results = {"behaviour": ev.results, "summary": ev.summary}
    (params.paths.metrics / "evaluation_results.json").write_text(json.dumps(results) + "\n")


@flow(name="evaluate")
def evaluate(params_file: str = "params.yaml", reason: str = "manual") -> dict:
    """Evaluate the champion (or the base model) on the gate set and decide: none, reindex or finetune."""
    params, settings = load_params(params_file), Settings.from_env()
    champ = load_champion(params, settings)
    ev = evaluate_gate(params, settings, champ)
    ev.summary["mlflow_run_id"] = record(params, settings, ev, reason)
    write_metrics(params, ev)
    _announce(ev.summary)
    return ev.summary


def _announce(summary: dict) -> None:
    table = [{"slice": name, **s} for name, s in summary["slices"].items()]
    create_table_artifact(key="evaluation-slices", table=table, description=f"decision: {summary['decision']}")
    if summary["decision"] == "finetune":
        emit_event(
            event=BEHAVIOUR_REGRESSION,
            resource={"prefect.resource.id": f"ragloop.model.{summary['model_version']}"},
            payload={"regressed_slices": summary["regressed_slices"], "reasons": summary["reasons"]},
        )


@task(name="build training pairs", cache_policy=NO_CACHE, **IO_RETRIES)
def build_pairs(params: Params, settings: Settings) -> list[tuple[str, str]]:
    from components.behaviour.finetune import training_pairs
    from components.behaviour.loop import load_suite
    from components.knowledge.retrieval import Retriever

    _, train = load_suite(params)
    with Retriever(params, settings) as retriever:
        hits = retriever.search([c.question for c in train], params.generator.context_chunks)
    return training_pairs(train, hits, params.generator)


@task(name="train lora adapter", cache_policy=NO_CACHE)
def train_adapter(params: Params, pairs: list[tuple[str, str]]):  # type: ignore[no-untyped-def]
    from components.behaviour.assistant import Generator
    from components.behaviour.finetune import save_adapter, train_lora

    generator = Generator(params)
    peft_model, log = train_lora(generator.model, generator.tokenizer, pairs, params.finetune)
    return save_adapter(peft_model, params.paths.models / "candidate"), log


@task(name="gate candidate against champion", cache_policy=NO_CACHE)
def gate_candidate(params: Params, champion_eval: Evaluation, candidate_eval: Evaluation, regressed: list[str]):  # type: ignore[no-untyped-def]
    from components.behaviour.stats import gate

    return gate(champion_eval.results, candidate_eval.results, regressed, params.regression,
                champion_eval.summary["retrieval"], candidate_eval.summary["retrieval"])  # fmt: skip


@flow(name="finetune")
def finetune(params_file: str = "params.yaml", reason: str = "manual") -> dict:
    """Train a LoRA candidate, gate it against the champion case by case, register it, promote only if it wins.
    Any failure before `promote` leaves the champion exactly as it was."""
    from components.behaviour.assistant import resolve_generator
    from components.tracking import mlflow_runs, registry

    params, settings = load_params(params_file), Settings.from_env()
    champ = load_champion(params, settings)
    champion_eval = evaluate_gate(params, settings, champ)
    regressed = champion_eval.summary["regressed_slices"]
    lineage = {**data_lineage(params), "index_version": str(champion_eval.summary["index_version"]),
               "parent_version": champ.version if champ else "base"}  # fmt: skip
    run_id = mlflow_runs.start_finetune_run(params, settings, lineage, reason)
    ok = False
    try:
        adapter, log = train_adapter(params, build_pairs(params, settings))
        candidate_eval = evaluate_model(params, settings, adapter, champion_eval.results, "candidate")
        verdict = gate_candidate(params, champion_eval, candidate_eval, regressed)
        rates = {f"gate_{k}_pass_rate": v["pass_rate"] for k, v in candidate_eval.summary["slices"].items()}
        mlflow_runs.log_training(params, settings, run_id, log.losses, {
            "train_tokens_per_s": log.tokens_per_second, "train_seconds": log.seconds, "train_steps": log.steps,
            "trainable_parameters": log.trainable_parameters, **rates})  # fmt: skip
        results = {"behaviour": candidate_eval.results, "summary": candidate_eval.summary}
        version = registry.log_adapter(params, settings, run_id, adapter, resolve_generator(params), lineage, results)
        registry.describe_version(params, settings, version, "promoted" if verdict.promote else "rejected",
                                  verdict.reasons)  # fmt: skip
        aliases = registry.promote(params, settings, version) if verdict.promote else None
        ok = True
    finally:
        mlflow_runs.end_run(params, settings, run_id, ok)
    outcome = {
        "version": version, "promoted": verdict.promote, "reasons": verdict.reasons, "aliases": aliases,
        "regressed_slices": regressed, "candidate": candidate_eval.summary, "mlflow_run_id": run_id,
        "train_seconds": round(log.seconds, 1), "train_tokens_per_s": round(log.tokens_per_second, 1),
    }  # fmt: skip
    if verdict.promote:
        emit_event(event=MODEL_PROMOTED, resource={"prefect.resource.id": f"ragloop.model.v{version}"},
                   payload={"aliases": aliases, "reasons": verdict.reasons})  # fmt: skip
    create_table_artifact(
        key="gate-verdict", table=[{"promoted": verdict.promote, "reason": r} for r in verdict.reasons]
    )
    return outcome


@flow(name="pipeline")
def pipeline(params_file: str = "params.yaml", reason: str = "manual") -> dict:
    """reindex -> evaluate -> finetune (a subflow) only when the evaluation found a behaviour regression."""
    from flows.reindex import reindex

    index_report = reindex(params_file=params_file, reason=reason)
    summary = evaluate(params_file=params_file, reason=reason)
    tuned = finetune(params_file=params_file, reason=f"regression: {', '.join(summary['regressed_slices'])}") if (
        summary["decision"] == "finetune") else None  # fmt: skip
    return {"index": index_report, "evaluation": summary, "finetune": tuned}
