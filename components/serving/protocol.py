"""The OpenAI wire format `ragloop api` speaks (components/serving/app.py): the request bodies it reads and their
checks, and the bodies it answers with (a chat completion, its server-sent chunks, a model card, an error).

Pure: no FastAPI routes, no engine, no tracking store; the app turns an `ApiError` into its JSON error body."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
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
        },
    }


async def chunks(body: dict[str, Any]) -> AsyncIterator[bytes]:
    """`stream: true`: the whole answer as one server-sent chunk, then the closing chunk, then `[DONE]`."""
    head = {k: body[k] for k in ("id", "created", "model")}
    message = body["choices"][0]["message"]
    first = {**head, "object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": message, "finish_reason": None}]}  # fmt: skip
    last = {**head, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": body["usage"], "ragloop": body["ragloop"]}  # fmt: skip
    for chunk in (first, last):
        yield f"data: {json.dumps(chunk)}\n\n".encode()
    yield b"data: [DONE]\n\n"


def model_card(model_id: str, created: int, engine: Any) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "ragloop",
            "ragloop": engine.versions()}  # fmt: skip


def error_body(message: str, param: str | None, code: str | None = None,
               kind: str = "invalid_request_error") -> dict[str, Any]:  # fmt: skip
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
