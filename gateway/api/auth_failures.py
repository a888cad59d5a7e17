"""Wrong admin tokens, counted per client address over a sliding minute: past the limit an address is refused
(429) whatever it sends until its failures age out, so the token cannot be guessed at line rate."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

WINDOW_S = 60.0


class AuthFailures:
    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic, max_clients: int = 10_000):
        self.per_minute, self.clock, self.max_clients = per_minute, clock, max_clients
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._failures.get(client, deque())
        while times and times[0] <= now - WINDOW_S:
            times.popleft()
        return times

    def retry_after(self, client: str) -> float | None:
        """Seconds until `client` may try again, or None when it is not blocked."""
        with self._lock:
            now = self.clock()
            times = self._recent(client, now)
            if len(times) < self.per_minute:
                return None
            return max(1.0, times[-self.per_minute] + WINDOW_S - now)

    def record(self, client: str) -> int:
        """Count one wrong token from `client`; the number in the last minute, this one included."""
        with self._lock:
            now = self.clock()
            if client not in self._failures and len(self._failures) >= self.max_clients:
                self._forget_idle(now)
            times = self._recent(client, now)
            times.append(now)
            self._failures[client] = times
            return len(times)

    def _forget_idle(self, now: float) -> None:
        for client in [c for c, times in self._failures.items() if not times or times[-1] <= now - WINDOW_S]:
            del self._failures[client]
        while len(self._failures) >= self.max_clients:  # still full: drop the oldest entries
            del self._failures[next(iter(self._failures))]
