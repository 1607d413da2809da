"""Live traces written the way `ragloop api` writes them (components/tracking/trace_schema.py), through MLflow's own
tracing API into a deployment's real tracking store, at given timestamps (so no test depends on the clock)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from components.config import Params, Settings
from components.tracking import trace_schema as ts
from components.tracking.mlflow_runs import client_for, experiment_id, tracking_uri

T0_MS = 1_780_000_000_000  # 2026-05-28: a fixed origin for test timestamps


@dataclass
class Served:
    """One live answer: what was asked, retrieved and generated, and what the user said about it."""

    question: str
    output: str
    docs: list[tuple[str, str, float, str]]  # (doc, chunk_id, score, chunk text), best first
    at_ms: int
    checks: dict[str, bool] = field(default_factory=dict)
    feedback: bool | float | None = None
    comment: str | None = None
    correction: str | None = None
    index_version: int = 1
    model_version: str = "base"
    k: int = 2


@contextmanager
def _tracking(params: Params) -> Iterator[str]:
    import mlflow

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri(params, Settings.from_env()))
    try:
        yield before
    finally:
        mlflow.set_tracking_uri(before)


def write_trace(params: Params, s: Served) -> str:
    """The trace of one answer, with its checks (CODE), feedback (HUMAN) and correction (expectation); its id."""
    import mlflow
    from mlflow.entities import AssessmentSource, Document, SpanType

    settings = Settings.from_env()
    exp = experiment_id(client_for(params, settings), params, settings, params.tracking.serving_experiment)
    ns = s.at_ms * 1_000_000
    tags = {ts.TAG_ORIGIN: ts.ORIGIN_LIVE, ts.TAG_INDEX_VERSION: str(s.index_version),
            ts.TAG_MODEL_VERSION: s.model_version, ts.TAG_PARAMS_HASH: "test"}  # fmt: skip
    with _tracking(params):
        root = mlflow.start_span_no_context(ts.ANSWER_SPAN, span_type=SpanType.CHAIN, inputs={"question": s.question},
                                            experiment_id=exp, start_time_ns=ns, tags=tags)  # fmt: skip
        ret = mlflow.start_span_no_context(ts.RETRIEVE_SPAN, span_type=SpanType.RETRIEVER, parent_span=root,
                                           inputs={"query": s.question, "k": s.k}, start_time_ns=ns + 1)  # fmt: skip
        ret.set_outputs([Document(page_content=text, metadata={"doc_uri": doc, "chunk_id": cid, "score": score,
                                                               "index_version": s.index_version})
                         for doc, cid, score, text in s.docs])  # fmt: skip
        ret.end(end_time_ns=ns + 2)
        gen = mlflow.start_span_no_context(ts.GENERATE_SPAN, span_type=SpanType.LLM, parent_span=root,
                                           inputs={"prompt": f"### Customer: {s.question}\n### Assistant:"},
                                           attributes={"model_version": s.model_version, "latency_ms": 5},
                                           start_time_ns=ns + 3)  # fmt: skip
        gen.set_outputs({"text": s.output})
        gen.end(end_time_ns=ns + 4)
        root.set_outputs({"answer": s.output, "intent": None, "cited": [], "raw": s.output})
        root.end(end_time_ns=ns + 5)
        trace_id = root.trace_id
        mlflow.flush_trace_async_logging()
        code = AssessmentSource(source_type="CODE", source_id=ts.CHECK_SOURCE)
        for name, ok in s.checks.items():
            mlflow.log_feedback(trace_id=trace_id, name=ts.CHECK_PREFIX + name, value=ok, source=code)
        human = AssessmentSource(source_type="HUMAN", source_id="user")
        if s.feedback is not None:
            mlflow.log_feedback(trace_id=trace_id, name=ts.USER_FEEDBACK, value=s.feedback, rationale=s.comment,
                                source=human)  # fmt: skip
        if s.correction is not None:
            mlflow.log_expectation(trace_id=trace_id, name=ts.CORRECTION, value=s.correction, source=human)
    return str(trace_id)
