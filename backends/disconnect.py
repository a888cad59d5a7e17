"""Stop work nobody waits for: run a coroutine while watching the HTTP client, cancel it when the client goes.

Starlette does not cancel an endpoint when its client disconnects: a generation would run to the end
for a caller that timed out long ago (and its retry would queue behind it). `until_disconnected` polls
`request.is_disconnected()` while the work runs and cancels the work when the client has gone; the
backend then drops the request or stops its pipeline between denoising steps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Protocol, TypeVar

T = TypeVar("T")

POLL_S = 0.1


class ClientDisconnected(Exception):
    """The HTTP client went away before the work was done; the work was cancelled."""


class _Request(Protocol):
    async def is_disconnected(self) -> bool: ...


async def until_disconnected(request: _Request, work: Awaitable[T], poll_s: float = POLL_S) -> T:
    """The result of `work`, or `ClientDisconnected` once the client has gone (`work` is then cancelled)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientDisconnected()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
