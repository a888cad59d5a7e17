"""Prometheus collectors of the gateway, all named `routet2i_*`, on a registry the caller owns.

One `GatewayMetrics` per app: tests and several apps in one process each pass (or get) their own
`CollectorRegistry`, so collector names never clash. Labels are bounded: backend (edge, cloud, none),
reason (model, budget, forced, private, fallback, none), HTTP status code, backend error kind.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
ROUTER_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "routet2i_requests",
            "Requests by serving backend, routing reason and HTTP status.",
            ["backend", "reason", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "routet2i_request_duration_seconds",
            "End-to-end request time by serving backend.",
            ["backend"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.router_score = Histogram(
            "routet2i_router_score", "Predicted PRS (> 0.5: the edge model wins).", buckets=SCORE_BUCKETS, registry=r
        )
        self.router_latency = Histogram(
            "routet2i_router_latency_seconds",
            "Time of one router call (a batch of prompts).",
            buckets=ROUTER_LATENCY_BUCKETS,
            registry=r,
        )
        self.router_batch_size = Histogram(
            "routet2i_router_batch_size",
            "Prompts scored per router call.",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.alpha = Gauge("routet2i_budget_alpha", "Current routing threshold α (cloud iff PRS < α).", registry=r)
        self.rho = Gauge("routet2i_budget_rho", "Cloud budget ρ in force.", registry=r)
        self.cloud_fraction = Gauge(
            "routet2i_budget_cloud_fraction", "Realised cloud share over the decision window.", registry=r
        )
        self.window_requests = Gauge(
            "routet2i_budget_window_requests", "Requests in the budget decision window.", registry=r
        )
        self.cloud_calls_last_minute = Gauge(
            "routet2i_budget_cloud_calls_last_minute",
            "Cloud calls in the last 60 s (what the cost cap limits).",
            registry=r,
        )
        self.cost_cap = Gauge(
            "routet2i_budget_cost_cap_per_minute", "Cost cap on cloud calls per minute (0: no cap).", registry=r
        )
        self.cost_cap_use = Gauge(
            "routet2i_budget_cost_cap_use_ratio",
            "Cloud calls in the last minute over the cost cap (0: no cap).",
            registry=r,
        )
        self.backend_errors = Counter(
            "routet2i_backend_errors", "Backend failures by backend and kind.", ["backend", "kind"], registry=r
        )
        self.edge_queue_depth = Gauge(
            "routet2i_edge_queue_depth", "Requests waiting for or running on the edge pipeline.", registry=r
        )

    def observe_request(self, *, backend: str | None, reason: str | None, status: int, duration_s: float) -> None:
        """One finished HTTP request; backend/reason None when nothing was generated (e.g. 422, 503)."""
        backend = backend or "none"
        self.requests.labels(backend=backend, reason=reason or "none", status=str(int(status))).inc()
        self.request_duration.labels(backend=backend).observe(duration_s)

    def observe_router(self, prs: float | Iterable[float], latency_s: float) -> None:
        """One router call: its latency and every score it produced."""
        scores = [prs] if isinstance(prs, int | float) else list(prs)
        for score in scores:
            self.router_score.observe(score)
        self.router_latency.observe(latency_s)
        self.router_batch_size.observe(len(scores))

    def set_budget(self, snapshot: Mapping[str, Any]) -> None:
        """Gauges from `BudgetController.snapshot()`; a cloud fraction of None (no requests yet) reads NaN."""
        self.rho.set(snapshot["rho"])
        self.alpha.set(snapshot["alpha"])
        fraction = snapshot.get("cloud_fraction")
        self.cloud_fraction.set(math.nan if fraction is None else fraction)
        self.window_requests.set(snapshot.get("decisions", 0))
        self.cloud_calls_last_minute.set(snapshot.get("cloud_calls_last_minute", 0))
        self.cost_cap.set(snapshot.get("cost_cap") or 0)
        self.cost_cap_use.set(snapshot.get("cost_cap_use") or 0.0)

    def backend_error(self, kind: str, backend: str = "unknown") -> None:
        self.backend_errors.labels(backend=backend, kind=kind).inc()

    def set_queue_depth(self, depth: int) -> None:
        self.edge_queue_depth.set(depth)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type, for `GET /metrics`."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
