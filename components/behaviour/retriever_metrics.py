"""The tune_retriever stage's files: whether the last evaluation asks for it, the candidate folder (the DVC out)
and data/metrics/retriever.json, written by the flow itself (a deployment-triggered run updates them as `dvc repro`
does). A skipped run leaves no model behind, only skipped.json saying why, as a skipped fine-tune does."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from components.behaviour.dvc_metrics import action_not_needed, write_json
from components.config import Params
from components.files import RETRIEVER_METRICS
from components.routes import TUNE_RETRIEVER

# what retriever.json keeps: the work (the same on any machine), the model, the verdict, the figures
RESULT_KEYS = ("version", "promoted", "reasons", "evidence", "champion_before", "training_pairs", "train_steps",
               "train_tokens", "weights_sha256", "train_seconds", "train_tokens_per_s", "rates",
               "assistant_rates")  # fmt: skip


def candidate_folder(params: Params) -> Path:
    return params.paths.models / "retriever" / "candidate"


def tuning_not_needed(params: Params) -> str | None:
    """Why the last evaluation asks for no retriever tuning; None when its `actions` hold tune_retriever (or,
    from an evaluation that lists none, its decision is tune_retriever), or when there is no evaluation yet (a
    deployment with labelled queries and no gate set has none)."""
    return action_not_needed(params, TUNE_RETRIEVER)


def record_skip(params: Params, why: str, **extra: Any) -> dict[str, Any]:
    """A skipped run: no candidate model (a stale one must never pass for this run's), the reason instead."""
    folder = candidate_folder(params)
    shutil.rmtree(folder, ignore_errors=True)
    record = {"skipped": True, "why": why, **extra}
    write_json(folder / "skipped.json", record)
    write_json(params.paths.metrics / RETRIEVER_METRICS, record)
    return record


def record_result(params: Params, result: dict[str, Any]) -> None:
    write_json(params.paths.metrics / RETRIEVER_METRICS,
               {"skipped": False, **{k: result[k] for k in RESULT_KEYS if k in result}})  # fmt: skip
