"""A job's record and every change it goes through, as pure functions on one dict.

The stores (store.py) apply these inside one atomic step (a SQLite write transaction, or a Redis WATCH/MULTI
transaction), so the rules live once for both:

    queued ──claim──▶ running ──complete──▶ succeeded | failed
      │                  │  └─ lease expired (its worker died) ─▶ claimable again (by any worker)
      └──cancel──▶ canceled ◀──cancel──┘   (a result that arrives after a cancel is dropped)

Exactly once: `complete` writes a result only for the worker that holds the claim and only if no result is
there yet; the queue message is acknowledged after that write, and a redelivered message for a job that
is no longer claimable is acknowledged without running it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "canceled")
Job = dict[str, Any]


def new_job(body: dict, *, client: str | None, webhook_url: str | None, now: float | None = None) -> Job:
    now = time.time() if now is None else now
    return {
        "id": uuid.uuid4().hex, "status": "queued", "body": body, "client": client, "created_at": now,
        "updated_at": now, "kicked_at": now, "owner": None, "lease_until": 0.0, "runs": 0, "result": None,
        "error": None, "expires_at": None, "webhook": None if webhook_url is None else {
            "url": webhook_url, "state": "waiting", "attempts": [], "next_at": None,
        },
    }  # fmt: skip


def is_active(job: Job) -> bool:
    """Still needs a worker: to run it, or to deliver its webhook."""
    hook = job.get("webhook")
    return job["status"] in ACTIVE or (hook is not None and hook["state"] == "pending")


def claimable(job: Job, now: float) -> bool:
    return job["status"] == "queued" or (job["status"] == "running" and job["lease_until"] < now)


def claim(job: Job, owner: str, now: float, lease_s: float) -> bool:
    """Take the job for `owner` if it is queued, or running on a worker whose lease ran out."""
    if not claimable(job, now):
        return False
    job.update(status="running", owner=owner, lease_until=now + lease_s, runs=job["runs"] + 1, updated_at=now)
    return True


def heartbeat(job: Job, owner: str, now: float, lease_s: float) -> bool:
    """Extend the lease while the job runs; False when the job is no longer this worker's."""
    if job["status"] != "running" or job["owner"] != owner:
        return False
    job["lease_until"] = now + lease_s
    return True


def _finish(job: Job, status: str, now: float, ttl_s: float) -> None:
    job.update(status=status, updated_at=now, expires_at=now + ttl_s, lease_until=0.0)
    hook = job.get("webhook")
    if hook is not None and hook["state"] == "waiting":
        hook.update(state="pending", next_at=now)


def complete(job: Job, owner: str, now: float, ttl_s: float, *, result: Any = None, error: Any = None) -> bool:
    """Write the outcome, once: only the claim holder, only while no outcome is there (canceled: dropped)."""
    if job["status"] != "running" or job["owner"] != owner or job["result"] is not None:
        return False
    job["result"], job["error"] = result, error
    _finish(job, "succeeded" if error is None else "failed", now, ttl_s)
    return True


def requeue(job: Job, owner: str, now: float) -> bool:
    """Give a job back to the queue (a transient failure, e.g. the edge was busy)."""
    if job["status"] != "running" or job["owner"] != owner:
        return False
    job.update(status="queued", owner=None, lease_until=0.0, updated_at=now, kicked_at=now)
    return True


def cancel(job: Job, now: float, ttl_s: float) -> str:
    """'canceled' (a queued job never runs; a running one's result is dropped) or the finished status it has."""
    if job["status"] in FINISHED:
        return job["status"]
    _finish(job, "canceled", now, ttl_s)
    return "canceled"


def claim_webhook(job: Job, now: float, lease_s: float) -> bool:
    """Take the next delivery attempt if one is due (holding it for `lease_s` so no other worker sends it)."""
    hook = job.get("webhook")
    if hook is None or hook["state"] != "pending" or hook["next_at"] > now:
        return False
    hook["next_at"] = now + lease_s
    return True


def record_webhook(job: Job, attempt: dict, now: float, *, max_attempts: int, backoff_s: float) -> None:
    """Record one delivery attempt; schedule the next with exponential backoff, or stop."""
    hook = job["webhook"]
    hook["attempts"].append(attempt)
    if attempt.get("ok"):
        hook.update(state="delivered", next_at=None)
    elif len(hook["attempts"]) >= max_attempts:
        hook.update(state="failed", next_at=None)
    else:
        hook["next_at"] = now + backoff_s * 2 ** (len(hook["attempts"]) - 1)


def view(job: Job, base_url: str = "") -> dict:
    """What GET /v1/jobs/{id} answers (and the webhook's body): never the request body (prompts are private)."""
    out: dict[str, Any] = {
        "id": job["id"], "status": job["status"], "created_at": job["created_at"], "updated_at": job["updated_at"],
        "runs": job["runs"], "status_url": f"{base_url}/v1/jobs/{job['id']}",
    }  # fmt: skip
    if job["status"] == "succeeded":
        out["result"] = job["result"]
    elif job["status"] == "failed":
        out["error"] = job["error"]
    hook = job.get("webhook")
    if hook is not None:
        out["webhook"] = {"url": hook["url"], "state": hook["state"], "attempts": hook["attempts"]}
    return out
