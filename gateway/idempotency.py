"""Idempotency-Key: the same key and body within the TTL get the first response, generated and counted once.

A key is reserved atomically with the body's fingerprint before any work (SQLite `INSERT OR IGNORE`, or
Redis `SET NX`), so of two concurrent requests one does the work and the other waits for its response.
Only successful responses are kept: a failed request releases the key, so the client may retry it.
The same key with another body is refused (`IdempotencyMismatch`, 422). Keys are scoped by the client's
key name and the endpoint, so two clients never see each other's responses.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import redis

MAX_KEY_LENGTH = 255


class IdempotencyMismatch(Exception):
    """The key was used with another body."""


class IdempotencyBusy(Exception):
    """The first request with this key is still running after the wait."""


@dataclass(frozen=True)
class Stored:
    status: int
    body: Any  # JSON-able
    headers: dict[str, str]


State = Literal["new", "pending", "done", "mismatch"]


class IdempotencyStore(Protocol):
    def reserve(self, key: str, fingerprint: str, ttl_s: float) -> tuple[State, Stored | None]: ...

    def complete(self, key: str, stored: Stored, ttl_s: float) -> None: ...

    def release(self, key: str) -> None: ...


def fingerprint(payload: Any) -> str:
    """SHA-256 of the canonical JSON of a parsed body (key order and spacing do not matter)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class SqliteIdempotencyStore:
    """Keys in a SQLite file (several processes of one host share it) or in memory (`path=":memory:"`)."""

    def __init__(self, path: str = ":memory:"):
        self._lock = threading.Lock()
        self._path = path
        self._conn: sqlite3.Connection | None = None

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection, opened on first use (no file appears until an Idempotency-Key is sent)."""
        if self._conn is None:
            db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None, timeout=30)
            if self._path != ":memory:":
                db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, "
                "response TEXT, expires REAL NOT NULL)"
            )
            self._conn = db
        return self._conn

    def reserve(self, key: str, fingerprint: str, ttl_s: float) -> tuple[State, Stored | None]:
        now = time.time()
        with self._lock:
            self._db.execute("DELETE FROM idempotency WHERE key = ? AND expires <= ?", (key, now))
            inserted = self._db.execute(
                "INSERT OR IGNORE INTO idempotency (key, fingerprint, response, expires) VALUES (?, ?, NULL, ?)",
                (key, fingerprint, now + ttl_s),
            ).rowcount
            if inserted:
                return "new", None
            row = self._db.execute("SELECT fingerprint, response FROM idempotency WHERE key = ?", (key,)).fetchone()
        if row is None:  # released between the two statements: try again
            return self.reserve(key, fingerprint, ttl_s)
        return _state(row[0], row[1], fingerprint)

    def complete(self, key: str, stored: Stored, ttl_s: float) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE idempotency SET response = ?, expires = ? WHERE key = ?",
                (json.dumps(stored.__dict__), time.time() + ttl_s, key),
            )

    def release(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM idempotency WHERE key = ? AND response IS NULL", (key,))


class RedisIdempotencyStore:
    """Keys in Redis (shared by every replica): `{prefix}:idem:<scope>:<key>` → JSON, with the TTL as expiry."""

    def __init__(self, client: redis.Redis, prefix: str = "routet2i"):
        self.client, self.prefix = client, prefix

    def _name(self, key: str) -> str:
        return f"{{{self.prefix}}}:idem:{key}"

    def reserve(self, key: str, fingerprint: str, ttl_s: float) -> tuple[State, Stored | None]:
        name = self._name(key)
        if self.client.set(name, json.dumps({"fingerprint": fingerprint}), nx=True, ex=max(1, round(ttl_s))):
            return "new", None
        raw = self.client.get(name)
        if raw is None:
            return self.reserve(key, fingerprint, ttl_s)
        record = json.loads(raw)
        return _state(record["fingerprint"], record.get("response"), fingerprint)

    def complete(self, key: str, stored: Stored, ttl_s: float) -> None:
        name = self._name(key)
        raw = self.client.get(name)
        record = json.loads(raw) if raw else {}
        record["response"] = json.dumps(stored.__dict__)
        self.client.set(name, json.dumps(record), ex=max(1, round(ttl_s)))

    def release(self, key: str) -> None:
        name = self._name(key)
        raw = self.client.get(name)
        if raw is not None and "response" not in json.loads(raw):
            self.client.delete(name)


def _state(stored_fingerprint: str, response: str | None, fingerprint: str) -> tuple[State, Stored | None]:
    if stored_fingerprint != fingerprint:
        return "mismatch", None
    if response is None:
        return "pending", None
    return "done", Stored(**json.loads(response))


class Idempotency:
    """Run a request once per (scope, key, body) within the TTL; see the module docstring."""

    def __init__(self, store: IdempotencyStore, *, ttl_s: float = 86_400.0, wait_s: float = 300.0):
        self.store, self.ttl_s, self.wait_s = store, ttl_s, wait_s

    async def once(
        self,
        scope: str,
        key: str,
        payload: Any,
        produce: Callable[[], Awaitable[Stored]],
        *,
        pending_s: float | None = None,
    ) -> tuple[Stored, bool]:
        """(the response, whether it is a replay of an earlier one). `pending_s`: how long the reservation holds
        while the first request runs (default wait_s + 60): a process killed mid-request frees the key then."""
        name, digest = f"{scope}:{key}", fingerprint(payload)
        deadline = time.monotonic() + self.wait_s
        while True:
            hold = min(self.ttl_s, pending_s if pending_s is not None else self.wait_s + 60)
            state, stored = await asyncio.to_thread(self.store.reserve, name, digest, hold)
            if state == "mismatch":
                raise IdempotencyMismatch(key)
            if state == "done":
                return stored, True  # type: ignore[return-value]
            if state == "new":
                break
            if time.monotonic() > deadline:
                raise IdempotencyBusy(key)
            await asyncio.sleep(0.05)
        try:
            stored = await produce()
        except BaseException:
            await asyncio.to_thread(self.store.release, name)
            raise
        if 200 <= stored.status < 300:
            await asyncio.to_thread(self.store.complete, name, stored, self.ttl_s)
        else:
            await asyncio.to_thread(self.store.release, name)
        return stored, False


def build_idempotency(settings) -> Idempotency:
    """Keys in Redis when `redis_url` is set (every replica sees them), else in the SQLite file `jobs_db`."""
    store: IdempotencyStore
    if settings.redis_url is not None:
        from gateway.budget import redis_client

        client = redis_client(settings.redis_url.get_secret_value(), timeout_s=max(settings.redis_timeout_s, 1.0))
        store = RedisIdempotencyStore(client, settings.redis_prefix)
    else:
        store = SqliteIdempotencyStore(settings.jobs_db)
    return Idempotency(store, ttl_s=settings.idempotency_ttl_s)
