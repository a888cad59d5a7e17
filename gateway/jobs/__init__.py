"""Async jobs: POST /v1/jobs → 202, GET for the status and result, DELETE to cancel, signed webhooks.

model.py     the job record and its state machine (pure functions applied atomically by a store)
store.py     where jobs persist: SQLite (one host) or Redis (every replica), with a TTL
queue.py     how workers hear of jobs: a Redis stream through taskiq-redis, or polling SQLite
webhooks.py  HMAC-SHA256 signatures over `timestamp.body` and one delivery
runner.py    `JobRunner`: claim with a lease, run, write the outcome, then acknowledge; recover lost jobs
"""

from __future__ import annotations

from gateway.jobs.runner import Execute, JobFailed, JobRunner

__all__ = ["Execute", "JobFailed", "JobRunner", "build_job_runner"]


def build_job_runner(settings, execute: Execute) -> JobRunner:
    """Jobs in Redis (a taskiq-redis stream for the queue) when `redis_url` is set, else in the `jobs_db` file."""
    from gateway.jobs.queue import JobQueue, RedisStreamQueue, SqlitePollingQueue
    from gateway.jobs.store import JobStore, RedisJobStore, SqliteJobStore

    store: JobStore
    queue: JobQueue
    if settings.redis_url is not None:
        import redis

        url = settings.redis_url.get_secret_value()
        store = RedisJobStore(redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5),
                              settings.redis_prefix)  # fmt: skip
        queue = RedisStreamQueue(url, prefix=settings.redis_prefix, redeliver_after_s=4 * settings.jobs_lease_s)
    else:
        sqlite = SqliteJobStore(settings.jobs_db)
        store, queue = sqlite, SqlitePollingQueue(sqlite)
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret is not None else None
    return JobRunner(
        store, queue, execute, concurrency=settings.jobs_concurrency, lease_s=settings.jobs_lease_s,
        ttl_s=settings.jobs_ttl_s, webhook_secret=secret, webhook_max_attempts=settings.webhook_max_attempts,
        webhook_backoff_s=settings.webhook_backoff_s,
    )  # fmt: skip
