"""Prometheus collectors of the gateway, all named `routet2i_*`, on a registry the caller owns.

One `GatewayMetrics` per app: tests and several apps in one process each pass (or get) their own
`CollectorRegistry`, so collector names never clash. Labels are bounded: backend (edge, cloud, none),
reason (model, budget, forced, private, fallback, cache, escalated, none), HTTP status code, backend error kind, budget
store (memory, redis), cache result (hit, miss, bypass), verify result (pass, escalated, capped, failed).

Several worker processes (`uvicorn --workers N`): with PROMETHEUS_MULTIPROC_DIR set before the workers
start, every collector writes to files there and `/metrics` from any worker reports all of them:
counters and histograms are summed; the budget gauges (the same shared budget seen by every worker)
report the most recent value; the edge queue depth is summed and the store health is the minimum
over the live workers. The directory must be emptied before the workers start
(`prepare_multiprocess_dir`), and each worker should refresh its own gauges (`start_refresh`).
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
log = logging.getLogger("routet2i.metrics")

REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
ROUTER_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
VERIFY_BUCKETS = tuple(round(0.05 * i, 2) for i in range(-4, 11))  # CLIP cosine similarity
VERIFY_RESULTS = ("pass", "escalated", "capped", "failed")


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
        budget = {"registry": r, "multiprocess_mode": "mostrecent"}  # one shared budget: the latest reading
        self.alpha = Gauge("routet2i_budget_alpha", "Current routing threshold α (cloud iff PRS < α).", **budget)
        self.rho = Gauge("routet2i_budget_rho", "Cloud budget ρ in force.", **budget)
        self.cloud_fraction = Gauge(
            "routet2i_budget_cloud_fraction", "Realised cloud share over the decision window.", **budget
        )
        self.window_requests = Gauge(
            "routet2i_budget_window_requests", "Requests in the budget decision window.", **budget
        )
        self.cloud_calls_last_minute = Gauge(
            "routet2i_budget_cloud_calls_last_minute", "Cloud calls in the last 60 s (what the cost cap limits).",
            **budget,
        )  # fmt: skip
        self.cost_cap = Gauge(
            "routet2i_budget_cost_cap_per_minute", "Cost cap on cloud calls per minute (0: no cap).", **budget
        )
        self.cost_cap_use = Gauge(
            "routet2i_budget_cost_cap_use_ratio", "Cloud calls in the last minute over the cost cap (0: no cap).",
            **budget,
        )  # fmt: skip
        self.store_up = Gauge(
            "routet2i_budget_store_up",
            "1 while the budget store the settings name answers; 0 while a replica serves on its local fallback.",
            ["store"], registry=r, multiprocess_mode="livemin",
        )  # fmt: skip
        self.backend_errors = Counter(
            "routet2i_backend_errors", "Backend failures by backend and kind.", ["backend", "kind"], registry=r
        )
        self.cloud_breaker_open = Gauge(
            "routet2i_cloud_breaker_open",
            "1 while the cloud client's circuit is open (calls fail fast and fall back to the edge), else 0.",
            registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.cloud_breaker_failures = Gauge(
            "routet2i_cloud_breaker_consecutive_failures", "Consecutive health failures the cloud circuit has seen.",
            registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.cache_requests = Counter(
            "routet2i_cache_requests", "Exact-cache lookups: hit, miss, or bypass (no seed, or \"cache\": false).",
            ["result"], registry=r,
        )  # fmt: skip
        for result in ("hit", "miss", "bypass"):
            self.cache_requests.labels(result=result)
        self.cache_bytes = Gauge(
            "routet2i_cache_bytes", "Image bytes in this process' in-memory cache (Redis entries not included).",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.verify = Counter(
            "routet2i_verify", "Edge images checked (verify-then-escalate): pass, escalated, capped (a cap or the "
            "key's share kept the edge image), failed (the check or the escalation failed; the edge image served).",
            ["result"], registry=r,
        )  # fmt: skip
        for result in VERIFY_RESULTS:
            self.verify.labels(result=result)
        self.escalations = Counter(
            "routet2i_escalations", "Escalated requests (verify then escalate) by the arm whose image failed the "
            "check and the arm that served the final image (two arms: edge → cloud).", ["from_arm", "to_arm"],
            registry=r,
        )  # fmt: skip
        self.verify_score = Histogram(
            "routet2i_verify_score", "Image check score of edge images (the lowest of a request's images).",
            buckets=VERIFY_BUCKETS, registry=r,
        )  # fmt: skip
        self.arm_requests = Counter(
            "routet2i_arm_requests", "Served requests by arm (the two-arm shorthand: edge, cloud) and routing reason.",
            ["arm", "reason"], registry=r,
        )  # fmt: skip
        self.arm_cost = Counter(
            "routet2i_arm_cost", "Cost spent per arm, in the operator's unit (cost per image × images).", ["arm"],
            registry=r,
        )  # fmt: skip
        self.lam = Gauge(
            "routet2i_lambda", "λ of the N-arm rule (argmax predicted quality − λ·cost); 0 with two arms.", **budget
        )
        self.edge_queue_depth = Gauge(
            "routet2i_edge_queue_depth", "Requests waiting for or running on the edge pipeline.", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip

    def observe_request(self, *, backend: str | None, reason: str | None, status: int, duration_s: float) -> None:
        """One finished HTTP request; backend/reason None when nothing was generated (e.g. 422, 503)."""
        backend = backend or "none"
        self.requests.labels(backend=backend, reason=reason or "none", status=str(int(status))).inc()
        self.request_duration.labels(backend=backend).observe(duration_s)

    def observe_arm(self, arm: str, reason: str, cost: float) -> None:
        """One served request: which arm, why, and what it cost."""
        self.arm_requests.labels(arm=arm, reason=reason).inc()
        self.arm_cost.labels(arm=arm).inc(cost)

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
        if "store" in snapshot:
            self.store_up.labels(store=snapshot["store"]).set(1.0 if snapshot.get("store_up", True) else 0.0)

    def observe_verify(self, result: str, score: float | None) -> None:
        """One verified request: its outcome and (when the check ran) its score."""
        self.verify.labels(result=result).inc()
        if score is not None:
            self.verify_score.observe(score)

    def observe_escalation(self, from_arm: str, to_arm: str) -> None:
        self.escalations.labels(from_arm=from_arm, to_arm=to_arm).inc()

    def backend_error(self, kind: str, backend: str = "unknown") -> None:
        self.backend_errors.labels(backend=backend, kind=kind).inc()

    def set_queue_depth(self, depth: int) -> None:
        self.edge_queue_depth.set(depth)

    def set_breaker(self, state: str, consecutive_failures: int) -> None:
        self.cloud_breaker_open.set(1 if state == "open" else 0)
        self.cloud_breaker_failures.set(consecutive_failures)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type, for `GET /metrics` (all workers' in multiprocess mode)."""
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        prune_dead_workers(directory)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(directory))
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def start_refresh(self, sample: Callable[[], None], interval_s: float = 1.0) -> threading.Event:
        """Call `sample` (e.g. set the budget gauges and this worker's queue depth) every `interval_s` in a
        daemon thread, so per-worker gauges stay current between scrapes; set the returned event to stop."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval_s):
                try:
                    sample()
                except Exception as exc:  # a failed refresh must not end the thread; the next one may work
                    log.warning("metrics refresh failed: %s: %s", type(exc).__name__, exc)

        threading.Thread(target=loop, name="routet2i-metrics-refresh", daemon=True).start()
        return stop


def multiprocess_dir() -> Path | None:
    """The Prometheus multiprocess directory from the environment, or None in one-process mode."""
    value = os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower())
    return Path(value) if value else None


def ensure_multiprocess_dir() -> Path | None:
    """Create the multiprocess directory if one is configured (a worker may start before anyone made it)."""
    directory = multiprocess_dir()
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    return directory


def prepare_multiprocess_dir(path: str | Path) -> Path:
    """Before starting N workers: create `path`, delete the files of a previous run (their counts would be
    added to this run's) and export it as PROMETHEUS_MULTIPROC_DIR for the workers to inherit."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    return directory


_LIVE_FILE = re.compile(r"^gauge_live\w+_(\d+)\.db$")


def prune_dead_workers(directory: Path) -> None:
    """Drop the live-gauge files of workers that have exited (uvicorn restarts a dead worker under a new pid)."""
    for file in directory.glob("gauge_live*.db"):
        match = _LIVE_FILE.match(file.name)
        if match and not _alive(int(match.group(1))):
            multiprocess.mark_process_dead(int(match.group(1)), str(directory))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
