"""Client API keys: who may spend the cloud budget, with per-key quotas and cloud share.

model.py    `ApiKey` (name, limits, SHA-256 of the key), `hash_key`, `new_key`
store.py    where keys live: the settings (read-only) and the admin store (Redis, a JSON file, or memory)
limits.py   per-key counters: requests/minute, images/day, the cloud-share window (memory or Redis)
service.py  `ClientGate`: authenticate, admit, gate the cloud share; per-key metrics; the open-bind warning
"""

from __future__ import annotations

from gateway.keys.limits import MemoryQuotaStore, QuotaStore, RedisQuotaStore
from gateway.keys.model import ApiKey, KeyCreate, KeyLimits, hash_key, new_key
from gateway.keys.service import ClientGate, ClientMetrics, ClientRefused, open_warning
from gateway.keys.store import KeyExists, KeyRegistry, KeyStore, MemoryKeyStore, RedisKeyStore

__all__ = [
    "ApiKey", "ClientGate", "ClientMetrics", "ClientRefused", "KeyCreate", "KeyExists", "KeyLimits", "KeyRegistry",
    "KeyStore", "MemoryKeyStore", "MemoryQuotaStore", "QuotaStore", "RedisKeyStore", "RedisQuotaStore",
    "build_client_gate", "hash_key", "new_key", "open_warning",
]  # fmt: skip


def build_client_gate(settings, registry) -> ClientGate:
    """The gate the settings describe: keys and counters in Redis when `redis_url` is set, else in this process
    (admin-created keys persisted to `api_keys_file` when it is set)."""
    from gateway.budget import redis_client

    store: KeyStore
    quotas: QuotaStore
    configured = list(settings.api_keys)
    if settings.redis_url is not None:
        client = redis_client(settings.redis_url.get_secret_value(), timeout_s=max(settings.redis_timeout_s, 1.0))
        store, quotas = RedisKeyStore(client, settings.redis_prefix), RedisQuotaStore(client, settings.redis_prefix)
        if settings.api_keys_file:
            configured += MemoryKeyStore(settings.api_keys_file).all()
    else:
        store, quotas = MemoryKeyStore(settings.api_keys_file), MemoryQuotaStore()
    return ClientGate(
        KeyRegistry(configured, store), quotas, ClientMetrics(registry), required=settings.require_api_key,
        share_window=settings.decision_window,
    )  # fmt: skip
