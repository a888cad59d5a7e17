"""The shared cache: one Redis value per entry, `SET ... EX ttl`; Redis' `maxmemory` (with an LRU eviction
policy such as `allkeys-lru`) bounds its bytes."""

from __future__ import annotations

import math

import redis.asyncio as aioredis

from gateway.cache.entry import CachedImages


class RedisImageCache:
    """Entries under `{prefix}:cache:<key>`; Redis errors propagate (`ImageCache` treats them as misses)."""

    def __init__(self, client: aioredis.Redis, *, prefix: str = "routet2i", ttl_s: float = 86_400.0):
        self.client, self.prefix, self.ttl_s = client, prefix, ttl_s

    @classmethod
    def from_url(cls, url: str, *, prefix: str, ttl_s: float, timeout_s: float = 1.0) -> RedisImageCache:
        client = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        return cls(client, prefix=prefix, ttl_s=ttl_s)

    def name(self, key: str) -> str:
        return f"{{{self.prefix}}}:cache:{key}"

    async def get(self, key: str) -> CachedImages | None:
        raw = await self.client.get(self.name(key))
        return None if raw is None else CachedImages.decode(raw)

    async def set(self, key: str, entry: CachedImages) -> None:
        await self.client.set(self.name(key), entry.encode(), ex=max(1, math.ceil(self.ttl_s)))

    async def aclose(self) -> None:
        await self.client.aclose()
