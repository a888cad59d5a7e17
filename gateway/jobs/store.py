"""Where jobs persist: a SQLite file (one host) or Redis (every replica). Both apply a `model` function to one
job record atomically (`update`), so the state machine is written once.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

import redis

from gateway.jobs.model import Job, is_active

T = TypeVar("T")


class JobStore(Protocol):
    def create(self, job: Job) -> None: ...

    def get(self, job_id: str) -> Job | None: ...

    def update(self, job_id: str, change: Callable[[Job], T]) -> T | None:
        """Apply `change` to the stored job atomically and write it back; None when there is no such job."""
        ...

    def active_jobs(self) -> list[Job]:
        """Jobs still queued or running, or with a webhook to deliver."""
        ...

    def purge(self, now: float) -> int:
        """Delete finished jobs past their TTL."""
        ...


class SqliteJobStore:
    """Jobs in one SQLite file (WAL): processes of one host share it; a write transaction is the atomic step."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def exists(self) -> bool:
        """Whether any job was ever stored here (the loops do not create the file by polling it)."""
        return self._conn is not None or Path(self.path).exists()

    @property
    def db(self) -> sqlite3.Connection:
        if self._conn is None:  # opened on first use: no file until the first job
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, active INTEGER NOT NULL, status TEXT NOT NULL,"
                " lease REAL NOT NULL DEFAULT 0, created REAL NOT NULL, expires REAL, data TEXT NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS jobs_active ON jobs (active, created)")
            self._conn = db
        return self._conn

    def create(self, job: Job) -> None:
        with self._lock:
            self.db.execute(
                "INSERT INTO jobs (id, active, status, created, expires, data) VALUES (?, ?, ?, ?, ?, ?)",
                (job["id"], int(is_active(job)), job["status"], job["created_at"], job["expires_at"], json.dumps(job)),
            )

    def get(self, job_id: str) -> Job | None:
        if not self.exists():
            return None
        with self._lock:
            row = self.db.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def update(self, job_id: str, change: Callable[[Job], T]) -> T | None:
        with self._lock:
            db = self.db
            db.execute("BEGIN IMMEDIATE")  # the write lock across processes, taken before the read
            try:
                row = db.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None:
                    db.execute("COMMIT")
                    return None
                job = json.loads(row[0])
                out = change(job)
                db.execute(
                    "UPDATE jobs SET active = ?, status = ?, lease = ?, expires = ?, data = ? WHERE id = ?",
                    (
                        int(is_active(job)),
                        job["status"],
                        job["lease_until"],
                        job["expires_at"],
                        json.dumps(job),
                        job_id,
                    ),  # fmt: skip
                )
                db.execute("COMMIT")
                return out
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def active_jobs(self) -> list[Job]:
        if not self.exists():
            return []
        with self._lock:
            rows = self.db.execute("SELECT data FROM jobs WHERE active = 1 ORDER BY created")
            return [json.loads(r[0]) for r in rows]

    def claimable_ids(self, now: float, limit: int) -> list[str]:
        """The oldest queued jobs, then running jobs whose lease ran out (their worker died)."""
        if not self.exists():
            return []
        with self._lock:
            rows = self.db.execute(
                "SELECT id FROM jobs WHERE status = 'queued' OR (status = 'running' AND lease < ?) "
                "ORDER BY status = 'running', created LIMIT ?",
                (now, limit),
            )
            return [r[0] for r in rows]

    def purge(self, now: float) -> int:
        if not self.exists():
            return 0
        with self._lock:
            return self.db.execute("DELETE FROM jobs WHERE active = 0 AND expires <= ?", (now,)).rowcount


class RedisJobStore:
    """Jobs in Redis: `{prefix}:job:<id>` (JSON, expiring at its TTL once finished) and `{prefix}:jobs:active`."""

    def __init__(self, client: redis.Redis, prefix: str = "routet2i"):
        self.client, self.prefix = client, prefix
        self.active_key = f"{{{prefix}}}:jobs:active"

    def _key(self, job_id: str) -> str:
        return f"{{{self.prefix}}}:job:{job_id}"

    def _write(self, pipe, job: Job) -> None:
        key = self._key(job["id"])
        if job["expires_at"] is not None:
            pipe.set(key, json.dumps(job), ex=max(1, round(job["expires_at"] - time.time())))
        else:
            pipe.set(key, json.dumps(job))
        if is_active(job):
            pipe.sadd(self.active_key, job["id"])
        else:
            pipe.srem(self.active_key, job["id"])

    def create(self, job: Job) -> None:
        with self.client.pipeline() as pipe:
            self._write(pipe, job)
            pipe.execute()

    def get(self, job_id: str) -> Job | None:
        raw = self.client.get(self._key(job_id))
        return None if raw is None else json.loads(raw)

    def update(self, job_id: str, change: Callable[[Job], T]) -> T | None:
        key = self._key(job_id)
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        pipe.unwatch()
                        return None
                    job = json.loads(raw)
                    out = change(job)
                    pipe.multi()
                    self._write(pipe, job)
                    pipe.execute()
                    return out
                except redis.WatchError:
                    continue  # another replica changed it first: read again

    def active_jobs(self) -> list[Job]:
        ids = [i.decode() for i in self.client.smembers(self.active_key)]
        raws = self.client.mget([self._key(i) for i in ids]) if ids else []
        gone = [i for i, raw in zip(ids, raws, strict=True) if raw is None]
        if gone:
            self.client.srem(self.active_key, *gone)
        return [json.loads(raw) for raw in raws if raw is not None]

    def purge(self, now: float) -> int:
        return 0  # finished jobs expire in Redis by themselves
