"""`JobRunner`: accept jobs, run them on this replica's workers, deliver their webhooks, recover lost ones.

One per gateway process, started by the app's lifespan. Three loops:
- consume: take a job id from the queue, claim the job (atomic, with a lease), run it, write its outcome,
  then acknowledge the message; a heartbeat renews the lease while it runs;
- janitor: a job whose lease ran out (its worker died) or whose message was lost is sent to the queue
  again, due webhook retries are sent, expired jobs are purged;
- webhooks: signed deliveries, retried with exponential backoff, every attempt recorded in the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import httpx

from gateway.jobs import model
from gateway.jobs.queue import Ack, JobQueue
from gateway.jobs.store import JobStore
from gateway.jobs.webhooks import deliver

log = logging.getLogger("routet2i.jobs")


class JobFailed(Exception):
    """What `execute` raises for a job that cannot be served: `error` goes in the job; `retry` re-queues it."""

    def __init__(self, error: dict, *, retry: bool = False):
        super().__init__(error.get("detail", "failed"))
        self.error, self.retry = error, retry


Execute = Callable[[dict, str | None], Awaitable[Any]]


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        queue: JobQueue,
        execute: Execute,
        *,
        concurrency: int = 4,
        lease_s: float = 30.0,
        ttl_s: float = 86_400.0,
        requeue_s: float | None = None,
        max_runs: int = 5,
        webhook_secret: str | None = None,
        webhook_max_attempts: int = 6,
        webhook_backoff_s: float = 1.0,
        webhook_timeout_s: float = 10.0,
        janitor_s: float | None = None,
    ):
        self.store, self.queue, self.execute = store, queue, execute
        self.concurrency, self.lease_s, self.ttl_s, self.max_runs = concurrency, lease_s, ttl_s, max_runs
        self.requeue_s = requeue_s if requeue_s is not None else 3 * lease_s
        self.webhook_secret = webhook_secret
        self.webhook_max_attempts, self.webhook_backoff_s = webhook_max_attempts, webhook_backoff_s
        self.webhook_timeout_s = webhook_timeout_s
        self.janitor_s = janitor_s if janitor_s is not None else max(0.2, min(2.0, lease_s / 4))
        self.owner = uuid.uuid4().hex  # this process's claims
        self._tasks: list[asyncio.Task] = []
        self._running: set[asyncio.Task] = set()
        self._claimed: set[str] = set()  # jobs this process is running
        self._http: httpx.AsyncClient | None = None

    # ------------------------------------------------------------ API

    async def submit(self, body: dict, *, client: str | None, webhook_url: str | None) -> model.Job:
        job = model.new_job(body, client=client, webhook_url=webhook_url)
        await asyncio.to_thread(self.store.create, job)  # persisted before it is acknowledged to the client
        await self._kick(job["id"])
        return job

    async def get(self, job_id: str) -> model.Job | None:
        return await asyncio.to_thread(self.store.get, job_id)

    async def cancel(self, job_id: str) -> str | None:
        """'canceled', the finished status the job already has, or None for no such job."""
        outcome = await asyncio.to_thread(
            self.store.update, job_id, partial(model.cancel, now=time.time(), ttl_s=self.ttl_s)
        )
        if outcome == "canceled":
            self._spawn(self._webhook(job_id))
        return outcome

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        try:
            await self.queue.start()
        except Exception as exc:  # Redis away at start: serve anyway, the consumer retries
            log.warning("jobs: queue not ready (%s: %s); retrying in the background", type(exc).__name__, exc)
        self._http = httpx.AsyncClient(timeout=self.webhook_timeout_s, follow_redirects=False)
        self._tasks = [asyncio.create_task(self._consume()), asyncio.create_task(self._janitor())]

    async def stop(self) -> None:
        for task in [*self._tasks, *self._running]:
            task.cancel()
        for task in [*self._tasks, *self._running]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for job_id in list(self._claimed):  # a graceful stop gives its jobs back at once (no lease to wait out)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.update, job_id, partial(model.requeue, owner=self.owner,
                                                                           now=time.time()))  # fmt: skip
        await self.queue.close()
        if self._http is not None:
            await self._http.aclose()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    async def _kick(self, job_id: str) -> None:
        try:
            await self.queue.kick(job_id)
        except Exception as exc:  # the job is stored: the janitor sends it again
            log.warning("jobs: could not queue %s (%s); the janitor will retry", job_id, type(exc).__name__)

    # ------------------------------------------------------------ running

    async def _consume(self) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        while True:
            try:
                await self._consume_from(slots)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store or the queue failed: keep this replica's worker alive
                log.warning("jobs: the consumer failed (%s: %s); restarting it", type(exc).__name__, exc)
                await asyncio.sleep(1.0)

    async def _consume_from(self, slots: asyncio.Semaphore) -> None:
        async for job_id, ack in self.queue.messages():
            await slots.acquire()
            try:
                claimed = await asyncio.to_thread(
                    self.store.update, job_id,
                    partial(model.claim, owner=self.owner, now=time.time(), lease_s=self.lease_s),
                )  # fmt: skip
            except Exception as exc:
                slots.release()
                log.warning("jobs: claim of %s failed (%s); it stays queued", job_id, type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            if not claimed:  # done, canceled or running elsewhere: this message is a duplicate
                slots.release()
                await _acknowledge(ack)
                continue
            task = self._spawn(self._run(job_id, ack))
            task.add_done_callback(lambda _: slots.release())

    async def _run(self, job_id: str, ack: Ack) -> None:
        self._claimed.add(job_id)
        try:
            await self._run_claimed(job_id, ack)
        except asyncio.CancelledError:
            raise  # stopping: the job stays in `_claimed`, and `stop` gives it back
        except BaseException:
            self._claimed.discard(job_id)
            raise
        self._claimed.discard(job_id)

    async def _run_claimed(self, job_id: str, ack: Ack) -> None:
        job = await asyncio.to_thread(self.store.get, job_id)
        if job is None:
            await _acknowledge(ack)
            return
        beat = asyncio.create_task(self._heartbeat(job_id))
        outcome: dict[str, Any]
        try:
            outcome = {"result": await self.execute(job["body"], job["client"])}
        except JobFailed as exc:
            if exc.retry and job["runs"] < self.max_runs:
                await asyncio.to_thread(self.store.update, job_id, partial(model.requeue, owner=self.owner,
                                                                           now=time.time()))  # fmt: skip
                await _acknowledge(ack)
                await asyncio.sleep(min(5.0, 0.2 * job["runs"]))
                await self._kick(job_id)
                return
            outcome = {"error": exc.error}
        except Exception as exc:
            log.exception("jobs: job %s failed", job_id)
            outcome = {"error": {"status": 500, "detail": f"internal error: {type(exc).__name__}"}}
        finally:
            beat.cancel()
        written = await asyncio.to_thread(
            self.store.update, job_id,
            partial(model.complete, owner=self.owner, now=time.time(), ttl_s=self.ttl_s, **outcome),
        )  # fmt: skip
        await _acknowledge(ack)  # only now: a worker killed before this leaves the message to be redelivered
        if written:
            await self._webhook(job_id)

    async def _heartbeat(self, job_id: str) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(
                    self.store.update, job_id,
                    partial(model.heartbeat, owner=self.owner, now=time.time(), lease_s=self.lease_s),
                )  # fmt: skip

    # ------------------------------------------------------------ webhooks

    async def _webhook(self, job_id: str) -> None:
        if self._http is None or self.webhook_secret is None:
            return
        now = time.time()
        if not await asyncio.to_thread(
            self.store.update, job_id, partial(model.claim_webhook, now=now, lease_s=self.webhook_timeout_s + 5)
        ):
            return
        job = await asyncio.to_thread(self.store.get, job_id)
        if job is None:
            return
        hook = job["webhook"]
        attempt = await deliver(
            self._http, hook["url"], model.view(job), self.webhook_secret, job_id=job_id,
            attempt=len(hook["attempts"]) + 1,
        )  # fmt: skip
        await asyncio.to_thread(
            self.store.update, job_id,
            partial(model.record_webhook, attempt=attempt, now=time.time(), max_attempts=self.webhook_max_attempts,
                    backoff_s=self.webhook_backoff_s),
        )  # fmt: skip

    # ------------------------------------------------------------ recovery

    async def _janitor(self) -> None:
        while True:
            await asyncio.sleep(self.janitor_s)
            try:
                await self._sweep(time.time())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("jobs: janitor pass failed (%s: %s)", type(exc).__name__, exc)

    async def _sweep(self, now: float) -> None:
        jobs = await asyncio.to_thread(self.store.active_jobs)
        for job in jobs:
            lost = job["status"] == "running" and job["lease_until"] < now  # its worker died
            stale = job["status"] == "queued" and job["kicked_at"] < now - self.requeue_s  # its message was lost
            if (lost or stale) and await asyncio.to_thread(
                self.store.update, job["id"], partial(_rekick, now=now, after=self.requeue_s)
            ):
                await self._kick(job["id"])
            hook = job.get("webhook")
            if hook is not None and hook["state"] == "pending" and hook["next_at"] <= now:
                self._spawn(self._webhook(job["id"]))
        await asyncio.to_thread(self.store.purge, now)


async def _acknowledge(ack: Ack) -> None:
    """Acknowledge a message; if that fails the message comes back and is dropped then (the job has moved on)."""
    try:
        await ack()
    except Exception as exc:
        log.warning("jobs: acknowledging a message failed (%s); it will be redelivered and dropped", type(exc).__name__)


def _rekick(job: model.Job, now: float, after: float) -> bool:
    """Mark a lost or stale job as sent again (once per `after` seconds, whichever replica sweeps first)."""
    if (
        job["status"] not in model.ACTIVE
        or job["kicked_at"] >= now - min(after, 1.0)
        or not (job["status"] == "queued" or job["lease_until"] < now)
    ):
        return False
    job["kicked_at"] = now
    return True
