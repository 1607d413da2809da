"""The tuned retriever in MLflow: its training run (experiment `tracking.retriever_experiment`), its registered model
(`tracking.retriever_model`, aliases champion / previous through registry.py's promote and rollback), and the
memory of rejected candidates that keeps the loop from training the same thing twice.

A version's model is the run's artifact folder `retriever/` (a sentence-transformers folder); its tags hold the
lineage, the evidence key (training pairs + recipe + base embedder) and, once gated, `gate` (promoted | rejected).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import Params, Settings
from components.tracking.mlflow_runs import client_for, start_training_run, tracking_uri
from components.tracking.registry import CHAMPION, PREVIOUS, _alias, _ensure_registered_model, rejected_with

MODEL_ARTIFACT = "retriever"  # the run artifact folder a version's source points to
EVIDENCE_TAG = "ragloop.evidence"  # training pairs + recipe + base embedder: what a run is a function of


def start_tuning_run(params: Params, settings: Settings, tags: dict[str, str], reason: str) -> str:
    """The retriever's training run, left running: the model is logged into it before it ends."""
    return start_training_run(params, settings, params.tracking.retriever_experiment, "tune_retriever",
                              "tune-retriever", ("retriever", params.retriever.model_dump()), tags, reason)  # fmt: skip


def register_retriever(params: Params, settings: Settings, run_id: str, folder: Path, tags: dict[str, str]) -> str:
    """Log the model folder into the run and register it as a new version of `tracking.retriever_model`."""
    client = client_for(params, settings)
    client.log_artifacts(run_id, str(folder), MODEL_ARTIFACT)
    name = params.tracking.retriever_model
    _ensure_registered_model(client, name, "ragloop retriever: the embedder fine-tuned on the training questions")
    source = f"{client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT}"
    mv = client.create_model_version(name, source=source, run_id=run_id, tags={k: str(v) for k, v in tags.items()})
    return str(mv.version)


def fetch_retriever(params: Params, settings: Settings, version: str, dst: Path) -> Path:
    """Download a registered version's model folder to `dst` (a folder that must not exist yet)."""
    import mlflow.artifacts

    client = client_for(params, settings)
    uri = tracking_uri(params, settings)
    source = client.get_model_version_download_uri(params.tracking.retriever_model, version)
    dst.parent.mkdir(parents=True, exist_ok=True)
    got = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst.parent / f".{dst.name}.download"),
                                              tracking_uri=uri, registry_uri=uri)  # fmt: skip
    Path(got).rename(dst)
    return dst


def rejected_before(params: Params, settings: Settings, evidence: str) -> dict[str, Any] | None:
    """The version the gate already rejected for the same evidence (None: none), with its description."""
    return rejected_with(params, settings, {EVIDENCE_TAG: evidence}, model=params.tracking.retriever_model)


def log_gate(params: Params, settings: Settings, run_id: str, verdict: str, figures: dict[str, float]) -> None:
    """The gate's verdict (tag `ragloop.gate`) and the retrieval figures of both sides on the training run."""
    from mlflow.entities import Metric, RunTag

    from components.tracking.mlflow_runs import _millis

    now = _millis()
    client_for(params, settings).log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in figures.items()],
                                           tags=[RunTag("ragloop.gate", verdict)])  # fmt: skip


def retire_champion(params: Params, settings: Settings) -> dict[str, str | None]:
    """Back to params.yaml's own embedder: the `champion` alias is removed and the old champion becomes `previous`."""
    client = client_for(params, settings)
    name = params.tracking.retriever_model
    old = _alias(client, name, CHAMPION)
    if old is not None:
        client.set_registered_model_alias(name, PREVIOUS, str(old.version))
        client.delete_registered_model_alias(name, CHAMPION)
    return {"champion": None, "previous": None if old is None else str(old.version)}
