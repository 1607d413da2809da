"""`ragloop api`: the assistant behind an OpenAI-compatible HTTP API (FastAPI + uvicorn), every answer traced.

- `POST /v1/chat/completions`, `GET /v1/models[/{id}]`: the OpenAI shapes (the official `openai` client works
  unchanged; `stream: true` gets the whole answer as one server-sent chunk, then `[DONE]`). The question is the
  last user message. Each answer carries `ragloop: {trace_id, model_version, index_version, sources, cited,
  intent, answer, checks, traced}` (the openai client keeps it in `model_extra`) and the header
  `x-ragloop-trace-id`.
- `POST /v1/feedback {trace_id, value, comment?, correction?, user?}`: 200 logged, 202 queued (the tracking store is
  unreachable: the feedback is spooled on disk and delivered later), 404 unknown trace.
- `GET /health` (no key needed): model and index version, whether the tracking store answers, the spool depth.

Bad requests get a 4xx whose `error.param` names the wrong field; a failure on the server a 5xx with a message, and
an answer that is not ready within `api.request_timeout_s` a 504. Binding anything but loopback needs an API key
(RAGLOOP_API_KEY), then required on every /v1 call as `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from components.config import Params, Settings

API_KEY_ENV = "RAGLOOP_API_KEY"
TRACE_HEADER = "x-ragloop-trace-id"
# MLflow 3.17.2 defines no response header for a trace id (MLflow PR #20387 proposes one); ours is the only one.
log = logging.getLogger("ragloop.api")


class ApiConfigError(RuntimeError):
    """The server cannot start as configured (a non-loopback bind without an API key)."""


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


# --- request bodies --------------------------------------------------------------------------------------------


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[_Part] | None = None


class ChatRequest(BaseModel):
    """The fields ragloop reads; the other OpenAI parameters (temperature, max_tokens, ...) are accepted and
    ignored: decoding is greedy and grounded by design."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[_Message]
    stream: bool = False
    n: int = 1
    user: str | None = None


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trace_id: str = Field(min_length=1, max_length=200)
    value: Any
    comment: str | None = None
    correction: str | None = None
    user: str | None = Field(None, max_length=200)


# --- the rules -------------------------------------------------------------------------------------------------


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


def question_of(req: ChatRequest, params: Params) -> str:
    """The last user message's text, after the request's limits; ApiError naming the field otherwise."""
    limits = params.api
    if req.model != limits.model_id:
        raise ApiError(404, f"model: unknown model {req.model!r}; this server serves {limits.model_id!r} "
                       "(GET /v1/models)", "model", "model_not_found")  # fmt: skip
    if not req.messages:
        raise ApiError(400, "messages: must hold at least one message", "messages")
    if len(req.messages) > limits.max_messages:
        raise ApiError(400, f"messages: {len(req.messages)} messages, at most {limits.max_messages} "
                       "(api.max_messages)", "messages")  # fmt: skip
    if req.n != 1:
        raise ApiError(400, f"n: only one choice per request is generated, got n={req.n}", "n")
    texts = [_text(m) for m in req.messages]
    total = sum(len(t) for t in texts)
    if total > limits.max_input_chars:
        raise ApiError(400, f"messages: {total} characters of content, at most {limits.max_input_chars} "
                       "(api.max_input_chars)", "messages", "context_length_exceeded")  # fmt: skip
    users = [i for i, m in enumerate(req.messages) if m.role == "user"]
    if not users:
        raise ApiError(400, "messages: no message with role 'user' (the question is the last user message)",
                       "messages")  # fmt: skip
    question = texts[users[-1]].strip()
    if not question:
        raise ApiError(400, f"messages[{users[-1]}].content: the user message is empty",
                       f"messages[{users[-1]}].content")  # fmt: skip
    return question


def _text(message: _Message) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    return "\n".join(p.text or "" for p in message.content if p.type == "text")


# --- the app ---------------------------------------------------------------------------------------------------


def create_app(params: Params, settings: Settings, engine: Any, api_key: str | None) -> FastAPI:
    """The FastAPI app around a loaded `components.serving.engine.Engine`."""
    from components.tracking import traces

    limits = params.api
    created = int(time.time())
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
            worker.join(timeout=30)

    app = FastAPI(title="ragloop", version="0.1.0", lifespan=lifespan)

    def authorised(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send `Authorization: Bearer <key>`", None,
                           "invalid_api_key")  # fmt: skip

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.param, exc.code, exc.kind)

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

    @app.get("/health")
    async def health() -> dict[str, Any]:
        reachable = await asyncio.to_thread(traces.store_reachable, params, settings)
        return {"status": "ok", **engine.status(), "tracking_store_reachable": reachable,
                "spool_depth": traces.spool_depth(params)}  # fmt: skip

    @app.get("/v1/models", dependencies=[Depends(authorised)])
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(limits.model_id, created, engine)]}

    @app.get("/v1/models/{model_id}", dependencies=[Depends(authorised)])
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != limits.model_id:
            raise ApiError(404, f"model: unknown model {model_id!r}", "model", "model_not_found")
        return _model_card(model_id, created, engine)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorised)], response_model=None)
    async def chat(req: ChatRequest) -> JSONResponse | StreamingResponse:
        from components.knowledge.retrieval import IndexNotReadyError
        from components.serving.engine import EngineBusyError

        question = question_of(req, params)
        deadline = time.monotonic() + limits.request_timeout_s
        try:
            future = engine.submit(question)
        except EngineBusyError as exc:
            raise ApiError(503, f"busy: {exc}; retry later", None, "overloaded", "server_error") from None
        try:
            answered = await asyncio.wait_for(asyncio.wrap_future(future), limits.request_timeout_s)
        except TimeoutError:
            raise ApiError(504, f"no answer within api.request_timeout_s={limits.request_timeout_s:g} s", None,
                           "timeout", "server_error") from None  # fmt: skip
        except IndexNotReadyError as exc:
            raise ApiError(503, str(exc), None, "index_not_ready", "server_error") from None
        written = await _trace(params, settings, answered, max(1.0, deadline - time.monotonic()))
        body = _completion(req.model, answered, written)
        headers = {TRACE_HEADER: written.trace_id} if written.trace_id else {}
        if req.stream:
            return StreamingResponse(_chunks(body), media_type="text/event-stream", headers=headers)
        return JSONResponse(body, headers=headers)

    @app.post("/v1/feedback", dependencies=[Depends(authorised)])
    async def feedback(req: FeedbackRequest) -> JSONResponse:
        for name in ("comment", "correction"):
            text = getattr(req, name)
            if text is not None and len(text) > limits.max_feedback_chars:
                raise ApiError(400, f"{name}: {len(text)} characters, at most {limits.max_feedback_chars} "
                               "(api.max_feedback_chars)", name)  # fmt: skip
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

    return app


async def _trace(params: Params, settings: Settings, answered: Any, timeout: float) -> Any:
    """The answer's trace, written before the answer is returned (so feedback can follow at once). A store that
    fails or is too slow costs the answer its trace, never the answer."""
    from components.tracking.traces import keep_trace, write_trace

    try:
        written = await asyncio.wait_for(asyncio.to_thread(write_trace, params, settings, answered), timeout)
        if written.stored:
            return written
        trace_id, error = written.trace_id, written.error
    except Exception as exc:
        trace_id, error = None, f"{type(exc).__name__}: {exc}"
    log.warning("tracking store unavailable (%s); the answer's trace is queued", error)
    return await asyncio.to_thread(keep_trace, params, answered, trace_id)


def _completion(model: str, answered: Any, written: Any) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{(written.trace_id or '').removeprefix('tr-') or uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answered.raw},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": answered.tokens_in,
            "completion_tokens": answered.tokens_out,
            "total_tokens": answered.tokens_in + answered.tokens_out,
        },
        "ragloop": {
            "trace_id": written.trace_id or None,
            "traced": written.stored,
            "trace_queued": written.queued,
            "model_version": answered.model_version,
            "index_version": answered.index_version,
            "intent": answered.intent,
            "answer": answered.answer,
            "cited": list(answered.cited),
            "sources": answered.sources(),
            "checks": answered.checks,
            "latency_ms": answered.latency_ms,
        },
    }


async def _chunks(body: dict[str, Any]) -> AsyncIterator[bytes]:
    import json

    head = {k: body[k] for k in ("id", "created", "model")}
    message = body["choices"][0]["message"]
    first = {**head, "object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": message, "finish_reason": None}]}  # fmt: skip
    last = {**head, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": body["usage"], "ragloop": body["ragloop"]}  # fmt: skip
    for chunk in (first, last):
        yield f"data: {json.dumps(chunk)}\n\n".encode()
    yield b"data: [DONE]\n\n"


def _model_card(model_id: str, created: int, engine: Any) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "ragloop",
            "ragloop": engine.versions()}  # fmt: skip


def _error(status: int, message: str, param: str | None, code: str | None = None,
           kind: str = "invalid_request_error") -> JSONResponse:  # fmt: skip
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


def _redeliver(params: Params, settings: Settings, stop: threading.Event,
               deliver: Callable[..., dict[str, Any]] | None = None) -> None:  # fmt: skip
    """At start-up, then every api.spool_retry_s while feedback is queued: deliver it (one process at a time)."""
    from components.tracking import traces

    send = deliver or traces.deliver_spool
    while True:
        if traces.spool_depth(params):
            try:
                result = send(params, settings, wait=False)
                if result.get("delivered") or result.get("rejected"):
                    log.info("queued feedback: %s", result)
            except Exception:
                log.exception("delivering queued feedback failed")
        if stop.wait(params.api.spool_retry_s):
            return


def run_api(params: Params, settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Load the engine, then serve until SIGINT/SIGTERM. ApiConfigError before anything loads when the bind
    needs a key that is not set."""
    import uvicorn

    from components.serving.engine import Engine
    from components.tracking.traces import bind

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
