"""The OpenAI wire format `ragloop api` speaks (components/serving/app.py): the request bodies it reads and their
checks, and the bodies it answers with (a chat completion, its server-sent chunks, a model card, an error).

Pure: no FastAPI routes, no engine, no tracking store; the app turns an `ApiError` into its JSON error body."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from components.config import Params


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


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields ragloop reads; the other OpenAI parameters (temperature, max_tokens, ...) are accepted and
    ignored: decoding is greedy and grounded by design."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[_Message]
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    user: str | None = None


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trace_id: str = Field(min_length=1, max_length=200)
    value: Any
    comment: str | None = None
    correction: str | None = None
    user: str | None = Field(None, max_length=200)


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


def check_feedback_text(req: FeedbackRequest, params: Params) -> None:
    """ApiError naming the field when the comment or the correction is longer than api.max_feedback_chars."""
    limit = params.api.max_feedback_chars
    for name in ("comment", "correction"):
        text = getattr(req, name)
        if text is not None and len(text) > limit:
            raise ApiError(400, f"{name}: {len(text)} characters, at most {limit} (api.max_feedback_chars)", name)


# --- response bodies -------------------------------------------------------------------------------------------


def completion(model: str, answered: Any, written: Any) -> dict[str, Any]:
    """The chat completion of an answer (`answered`: the engine's Answered) and its trace (`written`)."""
    return {
        "id": completion_id(written.trace_id),
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
        "usage": usage(answered),
        "ragloop": extension(answered, written),
    }


def usage(answered: Any) -> dict[str, int]:
    return {"prompt_tokens": answered.tokens_in, "completion_tokens": answered.tokens_out,
            "total_tokens": answered.tokens_in + answered.tokens_out}  # fmt: skip


def extension(answered: Any, written: Any) -> dict[str, Any]:
    """The `ragloop` field: the answer's trace, versions, parse and checks."""
    return {
        "trace_id": written.trace_id or None,
        "traced": written.stored or written.queued,  # in the store, or kept on disk on its way there
        "trace_queued": written.queued,
        "model_version": answered.model_version,
        "index_version": answered.index_version,
        "intent": answered.intent,
        "answer": answered.answer,
        "cited": list(answered.cited),
        "sources": answered.sources(),
        "checks": answered.checks,
        "latency_ms": answered.latency_ms,
    }


def completion_id(trace_id: str | None) -> str:
    """A completion's id, whole or streamed: its trace id's hex digits (a new one when it has no trace)."""
    return f"chatcmpl-{(trace_id or '').removeprefix('tr-') or uuid.uuid4().hex}"


class Chunks:
    """`stream: true`: the server-sent events of one streamed completion, in OpenAI's chunk format. The first
    delta carries the role, each later one the next piece of text as it is generated; the last has
    `finish_reason` and the `ragloop` field (the trace is written once the whole answer is); with
    `stream_options.include_usage` every chunk has `usage: null` and a final chunk with no choices the usage;
    then `data: [DONE]`."""

    DONE = b"data: [DONE]\n\n"

    def __init__(self, model: str, include_usage: bool, trace_id: str | None = None) -> None:
        self.head = {"id": completion_id(trace_id),
                     "object": "chat.completion.chunk", "created": int(time.time()), "model": model}  # fmt: skip
        self.include_usage = include_usage

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None, **more: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._event({**self.head, "choices": [choice], **more})

    def first(self) -> bytes:
        return self.delta({"role": "assistant", "content": ""})

    def text(self, piece: str) -> bytes:
        return self.delta({"content": piece})

    def last(self, answered: Any, written: Any) -> list[bytes]:
        events = [self.delta({}, "stop", ragloop=extension(answered, written))]
        if self.include_usage:
            events.append(self._event({**self.head, "choices": [], "usage": usage(answered)}))
        return [*events, self.DONE]

    def error(self, message: str, code: str | None, kind: str = "server_error") -> list[bytes]:
        """A failure after the stream began (its status is already 200): an error event, as OpenAI sends one
        (the openai client raises it as an APIError), then [DONE]."""
        return [f"data: {json.dumps(error_body(message, None, code, kind))}\n\n".encode(), self.DONE]

    def _event(self, chunk: dict[str, Any]) -> bytes:
        if self.include_usage:
            chunk.setdefault("usage", None)
        return f"data: {json.dumps(chunk)}\n\n".encode()


def model_card(model_id: str, created: int, engine: Any) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "ragloop",
            "ragloop": engine.versions()}  # fmt: skip


def error_body(message: str, param: str | None, code: str | None = None,
               kind: str = "invalid_request_error") -> dict[str, Any]:  # fmt: skip
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
