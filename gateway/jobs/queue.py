"""How a worker hears of jobs: a Redis stream through taskiq-redis, or polling the SQLite store.

Redis: `taskiq_redis.RedisStreamBroker` (a Redis stream with a consumer group): every replica's consumer
reads its own messages, a message stays pending until acknowledged, and messages a dead consumer left
unacknowledged are claimed again (XAUTOCLAIM) by a live one. The job record, not the message, is the truth:
a message for a job that is no longer claimable is acknowledged and dropped, and the runner's janitor
re-sends the id of a job whose message was lost with its consumer (see runner.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from gateway.jobs.store import SqliteJobStore

log = logging.getLogger("routet2i.jobs")
Ack = Callable[[], Awaitable[None]]


async def _no_ack() -> None:
    return None


class JobQueue(Protocol):
    async def start(self) -> None: ...

    async def kick(self, job_id: str) -> None: ...

    def messages(self) -> AsyncIterator[tuple[str, Ack]]:
        """(job id, acknowledge) as they come; acknowledge after the job's outcome is written."""
        ...

    async def close(self) -> None: ...


class RedisStreamQueue:
    def __init__(self, url: str, *, prefix: str = "routet2i", redeliver_after_s: float = 30.0):
        from taskiq_redis import RedisStreamBroker

        self.broker = RedisStreamBroker(
            url, queue_name=f"{{{prefix}}}:jobs:stream", consumer_group_name=f"{prefix}-jobs", consumer_id="0",
            xread_block=500, xread_count=1, idle_timeout=int(redeliver_after_s * 1000),
            unacknowledged_lock_timeout=5.0, maxlen=100_000,
        )  # fmt: skip

    async def start(self) -> None:
        await self.broker.startup()

    async def kick(self, job_id: str) -> None:
        from taskiq.message import BrokerMessage

        await self.broker.kick(BrokerMessage(task_id=job_id, task_name="generate", message=job_id.encode(), labels={}))

    async def messages(self) -> AsyncIterator[tuple[str, Ack]]:
        while True:
            try:
                await self.broker.startup()  # (re)declare the consumer group: Redis may have restarted empty
                async for message in self.broker.listen():
                    data = message.data
                    yield (data.decode() if isinstance(data, bytes) else str(data)), message.ack
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: wait and listen again (pending messages are kept)
                log.warning("jobs: the Redis stream failed (%s: %s); retrying", type(exc).__name__, exc)
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        await self.broker.shutdown()


class SqlitePollingQueue:
    """The SQLite store's claimable jobs, oldest first, polled (a submit in this process wakes it at once)."""

    def __init__(self, store: SqliteJobStore, *, poll_s: float = 0.1, batch: int = 32):
        self.store, self.poll_s, self.batch = store, poll_s, batch
        self._wake = asyncio.Event()

    async def start(self) -> None:
        return None

    async def kick(self, job_id: str) -> None:
        self._wake.set()

    async def messages(self) -> AsyncIterator[tuple[str, Ack]]:
        while True:
            ids = await asyncio.to_thread(self.store.claimable_ids, time.time(), self.batch)
            for job_id in ids:
                yield job_id, _no_ack
            if len(ids) < self.batch:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)

    async def close(self) -> None:
        return None
