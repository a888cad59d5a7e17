"""Loaded pipelines shared by the local backends of one process: one load per (model, device, dtype, class).

Two arms of the same pipeline (SD2.1 at 25 steps and at 10 steps) are two `EdgeBackend`s with their own queues
and default steps; given one pool they hold the same pipeline object, loaded once. Sharing is safe because every
pipeline call on a device runs under that device's lock (`backends.edge.device_lock`), so the two never call
the pipeline at the same time. The pool counts its users and drops its reference when the last one releases it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

PoolKey = tuple[str, str, str, str]  # (model path or hub id, device, dtype, pipeline class or "")


class PipelinePool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[PoolKey, list[Any]] = {}  # key → [pipeline, users]

    def acquire(self, key: PoolKey, load: Callable[[], Any]) -> Any:
        """The pipeline under `key`, loaded with `load()` by its first user (held under the pool's lock, so two
        backends starting together load it once)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = [load(), 0]
            entry[1] += 1
            return entry[0]

    def release(self, key: PoolKey) -> None:
        """One user is done with `key`'s pipeline; the last one drops the pool's reference."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                del self._entries[key]

    def users(self, key: PoolKey) -> int:
        with self._lock:
            entry = self._entries.get(key)
            return entry[1] if entry else 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
