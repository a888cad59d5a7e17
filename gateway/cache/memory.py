"""The in-process cache: LRU under a byte bound, entries older than the TTL never served."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from gateway.cache.entry import CachedImages


class MemoryImageCache:
    """At most `max_bytes` of image bytes; the least recently used entries go first; `ttl_s` after it was
    stored an entry is gone. An entry larger than the whole bound is not stored."""

    def __init__(self, max_bytes: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        if max_bytes < 0 or ttl_s <= 0:
            raise ValueError("max_bytes must be >= 0 and ttl_s > 0")
        self.max_bytes, self.ttl_s, self.clock = max_bytes, ttl_s, clock
        self._entries: OrderedDict[str, tuple[float, CachedImages]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> CachedImages | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            expires, entry = found
            if self.clock() >= expires:
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            return entry

    def set(self, key: str, entry: CachedImages) -> bool:
        """Store `entry` (evicting the least recently used as needed); False when it is larger than the bound."""
        size = entry.size
        with self._lock:
            if key in self._entries:
                self._drop(key)
            if size > self.max_bytes:
                return False
            self._evict_expired()
            while self._bytes + size > self.max_bytes:
                self._drop(next(iter(self._entries)))
            self._entries[key] = (self.clock() + self.ttl_s, entry)
            self._bytes += size
            return True

    def _evict_expired(self) -> None:
        now = self.clock()
        for key in [k for k, (expires, _) in self._entries.items() if now >= expires]:
            self._drop(key)

    def _drop(self, key: str) -> None:
        _, entry = self._entries.pop(key)
        self._bytes -= entry.size
