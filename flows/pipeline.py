"""The whole loop as one Prefect flow: re-index, evaluate, and fine-tune only on a behaviour regression.

Its own module: the behaviour flows (flows/behaviour.py) do not import the re-index flow, so an edit to indexing
never reruns the evaluate, finetune and gate stages (dvc.yaml)."""

from __future__ import annotations

from prefect import flow

from components.routes import FINETUNE
from flows.behaviour import evaluate, finetune
from flows.reindex import reindex


@flow(name="pipeline", flow_run_name="pipeline-{reason}")
def pipeline(params_file: str = "params.yaml", reason: str = "manual") -> dict:
    """reindex -> evaluate -> finetune (a subflow) only when the evaluation found a behaviour regression (a
    retrieval regression emits its event from the evaluation: the tune-retriever deployment answers it)."""
    index_report = reindex(params_file=params_file, reason=reason)
    summary = evaluate(params_file=params_file, reason=reason)
    tuned = finetune(params_file=params_file, reason=f"regression: {', '.join(summary['regressed_slices'])}") if (
        FINETUNE in summary["actions"]) else None  # fmt: skip
    return {"index": index_report, "evaluation": summary, "finetune": tuned}
