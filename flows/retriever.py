"""The retrieval path as a Prefect flow: tune the embedder on the training questions, embed the candidate into its
own index, gate it against the champion retriever, promote it (publish its collection) or remember the rejection.

Wiring only: the steps live in components/knowledge (retriever_tuning, retriever_serving), components/behaviour
(retriever_gate, retriever_metrics) and components/tracking/retriever_runs.py."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from components.behaviour import retriever_metrics
from components.behaviour.retriever_gate import RetrieverVerdict
from components.behaviour.retriever_tuning import Pair, TrainingLog, evidence_key
from components.behaviour.training import machine_info
from components.config import Params, Settings, load_params
from components.files import TRAIN_CASES
from components.knowledge.retriever_pointer import BASE, Served, read_pointer
from flows.deployments import EMBEDDING_LIMIT, TRAINING_LIMIT, slot
from flows.tasks import io_task, step


@step("build retriever training pairs")
def build_training_pairs(params: Params, settings: Settings) -> tuple[list[Pair], str, str]:
    """(pairs, the published embedder's identity, its model spec): each training question with the best chunk of
    its gold document under the embedder that serves now; a gate question among them fails the run (not retried)."""
    from components.behaviour.retriever_tuning import build_pairs, check_not_gate, training_questions
    from components.knowledge.retrieval import Retriever

    questions = training_questions(params)
    check_not_gate(params, questions)
    with Retriever(params, settings) as retriever:
        return build_pairs(retriever, questions), retriever.info.embedder, retriever.embedder.params.model


@io_task("look for a rejected candidate")
def rejected_candidate(params: Params, settings: Settings, evidence: str) -> dict[str, Any] | None:
    from components.tracking.retriever_runs import rejected_before

    return rejected_before(params, settings, evidence)


@step("train retriever")
def train(params: Params, pairs: list[Pair], base_model: str) -> TrainingLog:
    from components.behaviour.retriever_tuning import train_retriever
    from components.knowledge.embedder import pick_device

    with slot(TRAINING_LIMIT):
        return train_retriever(base_model, pairs, params.retriever, retriever_metrics.candidate_folder(params),
                               pick_device(params.embedder.device))  # fmt: skip


@io_task("register retriever")
def register(params: Params, settings: Settings, run_id: str, log: TrainingLog, tags: dict[str, str]) -> str:
    from components.behaviour.retriever_tuning import weights_sha256
    from components.tracking import mlflow_runs
    from components.tracking.retriever_runs import register_retriever

    folder = retriever_metrics.candidate_folder(params)
    figures = {"train_steps": log.steps, "train_pairs": log.pairs, "train_tokens": log.tokens,
               "train_seconds": round(log.seconds, 3), "train_tokens_per_s": round(log.tokens_per_s, 1)}  # fmt: skip
    mlflow_runs.log_training(params, settings, run_id, log.losses, figures, machine_info(), "retriever tuning")
    return register_retriever(params, settings, run_id, folder, {**tags, "weights_sha256": weights_sha256(folder)})


@step("embed the candidate's index")
def embed_candidate(params: Params) -> dict:
    from components.knowledge.retriever_serving import build_candidate_index

    with slot(EMBEDDING_LIMIT):
        return build_candidate_index(params, retriever_metrics.candidate_folder(params))


@step("gate retriever")
def gate_candidate(params: Params, settings: Settings) -> RetrieverVerdict:
    """Retrieval of both sides on the gate questions, and (with a behaviour suite) the champion generator's answers
    from each side's context; then the paired test."""
    from components.behaviour import retriever_gate as rg
    from components.knowledge.retrieval import Retriever
    from components.knowledge.retriever_serving import candidate_params

    candidate = candidate_params(params, retriever_metrics.candidate_folder(params))
    questions = rg.gate_questions(params)
    with Retriever(params, settings) as champ_r, Retriever(candidate, settings) as cand_r:
        champ, cand = rg.retrieval_results(params, champ_r, questions), rg.retrieval_results(params, cand_r, questions)
    assistant = _assistant_results(params, candidate, settings) if rg.has_suite(params) else None
    return rg.judge(champ, cand, rg.groups_of(questions), params, assistant)


def _assistant_results(params: Params, candidate: Params, settings: Settings) -> tuple[Any, Any]:
    from components.behaviour.loop import evaluate_model
    from components.tracking.registry import champion

    generator = champion(params, settings)
    adapter = generator.adapter_dir if generator else None
    before = evaluate_model(params, settings, adapter, None, "retriever champion")
    after = evaluate_model(candidate, settings, adapter, None, "retriever candidate")
    return before.results, after.results


@io_task("promote or reject retriever")
def decide(params: Params, settings: Settings, version: str, verdict: RetrieverVerdict, run_id: str) -> dict:
    """Record the verdict on the version; on promotion, move the aliases and publish the candidate's collection."""
    from components.behaviour.retriever_gate import figures
    from components.knowledge.retriever_serving import CANDIDATE_INDEX, keep_model, serve
    from components.tracking import registry
    from components.tracking.retriever_runs import log_gate

    name = params.tracking.retriever_model
    rates: dict[str, tuple[float | None, float]] = dict(verdict.rates)
    label = "promoted" if verdict.promote else "rejected"
    registry.describe_version(params, settings, version, label, verdict.reasons, rates, model=name)
    log_gate(params, settings, run_id, label, figures(verdict))
    if not verdict.promote:
        return {"aliases": None, "index": None}
    served, _ = read_pointer(params)
    new = keep_model(params, retriever_metrics.candidate_folder(params), version)
    report = serve(params, new, served, vectors_from=params.paths.index / CANDIDATE_INDEX)
    return {"aliases": registry.promote(params, settings, version, model=name), "index": report}


@flow(name="tune-retriever", flow_run_name="tune-retriever-{reason}")
def tune_retriever(params_file: str = "params.yaml", reason: str = "manual", if_needed: bool = False) -> dict:
    """Fine-tune the embedder on the training questions, register it, embed it into its own index, gate it against
    the champion retriever and publish its collection only if retrieval is significantly better and no assistant
    slice significantly worse. `if_needed`: only when the last evaluation asks for it. The same evidence (pairs,
    recipe, base embedder) as a rejected candidate never trains again. Writes retriever.json; emits nothing."""
    params, settings = load_params(params_file), Settings.from_env()
    if if_needed and (why := retriever_metrics.tuning_not_needed(params)) is not None:
        return retriever_metrics.record_skip(params, why)
    pairs, base_identity, base_model = build_training_pairs(params, settings)
    evidence = evidence_key(pairs, params.retriever, base_identity)
    if (rejected := rejected_candidate(params, settings, evidence)) is not None:
        return retriever_metrics.record_skip(params, _same_evidence(rejected, len(pairs)), evidence=evidence,
                                             rejected_version=rejected["version"])  # fmt: skip
    champion_before = read_pointer(params)[0].version
    run_id = _start_run(params, settings, evidence, base_identity, len(pairs), reason)
    ok = False
    try:
        log = train(params, pairs, base_model)
        version = register(params, settings, run_id, log, _lineage(params, evidence, base_identity, champion_before))
        embed_candidate(params)
        verdict = gate_candidate(params, settings)
        outcome = decide(params, settings, version, verdict, run_id)
        ok = True
    finally:
        _end_run(params, settings, run_id, ok)
    result = _result(params, version, verdict, evidence, champion_before, log, outcome)
    retriever_metrics.record_result(params, result)
    label = "promoted" if verdict.promote else "rejected"
    create_markdown_artifact(key="retriever-gate", markdown=_markdown(result), description=f"v{version}: {label}")
    return result


def _same_evidence(rejected: dict[str, Any], pairs: int) -> str:
    return (
        f"the same evidence ({pairs} training pairs, the same recipe and base embedder) already trained retriever "
        f"version {rejected['version']}, which the gate rejected ({rejected['reason']}); more training cases "
        "(`ragloop cases accept`, paths.retrieval_train) or another recipe (params.yaml `retriever`) would change "
        "the outcome"
    )


def _lineage(params: Params, evidence: str, base_identity: str, champion_before: str) -> dict[str, str]:
    from components.behaviour.suite import suite_hash
    from components.tracking.retriever_runs import EVIDENCE_TAG

    tags = {EVIDENCE_TAG: evidence, "base_embedder": base_identity, "parent_version": champion_before}
    train = params.paths.behaviour / TRAIN_CASES
    if train.is_file():
        tags["train_data_md5"] = suite_hash(train)
    if params.paths.retrieval_train is not None:
        tags["retrieval_train_md5"] = suite_hash(params.paths.retrieval_train)
    return tags


def _start_run(params: Params, settings: Settings, evidence: str, base: str, pairs: int, reason: str) -> str:
    from components.tracking.retriever_runs import start_tuning_run

    return start_tuning_run(params, settings, _lineage(params, evidence, base, read_pointer(params)[0].version)
                            | {"training_pairs": str(pairs)}, reason)  # fmt: skip


def _end_run(params: Params, settings: Settings, run_id: str, ok: bool) -> None:
    from components.tracking.mlflow_runs import end_run

    end_run(params, settings, run_id, ok)


def _result(params: Params, version: str, verdict: RetrieverVerdict, evidence: str, champion_before: str,
            log: TrainingLog, outcome: dict) -> dict[str, Any]:  # fmt: skip
    from components.behaviour.retriever_tuning import weights_sha256

    return {"version": version, "promoted": verdict.promote, "reasons": verdict.reasons,
            "correction": verdict.correction, "evidence": evidence, "champion_before": champion_before,
            "training_pairs": log.pairs, "train_steps": log.steps, "train_tokens": log.tokens,
            "weights_sha256": weights_sha256(retriever_metrics.candidate_folder(params)),
            "train_seconds": round(log.seconds, 3), "train_tokens_per_s": round(log.tokens_per_s, 1),
            "rates": {k: list(v) for k, v in verdict.rates.items()},
            "assistant_rates": {k: list(v) for k, v in verdict.assistant.items()},
            "aliases": outcome["aliases"], "index": outcome["index"]}  # fmt: skip


def _markdown(result: dict[str, Any]) -> str:
    lines = [f"# Retriever version {result['version']}: {'promoted' if result['promoted'] else 'rejected'}", "",
             f"Against the champion retriever ({result['champion_before']}); {result['correction']}.", "",
             "| slice | champion | candidate |", "|---|---|---|"]  # fmt: skip
    for name, (old, new) in sorted({**result["rates"], **result["assistant_rates"]}.items()):
        lines.append(f"| {name} | {old:.3f} | {new:.3f} |")
    return "\n".join([*lines, "", "## Reasons", "", *[f"- {r}" for r in result["reasons"]]]) + "\n"


def rollback_retriever(params: Params, settings: Settings) -> dict[str, Any]:
    """Serve the previous retriever again: the registry's aliases swap (or, back to params.yaml's embedder, the
    champion alias is retired) and its retained collection is published without re-embedding."""
    from components.knowledge.retriever_serving import serve
    from components.tracking import registry
    from components.tracking.retriever_runs import retire_champion

    champion, previous = read_pointer(params)
    if previous is None:
        raise registry.RegistryError(f"no previous retriever to roll back to (champion: {champion.version})")
    if previous.folder is not None and not (params.paths.models / previous.folder).is_dir():
        from components.tracking.retriever_runs import fetch_retriever

        fetch_retriever(params, settings, previous.version, params.paths.models / previous.folder)  # the registry's
    if previous.version == BASE:
        aliases = retire_champion(params, settings)
    else:
        aliases = registry.rollback(params, settings, model=params.tracking.retriever_model)
    report = serve(params, previous, Served(champion.version, champion.folder))
    return {"champion": previous.version, "previous": champion.version, "aliases": aliases, "index": report}
