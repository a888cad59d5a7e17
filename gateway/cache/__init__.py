"""The exact image cache: a repeated seeded request served without calling any backend (a zero-cost arm).

key.py          the cache key: SHA-256 of the canonical request (prompt, negative prompt, size, n, steps, guidance,
                seed, arm, private)
entry.py        `CachedImages`: what one entry holds (PNG bytes, seed, model) and its byte encoding
memory.py       `MemoryImageCache`: in-process, LRU under a byte bound, TTL
redis_cache.py  `RedisImageCache`: shared by every replica, SET with EX (bytes bounded by Redis' maxmemory)
service.py      `ImageCache`: which store an entry goes to (private: memory only), failures as misses, metrics;
                `build_cache(settings)`
"""

from gateway.cache.entry import CachedImages
from gateway.cache.key import cache_key
from gateway.cache.memory import MemoryImageCache
from gateway.cache.redis_cache import RedisImageCache
from gateway.cache.service import ImageCache, build_cache

__all__ = ["CachedImages", "ImageCache", "MemoryImageCache", "RedisImageCache", "build_cache", "cache_key"]
