"""From a chat request's question to its answer on the engine (components/serving/engine.py), whole or streamed,
for components/serving/app.py: queued (503 when the queue is full), awaited within `api.request_timeout_s` (504),
then traced by the app's `trace` (the whole answer, after its last token, in either case).

A streamed answer's text leaves as the batch that answers it generates it: the engine's listener hands each piece
from the worker thread to the request's event loop. The response starts with the first piece, so a failure before
any text (no index, a full queue, the deadline) is still an HTTP error with its status; one after the first piece
is an error event in the stream. The trace is written by a task of its own that a client who goes away mid-stream
does not cancel: every answer generated is traced, under the id the response's `x-ragloop-trace-id` header named
before the first token (feedback can be sent with it as soon as the stream ends).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from typing import Any

from fastapi.responses import StreamingResponse

from components.records import Answered
from components.serving.protocol import ApiError, Chunks

Trace = Callable[[Answered, float, str], Awaitable[Any]]  # (answer, seconds left, trace id) -> TraceWritten
_END = object()  # in a stream's queue: the answer is complete (or failed), no more text comes


def submit(engine: Any, question: str, listener: Callable[[str], None] | None = None) -> Future[Answered]:
    from components.serving.engine import EngineBusyError

    try:
        return engine.submit(question, listener) if listener else engine.submit(question)
    except EngineBusyError as exc:
        raise ApiError(503, f"busy: {exc}; retry later", None, "overloaded", "server_error") from None


async def answered(future: Future[Answered], timeout: float, limit_s: float) -> Answered:
    """The engine's answer within `timeout` seconds (what is left of `limit_s`, api.request_timeout_s); ApiError
    504 after it, 503 while no index is published."""
    from components.knowledge.retrieval import IndexNotReadyError

    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), max(timeout, 0.001))
    except TimeoutError:
        raise ApiError(504, f"no answer within api.request_timeout_s={limit_s:g} s", None, "timeout",
                       "server_error") from None  # fmt: skip
    except IndexNotReadyError as exc:
        raise ApiError(503, str(exc), None, "index_not_ready", "server_error") from None


class Streams:
    """The streamed answers in flight: holds their trace tasks until they are done."""

    def __init__(self, timeout_s: float, trace: Trace) -> None:
        self.timeout_s, self.trace = timeout_s, trace
        self._tasks: set[asyncio.Task[Any]] = set()

    async def respond(self, engine: Any, question: str, chunks: Chunks, trace_id: str,
                      headers: dict[str, str]) -> StreamingResponse:  # fmt: skip
        """The streaming response (with `headers`), once the first piece of text (or the whole answer) is there;
        ApiError when the answer fails before any text. The answer is traced under `trace_id`."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[Any] = asyncio.Queue()
        deadline = time.monotonic() + self.timeout_s

        def listener(piece: str) -> None:  # on the engine's worker thread
            loop.call_soon_threadsafe(pieces.put_nowait, piece)

        future = submit(engine, question, listener)
        finished = asyncio.ensure_future(self._finish(future, deadline, pieces, trace_id))
        self._tasks.add(finished)
        finished.add_done_callback(self._forget)
        first = await pieces.get()
        if first is _END:
            await finished  # the answer failed before any text: its ApiError, with its status
        return StreamingResponse(self._events(chunks, first, pieces, finished), media_type="text/event-stream",
                                 headers=headers)  # fmt: skip

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here too: a client gone before the end never reads it

    async def _finish(self, future: Future[Answered], deadline: float, pieces: asyncio.Queue[Any],
                      trace_id: str) -> Any:  # fmt: skip
        """(answer, trace written). `_END` follows the answer's last piece: the listener's hand-offs were queued
        on the loop before the future's result."""
        try:
            answer = await answered(future, deadline - time.monotonic(), self.timeout_s)
        finally:
            pieces.put_nowait(_END)
        return answer, await self.trace(answer, max(1.0, deadline - time.monotonic()), trace_id)

    async def _events(self, chunks: Chunks, first: Any, pieces: asyncio.Queue[Any],
                      finished: asyncio.Future[Any]) -> AsyncIterator[bytes]:  # fmt: skip
        yield chunks.first()
        piece = first
        while piece is not _END:
            yield chunks.text(piece)
            piece = await pieces.get()
        try:
            answer, written = await asyncio.shield(finished)  # a client gone mid-stream does not cancel the trace
        except ApiError as exc:
            for event in chunks.error(exc.message, exc.code, exc.kind):
                yield event
            return
        except Exception as exc:
            for event in chunks.error(f"server error: {type(exc).__name__}: {exc}", None):
                yield event
            return
        for event in chunks.last(answer, written):
            yield event
