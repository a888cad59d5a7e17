"""Operations: liveness, readiness, Prometheus metrics and the status numbers of the console."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from backends.base import ImageBackend
from gateway.api.deps import BudgetDep, BudgetViewDep, CloudDep, EdgeDep, MetricsDep, SettingsDep
from gateway.budget import BudgetController
from gateway.metrics import GatewayMetrics

router = APIRouter()


def sample_gauges(
    metrics: GatewayMetrics, budget: BudgetController, edge: ImageBackend, cloud: ImageBackend | None = None,
    lam: float | None = None,
) -> None:  # fmt: skip
    """Set the gauges that are read, not counted: the budget snapshot, the edge queue depth, the cloud circuit,
    λ of the N-arm rule (`lam`; None: two arms, 0)."""
    metrics.set_budget(budget.snapshot())
    metrics.lam.set(lam or 0.0)
    if hasattr(edge, "queue_depth"):
        metrics.set_queue_depth(edge.queue_depth())
    breaker = breaker_status(cloud)
    if breaker is not None:
        metrics.set_breaker(breaker["state"], breaker["consecutive_failures"])


def breaker_status(cloud: ImageBackend | None) -> dict | None:
    """The cloud client's circuit (state, seconds until a trial, failures), or None without a cloud."""
    if cloud is None or not hasattr(cloud, "breaker_status"):
        return None
    return cloud.breaker_status().as_dict()


@router.get("/metrics", include_in_schema=False)
async def prometheus(
    request: Request, metrics: MetricsDep, budget: BudgetDep, edge: EdgeDep, cloud: CloudDep
) -> Response:
    arm_set = request.app.state.arm_set
    sample_gauges(metrics, budget, edge, cloud, lam=arm_set.pacer.lam if arm_set is not None else None)
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


@router.get("/v1/status", tags=["ops"])
async def status(
    request: Request, budget: BudgetViewDep, edge: EdgeDep, cloud: CloudDep, settings: SettingsDep
) -> dict:
    """Live numbers for dashboards and the console page: budget (and each arm's cost, share and mean predicted
    quality), readiness, queue depth (no secrets)."""
    return {
        "time": time.time(),
        "budget": budget.snapshot(),
        "ready": hasattr(request.app.state, "gateway") and edge.ready(),
        "cloud_configured": cloud is not None,
        "cloud_breaker": breaker_status(cloud),
        "edge_queue_depth": edge.queue_depth() if hasattr(edge, "queue_depth") else None,
        "admin_enabled": settings.admin_token is not None,
        "api_key_required": settings.require_api_key,
    }


@router.get("/healthz", tags=["ops"])
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"])
async def readyz(request: Request, edge: EdgeDep, cloud: CloudDep) -> JSONResponse:
    parts = {
        "router": hasattr(request.app.state, "gateway"),
        "edge": edge.ready(),
        "cloud": cloud.ready() if cloud is not None else None,
        "cloud_breaker": breaker_status(cloud),
    }
    ready = parts["router"] and parts["edge"]
    return JSONResponse({"ready": ready, **parts}, status_code=200 if ready else 503)
