"""Live traces for tests, written by the server's own code (tracking/trace_writer.py `write_trace`, feedback.py
`log_feedback`, in the shape of trace_schema.py) into a deployment's real tracking store, at given timestamps so
that no test depends on the clock. Only the answer is made up here (`Served`): no model runs."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from components.config import Params, Settings
from components.files import EVALUATION_RESULTS
from tests.helpers import REPO

T0_MS = 1_780_000_000_000  # 2026-05-28: a fixed origin for test timestamps


@dataclass
class Served:
    """One live answer: what was asked, retrieved and generated, and what the user said about it."""

    question: str
    output: str
    hits: list[dict]  # as Retriever.search returns them: {"doc", "chunk_id", "score", "text"}, best first
    at_ms: int
    feedback: bool | float | None = None
    comment: str | None = None
    correction: str | None = None
    index_version: int = 1
    model_version: str = "base"
    checks: dict[str, bool] | None = None  # None: the fintech contract's live checks on `output`


def write_trace(params: Params, s: Served, labels: set[str] | None = None) -> str:
    """The answer's trace with its checks (CODE) and the user's feedback (HUMAN) and correction; its id."""
    from components.behaviour.contract import load_contract
    from components.records import Answered
    from components.tracking import feedback, trace_writer

    settings = Settings.from_env()
    contract = load_contract(REPO / "data/behaviour/contract.yaml", labels)
    parsed = contract.answer_of(s.output)
    docs = tuple(dict.fromkeys(h["doc"] for h in s.hits))
    ns = s.at_ms * 1_000_000
    answered = Answered(
        question=s.question, answer=parsed.answer if parsed else s.output, intent=parsed.intent if parsed else None,
        cited=parsed.sources if parsed else (), raw=s.output, prompt=f"### Customer: {s.question}\n### Assistant:",
        hits=tuple(s.hits), context_docs=docs, model_version=s.model_version, adapter_version=None,
        base_model="test-model", index_version=s.index_version, tokens_in=12, tokens_out=9, retrieve_ms=1.0,
        generate_ms=3.0, latency_ms=5.0, started_ns=ns, retrieved_ns=ns + 1_000_000, ended_ns=ns + 4_000_000,
        checks=s.checks if s.checks is not None else contract.live_check(s.output, docs)[0],
    )  # fmt: skip
    written = trace_writer.write_trace(params, settings, answered)
    assert "MLFLOW_TRACKING_URI" not in os.environ  # traces.bind must not leave the embedded store's URI exported
    assert written.stored, written.error
    if s.feedback is not None or s.correction is not None:
        feedback.log_feedback(params, settings, written.trace_id, s.feedback if s.feedback is not None else False,
                            comment=s.comment, correction=s.correction, user="tester")  # fmt: skip
    return written.trace_id


def flawless_base_results(metrics: Path) -> None:
    """The serving model's own gate results, as `evaluate` saves them when no champion is registered (the base
    model's), never failing the format or the citation: any live behaviour failure there is above its rate."""
    metrics.mkdir(parents=True, exist_ok=True)
    (metrics / EVALUATION_RESULTS).write_text(json.dumps({
        "summary": {"model_version": "base"},
        "behaviour": {"format": {f"g{i}": True for i in range(20)}, "citation": {f"g{i}": True for i in range(20)}},
    }))  # fmt: skip
