"""An ASGI middleware that refuses a request body over `api.max_body_bytes` with a 413 before anything parses it.

A declared `Content-Length` over the limit is refused at once, unread. A body without one (chunked) is read here,
counting bytes, and refused as soon as it passes the limit; one within it is handed on unchanged, so nothing
downstream ever holds more than the limit.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from components.serving.protocol import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    def __init__(self, app: Asgi, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await _refuse(send, 400, "Content-Length: not a number of bytes", None)
            elif int(declared) > self.max_bytes:
                await _refuse(send, 413, self._message(f"{int(declared)} bytes"), "request_too_large")
            else:
                await self.app(scope, receive, send)
            return
        body = await self._read(receive)
        if body is None:
            await _refuse(send, 413, self._message("more"), "request_too_large")
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, or None once it passes the limit."""
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: the app sees the disconnect
                return b"".join(parts)
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > self.max_bytes:
                return None
            if not message.get("more_body", False):
                return b"".join(parts)

    def _message(self, size: str) -> str:
        return f"body: {size}, at most {self.max_bytes} bytes (api.max_body_bytes)"


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


async def _refuse(send: Send, status: int, message: str, code: str | None) -> None:
    payload = json.dumps(error_body(message, None, code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
               (b"connection", b"close")]  # fmt: skip
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
