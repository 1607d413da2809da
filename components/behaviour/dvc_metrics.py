"""The behaviour stages' DVC metrics files, written by the flows themselves (so a deployment-triggered fine-tune
updates them as `dvc repro` does): evaluation.json and its plots, finetune.json and gate.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from components.behaviour.evaluate import Evaluation
from components.behaviour.reuse import save_results
from components.config import Params
from components.files import EVALUATION_METRICS, FINETUNE_METRICS, GATE_METRICS, RETRIEVAL_PLOT, SLICES_PLOT
from components.routes import FINETUNE
from components.tracking.lineage import write_plot

# what finetune.json keeps of a fine-tune's result: the work (the same on any machine), the adapter, the verdict
FINETUNE_KEYS = ("version", "promoted", "reasons", "training_pairs", "failing_train_cases", "train_steps",
                 "train_tokens", "adapter_sha256", "train_seconds", "train_tokens_per_s")  # fmt: skip
GATE_KEYS = ("version", "promoted", "reasons", "champion_before")


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_evaluation(params: Params, ev: Evaluation) -> None:
    """evaluation.json (the summary), the slice and retrieval plots, and the per-case results a fine-tune reuses."""
    write_json(params.paths.metrics / EVALUATION_METRICS, ev.summary)
    slices = [{"slice": name, **s} for name, s in sorted(ev.summary["slices"].items())]
    retrieval = [{"metric": name, "value": v} for name, v in sorted(ev.summary["retrieval"].items())]
    write_plot(params.paths.metrics, SLICES_PLOT, slices)
    write_plot(params.paths.metrics, RETRIEVAL_PLOT, retrieval)
    save_results(params, ev)


def action_not_needed(params: Params, action: str) -> str | None:
    """Why the last evaluation does not ask for `action` (finetune, tune_retriever); None when it does (or when
    there is no evaluation yet: a command run by hand does what it is told)."""
    last = params.paths.metrics / EVALUATION_METRICS
    if not last.is_file():
        return None
    summary = json.loads(last.read_text())
    actions = summary.get("actions", [summary.get("decision")])
    if action in actions:
        return None
    asked = ", ".join(actions) or "nothing"
    return f"the last evaluation asked for {asked} (decision {summary.get('decision')!r}), not {action!r}"


def finetune_not_needed(params: Params) -> str | None:
    """Why the last evaluation asks for no fine-tune; None when it asks for one (or there is none yet)."""
    return action_not_needed(params, FINETUNE)


def record_finetune_skip(params: Params, why: str) -> dict[str, Any]:
    """A skipped fine-tune leaves no adapter behind (the DVC stage's output says why instead): a stale adapter
    from an earlier run must never pass for this run's."""
    folder = params.paths.models / "candidate"
    shutil.rmtree(folder, ignore_errors=True)
    record = {"skipped": True, "why": why}
    write_json(folder / "skipped.json", record)
    write_json(params.paths.metrics / FINETUNE_METRICS, record)
    return record


def record_finetune(params: Params, result: dict[str, Any]) -> None:
    write_json(params.paths.metrics / FINETUNE_METRICS, {"skipped": False, **{k: result[k] for k in FINETUNE_KEYS
                                                                            if k in result}})  # fmt: skip


def record_truncated_finetune(params: Params, why: str) -> None:
    write_json(params.paths.metrics / FINETUNE_METRICS, {"skipped": False, "truncated": True, "why": why})


def last_candidate(params: Params) -> tuple[str | None, str]:
    """(the version the last fine-tune registered, None when it registered none; why none)."""
    path = params.paths.metrics / FINETUNE_METRICS
    tuned = json.loads(path.read_text()) if path.is_file() else {"skipped": True, "why": "no fine-tune has run"}
    if tuned.get("skipped") or "version" not in tuned:
        return None, str(tuned.get("why", "the last fine-tune registered no version"))
    return str(tuned["version"]), ""


def record_gate(params: Params, result: dict[str, Any]) -> None:
    write_json(params.paths.metrics / GATE_METRICS, {"skipped": False, **{k: result[k] for k in GATE_KEYS}})


def record_gate_skip(params: Params, why: str) -> dict[str, Any]:
    record = {"skipped": True, "why": why}
    write_json(params.paths.metrics / GATE_METRICS, record)
    return record
