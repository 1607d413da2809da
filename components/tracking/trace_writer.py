"""An answer's MLflow trace in the shape of trace_schema.py: its spans (the retrieved chunks as Documents, the
generation), lineage tags and contract checks, written to the experiment `tracking.serving_experiment` (live
answers) or another one (the gate-set evaluation); and read back."""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from components.config import Params, Settings
from components.files import GATE_CASES
from components.tracking.mlflow_runs import client_for, experiment_id, tracking_uri
from components.tracking.trace_schema import (
    ANSWER_SPAN,
    CHECK_PREFIX,
    CHECK_SOURCE,
    GENERATE_SPAN,
    ORIGIN_LIVE,
    RETRIEVE_SPAN,
    TAG_CASE_ID,
    TAG_INDEX_VERSION,
    TAG_MODEL_VERSION,
    TAG_ORIGIN,
    TAG_PARAMS_HASH,
    TAG_QUESTION_HASH,
)
from components.tracking.trace_store import (
    StoreUnavailableError,
    UnknownTraceError,
    bind,
    chosen_trace_id,
    store_call,
    tracing_client,
)

if TYPE_CHECKING:
    from components.records import Answered


@dataclass(frozen=True)
class TraceWritten:
    trace_id: str
    stored: bool  # False: the store was unreachable; the answer was served without its trace (see `queued`)
    error: str | None = None
    queued: bool = False  # kept in the trace spool, written when the store answers again (same id for feedback)


def params_hash(params: Params) -> str:
    """sha256 (16 hex) of the tunables, paths excluded: equal for two deployments configured alike."""
    data = params.model_dump(mode="json", exclude={"paths", "source"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def write_trace(params: Params, settings: Settings, answered: Answered, origin: str = ORIGIN_LIVE,
                case_id: str | None = None, tags: dict[str, str] | None = None, experiment: str | None = None,
                expectations: dict[str, Any] | None = None, trace_id: str | None = None) -> TraceWritten:  # fmt: skip
    """The answer's trace (root ANSWER span, RETRIEVER span with the chunks as Documents, LLM span), its lineage
    tags, one CODE assessment per check in `answered.checks` and, for a gate case, its gold as expectations
    (source `gate.jsonl`). Returns once all are in the store. `experiment`: another experiment than the serving
    one (the gate-set evaluation writes into the evaluation experiment); `trace_id`: the id to store it under
    (a spooled answer's, "tr-" and 32 hex digits), a new one otherwise.

    The assessments travel in the trace's own record (one store write with the trace, not one per check: 6
    SQLite commits a trace instead of 10, which matters for a gate set of hundreds of cases)."""
    from mlflow import MlflowClient
    from mlflow.entities import AssessmentSource, Document, Expectation, Feedback, SpanType
    from mlflow.tracing.constant import SpanAttributeKey
    from mlflow.tracing.trace_manager import InMemoryTraceManager

    from components.hashing import text_hash

    exp = bind(params, settings)
    if experiment is not None:
        exp = experiment_id(client_for(params, settings), params, settings, experiment)
    client = MlflowClient(tracking_uri(params, settings))
    all_tags = {
        TAG_ORIGIN: origin,
        TAG_INDEX_VERSION: str(answered.index_version),
        TAG_MODEL_VERSION: answered.model_version,
        TAG_PARAMS_HASH: params_hash(params),
        TAG_QUESTION_HASH: text_hash(answered.question),
        **({TAG_CASE_ID: case_id} if case_id else {}),
        **(tags or {}),
    }
    with chosen_trace_id(trace_id) if trace_id else nullcontext():
        root = client.start_trace(ANSWER_SPAN, span_type=SpanType.CHAIN, inputs={"question": answered.question},
                                  tags=all_tags, experiment_id=exp, start_time_ns=answered.started_ns)  # fmt: skip
    if trace_id is not None and root.trace_id != trace_id:  # never two ids for one answer: end it unwritten
        client.end_trace(root.trace_id)
        raise RuntimeError(f"MLflow started trace {root.trace_id}, not the chosen {trace_id}")
    trace_id = str(root.trace_id)
    try:
        span = client.start_span(RETRIEVE_SPAN, trace_id=trace_id, parent_id=root.span_id,
                                 span_type=SpanType.RETRIEVER, start_time_ns=answered.started_ns,
                                 inputs={"query": answered.question, "k": params.generator.context_chunks})  # fmt: skip
        documents = [
            Document(page_content=h["text"], id=h["chunk_id"],
                     metadata={"doc_uri": h["doc"], "chunk_id": h["chunk_id"], "score": h["score"],
                               "index_version": answered.index_version}).to_dict()
            for h in answered.hits
        ]  # fmt: skip
        client.end_span(trace_id, span.span_id, outputs=documents, end_time_ns=answered.retrieved_ns)
        attributes = {
            "model_version": answered.model_version,
            "adapter_version": answered.adapter_version or "none",
            "base_model": answered.base_model,
            "tokens_in": answered.tokens_in,
            "tokens_out": answered.tokens_out,
            "latency_ms": answered.generate_ms,
            SpanAttributeKey.CHAT_USAGE: {"input_tokens": answered.tokens_in, "output_tokens": answered.tokens_out,
                                          "total_tokens": answered.tokens_in + answered.tokens_out},
            SpanAttributeKey.MODEL: answered.base_model,
        }  # fmt: skip
        span = client.start_span(GENERATE_SPAN, trace_id=trace_id, parent_id=root.span_id, span_type=SpanType.LLM,
                                 inputs={"prompt": answered.prompt}, attributes=attributes,
                                 start_time_ns=answered.retrieved_ns)  # fmt: skip
        client.end_span(trace_id, span.span_id, outputs={"text": answered.raw}, end_time_ns=answered.ended_ns)
        code = AssessmentSource(source_type="CODE", source_id=CHECK_SOURCE)
        gold = AssessmentSource(source_type="HUMAN", source_id=GATE_CASES)
        assessments: list[Any] = [Feedback(name=CHECK_PREFIX + k, value=bool(v), source=code)
                                  for k, v in answered.checks.items()]  # fmt: skip
        assessments += [Expectation(name=k, value=v, source=gold) for k, v in (expectations or {}).items()]
        with InMemoryTraceManager.get_instance().get_trace(trace_id) as pending:
            if pending is not None:  # exported with the trace's info (MLflow's own trace copy sets info the same way)
                pending.info.assessments = assessments
    finally:  # always end the trace: an open one stays in MLflow's in-memory buffer
        outputs = {"answer": answered.answer, "intent": answered.intent, "cited": list(answered.cited),
                   "raw": answered.raw}  # fmt: skip
        client.end_trace(trace_id, outputs=outputs, end_time_ns=answered.ended_ns)
    try:
        info = store_call(lambda: tracing_client(params, settings).get_trace_info(trace_id), trace_id)
        if answered.checks and not any((a.name or "").startswith(CHECK_PREFIX) for a in info.assessments or []):
            log_checks(params, settings, trace_id, answered.checks)  # a store that dropped them from the record
    except (UnknownTraceError, StoreUnavailableError) as exc:  # the export failed (MLflow logs it and goes on)
        return TraceWritten(trace_id, False, f"{type(exc).__name__}: {exc}")
    return TraceWritten(trace_id, True)


def log_checks(params: Params, settings: Settings, trace_id: str, checks: dict[str, bool]) -> None:
    """Each check as a CODE feedback `contract/<check>` with a bool value."""
    from mlflow.entities import AssessmentSource, Feedback

    source = AssessmentSource(source_type="CODE", source_id=CHECK_SOURCE)
    tracing = tracing_client(params, settings)
    for name, passed in checks.items():
        feedback = Feedback(name=CHECK_PREFIX + name, value=bool(passed), source=source)
        store_call(lambda f=feedback: tracing.log_assessment(trace_id, f), trace_id)


def read_trace(params: Params, settings: Settings, trace_id: str) -> Any:
    """The mlflow.entities.Trace (info with tags and assessments, spans); UnknownTraceError if absent."""
    tracing = tracing_client(params, settings)
    return store_call(lambda: tracing.get_trace(trace_id), trace_id)
