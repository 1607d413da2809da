"""When a stored gate-set evaluation may stand in for a fresh one: the evaluate flow saves its per-case results
(`evaluation_results.json`, a DVC output) with a fingerprint of what they depend on, and the fine-tune and the gate
reuse them only for the same model, the same index version and the same fingerprint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from components.behaviour.evaluate import Evaluation
from components.behaviour.suite import suite_hash
from components.config import Params
from components.files import EVALUATION_RESULTS, GATE_CASES


class IndexMovedError(RuntimeError):
    """The index was re-published between two evaluations that must be paired case by case."""


def fingerprint(params: Params) -> str:
    """What an evaluation's results depend on besides the model and the index: generation, the regression test,
    how retrieval ranks, and the gate set's content."""
    parts = [params.generator.model_dump_json(), params.regression.model_dump_json(),
             params.retrieval.model_dump_json(), suite_hash(params.paths.behaviour / GATE_CASES)]  # fmt: skip
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def results_path(params: Params) -> Path:
    return params.paths.metrics / EVALUATION_RESULTS


def save_results(params: Params, ev: Evaluation) -> None:
    """The evaluation's per-case results and summary, fingerprinted, for a later fine-tune or gate to reuse."""
    params.paths.metrics.mkdir(parents=True, exist_ok=True)
    data = {"behaviour": ev.results, "retrieval": ev.retrieval, "summary": ev.summary,
            "fingerprint": fingerprint(params)}  # fmt: skip
    results_path(params).write_text(json.dumps(data) + "\n")


def published_index_version(params: Params) -> int | None:
    """The published index version as its marker names it; None before the first publish."""
    from components.knowledge.session import PUBLISHED_MARKER

    marker = params.paths.index / PUBLISHED_MARKER
    return int(json.loads(marker.read_text())["index_version"]) if marker.is_file() else None


def reusable_evaluation(params: Params, model_label: str, index_version: int | None) -> Evaluation | None:
    """The saved evaluation when it is of `model_label` ("v3", "base") on `index_version` (None: the published
    one) under today's fingerprint; None when a fresh evaluation is needed. It carries no per-case outcomes."""
    path = results_path(params)
    if index_version is None:
        index_version = published_index_version(params)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        summary = data["summary"]
        same = (summary["model_version"], summary["index_version"], data.get("fingerprint"))
    except (ValueError, KeyError, TypeError):
        return None  # unreadable or of an older layout: evaluate afresh rather than pair against it
    if same != (model_label, index_version, fingerprint(params)):
        return None
    return Evaluation(summary, [], data["behaviour"], retrieval=data.get("retrieval"))


def check_same_index(expected: int | None, ev: Evaluation) -> None:
    """A fresh evaluation meant to pair with one on `expected` (None: any) must be on that index version."""
    if expected is not None and ev.summary["index_version"] != expected:
        raise IndexMovedError(
            f"the index moved from version {expected} to {ev.summary['index_version']} since the candidate "
            "was evaluated: re-run the fine-tune (or `ragloop evaluate` then `ragloop gate`) on one index version"
        )
