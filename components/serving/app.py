"""`ragloop api`: the assistant behind an OpenAI-compatible HTTP API (FastAPI + uvicorn), every answer traced.

- `POST /v1/chat/completions`, `GET /v1/models[/{id}]`: the OpenAI shapes (the official `openai` client works
  unchanged). The question is the last user message. Each answer carries `ragloop: {trace_id, model_version,
  index_version, sources, cited, intent, answer, checks, traced}` (the openai client keeps it in `model_extra`)
  and the header `x-ragloop-trace-id`. `stream: true` streams the tokens as they are generated, in OpenAI's
  chunks (components/serving/answers.py): the header names the trace id before the first token, `ragloop` is in the
  last chunk, which comes once the whole answer is traced, the usage when `stream_options.include_usage` asks.
- `POST /v1/feedback {trace_id, value, comment?, correction?, user?}`: 200 logged, 202 queued (its trace is still on
  its way to the tracking store, or the store is unreachable: the feedback is spooled on disk and delivered after
  its trace), 404 unknown trace.
- Each answer's trace is kept on local disk (fsync'd) before the answer is returned, and a background thread
  delivers the spool to MLflow in batches under the same trace id (components/tracking/traces.py): answers never
  wait on the store, and a server killed at any moment loses no trace it answered and no feedback it accepted.
- `GET /health` (no key needed): model and index version, whether the tracking store answers, the spool depth.

Bad requests get a 4xx whose `error.param` names the wrong field (a body over `api.max_body_bytes` a 413, before it
is parsed: components/serving/body_limit.py); a failure on the server a 5xx with a message, and an answer that is
not ready within `api.request_timeout_s` a 504. Binding anything but loopback needs an API key
(RAGLOOP_API_KEY), then required on every /v1 call as `Authorization: Bearer <key>`.

The request and response bodies, and the request's checks, are components/serving/protocol.py; no Prefect here
(`ragloop api --prefect` runs `run_api` as a flow: flows/api_deployment.py).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from components.config import Params, Settings
from components.serving import answers
from components.serving.answers import Streams
from components.serving.body_limit import BodyLimit
from components.serving.protocol import (
    ApiError,
    ChatRequest,
    Chunks,
    FeedbackRequest,
    check_feedback_text,
    completion,
    error_body,
    model_card,
    question_of,
)

API_KEY_ENV = "RAGLOOP_API_KEY"
TRACE_HEADER = "x-ragloop-trace-id"
# MLflow 3.17.2 defines no response header for a trace id (MLflow PR #20387 proposes one); ours is the only one.
DELIVERY_POLL_S = 0.2  # how often the delivery thread looks for spooled traces and feedback (a directory listing)
SHUTDOWN_DRAIN_S = 10.0  # how long a stopping server keeps delivering; what is left is delivered at the next start
log = logging.getLogger("ragloop.api")


class ApiConfigError(RuntimeError):
    """The server cannot start as configured (a non-loopback bind without an API key)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_key_for(host: str) -> str | None:
    """The key requests must carry: RAGLOOP_API_KEY when set (on any address); None on loopback without one.
    ApiConfigError for another address without one: the server refuses to start."""
    key = os.environ.get("RAGLOOP_API_KEY") or None
    if key is None and not is_loopback(host):
        raise ApiConfigError(
            f"refusing to bind {host}: anything but loopback (127.0.0.1, ::1) needs an API key; set {API_KEY_ENV} "
            "(clients then send `Authorization: Bearer <key>`) or bind 127.0.0.1"
        )
    return key


# --- the app ---------------------------------------------------------------------------------------------------


def create_app(params: Params, settings: Settings, engine: Any, api_key: str | None) -> FastAPI:
    """The FastAPI app around a loaded `components.serving.engine.Engine`: the open health probe, then the /v1
    routes behind the key."""
    app = FastAPI(title="ragloop", version="0.1.0", lifespan=_spool_worker(params, settings))
    app.add_middleware(BodyLimit, max_bytes=params.api.max_body_bytes)
    _answer_errors(app)
    app.include_router(_health(params, settings, engine))
    app.include_router(_models(params, engine), dependencies=[Depends(_bearer(api_key))])
    app.include_router(_chat(params, settings, engine), dependencies=[Depends(_bearer(api_key))])
    app.include_router(_feedback(params, settings), dependencies=[Depends(_bearer(api_key))])
    return app


def _spool_worker(params: Params, settings: Settings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: a thread that delivers the spooled traces and feedback while the app runs, and for at
    most SHUTDOWN_DRAIN_S more when it stops (`_redeliver`); what is left waits on disk for the next start."""
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker = threading.Thread(target=_redeliver, args=(params, settings, stop), name="ragloop-spool",
                                  daemon=True)  # fmt: skip
        worker.start()
        try:
            yield
        finally:
            stop.set()
            await asyncio.to_thread(worker.join, SHUTDOWN_DRAIN_S + 30)  # the drain, then a trace being written

    return lifespan


def _bearer(api_key: str | None) -> Callable[[Request], None]:
    """The /v1 routes' dependency: `Authorization: Bearer <key>` when the server has a key, nothing otherwise."""

    def authorised(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send `Authorization: Bearer <key>`", None,
                           "invalid_api_key")  # fmt: skip

    return authorised


def _answer_errors(app: FastAPI) -> None:
    """Every failure as an OpenAI error body: ApiError with its status, a bad body 400 naming the field, Starlette's
    own (unknown path 404, wrong method 405) with theirs, anything else 500 with its message."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.param, exc.code, exc.kind)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = "server_error" if exc.status_code >= 500 else "invalid_request_error"
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(error_body(message, None, None, kind), exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        loc = [p for p in first["loc"] if p != "body"]
        param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "body"
        return _error(400, f"{param}: {first['msg']}", param)

    @app.exception_handler(Exception)
    async def _failure(_: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        return _error(500, f"server error: {type(exc).__name__}: {exc}", None, None, "server_error")


def _health(params: Params, settings: Settings, engine: Any) -> APIRouter:
    from components.tracking import traces

    router = APIRouter()

    @router.get("/health")
    async def health() -> dict[str, Any]:
        reachable = await asyncio.to_thread(traces.store_reachable, params, settings)
        return {"status": "ok", **engine.status(), "tracking_store_reachable": reachable,
                "spool_depth": traces.spool_depth(params)}  # fmt: skip

    return router


def _models(params: Params, engine: Any) -> APIRouter:
    model_id, created = params.api.model_id, int(time.time())
    router = APIRouter()

    @router.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(model_id, created, engine)]}

    @router.get("/v1/models/{model_id}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != params.api.model_id:
            raise ApiError(404, f"model: unknown model {model_id!r}", "model", "model_not_found")
        return model_card(model_id, created, engine)

    return router


def _chat(params: Params, settings: Settings, engine: Any) -> APIRouter:
    limits = params.api
    router = APIRouter()

    streams = Streams(limits.request_timeout_s, lambda answer, left, trace_id: _trace(params, settings, answer, left,
                                                                                       trace_id))  # fmt: skip

    @router.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatRequest) -> JSONResponse | StreamingResponse:
        question = question_of(req, params)
        if req.stream:  # traced once the whole answer is, under the id the header names before the first token
            from components.tracking.traces import new_trace_id

            include_usage = req.stream_options is not None and req.stream_options.include_usage
            trace_id = new_trace_id()
            return await streams.respond(engine, question, Chunks(req.model, include_usage, trace_id), trace_id,
                                         {TRACE_HEADER: trace_id})  # fmt: skip
        deadline = time.monotonic() + limits.request_timeout_s
        answered = await answers.answered(answers.submit(engine, question), limits.request_timeout_s,
                                          limits.request_timeout_s)  # fmt: skip
        written = await _trace(params, settings, answered, max(1.0, deadline - time.monotonic()))
        headers = {TRACE_HEADER: written.trace_id} if written.trace_id else {}
        return JSONResponse(completion(req.model, answered, written), headers=headers)

    return router


def _feedback(params: Params, settings: Settings) -> APIRouter:
    from components.tracking import traces

    limits = params.api
    router = APIRouter()

    @router.post("/v1/feedback")
    async def feedback(req: FeedbackRequest) -> JSONResponse:
        check_feedback_text(req, params)
        try:
            traces.check_value(req.value)
            result = await asyncio.wait_for(
                asyncio.to_thread(traces.submit_feedback, params, settings, req.trace_id, req.value, req.comment,
                                  req.correction, req.user),
                limits.request_timeout_s,
            )  # fmt: skip
        except traces.UnknownTraceError as exc:
            raise ApiError(404, f"trace_id: {exc}", "trace_id", "trace_not_found") from None
        except ValueError as exc:
            raise ApiError(400, str(exc), "value" if str(exc).startswith("value") else None) from None
        except TimeoutError:
            raise ApiError(504, "the feedback could not be logged or queued in time", None, "timeout",
                           "server_error") from None  # fmt: skip
        return JSONResponse(result, status_code=202 if result["status"] == "queued" else 200)

    return router


async def _trace(params: Params, settings: Settings, answered: Any, timeout: float, trace_id: str | None = None
                 ) -> Any:  # fmt: skip
    """The answer's trace, kept durably on local disk (the trace spool) before the answer is returned: the
    delivery thread writes it to the store under the same id, and feedback on it can follow at once. Where the
    disk fails, written to the store directly; a store that fails too costs the answer its trace, never the
    answer."""
    from components.tracking.traces import TraceWritten, keep_trace, write_trace

    try:
        return await asyncio.wait_for(asyncio.to_thread(keep_trace, params, answered, trace_id), timeout)
    except Exception as exc:
        log.error("the trace spool failed (%s: %s); writing the answer's trace to the store", type(exc).__name__, exc)
    try:
        return await asyncio.wait_for(asyncio.to_thread(write_trace, params, settings, answered, trace_id=trace_id),
                                      timeout)  # fmt: skip
    except Exception as exc:
        log.error("the answer's trace is lost: %s: %s", type(exc).__name__, exc)
        return TraceWritten("", False, f"{type(exc).__name__}: {exc}")


def _error(status: int, message: str, param: str | None, code: str | None = None,
           kind: str = "invalid_request_error") -> JSONResponse:  # fmt: skip
    return JSONResponse(error_body(message, param, code, kind), status)


def _redeliver(params: Params, settings: Settings, stop: threading.Event,
               deliver: Callable[..., dict[str, Any]] | None = None) -> None:  # fmt: skip
    """From start-up until `stop`: deliver what the spools hold, in batches (all that arrived since the last
    pass), every DELIVERY_POLL_S, or every api.spool_retry_s while the store fails; then a last drain bounded by
    SHUTDOWN_DRAIN_S. One process delivers at a time (deliver_spool's lock)."""
    from components.tracking import traces

    send = deliver or traces.deliver_spool
    while True:
        failed = False
        if traces.spool_depth(params):
            try:
                result = send(params, settings, wait=False)
                failed = bool(result.get("error") or (result.get("traces") or {}).get("error"))
                if failed:
                    log.warning("tracking store unavailable; %s record(s) stay spooled: %s",
                                traces.spool_depth(params), result)  # fmt: skip
            except Exception:
                log.exception("delivering the spool failed")
                failed = True
        if stop.wait(params.api.spool_retry_s if failed else DELIVERY_POLL_S):
            break
    if traces.spool_depth(params):
        try:
            result = send(params, settings, wait=True, until=time.monotonic() + SHUTDOWN_DRAIN_S)
            log.info("spool drained at shutdown: %s", result)
        except Exception:
            log.exception("draining the spool at shutdown failed; it is delivered at the next start")


def run_api(params: Params, settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Load the engine, then serve until SIGINT/SIGTERM. ApiConfigError before anything loads when the bind
    needs a key that is not set."""
    import uvicorn

    from components.serving.engine import Engine
    from components.tracking.trace_store import bind

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host = host or params.api.host
    port = port or params.api.port
    key = api_key_for(host)
    bind(params, settings, fast_fail=True)
    engine = Engine(params, settings)
    try:
        app = create_app(params, settings, engine, key)
        log.info("ragloop api on http://%s:%d (model %s, index v%s)", host, port,
                 *engine.versions().values())  # fmt: skip
        uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=30)
    finally:
        engine.close()
