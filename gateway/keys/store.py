"""Where keys live: the settings (read-only), and the admin API's store: Redis, a JSON keys file, or memory.

Every request looks its key up by SHA-256 in the store (no cache), so a revocation through any replica
holds on the next request everywhere.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Protocol

import redis

from gateway.budget.memory import file_stamp
from gateway.keys.model import ApiKey, hash_key

log = logging.getLogger("routet2i.keys")


class KeyExists(ValueError):
    pass


class KeyStore(Protocol):
    def by_hash(self, key_sha256: str) -> ApiKey | None: ...

    def all(self) -> list[ApiKey]: ...

    def add(self, key: ApiKey) -> None:
        """Store a new key; KeyExists if the name is taken."""
        ...

    def remove(self, name: str) -> bool: ...


class MemoryKeyStore:
    """Keys in this process, optionally persisted to a JSON file (`{"keys": [...]}`, written atomically and
    re-read when another process changes it, like the budget state file)."""

    def __init__(self, path: str | Path | None = None):
        self._lock = threading.RLock()
        self._path = Path(path) if path is not None else None
        self._keys: dict[str, ApiKey] = {}  # name → key
        self._stamp: tuple[int, int] | None = None
        self._follow()

    def _follow(self) -> None:
        stamp = file_stamp(self._path)
        if stamp is None or stamp == self._stamp:
            return
        data = json.loads(self._path.read_text(encoding="utf-8"))  # type: ignore[union-attr]
        entries = data.get("keys", []) if isinstance(data, dict) else data
        self._keys = {k.name: k for k in (ApiKey.model_validate(e) for e in entries)}
        self._stamp = stamp

    def _write(self) -> None:
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self._path.name + ".", suffix=".tmp", dir=self._path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"keys": [k.model_dump() for k in self._keys.values()]}, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self._path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._stamp = file_stamp(self._path)

    def by_hash(self, key_sha256: str) -> ApiKey | None:
        with self._lock:
            self._follow()
            return next((k for k in self._keys.values() if k.key_sha256 == key_sha256), None)

    def all(self) -> list[ApiKey]:
        with self._lock:
            self._follow()
            return list(self._keys.values())

    def add(self, key: ApiKey) -> None:
        with self._lock:
            self._follow()
            if key.name in self._keys:
                raise KeyExists(key.name)
            self._keys[key.name] = key
            self._write()

    def remove(self, name: str) -> bool:
        with self._lock:
            self._follow()
            if self._keys.pop(name, None) is None:
                return False
            self._write()
            return True


class RedisKeyStore:
    """Keys shared by every replica: `{prefix}:keys` (hash → JSON) and `{prefix}:key_names` (name → hash)."""

    ADD = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
"""
    REMOVE = """
local h = redis.call('HGET', KEYS[2], ARGV[1])
if not h then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], h)
return 1
"""

    def __init__(self, client: redis.Redis, prefix: str = "routet2i"):
        self.client = client
        self.keys = [f"{{{prefix}}}:keys", f"{{{prefix}}}:key_names"]
        self._add = client.register_script(self.ADD)
        self._remove = client.register_script(self.REMOVE)

    def by_hash(self, key_sha256: str) -> ApiKey | None:
        raw = self.client.hget(self.keys[0], key_sha256)
        return None if raw is None else ApiKey.model_validate_json(raw)

    def all(self) -> list[ApiKey]:
        return [ApiKey.model_validate_json(raw) for raw in self.client.hvals(self.keys[0])]

    def add(self, key: ApiKey) -> None:
        if not self._add(keys=self.keys, args=[key.name, key.key_sha256, key.model_dump_json()]):
            raise KeyExists(key.name)

    def remove(self, name: str) -> bool:
        return bool(self._remove(keys=self.keys, args=[name]))


class KeyRegistry:
    """The keys of the settings (read-only) over the admin API's store."""

    def __init__(self, configured: list[ApiKey], store: KeyStore):
        self.configured = {k.key_sha256: k for k in configured}
        self.store = store

    def lookup(self, key: str) -> ApiKey | None:
        digest = hash_key(key)
        return self.configured.get(digest) or self.store.by_hash(digest)

    def all(self) -> list[ApiKey]:
        return [*self.configured.values(), *self.store.all()]

    def add(self, key: ApiKey) -> None:
        if any(k.name == key.name for k in self.configured.values()):
            raise KeyExists(key.name)
        self.store.add(key)

    def remove(self, name: str) -> bool | None:
        """True when revoked, False when unknown, None when the key is in the settings (edit them instead)."""
        if any(k.name == name for k in self.configured.values()):
            return None
        return self.store.remove(name)

    def empty(self) -> bool:
        return not self.configured and not self.store.all()
