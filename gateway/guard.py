"""Admission control in front of the app, as plain ASGI (no per-request task or body copy).

Caps the request body (413, or 411 for a chunked body with no declared length) and the generation
requests in flight (429 with Retry-After), before any work is done, and counts the generation
requests it or the request validation refuses (the handlers mark the ones `Gateway.generate` counts).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gateway.metrics import GatewayMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

GENERATION_PATHS = ("/generate", "/v1/images/generations")


class RequestGuard:
    def __init__(self, app: ASGIApp, *, metrics: GatewayMetrics, max_body_bytes: int, max_in_flight: int, state: Any):
        """`state.in_flight` (the app's state) holds the number of generation requests in flight."""
        self.app, self.metrics, self.state = app, metrics, state
        self.max_body_bytes, self.max_in_flight = max_body_bytes, max_in_flight
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

        refusal = self._refusal(scope, generating)
        try:
            if refusal is not None:
                await _json(send_counting, *refusal)
                return
            self.state.in_flight += generating
            try:
                await self.app(scope, receive, send_counting)
            finally:
                self.state.in_flight -= generating
        finally:
            if generating and not scope.get("state", {}).get("counted", False):
                self.metrics.observe_request(
                    backend=None, reason=None, status=status["code"], duration_s=time.perf_counter() - started
                )

    def _refusal(self, scope: Scope, generating: bool) -> tuple[int, str, dict[str, str]] | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        length = headers.get("content-length")
        if length is None and "chunked" in headers.get("transfer-encoding", "").lower():
            # a chunked body would be read whole before any size check: ask for a declared length instead
            return 411, f"send the body with a Content-Length header (at most {self.max_body_bytes} bytes)", {}
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return 413, f"body larger than {self.max_body_bytes} bytes", {}
        if generating and self.state.in_flight >= self.max_in_flight:
            return 429, f"more than {self.max_in_flight} requests in flight; retry shortly", {"retry-after": "1"}
        return None


async def _json(send: Send, status: int, detail: str, headers: dict[str, str]) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
