"""An answer's trace and a user's feedback reach the tracking store: at once, or, when the store cannot be reached,
through the disk spools under `paths.serving` (spool.py writes both) that the delivery functions empty later (the
API server retries in the background and at start-up; triage calls `deliver_spool` before reading).

Feedback is never lost: `submit_feedback` logs it at once (feedback.py) or keeps it in `feedback-spool`. Delivery is
idempotent: each feedback has an id, stored in its assessments' metadata, and an assessment with that id already on
the trace is not logged again (a crash between logging and removing the file duplicates nothing). Feedback for a
trace the store does not have moves to `feedback-rejected` with the reason. An answer whose trace the store could not
take is kept in `trace-spool` under the id it was returned with (`keep_trace`); feedback sent with that id meanwhile
waits in the feedback spool and is logged on the delivered trace (`resolve`).

The parts: trace_store.py (binding the trace export, store errors), trace_writer.py (writing a trace), feedback.py
(logging feedback), spool.py (the disk spool).
"""

from __future__ import annotations

import json
import logging
import os
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
    bind,
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
TRACE_SPOOL = "trace-spool"  # answers whose trace the store could not take, written later (`deliver_traces`)
TRACE_IDS = "trace-ids.jsonl"  # spooled trace id -> the id the store gave it on delivery
TAG_SPOOLED_AS = "ragloop.spooled_trace_id"  # on a delivered trace: the id its answer was returned with


def spool(params: Params) -> Spool:
    """The feedback spool: one file per feedback, keyed by its feedback id."""
    return Spool(params.paths.serving / SPOOL, rejected=params.paths.serving / REJECTED)


def trace_spool(params: Params) -> Spool:
    """The trace spool: one file per answer whose trace waits, keyed by the trace id its answer was returned with."""
    return Spool(params.paths.serving / TRACE_SPOOL)


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


def deliver_spool(params: Params, settings: Settings, wait: bool = True) -> dict[str, Any]:
    """Deliver the queued feedback, oldest first, until the store fails again: {"delivered", "rejected",
    "pending", "error"}. One delivery at a time across processes (a file lock); with wait=False a delivery
    already running elsewhere makes this return at once with "busy": True."""
    queue = spool(params)
    counts: dict[str, Any] = {"delivered": 0, "rejected": 0, "pending": queue.depth(), "error": None}
    with queue.locked(wait) as held:
        if not held:
            return {**counts, "busy": True}
        counts["traces"] = deliver_traces(params, settings)  # first: feedback may be waiting for one of them
        for path in queue.pending():
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:  # unreadable: keep it for a person, out of the queue
                queue.reject(path, {"reason": f"unreadable spool file: {exc}"})
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


def keep_trace(params: Params, answered: Answered, trace_id: str | None, origin: str = ORIGIN_LIVE,
               tags: dict[str, str] | None = None) -> TraceWritten:  # fmt: skip
    """Keep an answer whose trace the store could not take (unreachable, failing) on disk, under the id its
    answer is returned with (a new one when it had none): `deliver_traces` writes it later, and feedback sent
    with that id meanwhile is queued and then logged on the delivered trace. Every answer gets its trace."""
    trace_id = trace_id or f"tr-{uuid.uuid4().hex}"
    record = {"trace_id": trace_id, "origin": origin, "tags": tags or {}, "answered": asdict(answered)}
    trace_spool(params).put(trace_id, record)
    return TraceWritten(trace_id, False, None, queued=True)


def deliver_traces(params: Params, settings: Settings) -> dict[str, Any]:
    """Write the spooled traces, oldest first, until the store fails: {"delivered", "pending", "error"}. Each
    gets the tag TAG_SPOOLED_AS (the id its answer was returned with) and a line in TRACE_IDS; one already in the
    store (a crash between writing it and removing its file) is found by that tag and not written twice."""
    from components.records import Answered

    counts: dict[str, Any] = {"delivered": 0, "pending": 0, "error": None}
    for path in trace_spool(params).pending():
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
        original = record["trace_id"]
        try:
            stored = _find_spooled(params, settings, original)
            if stored is None:
                fields: dict[str, Any] = {k: tuple(v) if k in {"cited", "hits", "context_docs"} else v
                                          for k, v in record["answered"].items()}  # fmt: skip
                written = write_trace(params, settings, Answered(**fields), origin=record["origin"],
                                      tags={**record["tags"], TAG_SPOOLED_AS: original})  # fmt: skip
                if not written.stored:
                    counts["error"] = written.error
                    break
                stored = written.trace_id
        except (StoreUnavailableError, OSError) as exc:
            counts["error"] = f"{type(exc).__name__}: {exc}"
            break
        except Exception as exc:  # the store failing in a way MLflow does not wrap (a refused connection)
            counts["error"] = f"{type(exc).__name__}: {exc}"
            break
        with open(params.paths.serving / TRACE_IDS, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"spooled": original, "stored": stored}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        path.unlink(missing_ok=True)
        counts["delivered"] += 1
    counts["pending"] = trace_spool(params).depth()
    return counts


def trace_pending(params: Params, trace_id: str) -> bool:
    """Whether this id's trace still waits in the trace spool."""
    return trace_spool(params).holds(trace_id)


def resolve(params: Params, trace_id: str) -> str:
    """The id the store knows this trace by: itself, or, for a trace delivered from the spool, its stored id."""
    path = params.paths.serving / TRACE_IDS
    if not path.is_file():
        return trace_id
    for _, row in read_jsonl(path):
        if row["spooled"] == trace_id:
            return str(row["stored"])
    return trace_id


def _find_spooled(params: Params, settings: Settings, original: str) -> str | None:
    exp = bind(params, settings)
    tracing = tracing_client(params, settings)
    where = f"tag.`{TAG_SPOOLED_AS}` = '{original}'"
    found = store_call(
        lambda: tracing.search_traces(locations=[exp], max_results=1, filter_string=where, include_spans=False),
        original,
    )
    return str(found[0].info.trace_id) if found else None


def _args(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("trace_id", "value", "comment", "correction", "user", "feedback_id")
    return {k: record.get(k) for k in keys}
