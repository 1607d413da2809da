"""The behaviour path as Prefect flows: evaluate the champion, and on a behaviour regression emit an event
(a deployment trigger starts the fine-tune from it) or, inside `pipeline` (flows/pipeline.py), run the fine-tune as
a subflow.

Wiring only: the steps live in components/behaviour (mining, reuse, gate_report, reports, dvc_metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from components.behaviour import dvc_metrics, reports, reuse
from components.behaviour.evaluate import Evaluation
from components.behaviour.finetune import TrainingLog
from components.behaviour.gate_report import (
    GateReport,
    candidate_results,
    case_groups,
    gains,
    gate_markdown,
    gate_result,
    gate_table,
    judge_candidate,
)
from components.behaviour.loop import data_lineage, evaluate_model, finetune_evidence
from components.behaviour.training import TruncatedTraining, machine_info
from components.config import Params, Settings, load_params
from components.records import model_label
from components.routes import FINETUNE, TUNE_RETRIEVER
from components.tracking.mlflow_runs import evaluation_note, log_evaluation_run
from components.tracking.registry import VersionInfo
from flows.deployments import TRAINING_LIMIT, slot
from flows.events import (
    BEHAVIOUR_REGRESSION,
    MODEL_PROMOTED,
    MODEL_RESOURCE,
    RETRIEVAL_REGRESSION,
    RETRIEVER_RESOURCE,
)
from flows.tasks import io_task, step


@io_task("load champion")
def load_champion(params: Params, settings: Settings) -> VersionInfo | None:
    from components.tracking.registry import champion

    return champion(params, settings)


def _label(champ: VersionInfo | None) -> str:
    return model_label(champ.version if champ else None)


@step("evaluate on the gate set")
def evaluate_gate(params: Params, settings: Settings, champ: VersionInfo | None) -> Evaluation:
    recorded = (champ.results or {}) if champ else {}
    return evaluate_model(params, settings, champ.adapter_dir if champ else None, recorded.get("behaviour"),
                          _label(champ), recorded.get("retrieval"))  # fmt: skip


@io_task("record evaluation in mlflow")
def record(params: Params, settings: Settings, ev: Evaluation, reason: str, baseline: dict | None) -> str:
    """The evaluation's MLflow run; `baseline` is the champion's recorded slice rates (None: no champion)."""
    rows = reports.case_rows(ev.outcomes)
    run_id = log_evaluation_run(params, settings, ev.summary, rows, data_lineage(params), reason, baseline)
    if params.tracking.evaluation_traces:
        from components.behaviour.evaluation_traces import trace_evaluation

        trace_evaluation(params, settings, ev.outcomes, run_id, ev.seconds)
    return run_id


@step("write dvc metrics")
def write_metrics(params: Params, ev: Evaluation) -> None:
    dvc_metrics.write_evaluation(params, ev)


@flow(name="evaluate", flow_run_name="evaluate-{reason}")
def evaluate(params_file: str = "params.yaml", reason: str = "manual") -> dict:
    """Evaluate the champion (or the base model) on the gate set, route every failing case and decide the actions:
    reindex, write_documents, tune_retriever, finetune (the decision is the first; none when there is none)."""
    params, settings = load_params(params_file), Settings.from_env()
    champ = load_champion(params, settings)
    ev = evaluate_gate(params, settings, champ)
    if params.paths.retrieval_queries is not None:
        ev.summary["labelled_retrieval"] = labelled_retrieval(params, params.paths.retrieval_queries)
    baseline = reports.champion_baseline(champ.results if champ else None)
    ev.summary["mlflow_run_id"] = record(params, settings, ev, reason, baseline)
    write_metrics(params, ev)
    _announce(ev.summary, evaluation_note(ev.summary, baseline, reason))
    return ev.summary


def labelled_retrieval(params: Params, queries_file: Path) -> dict[str, Any]:
    """The labelled queries scored on the published version (the eval-retrieval task, its own MLflow run): what the
    evaluation keeps of the result."""
    from flows.retrieval_tasks import evaluate_retrieval_task

    result = evaluate_retrieval_task(params, queries_file)
    keep = ("queries_file", "queries_md5", "index_version", "level", "scored", "metrics", "mlflow_run_id")
    return {k: result[k] for k in keep}


def _announce(summary: dict, note: str) -> None:
    table = [{"slice": name, **s} for name, s in summary["slices"].items()]
    create_table_artifact(key="evaluation-slices", table=table, description=f"decision: {summary['decision']}")
    create_markdown_artifact(key="evaluation-decision", markdown=note, description=f"decision: {summary['decision']}")
    if FINETUNE in summary["actions"]:
        emit_event(
            event=BEHAVIOUR_REGRESSION,
            resource={"prefect.resource.id": f"{MODEL_RESOURCE}.{summary['model_version']}"},
            payload={"regressed_slices": summary["regressed_slices"], "reasons": summary["reasons"]},
        )
    if TUNE_RETRIEVER in summary["actions"]:
        test = summary["retrieval_test"]
        emit_event(
            event=RETRIEVAL_REGRESSION,
            resource={"prefect.resource.id": f"{RETRIEVER_RESOURCE}.index-v{summary['index_version']}"},
            payload={
                "regressed": test["regressed"],
                "reasons": test["reasons"],
                "misses": summary["routes"]["retrieval"],
            },
        )


@io_task("build training pairs")
def build_pairs(params: Params, settings: Settings, champ: VersionInfo | None) -> tuple[list[tuple[str, str]], int]:
    """The training pairs, hard cases (the champion's behaviour failures on the training set) repeated."""
    from components.behaviour.mining import mine_training_pairs

    return mine_training_pairs(params, settings, champ.adapter_dir if champ else None)


@step("train lora adapter")
def train_adapter(params: Params, pairs: list[tuple[str, str]]) -> tuple[Path, TrainingLog]:
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


@step("evaluate candidate on the gate set")
def evaluate_candidate(params: Params, settings: Settings, adapter: Path, champion_eval: Evaluation) -> Evaluation:
    return evaluate_model(params, settings, adapter, champion_eval.results, "candidate")


@io_task("register candidate")
def register_candidate(params: Params, settings: Settings, run_id: str, adapter: Path, lineage: dict[str, str],
                       ev: Evaluation) -> str:  # fmt: skip
    from components.behaviour.assistant import resolve_generator
    from components.tracking import registry

    results = {"behaviour": ev.results, "retrieval": ev.retrieval, "summary": ev.summary}
    return registry.log_adapter(params, settings, run_id, adapter, resolve_generator(params), lineage, results)


@flow(name="finetune", flow_run_name="finetune-{reason}")
def finetune(params_file: str = "params.yaml", reason: str = "manual", run_gate: bool = True,
             if_needed: bool = False) -> dict:  # fmt: skip
    """Train a LoRA candidate on the training set, evaluate it on the gate set and register it; then (unless
    `run_gate` is off, as in the DVC stage `finetune`, which leaves it to the stage `gate`) gate it against the
    champion and promote it only if it wins. Any failure leaves the champion exactly as it was. `if_needed`: only
    when the last evaluation decided 'finetune' (else the skip and its reason are recorded). Writes finetune.json."""
    params, settings = load_params(params_file), Settings.from_env()
    if if_needed and (why := dvc_metrics.finetune_not_needed(params)) is not None:
        return dvc_metrics.record_finetune_skip(params, why)
    champ = load_champion(params, settings)
    if (rejected := rejected_candidate(params, settings, finetune_evidence(params, _parent(champ)))) is not None:
        return dvc_metrics.record_finetune_skip(params, _same_evidence(rejected))
    champion_eval = _champion_evaluation(params, settings, champ, None)  # the evaluate flow's, when current
    outcome = _train_and_register(params, settings, champ, champion_eval, reason)
    create_markdown_artifact(key="finetune-run", markdown=reports.finetune_markdown(outcome, champion_eval.summary),
                             description=f"LoRA candidate version {outcome['version']}")  # fmt: skip
    if run_gate:
        outcome.update(gate_version(params, settings, outcome["version"], champion_eval))
    dvc_metrics.record_finetune(params, outcome)
    return outcome


@io_task("look for a rejected candidate of the same evidence")
def rejected_candidate(params: Params, settings: Settings, evidence: dict[str, str]) -> dict | None:
    from components.tracking.registry import rejected_with

    return rejected_with(params, settings, evidence)


def _parent(champ: VersionInfo | None) -> str:
    return champ.version if champ else "base"


def _same_evidence(rejected: dict) -> str:
    return (
        f"the same evidence (training data, recipe, base model, contract and parent) already trained version "
        f"{rejected['version']}, which the gate rejected ({rejected['reason']}); more training cases "
        "(`ragloop cases accept`) or another recipe (params.yaml `finetune`) would change the outcome"
    )


def _train_and_register(params: Params, settings: Settings, champ: VersionInfo | None, champion_eval: Evaluation,
                        reason: str) -> dict[str, Any]:  # fmt: skip
    from components.tracking import mlflow_runs

    lineage = {**data_lineage(params), **finetune_evidence(params, _parent(champ)),
               "index_version": str(champion_eval.summary["index_version"])}  # fmt: skip
    run_id = mlflow_runs.start_finetune_run(params, settings, lineage, reason)
    ok = False
    try:
        pairs, failing = build_pairs(params, settings, champ)
        adapter, log = train_adapter(params, pairs)
        figures = reports.training_figures(log, len(pairs), failing)
        mlflow_runs.log_training(params, settings, run_id, log.losses, figures, machine_info())
        if log.truncated:
            mlflow_runs.mark_truncated(params, settings, run_id, log.steps, log.planned_steps)
            why = reports.truncation_message(params.finetune.max_seconds, log)
            dvc_metrics.record_truncated_finetune(params, why)
            raise TruncatedTraining(why)
        candidate_eval = evaluate_candidate(params, settings, adapter, champion_eval)
        record(params, settings, candidate_eval, f"candidate of fine-tune run {run_id}",
               champion_eval.summary["slices"])  # fmt: skip
        mlflow_runs.log_figures(params, settings, run_id, reports.candidate_rates(candidate_eval.summary))
        version = register_candidate(params, settings, run_id, adapter, lineage, candidate_eval)
        ok = True
    finally:
        mlflow_runs.end_run(params, settings, run_id, ok)
    return reports.finetune_result(version, champion_eval.summary, candidate_eval.summary, run_id, len(pairs),
                                   failing, log, adapter)  # fmt: skip


def _gate_run_name() -> str:
    from prefect.runtime import flow_run

    version = flow_run.parameters.get("version")
    return f"gate-v{version}" if version else "gate-last-candidate"


@flow(name="gate", flow_run_name=_gate_run_name)
def gate(version: str | None = None, params_file: str = "params.yaml", if_needed: bool = False,
         calibrate: bool = False) -> dict:  # fmt: skip
    """Gate a registered candidate (None: the last fine-tune's) against the champion, paired case by case on the
    same index version; promote it only if every regressed slice improved significantly and nothing got
    significantly worse. The verdict and its reasons go into the version's description; a rejected candidate stays
    registered. `if_needed`: only a candidate not gated yet (else the skip is recorded). `calibrate`: first measure
    the seed noise (a twin trained with the next seed, or the stored measurement of the same recipe); a gain must
    exceed it. Writes gate.json."""
    from components.behaviour.gate_report import GateError

    params, settings = load_params(params_file), Settings.from_env()
    if version is None:
        version, why = dvc_metrics.last_candidate(params)
        if version is None:
            if not if_needed:
                raise GateError(f"no candidate to gate: {why}; name a VERSION")
            return dvc_metrics.record_gate_skip(params, f"no candidate: {why}")
    if if_needed and (verdict := gate_verdict(params, settings, version)) is not None:
        return dvc_metrics.record_gate_skip(params, f"version {version} was already gated: {verdict}")
    return gate_version(params, settings, version, None, calibrate)


@io_task("read the gate's verdict")
def gate_verdict(params: Params, settings: Settings, version: str) -> str | None:
    from components.tracking.registry import gate_verdict as read

    return read(params, settings, version)


@io_task("load candidate")
def load_candidate(params: Params, settings: Settings, version: str) -> VersionInfo:
    from components.tracking.registry import fetch_version

    return fetch_version(params, settings, version)


def gate_version(params: Params, settings: Settings, version: str, champion_eval: Evaluation | None,
                 calibrate: bool = False) -> dict:  # fmt: skip
    """Judge `version` against the champion's evaluation (None: reuse the saved one of this index version, else
    evaluate afresh), record the verdict, move the aliases on promotion, and write gate.json."""
    from components.tracking import registry

    candidate = load_candidate(params, settings, version)
    results = candidate_results(version, candidate.results)  # before any evaluation: a bad version fails at once
    if champion_eval is None:
        champ = load_champion(params, settings)
        champion_eval = _champion_evaluation(params, settings, champ, results["summary"]["index_version"])
    groups = case_groups(params)
    calibration = calibrate_seed_noise(params, settings, candidate, groups) if calibrate else None
    report = judge_candidate(version, champion_eval, results, params.regression, groups, calibration)
    registry.describe_version(params, settings, version, report.label, report.reasons, report.rates)
    aliases = registry.promote(params, settings, version) if report.promote else None
    if candidate.run_id:
        record_verdict(params, settings, candidate.run_id, report)
    if report.promote:
        emit_event(event=MODEL_PROMOTED, resource={"prefect.resource.id": f"{MODEL_RESOURCE}.v{version}"},
                   payload={"aliases": aliases, "reasons": report.reasons})  # fmt: skip
    create_markdown_artifact(key="gate-verdict", markdown=gate_markdown(report),
                             description=f"version {version}: {report.label}")  # fmt: skip
    create_table_artifact(key="gate-slices", table=gate_table(report),
                          description=f"version {version} against {report.champion_label}")  # fmt: skip
    result = gate_result(report, aliases)
    if calibration is not None:
        result["calibration"] = calibration
    dvc_metrics.record_gate(params, result)
    return result


@step("calibrate the seed noise")
def calibrate_seed_noise(params: Params, settings: Settings, candidate: VersionInfo, groups: dict[str, str]) -> dict:
    """The stored seed noise of this recipe, or a twin trained with the next seed and evaluated (calibration.py).
    The twin's hard examples are mined with the candidate's own parent (its lineage), as the candidate's were."""
    from components.behaviour.calibration import calibrate

    parent = candidate.tags.get("parent_version", "base")
    miner = None if parent == "base" else load_candidate(params, settings, parent).adapter_dir
    with slot(TRAINING_LIMIT):
        return calibrate(params, settings, candidate_results(candidate.version, candidate.results)["behaviour"],
                         miner, groups)  # fmt: skip


@io_task("record verdict on the fine-tune run")
def record_verdict(params: Params, settings: Settings, run_id: str, report: GateReport) -> None:
    """What the fine-tune bought at the gate, on its own MLflow run (read back by `ragloop advise`)."""
    from components.tracking import mlflow_runs

    mlflow_runs.log_verdict(params, settings, run_id, report.label, gains(report.rates))


def _champion_evaluation(params: Params, settings: Settings, champ: VersionInfo | None,
                         index_version: int | None) -> Evaluation:  # fmt: skip
    """The champion's evaluation on `index_version` (None: the published one): the evaluate flow's saved results
    when they are for this champion and this index version (components/behaviour/reuse.py), else a fresh one."""
    saved = reuse.reusable_evaluation(params, _label(champ), index_version)
    if saved is not None:
        return saved
    ev = evaluate_gate(params, settings, champ)
    baseline = reports.champion_baseline(champ.results if champ else None)
    ev.summary["mlflow_run_id"] = record(params, settings, ev, "the champion, paired with a candidate", baseline)
    reuse.check_same_index(index_version, ev)
    return ev
