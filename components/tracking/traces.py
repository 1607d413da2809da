"""An answer's trace and a user's feedback reach the tracking store through the disk spools under `paths.serving`
(spool.py writes both), emptied in the background: the API server keeps each answer's trace on local disk
(`keep_trace`, fsync'd) and returns the answer; its delivery thread writes what the spools hold to the store in
batches (`deliver_spool`), at start-up too, so a server killed at any moment loses nothing it answered or
accepted. Triage calls `deliver_spool` before reading.

A spooled trace is stored under the id its answer was returned with (`write_trace(trace_id=...)`); delivery is
idempotent: a trace already complete in the store (a crash between writing it and removing its file) is not
written again. Feedback is never lost: `submit_feedback` spools feedback on a trace still on its way (logged on it
once it lands) or one the store cannot take now, and logs the rest at once (feedback.py). Each feedback has an id,
stored in its assessments' metadata, and an assessment with that id already on the trace is not logged again.
Feedback for a trace the store does not have moves to `feedback-rejected` with the reason.

The parts: trace_store.py (binding the trace export, store errors), trace_writer.py (writing a trace), feedback.py
(logging feedback), spool.py (the disk spool).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from components.config import Params, Settings
from components.jsonl import read_jsonl
from components.tracking.feedback import check_value, log_feedback
from components.tracking.spool import Spool
from components.tracking.trace_schema import ORIGIN_LIVE
from components.tracking.trace_store import (
    StoreUnavailableError,
    UnknownTraceError,
    store_call,
    tracing_client,
)
from components.tracking.trace_store import store_reachable as store_reachable  # flows/api.py imports it from here
from components.tracking.trace_writer import TraceWritten, write_trace

if TYPE_CHECKING:
    from components.records import Answered

log = logging.getLogger("ragloop.traces")

SPOOL = "feedback-spool"
REJECTED = "feedback-rejected"
TRACE_SPOOL = "trace-spool"  # answers' traces on their way to the store (`deliver_traces`)
REJECTED_TRACES = "trace-rejected"  # spooled traces that could not be read back (kept for a person)
TRACE_IDS = "trace-ids.jsonl"  # written before traces kept their id on delivery: spooled id -> stored id (`resolve`)
TAG_SPOOLED_AS = "ragloop.spooled_trace_id"  # on a trace delivered from the spool: the id its answer was returned with


def spool(params: Params) -> Spool:
    """The feedback spool: one file per feedback, keyed by its feedback id."""
    return Spool(params.paths.serving / SPOOL, rejected=params.paths.serving / REJECTED)


def trace_spool(params: Params) -> Spool:
    """The trace spool: one file per answer whose trace waits, keyed by the trace id its answer was returned with."""
    return Spool(params.paths.serving / TRACE_SPOOL, rejected=params.paths.serving / REJECTED_TRACES)


def submit_feedback(params: Params, settings: Settings, trace_id: str, value: bool | float,
                    comment: str | None = None, correction: str | None = None,
                    user: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Log feedback now, or spool it when the store is unreachable: {"status": "logged" | "queued", "feedback_id",
    "trace_id"}. UnknownTraceError when the store answers that the trace does not exist; ValueError (naming the
    field) for a bad value."""
    record: dict[str, Any] = {"feedback_id": uuid.uuid4().hex, "trace_id": trace_id, "value": check_value(value),
              "comment": comment, "correction": correction, "user": user, "received_at": time.time()}  # fmt: skip
    if trace_pending(params, trace_id):  # its answer's trace waits in the trace spool: so does its feedback
        spool(params).put(record["feedback_id"], record)
        return {"trace_id": trace_id, "feedback_id": record["feedback_id"], "status": "queued"}
    try:
        return log_feedback(params, settings, **{**_args(record), "trace_id": resolve(params, trace_id)})
    except StoreUnavailableError as exc:
        spool(params).put(record["feedback_id"], record)
        log.warning("tracking store unreachable; feedback %s queued: %s", record["feedback_id"], exc)
        return {"trace_id": trace_id, "feedback_id": record["feedback_id"], "status": "queued"}


def deliver_spool(params: Params, settings: Settings, wait: bool = True, until: float | None = None) -> dict[str, Any]:
    """Deliver the spooled traces (`deliver_traces`), then the queued feedback, oldest first, until the store
    fails again: {"delivered", "rejected", "pending", "error", "traces"}. One delivery at a time across processes
    (a file lock); with wait=False a delivery already running elsewhere makes this return at once with "busy":
    True. `until` (time.monotonic()): stop between two records once it has passed (a server shutting down)."""
    queue = spool(params)
    counts: dict[str, Any] = {"delivered": 0, "rejected": 0, "pending": queue.depth(), "error": None}
    with queue.locked(wait) as held:
        if not held:
            return {**counts, "busy": True}
        counts["traces"] = deliver_traces(params, settings, until)  # first: feedback may be waiting for them
        for path, record in queue.records(until):
            if record is None:  # unreadable: kept aside for a person, out of the queue
                counts["rejected"] += 1
                continue
            if trace_pending(params, record["trace_id"]):  # its trace is not in the store yet: keep it queued
                continue
            try:
                log_feedback(params, settings, **{**_args(record), "trace_id": resolve(params, record["trace_id"])})
            except (UnknownTraceError, ValueError) as exc:  # never deliverable: kept aside with the reason
                queue.reject(path, {**record, "reason": str(exc)})
                counts["rejected"] += 1
                continue
            except StoreUnavailableError as exc:
                counts["error"] = f"{type(exc).__name__}: {exc}"
                break
            path.unlink(missing_ok=True)
            counts["delivered"] += 1
    counts["pending"] = queue.depth()
    return counts


def spool_depth(params: Params) -> int:
    """Feedback and traces waiting for the tracking store."""
    return spool(params).depth() + trace_spool(params).depth()


def new_trace_id() -> str:
    """A trace id in MLflow's form, for an answer whose trace is written after it is returned (or streamed)."""
    return f"tr-{uuid.uuid4().hex}"


def keep_trace(params: Params, answered: Answered, trace_id: str | None = None, origin: str = ORIGIN_LIVE,
               tags: dict[str, str] | None = None) -> TraceWritten:  # fmt: skip
    """Keep an answer's trace on local disk, durably (written whole, fsync'd), under the id its answer is returned
    with (a new one, in MLflow's form, when it has none): `deliver_traces` writes it to the store under that id, and
    feedback sent with it meanwhile is queued and then logged on the delivered trace."""
    trace_id = trace_id or new_trace_id()
    record = {"trace_id": trace_id, "origin": origin, "tags": tags or {}, "answered": asdict(answered)}
    trace_spool(params).put(trace_id, record)
    return TraceWritten(trace_id, False, None, queued=True)


def deliver_traces(params: Params, settings: Settings, until: float | None = None) -> dict[str, Any]:
    """Write the spooled traces, oldest first, until the store fails (or `until` passes): {"delivered",
    "rejected", "pending", "error"} (rejected: files that cannot be read back, set aside under trace-rejected/).
    Each is stored under the id its answer was returned with, tagged TAG_SPOOLED_AS; one already complete in the
    store (a crash between writing it and removing its file) is not written again."""
    counts: dict[str, Any] = {"delivered": 0, "rejected": 0, "pending": 0, "error": None}
    for path, record in trace_spool(params).records(until):
        if record is None:  # unreadable: kept aside for a person, out of the queue
            counts["rejected"] += 1
            continue
        try:
            error = _deliver_trace(params, settings, record)
        except Exception as exc:  # the store failing, also in ways MLflow does not wrap (a refused connection)
            error = f"{type(exc).__name__}: {exc}"
        if error is not None:
            counts["error"] = error
            break
        path.unlink(missing_ok=True)
        counts["delivered"] += 1
    counts["pending"] = trace_spool(params).depth()
    return counts


def _deliver_trace(params: Params, settings: Settings, record: dict[str, Any]) -> str | None:
    """Write one spooled trace unless the store holds it complete already; the error when the store failed."""
    from components.records import Answered

    trace_id = record["trace_id"]
    if _stored_complete(params, settings, trace_id):
        return None
    fields: dict[str, Any] = {k: tuple(v) if k in {"cited", "hits", "context_docs"} else v
                              for k, v in record["answered"].items()}  # fmt: skip
    written = write_trace(params, settings, Answered(**fields), origin=record["origin"],
                          tags={**record["tags"], TAG_SPOOLED_AS: trace_id}, trace_id=trace_id)  # fmt: skip
    return None if written.stored else written.error


def _stored_complete(params: Params, settings: Settings, trace_id: str) -> bool:
    """Whether the store holds this trace whole: its info is written last (MLflow marks it finalized), after the
    spans; a trace whose writing was cut short is written again over what it has."""
    from mlflow.tracing.constant import TraceMetadataKey

    tracing = tracing_client(params, settings)
    try:
        info = store_call(lambda: tracing.get_trace_info(trace_id), trace_id)
    except UnknownTraceError:
        return False
    return bool((info.trace_metadata or {}).get(TraceMetadataKey.TRACE_INFO_FINALIZED) == "true")


def trace_pending(params: Params, trace_id: str) -> bool:
    """Whether this id's trace still waits in the trace spool."""
    return trace_spool(params).holds(trace_id)


def resolve(params: Params, trace_id: str) -> str:
    """The id the store knows this trace by: itself, or, for a trace delivered from the spool before traces kept
    their id (TRACE_IDS), its stored id."""
    path = params.paths.serving / TRACE_IDS
    if not path.is_file():
        return trace_id
    for _, row in read_jsonl(path):
        if row["spooled"] == trace_id:
            return str(row["stored"])
    return trace_id


def _args(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("trace_id", "value", "comment", "correction", "user", "feedback_id")
    return {k: record.get(k) for k in keys}
