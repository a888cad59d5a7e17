"""Webhooks signed with HMAC-SHA256 over `<timestamp>.<body>` (the scheme Stripe and Svix use).

Headers of every delivery (POST, JSON body = GET /v1/jobs/{id}):

    X-RouteT2I-Webhook-Id   the job id (the same on every retry: deduplicate on it)
    X-RouteT2I-Attempt      1, 2, ... (retries back off exponentially)
    X-RouteT2I-Timestamp    Unix seconds when this attempt was signed
    X-RouteT2I-Signature    sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>

A receiver recomputes the HMAC over the raw body it received, compares in constant time and rejects
timestamps more than a few minutes old (replays). `verify` below is that check.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import httpx

ID_HEADER, ATTEMPT_HEADER = "X-RouteT2I-Webhook-Id", "X-RouteT2I-Attempt"
TIMESTAMP_HEADER, SIGNATURE_HEADER = "X-RouteT2I-Timestamp", "X-RouteT2I-Signature"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, tolerance_s: float = 300) -> bool:
    """True when `signature` is ours for this timestamp and body, and the timestamp is recent."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(time.time() - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


async def deliver(
    client: httpx.AsyncClient, url: str, payload: dict, secret: str, *, job_id: str, attempt: int
) -> dict:
    """One signed POST; the attempt as recorded in the job: time, HTTP status or error, ok."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    ts = int(time.time())
    headers = {
        "content-type": "application/json", ID_HEADER: job_id, ATTEMPT_HEADER: str(attempt),
        TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: sign(secret, ts, body),
    }  # fmt: skip
    try:
        response = await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return {"at": time.time(), "error": type(exc).__name__, "ok": False}
    return {"at": time.time(), "status_code": response.status_code, "ok": 200 <= response.status_code < 300}
