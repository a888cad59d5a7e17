"""FastAPI dependencies: the components `create_app` put on `app.state`, and the admin check.

The accessors are `async def`: FastAPI runs a plain `def` dependency in its thread pool, a thread hop (and
two event-loop wake-ups) per dependency per request for what is an attribute read."""

from __future__ import annotations

import hmac
import logging
import math
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from backends.base import ImageBackend
from gateway.api.auth_failures import AuthFailures
from gateway.budget import BudgetController
from gateway.budget_view import BudgetView
from gateway.metrics import GatewayMetrics
from gateway.serving import Gateway
from gateway.settings import Settings

audit = logging.getLogger("routet2i.audit")


async def get_gateway(request: Request) -> Gateway:
    """The request service; 503 until the lifespan has loaded the router and the edge."""
    if not hasattr(request.app.state, "gateway"):
        raise HTTPException(503, "the gateway is starting", headers={"Retry-After": "5"})
    return request.app.state.gateway


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_budget(request: Request) -> BudgetController:
    return request.app.state.budget


async def get_budget_view(request: Request) -> BudgetView:
    state = request.app.state
    return BudgetView(state.budget, state.arm_set, state.arm_specs)


async def get_metrics(request: Request) -> GatewayMetrics:
    return request.app.state.metrics


async def get_edge(request: Request) -> ImageBackend:
    return request.app.state.edge


async def get_cloud(request: Request) -> ImageBackend | None:
    return request.app.state.cloud


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
BudgetDep = Annotated[BudgetController, Depends(get_budget)]
BudgetViewDep = Annotated[BudgetView, Depends(get_budget_view)]
MetricsDep = Annotated[GatewayMetrics, Depends(get_metrics)]
EdgeDep = Annotated[ImageBackend, Depends(get_edge)]
CloudDep = Annotated[ImageBackend | None, Depends(get_cloud)]
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]


def require_admin(request: Request, settings: SettingsDep, credentials: BearerDep) -> None:
    """404 while no admin token is set, 401 without a bearer token, 403 with a wrong one (audited), 429 for an
    address that sent too many wrong ones in the last minute (`admin_auth_failures_per_minute`)."""
    if settings.admin_token is None:
        raise HTTPException(404, "the admin endpoint is off: set ROUTET2I_ADMIN_TOKEN to enable it")
    failures: AuthFailures = request.app.state.admin_auth_failures
    client = request.client.host if request.client else "unknown"
    if (wait := failures.retry_after(client)) is not None:
        raise HTTPException(429, "too many wrong admin tokens from this address; retry later",
                            headers={"Retry-After": str(math.ceil(wait))})  # fmt: skip
    if credentials is None:
        raise HTTPException(401, "admin token required: Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    expected = settings.admin_token.get_secret_value().encode()
    if not hmac.compare_digest(credentials.credentials.encode("utf-8", "surrogateescape"), expected):
        count = failures.record(client)
        audit.warning("admin auth failed from %s: wrong token (%d in the last minute)", client, count)
        raise HTTPException(403, "wrong admin token")
