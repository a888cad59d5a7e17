"""The `Idempotency-Key` header on POST /generate and POST /v1/jobs (the work is in gateway/idempotency.py)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.responses import JSONResponse

from gateway.idempotency import MAX_KEY_LENGTH, Idempotency, IdempotencyBusy, IdempotencyMismatch, Stored
from gateway.keys import ApiKey

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
KEPT_HEADERS = ("x-route-backend", "x-route-reason", "location")


async def idempotent(
    request: Request,
    client: ApiKey | None,
    payload: Any,
    produce: Callable[[], Awaitable[JSONResponse]],
    *,
    pending_s: float | None = None,
) -> Response:
    """`produce()` once per (client, path, Idempotency-Key, body); without the header, simply `produce()`."""
    key = request.headers.get(HEADER)
    if key is None:
        return await produce()
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise HTTPException(400, f"{HEADER} must be 1 to {MAX_KEY_LENGTH} characters")
    idempotency: Idempotency = request.app.state.idempotency

    async def run() -> Stored:
        response = await produce()
        headers = {k: v for k, v in response.headers.items() if k in KEPT_HEADERS}
        return Stored(response.status_code, json.loads(response.body), headers)

    scope = f"{client.name if client is not None else '-'}:{request.url.path}"
    try:
        stored, replayed = await idempotency.once(scope, key, payload, run, pending_s=pending_s)
    except IdempotencyMismatch:
        raise HTTPException(422, f"this {HEADER} was used with another body") from None
    except IdempotencyBusy:
        raise HTTPException(409, f"the first request with this {HEADER} is still running",
                            headers={"Retry-After": "5"}) from None  # fmt: skip
    response = JSONResponse(stored.body, status_code=stored.status, headers=stored.headers)
    if replayed:
        response.headers[REPLAYED] = "true"
    return response
