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
from flows.events import BEHAVIOUR_REGRESSION

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
