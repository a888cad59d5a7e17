"""Prometheus metrics: values in the exposition text follow the calls the app makes."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gateway.budget import BudgetController, InMemoryBudgetStore
from gateway.metrics import GatewayMetrics


def samples(metrics: GatewayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, tuple(sorted(labels.items())))]


def test_requests_counted_by_backend_reason_and_status():
    m = GatewayMetrics()
    m.observe_request(backend="cloud", reason="model", status=200, duration_s=3.0)
    m.observe_request(backend="cloud", reason="model", status=200, duration_s=4.0)
    m.observe_request(backend="edge", reason="fallback", status=200, duration_s=0.7)
    m.observe_request(backend=None, reason=None, status=422, duration_s=0.001)
    assert value(m, "routet2i_requests_total", backend="cloud", reason="model", status="200") == 2
    assert value(m, "routet2i_requests_total", backend="edge", reason="fallback", status="200") == 1
    assert value(m, "routet2i_requests_total", backend="none", reason="none", status="422") == 1
    assert value(m, "routet2i_request_duration_seconds_count", backend="cloud") == 2
    assert value(m, "routet2i_request_duration_seconds_sum", backend="cloud") == pytest.approx(7.0)
    assert value(m, "routet2i_request_duration_seconds_bucket", backend="cloud", le="5.0") == 2
    assert value(m, "routet2i_request_duration_seconds_bucket", backend="cloud", le="2.0") == 0
    assert value(m, "routet2i_request_duration_seconds_bucket", backend="edge", le="1.0") == 1


def test_router_scores_and_latency():
    m = GatewayMetrics()
    m.observe_router([0.12, 0.48, 0.93], latency_s=0.004)
    m.observe_router(0.51, latency_s=0.02)
    assert value(m, "routet2i_router_score_count") == 4
    assert value(m, "routet2i_router_score_sum") == pytest.approx(2.04)
    assert value(m, "routet2i_router_score_bucket", le="0.5") == 2
    assert value(m, "routet2i_router_latency_seconds_count") == 2
    assert value(m, "routet2i_router_latency_seconds_bucket", le="0.005") == 1
    assert value(m, "routet2i_router_batch_size_sum") == 4


def test_budget_gauges_follow_the_controller_snapshot():
    m = GatewayMetrics()
    ctl = BudgetController(InMemoryBudgetStore(0.4, cost_cap=10), min_scores=1, prior_alpha=0.3)
    m.set_budget(ctl.snapshot())
    assert value(m, "routet2i_budget_rho") == 0.4
    assert math.isnan(value(m, "routet2i_budget_cloud_fraction"))  # no requests yet
    assert value(m, "routet2i_budget_cost_cap_per_minute") == 10
    for prs in (0.1, 0.2, 0.9, 0.95):
        ctl.decide(prs)
    ctl.set_rho(0.25)
    snap = ctl.snapshot()
    m.set_budget(snap)
    assert value(m, "routet2i_budget_rho") == 0.25
    assert value(m, "routet2i_budget_alpha") == pytest.approx(snap["alpha"])
    assert (
        value(m, "routet2i_budget_cloud_fraction") == pytest.approx(snap["cloud_fraction"]) and snap["cloud_calls"] > 0
    )
    assert value(m, "routet2i_budget_window_requests") == 4
    assert value(m, "routet2i_budget_cloud_calls_last_minute") == snap["cloud_calls"]
    assert value(m, "routet2i_budget_cost_cap_use_ratio") == pytest.approx(snap["cloud_calls"] / 10)
    ctl.set_cost_cap(None)
    m.set_budget(ctl.snapshot())
    assert value(m, "routet2i_budget_cost_cap_per_minute") == 0
    assert value(m, "routet2i_budget_cost_cap_use_ratio") == 0


def test_backend_errors_and_queue_depth():
    m = GatewayMetrics()
    m.backend_error("timeout", backend="cloud")
    m.backend_error("timeout", backend="cloud")
    m.backend_error("overloaded", backend="edge")
    m.set_queue_depth(5)
    m.set_queue_depth(3)
    assert value(m, "routet2i_backend_errors_total", backend="cloud", kind="timeout") == 2
    assert value(m, "routet2i_backend_errors_total", backend="edge", kind="overloaded") == 1
    assert value(m, "routet2i_edge_queue_depth") == 3


def test_each_instance_has_its_own_registry():
    registry = CollectorRegistry()
    a, b = GatewayMetrics(registry), GatewayMetrics()  # a second app in the same process does not clash
    a.set_queue_depth(7)
    assert a.registry is registry
    assert value(a, "routet2i_edge_queue_depth") == 7
    assert value(b, "routet2i_edge_queue_depth") == 0
    with pytest.raises(ValueError, match="Duplicated"):
        GatewayMetrics(registry)
    names = {name for name, _ in samples(a)}
    assert all(n.startswith("routet2i_") for n in names)
