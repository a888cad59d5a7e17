"""Admission control in front of the app, as plain ASGI.

Before any work is done it refuses headers over `max_header_bytes` (431) and bodies over `max_body_bytes`
(413, or 411 for a chunked body with no declared length); then it reads the whole body (at most
`max_body_bytes`) within `body_read_timeout_s` (408 and the connection closed otherwise) and rejects a
JSON body that is not strict JSON (422: see `gateway.strict_json`). Only a request whose body is complete
takes a slot among the generation requests in flight (429 with Retry-After when none is free), so slow
senders hold sockets, never slots. While a generation request runs, the guard watches its connection:
a client that goes away cancels the handler (and with it the queued or running generation) and the
request is counted with status 499. It counts the generation requests it or the request validation
refuses (the handlers mark the ones `Gateway.generate` counts).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gateway.metrics import GatewayMetrics
from gateway.strict_json import json_body_error

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

GENERATION_PATHS = ("/generate", "/v1/images/generations")
CLIENT_CLOSED = 499  # nginx's status for "the client closed the connection before the response"

Refusal = tuple[int, Any, dict[str, str]]


class ClientGone(Exception):
    """The client closed the connection while its body was being read."""


class _ReadAhead:
    """The body read ahead by the guard, handed to the app as one message; after it, the client's disconnect
    (from the guard's watcher while one runs, else straight from the server)."""

    def __init__(self, body: bytes, receive: Receive):
        self.body, self.receive_next, self.delivered = body, receive, False
        self.gone = asyncio.Event()
        self.watched = False

    async def receive(self) -> Message:
        if not self.delivered:
            self.delivered = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        if self.watched:
            await self.gone.wait()
            return {"type": "http.disconnect"}
        return await self.receive_next()

    async def watch(self) -> None:
        """Return once the client has gone away (the one reader of the server's receive while it runs)."""
        self.watched = True
        while (await self.receive_next())["type"] != "http.disconnect":
            pass
        self.gone.set()


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: GatewayMetrics,
        max_body_bytes: int,
        max_in_flight: int,
        state: Any,
        body_read_timeout_s: float = 10.0,
        max_header_bytes: int = 16 * 1024,
    ):
        """`state.in_flight` (the app's state) holds the number of generation requests in flight."""
        self.app, self.metrics, self.state = app, metrics, state
        self.max_body_bytes, self.max_in_flight = max_body_bytes, max_in_flight
        self.body_read_timeout_s, self.max_header_bytes = body_read_timeout_s, max_header_bytes
        self.state.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        generating = scope["path"] in GENERATION_PATHS
        status = {"code": 500}

        async def send_counting(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            refusal = self._header_refusal(scope, headers)
            body = b""
            if refusal is None:
                try:
                    body = await self._read_body(receive)
                except ClientGone:
                    status["code"] = CLIENT_CLOSED
                    return
                except TimeoutError:
                    refusal = 408, f"the request body was not complete within {self.body_read_timeout_s:g} s", {
                        "connection": "close"}  # fmt: skip
                except _TooLarge:
                    refusal = 413, f"body larger than {self.max_body_bytes} bytes", {"connection": "close"}
            if refusal is None and (problem := json_body_error(headers.get("content-type"), body)) is not None:
                refusal = 422, [{"type": "json_invalid", "loc": ["body"], "msg": problem}], {}
            if refusal is None and generating and self.state.in_flight >= self.max_in_flight:
                refusal = 429, f"more than {self.max_in_flight} requests in flight; retry shortly", {"retry-after": "1"}
            if refusal is not None:
                await _json(send_counting, *refusal)
                return
            read_ahead = _ReadAhead(body, receive)
            self.state.in_flight += generating
            try:
                if generating:
                    await self._run_watched(scope, read_ahead, send_counting, status)
                else:
                    await self.app(scope, read_ahead.receive, send_counting)
            finally:
                self.state.in_flight -= generating
        finally:
            if generating and not scope.get("state", {}).get("counted", False):
                self.metrics.observe_request(
                    backend=None, reason=None, status=status["code"], duration_s=time.perf_counter() - started
                )

    def _header_refusal(self, scope: Scope, headers: dict[str, str]) -> Refusal | None:
        size = sum(len(k) + len(v) + 4 for k, v in scope.get("headers", []))
        if size > self.max_header_bytes:
            return 431, f"request headers larger than {self.max_header_bytes} bytes", {"connection": "close"}
        length = headers.get("content-length")
        if length is None and "chunked" in headers.get("transfer-encoding", "").lower():
            # a chunked body would be read whole before any size check: ask for a declared length instead
            return 411, f"send the body with a Content-Length header (at most {self.max_body_bytes} bytes)", {}
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return 413, f"body larger than {self.max_body_bytes} bytes", {}
        return None

    async def _read_body(self, receive: Receive) -> bytes:
        """The whole body within the deadline; `ClientGone`, `TimeoutError` or `_TooLarge` otherwise."""
        chunks, size = [], 0
        async with asyncio.timeout(self.body_read_timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise _TooLarge()
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)

    async def _run_watched(self, scope: Scope, read_ahead: _ReadAhead, send: Send, status: dict[str, int]) -> None:
        """Run the app; cancel it if the client goes away before the response is complete (then counted as 499
        unless a response had started). What the app does after its response (background tasks) is not cut."""
        answered = asyncio.Event()

        async def send_watched(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered.set()

        app = asyncio.create_task(self.app(scope, read_ahead.receive, send_watched))
        watcher = asyncio.create_task(read_ahead.watch())
        try:
            await asyncio.wait({app, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not app.done() and answered.is_set():  # the server reports "disconnect" once the response is out
                await app
        finally:
            if not app.done():  # the client went away (or this task itself is being cancelled)
                app.cancel()
                if status["code"] == 500:
                    status["code"] = CLIENT_CLOSED
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            with contextlib.suppress(asyncio.CancelledError):
                await app  # re-raises the app's own error, if it failed


class _TooLarge(Exception):
    pass


async def _json(send: Send, status: int, detail: Any, headers: dict[str, str]) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
