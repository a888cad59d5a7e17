"""Per-key counters: requests per clock minute, images per UTC day, and the key's window of routing decisions.

Quotas are fixed windows (the current minute, the current UTC day): a refused request is not counted and
learns from Retry-After when the window turns. The cloud share is held like the global budget's window
cap: the key's last W decisions hold at most ⌊share · W⌋ cloud calls (slots not yet filled count at the
share, so a new key is not starved). Each check-and-count is one atomic step (a lock, or one Lua script
in Redis, so every replica counts against the same numbers).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from typing import Protocol

import redis

DAY_S, MINUTE_S = 86_400, 60


def share_limit(share: float, window: int) -> int:
    """Most cloud calls a key's window of `window` decisions may hold."""
    return math.floor(share * window + 1e-6)


def retry_after(now: float, period: int) -> float:
    return max(1.0, period - now % period)


class QuotaStore(Protocol):
    def take(
        self, name: str, *, rpm: int | None, per_day: int | None, images: int, now: float
    ) -> tuple[str, float] | None:
        """Count one request of `images` images for key `name` if both quotas allow it: None, else which quota
        refused ("minute" or "day") and the seconds until its window turns (nothing counted)."""
        ...

    def share(self, name: str, *, wants_cloud: bool, limit: int | None, window: int) -> bool:
        """Append one decision to the key's window: cloud if it wants the cloud and (`limit` None or) the
        window holds fewer than `limit` cloud calls. Returns whether it was kept as cloud."""
        ...

    def usage(self, name: str, now: float) -> dict:
        """This minute's requests, today's images, the window's cloud calls and decisions."""
        ...


class MemoryQuotaStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._minute: dict[str, tuple[int, int]] = {}  # name → (minute, requests)
        self._day: dict[str, tuple[int, int]] = {}  # name → (day, images)
        self._windows: dict[str, deque[bool]] = {}
        self._cloud: dict[str, int] = {}

    def take(
        self, name: str, *, rpm: int | None, per_day: int | None, images: int, now: float
    ) -> tuple[str, float] | None:
        minute, day = int(now // MINUTE_S), int(now // DAY_S)
        with self._lock:
            used_minute = self._minute.get(name, (minute, 0))
            used_minute = used_minute[1] if used_minute[0] == minute else 0
            used_day = self._day.get(name, (day, 0))
            used_day = used_day[1] if used_day[0] == day else 0
            if rpm is not None and used_minute + 1 > rpm:
                return "minute", retry_after(now, MINUTE_S)
            if per_day is not None and used_day + images > per_day:
                return "day", retry_after(now, DAY_S)
            self._minute[name] = (minute, used_minute + 1)
            self._day[name] = (day, used_day + images)
            return None

    def share(self, name: str, *, wants_cloud: bool, limit: int | None, window: int) -> bool:
        with self._lock:
            entries = self._windows.setdefault(name, deque())
            while len(entries) > window - 1:
                self._cloud[name] = self._cloud.get(name, 0) - entries.popleft()
            cloud = self._cloud.get(name, 0)
            kept = wants_cloud and (limit is None or cloud + 1 <= limit)
            entries.append(kept)
            self._cloud[name] = cloud + kept
            return kept

    def usage(self, name: str, now: float) -> dict:
        minute, day = int(now // MINUTE_S), int(now // DAY_S)
        with self._lock:
            m, d = self._minute.get(name, (minute, 0)), self._day.get(name, (day, 0))
            return {
                "requests_this_minute": m[1] if m[0] == minute else 0,
                "images_today": d[1] if d[0] == day else 0,
                "window_cloud": self._cloud.get(name, 0),
                "window_decisions": len(self._windows.get(name, ())),
            }


TAKE = """
local minute_used = tonumber(redis.call('GET', KEYS[1]) or '0')
local day_used = tonumber(redis.call('GET', KEYS[2]) or '0')
local rpm, per_day, images = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if rpm and minute_used + 1 > rpm then return 1 end
if per_day and day_used + images > per_day then return 2 end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], 120)
redis.call('INCRBY', KEYS[2], images)
redis.call('EXPIRE', KEYS[2], 172800)
return 0
"""

SHARE = """
local window, wants = tonumber(ARGV[1]), ARGV[2] == '1'
local limit = tonumber(ARGV[3])
while redis.call('LLEN', KEYS[1]) > window - 1 do
  if redis.call('LPOP', KEYS[1]) == '1' then redis.call('DECR', KEYS[2]) end
end
local cloud = tonumber(redis.call('GET', KEYS[2]) or '0')
local kept = wants and (limit == nil or cloud + 1 <= limit)
redis.call('RPUSH', KEYS[1], kept and '1' or '0')
if kept then redis.call('INCR', KEYS[2]) end
return kept and 1 or 0
"""


class RedisQuotaStore:
    """The same counters in Redis, under `{prefix}:client:<name>:*` (one hash tag per key)."""

    def __init__(self, client: redis.Redis, prefix: str = "routet2i"):
        self.client, self.prefix = client, prefix
        self._take = client.register_script(TAKE)
        self._share = client.register_script(SHARE)

    def _keys(self, name: str, now: float) -> dict[str, str]:
        base = f"{{{self.prefix}:client:{name}}}"
        return {
            "minute": f"{base}:rpm:{int(now // MINUTE_S)}", "day": f"{base}:day:{int(now // DAY_S)}",
            "window": f"{base}:window", "cloud": f"{base}:window_cloud",
        }  # fmt: skip

    def take(
        self, name: str, *, rpm: int | None, per_day: int | None, images: int, now: float
    ) -> tuple[str, float] | None:
        k = self._keys(name, now)
        args = ["" if rpm is None else rpm, "" if per_day is None else per_day, images]
        refused = int(self._take(keys=[k["minute"], k["day"]], args=args))
        if refused == 0:
            return None
        return ("minute", retry_after(now, MINUTE_S)) if refused == 1 else ("day", retry_after(now, DAY_S))

    def share(self, name: str, *, wants_cloud: bool, limit: int | None, window: int) -> bool:
        k = self._keys(name, 0)
        args = [window, "1" if wants_cloud else "0", "" if limit is None else limit]
        return bool(self._share(keys=[k["window"], k["cloud"]], args=args))

    def usage(self, name: str, now: float) -> dict:
        k = self._keys(name, now)
        minute, day, cloud, decisions = (
            self.client.get(k["minute"]), self.client.get(k["day"]), self.client.get(k["cloud"]),
            self.client.llen(k["window"]),
        )  # fmt: skip
        return {
            "requests_this_minute": int(minute or 0), "images_today": int(day or 0),
            "window_cloud": int(cloud or 0), "window_decisions": int(decisions),
        }  # fmt: skip
