"""`ClientGate`: who is calling (the bearer key), whether their quotas let them in, and their cloud share.

It knows nothing of HTTP: it raises `ClientRefused` (status, detail, Retry-After), which the API turns into
the response. With no key required and none presented every request passes as today.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from ipaddress import ip_address

from prometheus_client import CollectorRegistry, Counter
from redis import RedisError

from gateway.keys.limits import QuotaStore, share_limit
from gateway.keys.model import ApiKey
from gateway.keys.store import KeyRegistry

log = logging.getLogger("routet2i.keys")


class ClientRefused(Exception):
    def __init__(self, status: int, detail: str, *, retry_after: float | None = None):
        super().__init__(detail)
        self.status, self.detail, self.retry_after = status, detail, retry_after

    def headers(self) -> dict[str, str]:
        if self.status == 401:
            return {"WWW-Authenticate": "Bearer"}
        return {"Retry-After": str(max(1, round(self.retry_after)))} if self.retry_after else {}


class ClientMetrics:
    """Per-key counters, labelled by the key's name (never the key)."""

    def __init__(self, registry: CollectorRegistry):
        self.requests = Counter(
            "routet2i_client_requests", "Requests by client key and outcome (admitted, rate_limited, "
            "quota_exceeded).", ["key", "outcome"], registry=registry,
        )  # fmt: skip
        self.images = Counter("routet2i_client_images", "Images admitted by client key.", ["key"], registry=registry)
        self.decisions = Counter(
            "routet2i_client_decisions", "Routing decisions by client key, backend and reason.",
            ["key", "backend", "reason"], registry=registry,
        )  # fmt: skip
        self.unauthorized = Counter(
            "routet2i_client_unauthorized", "Requests refused for a missing, wrong or revoked key.", registry=registry
        )


class ClientGate:
    def __init__(
        self,
        registry: KeyRegistry,
        quotas: QuotaStore,
        metrics: ClientMetrics,
        *,
        required: bool,
        share_window: int,
        clock: Callable[[], float] = time.time,
    ):
        self.registry, self.quotas, self.metrics = registry, quotas, metrics
        self.required, self.share_window, self.clock = required, share_window, clock

    def authenticate(self, bearer: str | None) -> ApiKey | None:
        """The caller's key; None for an anonymous caller of an open gateway. ClientRefused(401) when a key is
        required and missing, wrong or revoked; an unknown key on an open gateway is ignored (OpenAI SDKs always
        send one)."""
        try:
            key = self.registry.lookup(bearer) if bearer else None
        except RedisError as exc:
            log.warning("client keys: Redis failed (%s); refusing keyed requests", type(exc).__name__)
            raise ClientRefused(503, "the key store is unavailable", retry_after=2) from exc
        if key is None and self.required:
            self.metrics.unauthorized.inc()
            detail = "API key required: Authorization: Bearer <key>" if not bearer else "invalid or revoked API key"
            raise ClientRefused(401, detail)
        return key

    def admit(self, key: ApiKey | None, images: int) -> None:
        """Count one request of `images` images against the key's quotas, or ClientRefused(429, Retry-After)."""
        if key is None:
            return
        if key.requests_per_minute is not None or key.images_per_day is not None:
            try:
                refused = self.quotas.take(
                    key.name, rpm=key.requests_per_minute, per_day=key.images_per_day, images=images, now=self.clock()
                )
            except RedisError as exc:
                raise ClientRefused(503, "the quota store is unavailable", retry_after=2) from exc
            if refused is not None:
                which, wait = refused
                daily = which == "day"
                self.metrics.requests.labels(key.name, "quota_exceeded" if daily else "rate_limited").inc()
                what = f"{key.images_per_day} images per day" if daily else f"{key.requests_per_minute} requests/min"
                raise ClientRefused(429, f"key {key.name!r} is over its limit of {what}", retry_after=wait)
        self.metrics.requests.labels(key.name, "admitted").inc()
        self.metrics.images.labels(key.name).inc(images)

    def cloud_gate(self, key: ApiKey | None) -> Callable[[bool], bool] | None:
        """For a share-limited key: a function told whether the budget sends a request to the cloud, answering
        whether this key may (and counting the decision in the key's window)."""
        if key is None or not key.share_limited:
            return None
        share = key.max_cloud_share if key.max_cloud_share is not None else 1.0
        limit = share_limit(share, self.share_window) if key.cloud_allowed else 0

        def gate(wants_cloud: bool) -> bool:
            try:
                return self.quotas.share(key.name, wants_cloud=wants_cloud, limit=limit, window=self.share_window)
            except RedisError as exc:  # cannot count the key's share: keep it on the edge rather than overspend
                log.warning("client keys: Redis failed (%s); key %r served on the edge", type(exc).__name__, key.name)
                return False

        return gate

    def served(self, key: ApiKey | None, backend: str, reason: str) -> None:
        if key is not None:
            self.metrics.decisions.labels(key.name, backend, reason).inc()


def open_warning(host: str, required: bool) -> str | None:
    """The warning `routet2i serve` prints when anyone who can reach a non-loopback address may spend the budget."""
    if required:
        return None
    try:
        loopback = host == "localhost" or ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    return (
        f"WARNING: the gateway is open (no API key required) and bound to {host}: anyone who can reach it can "
        "spend the cloud budget. Set ROUTET2I_REQUIRE_API_KEY=true and create keys (POST /admin/keys)."
    )
