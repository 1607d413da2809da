"""MLflow traces of answers, their contract checks and the users' feedback, in the shape of trace_schema.py.

Traces go to the experiment `tracking.serving_experiment` (live answers) through MLflow 3 tracing. MLflow exports a
trace through its process-wide tracer, which writes to the process-wide tracking URI: `bind()` sets that URI
(the one exception to this codebase's rule of no fluent, process-global MLflow state: the client API has no
per-client trace destination) and turns asynchronous trace export off, so a trace is in the store when
`write_trace` returns its id and feedback can never race it. Everything else (assessments, reads) goes through
clients bound to the deployment's URI.

Feedback is never lost: `submit_feedback` logs it at once, or, when the tracking store cannot be reached, keeps it
in a disk spool (`paths.serving/feedback-spool`, one JSON file per feedback, written atomically) that
`deliver_spool` empties later (the API server retries in the background and at start-up; triage calls it before
reading). Delivery is idempotent: each feedback has an id, stored in its assessments' metadata, and an assessment
with that id already on the trace is not logged again (a crash between logging and removing the file duplicates
nothing). Feedback for a trace the store does not have moves to `paths.serving/feedback-rejected` with the reason.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.config import Params, Settings
from components.files import GATE_CASES
from components.tracking.mlflow_runs import client_for, experiment_id, tracking_uri
from components.tracking.trace_schema import (
    ANSWER_SPAN,
    CHECK_PREFIX,
    CHECK_SOURCE,
    CORRECTION,
    GENERATE_SPAN,
    ORIGIN_LIVE,
    RETRIEVE_SPAN,
    TAG_CASE_ID,
    TAG_INDEX_VERSION,
    TAG_MODEL_VERSION,
    TAG_ORIGIN,
    TAG_PARAMS_HASH,
    TAG_QUESTION_HASH,
    USER_FEEDBACK,
)

if TYPE_CHECKING:
    from components.records import Answered

log = logging.getLogger("ragloop.traces")

FEEDBACK_ID = "ragloop.feedback_id"  # assessment metadata: the feedback's id (idempotent delivery)
SPOOL = "feedback-spool"
REJECTED = "feedback-rejected"
TRACE_SPOOL = "trace-spool"  # answers whose trace the store could not take, written later (`deliver_traces`)
TRACE_IDS = "trace-ids.jsonl"  # spooled trace id -> the id the store gave it on delivery
TAG_SPOOLED_AS = "ragloop.spooled_trace_id"  # on a delivered trace: the id its answer was returned with
# The MLflow REST client retries a failed call 7 times with a doubling backoff (minutes) by default. A server that
# answers requests must fail fast and spool instead; bind() sets these unless the environment already does.
ASYNC_EXPORT = "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"  # MLflow's switch, set by bind(), not a deployment setting
FAST_FAILING_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}  # fmt: skip


class UnknownTraceError(LookupError):
    """The tracking store has no trace with this id."""


class StoreUnavailableError(RuntimeError):
    """The tracking store could not be reached (or failed) for this call."""


@dataclass(frozen=True)
class TraceWritten:
    trace_id: str
    stored: bool  # False: the store was unreachable; the answer was served without its trace (see `queued`)
    error: str | None = None
    queued: bool = False  # kept in the trace spool, written when the store answers again (same id for feedback)


_bound: dict[str, str] = {}
_bind_lock = threading.Lock()


def bind(params: Params, settings: Settings, fast_fail: bool = False) -> str:
    """Point this process's trace export at the deployment's tracking store, synchronously; the serving
    experiment's id (created with an artifact location under paths.mlflow when embedded). `fast_fail` also
    makes MLflow's HTTP calls give up after seconds (the API server sets it)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracing.provider import reset

    uri = tracking_uri(params, settings)
    name = params.tracking.serving_experiment
    with _bind_lock:
        if fast_fail:
            for key, value in FAST_FAILING_HTTP.items():
                os.environ.setdefault(key, value)
        if os.environ.get(ASYNC_EXPORT) != "false" or mlflow.get_tracking_uri() != uri:
            os.environ[ASYNC_EXPORT] = "false"  # read when the exporter is built
            outside = os.environ.get("MLFLOW_TRACKING_URI")
            mlflow.set_tracking_uri(uri)  # process-wide: MLflow's tracer exports there (see the module doc)
            # set_tracking_uri also exports MLFLOW_TRACKING_URI; left set, Settings.from_env() in this process would
            # take the embedded store for a tracking server (experiments created later lose their artifact location
            # and write ./mlruns into the working folder). The tracer keeps the URI set above.
            if outside is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = outside
            reset()  # rebuild the exporter with both settings
        key = f"{uri}\n{name}"
        if key not in _bound:
            client = client_for(params, settings)
            try:
                _bound[key] = experiment_id(client, params, settings, name)
            except MlflowException as exc:  # another process created it between our read and our create
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                _bound[key] = experiment_id(client, params, settings, name)
        return _bound[key]


def params_hash(params: Params) -> str:
    """sha256 (16 hex) of the tunables, paths excluded: equal for two deployments configured alike."""
    data = params.model_dump(mode="json", exclude={"paths", "source"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def write_trace(params: Params, settings: Settings, answered: Answered, origin: str = ORIGIN_LIVE,
                case_id: str | None = None, tags: dict[str, str] | None = None, experiment: str | None = None,
                expectations: dict[str, Any] | None = None) -> TraceWritten:  # fmt: skip
    """The answer's trace (root ANSWER span, RETRIEVER span with the chunks as Documents, LLM span), its lineage
    tags, one CODE assessment per check in `answered.checks` and, for a gate case, its gold as expectations
    (source `gate.jsonl`). Returns once all are in the store. `experiment`: another experiment than the serving
    one (the gate-set evaluation writes into the evaluation experiment).

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
    root = client.start_trace(ANSWER_SPAN, span_type=SpanType.CHAIN, inputs={"question": answered.question},
                              tags=all_tags, experiment_id=exp, start_time_ns=answered.started_ns)  # fmt: skip
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
        info = _call(lambda: _tracing(params, settings).get_trace_info(trace_id), trace_id)
        if answered.checks and not any((a.name or "").startswith(CHECK_PREFIX) for a in info.assessments or []):
            log_checks(params, settings, trace_id, answered.checks)  # a store that dropped them from the record
    except (UnknownTraceError, StoreUnavailableError) as exc:  # the export failed (MLflow logs it and goes on)
        return TraceWritten(trace_id, False, f"{type(exc).__name__}: {exc}")
    return TraceWritten(trace_id, True)


def log_checks(params: Params, settings: Settings, trace_id: str, checks: dict[str, bool]) -> None:
    """Each check as a CODE feedback `contract/<check>` with a bool value."""
    from mlflow.entities import AssessmentSource, Feedback

    source = AssessmentSource(source_type="CODE", source_id=CHECK_SOURCE)
    tracing = _tracing(params, settings)
    for name, passed in checks.items():
        feedback = Feedback(name=CHECK_PREFIX + name, value=bool(passed), source=source)
        _call(lambda f=feedback: tracing.log_assessment(trace_id, f), trace_id)


def read_trace(params: Params, settings: Settings, trace_id: str) -> Any:
    """The mlflow.entities.Trace (info with tags and assessments, spans); UnknownTraceError if absent."""
    tracing = _tracing(params, settings)
    return _call(lambda: tracing.get_trace(trace_id), trace_id)


def check_value(value: Any) -> bool | float:
    """A user judgement: true/false, or a number in [-1, 1] (below 0 is negative). ValueError names `value`."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and math.isfinite(value) and -1 <= value <= 1:
        return float(value)
    raise ValueError(f"value: expected true/false or a number between -1 and 1, got {value!r}")


def log_feedback(params: Params, settings: Settings, trace_id: str, value: bool | float, comment: str | None = None,
                 correction: str | None = None, user: str | None = None,
                 feedback_id: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The user's judgement on a trace: HUMAN feedback `user_feedback` (the comment as its rationale) and, with a
    correction, an expectation `correction`, both tagged with the feedback id. Parts already on the trace with
    this id are not logged again. UnknownTraceError for a trace the store lacks, StoreUnavailableError when the
    store cannot be reached (nothing or only a part was logged: logging again with the same id completes it)."""
    from mlflow.entities import AssessmentSource, Expectation, Feedback

    value = check_value(value)
    feedback_id = feedback_id or uuid.uuid4().hex
    tracing = _tracing(params, settings)
    info = _call(lambda: tracing.get_trace_info(trace_id), trace_id)
    have = {(a.name, (a.metadata or {}).get(FEEDBACK_ID)) for a in (info.assessments or [])}
    source = AssessmentSource(source_type="HUMAN", source_id=user or "anonymous")
    meta = {FEEDBACK_ID: feedback_id}
    logged = []
    if (USER_FEEDBACK, feedback_id) not in have:
        fb = Feedback(name=USER_FEEDBACK, value=value, rationale=comment, source=source, metadata=meta)
        _call(lambda: tracing.log_assessment(trace_id, fb), trace_id)
        logged.append(USER_FEEDBACK)
    if correction is not None and (CORRECTION, feedback_id) not in have:
        ex = Expectation(name=CORRECTION, value=correction, source=source, metadata=meta)
        _call(lambda: tracing.log_assessment(trace_id, ex), trace_id)
        logged.append(CORRECTION)
    return {"trace_id": trace_id, "feedback_id": feedback_id, "status": "logged" if logged else "duplicate",
            "logged": logged}  # fmt: skip


def submit_feedback(params: Params, settings: Settings, trace_id: str, value: bool | float,
                    comment: str | None = None, correction: str | None = None,
                    user: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Log feedback now, or spool it when the store is unreachable: {"status": "logged" | "queued", "feedback_id",
    "trace_id"}. UnknownTraceError when the store answers that the trace does not exist; ValueError (naming the
    field) for a bad value."""
    record = {"feedback_id": uuid.uuid4().hex, "trace_id": trace_id, "value": check_value(value),
              "comment": comment, "correction": correction, "user": user, "received_at": time.time()}  # fmt: skip
    if trace_pending(params, trace_id):  # its answer's trace waits in the trace spool: so does its feedback
        spool(params).put(record)
        return {"trace_id": trace_id, "feedback_id": record["feedback_id"], "status": "queued"}
    try:
        return log_feedback(params, settings, **{**_args(record), "trace_id": resolve(params, trace_id)})
    except StoreUnavailableError as exc:
        spool(params).put(record)
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
    return spool(params).depth() + len(_spooled_traces(params))


# -- traces the store could not take --------------------------------------------------------------------------
def keep_trace(params: Params, answered: Answered, trace_id: str | None, origin: str = ORIGIN_LIVE,
               tags: dict[str, str] | None = None) -> TraceWritten:  # fmt: skip
    """Keep an answer whose trace the store could not take (unreachable, failing) on disk, under the id its
    answer is returned with (a new one when it had none): `deliver_traces` writes it later, and feedback sent
    with that id meanwhile is queued and then logged on the delivered trace. Every answer gets its trace."""
    from dataclasses import asdict

    trace_id = trace_id or f"tr-{uuid.uuid4().hex}"
    folder = params.paths.serving / TRACE_SPOOL
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{time.time_ns():020d}-{trace_id}.json"
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"trace_id": trace_id, "origin": origin, "tags": tags or {}, "answered": asdict(answered)}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(folder)
    return TraceWritten(trace_id, False, None, queued=True)


def deliver_traces(params: Params, settings: Settings) -> dict[str, Any]:
    """Write the spooled traces, oldest first, until the store fails: {"delivered", "pending", "error"}. Each
    gets the tag TAG_SPOOLED_AS (the id its answer was returned with) and a line in TRACE_IDS; one already in the
    store (a crash between writing it and removing its file) is found by that tag and not written twice."""
    from components.records import Answered

    counts: dict[str, Any] = {"delivered": 0, "pending": 0, "error": None}
    for path in _spooled_traces(params):
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
    counts["pending"] = len(_spooled_traces(params))
    return counts


def trace_pending(params: Params, trace_id: str) -> bool:
    """Whether this id's trace still waits in the trace spool."""
    return any(p.name.endswith(f"-{trace_id}.json") for p in _spooled_traces(params))


def resolve(params: Params, trace_id: str) -> str:
    """The id the store knows this trace by: itself, or, for a trace delivered from the spool, its stored id."""
    path = params.paths.serving / TRACE_IDS
    if not path.is_file():
        return trace_id
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            if row["spooled"] == trace_id:
                return str(row["stored"])
    return trace_id


def _spooled_traces(params: Params) -> list[Path]:
    folder = params.paths.serving / TRACE_SPOOL
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def _find_spooled(params: Params, settings: Settings, original: str) -> str | None:
    exp = bind(params, settings)
    tracing = _tracing(params, settings)
    where = f"tag.`{TAG_SPOOLED_AS}` = '{original}'"
    found = _call(
        lambda: tracing.search_traces(locations=[exp], max_results=1, filter_string=where, include_spans=False),
        original,
    )
    return str(found[0].info.trace_id) if found else None


def store_reachable(params: Params, settings: Settings) -> bool:
    """Whether the tracking store answers now (a server's /health, or a read of the embedded store)."""
    uri = tracking_uri(params, settings)
    try:
        if uri.startswith(("http://", "https://")):
            import urllib.request

            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as reply:
                return bool(reply.status == 200)
        client_for(params, settings).search_experiments(max_results=1)
        return True
    except Exception:
        return False


class FeedbackSpool:
    """One JSON file per queued feedback, named so that names sort oldest first."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.rejected = folder.parent / REJECTED

    def put(self, record: dict[str, Any]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{time.time_ns():020d}-{record['feedback_id']}.json"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(record, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # whole or absent: a crash never leaves half a record in the queue
        _fsync_dir(self.folder)
        return path

    def pending(self) -> list[Path]:
        return sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []

    def depth(self) -> int:
        return len(self.pending())

    def reject(self, path: Path, why: dict[str, Any]) -> None:
        self.rejected.mkdir(parents=True, exist_ok=True)
        (self.rejected / path.name).write_text(json.dumps(why), encoding="utf-8")
        path.unlink(missing_ok=True)

    @contextmanager
    def locked(self, wait: bool) -> Iterator[bool]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def spool(params: Params) -> FeedbackSpool:
    return FeedbackSpool(params.paths.serving / SPOOL)


def _args(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("trace_id", "value", "comment", "correction", "user", "feedback_id")
    return {k: record.get(k) for k in keys}


def _tracing(params: Params, settings: Settings) -> Any:
    from mlflow.tracing.client import TracingClient

    return TracingClient(tracking_uri(params, settings))


def _call(fn: Any, trace_id: str) -> Any:
    """Run one store call; a missing trace becomes UnknownTraceError, a store that cannot serve the call
    StoreUnavailableError, a request the store refuses ValueError."""
    from mlflow.exceptions import MlflowException

    try:
        return fn()
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise UnknownTraceError(f"no trace {trace_id!r} in the tracking store") from None
        if exc.error_code in {"INVALID_PARAMETER_VALUE", "BAD_REQUEST"} and "not found" in str(exc).lower():
            raise UnknownTraceError(f"no trace {trace_id!r} in the tracking store") from None
        if exc.error_code in {"INVALID_PARAMETER_VALUE", "BAD_REQUEST"}:
            raise ValueError(f"the tracking store refused the call: {exc.message}") from None
        raise StoreUnavailableError(f"{exc.error_code}: {exc.message}"[:500]) from exc
    except Exception as exc:  # connection errors (requests, urllib3), a locked or unreadable SQLite file
        import sqlalchemy.exc
        from requests import RequestException

        if isinstance(exc, RequestException | OSError | sqlalchemy.exc.SQLAlchemyError):
            raise StoreUnavailableError(f"{type(exc).__name__}: {exc}"[:500]) from exc
        raise


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
