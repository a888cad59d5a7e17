"""`ImageCache`: the one object the gateway talks to. It picks the store (private entries stay in this process'
memory, never Redis), turns a failing store into a miss (the cache must never fail a request), and keeps the
metrics: `routet2i_cache_requests_total{result=hit|miss|bypass}` and `routet2i_cache_bytes`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from backends.base import GenerationRequest
from gateway.cache.entry import CachedImages
from gateway.cache.key import cache_key
from gateway.cache.memory import MemoryImageCache
from gateway.cache.redis_cache import RedisImageCache

if TYPE_CHECKING:
    from gateway.metrics import GatewayMetrics
    from gateway.settings import Settings

log = logging.getLogger("routet2i.cache")
STORE_ERRORS = (RedisError, OSError, ValueError)


class ImageCache:
    """Seeded requests' images by cache key: in `local` memory, or in `shared` Redis when given (except private)."""

    def __init__(
        self, local: MemoryImageCache, shared: RedisImageCache | None = None, metrics: GatewayMetrics | None = None
    ):
        self.local, self.shared, self.metrics = local, shared, metrics

    @staticmethod
    def key(request: GenerationRequest, arm: str, *, private: bool, default_steps: int | None = None) -> str:
        return cache_key(request, arm, private=private, default_steps=default_steps)

    async def get(self, key: str, *, private: bool) -> CachedImages | None:
        """The entry under `key`, or None (a miss; also when the store fails or holds something unreadable)."""
        entry = None
        try:
            if private or self.shared is None:
                entry = self.local.get(key)
                self._gauge()  # an expired entry may just have gone
            else:
                entry = await self.shared.get(key)
        except STORE_ERRORS as exc:
            log.warning("cache: lookup failed (%s); treated as a miss", type(exc).__name__)
        self._count("hit" if entry is not None else "miss")
        return entry

    async def put(self, key: str, entry: CachedImages, *, private: bool) -> None:
        try:
            if private or self.shared is None:
                self.local.set(key, entry)
                self._gauge()
            else:
                await self.shared.set(key, entry)
        except STORE_ERRORS as exc:
            log.warning("cache: store failed (%s); not cached", type(exc).__name__)

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.cache_bytes.set(self.local.bytes)

    def bypass(self) -> None:
        """A request the cache did not take part in (no seed, or `"cache": false`)."""
        self._count("bypass")

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.cache_requests.labels(result=result).inc()

    async def aclose(self) -> None:
        if self.shared is not None:
            await self.shared.aclose()


def build_cache(settings: Settings, metrics: GatewayMetrics | None = None) -> ImageCache | None:
    """The cache the settings ask for: None when `cache_enabled` is off; Redis (private entries excepted) when
    `redis_url` is set."""
    if not settings.cache_enabled:
        return None
    local = MemoryImageCache(settings.cache_max_bytes, settings.cache_ttl_s)
    shared = None
    if settings.redis_url is not None:
        shared = RedisImageCache.from_url(
            settings.redis_url.get_secret_value(), prefix=settings.redis_prefix, ttl_s=settings.cache_ttl_s,
            timeout_s=max(settings.redis_timeout_s, 1.0),
        )  # fmt: skip
    return ImageCache(local, shared, metrics)
