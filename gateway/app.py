"""`create_app(settings)` → the FastAPI gateway. Routes only: the work happens in `serving.Gateway`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles

from backends.base import ImageBackend, result_pngs
from gateway.budget import BudgetController, BudgetStore, InMemoryBudgetStore
from gateway.guard import RequestGuard
from gateway.metrics import GatewayMetrics, ensure_multiprocess_dir, multiprocess_dir
from gateway.redis_store import FailoverBudgetStore, RedisBudgetStore
from gateway.routing import PromptScorer, ScoringService
from gateway.schemas import (
    BudgetUpdate,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    ImageData,
    OpenAIImageRequest,
    OpenAIImageResponse,
    RouteInfo,
    ScoreRequest,
    ScoreResponse,
)
from gateway.serving import Gateway, GatewayError, Served
from gateway.settings import Settings

STATIC_DIR = Path(__file__).resolve().parent / "static"
log = logging.getLogger("routet2i.gateway")
audit = logging.getLogger("routet2i.audit")

ERRORS = {
    400: {"model": ErrorResponse, "description": "Refused by the cloud provider's content filter"},
    411: {"model": ErrorResponse, "description": "Chunked body without Content-Length"},
    413: {"model": ErrorResponse, "description": "Body larger than max_body_bytes"},
    429: {"model": ErrorResponse, "description": "Too many requests in flight; see Retry-After"},
    503: {"model": ErrorResponse, "description": "Backend busy or failed; see Retry-After"},
}


def _gateway(request: Request) -> Gateway:
    if not hasattr(request.app.state, "gateway"):
        raise HTTPException(503, "the gateway is starting", headers={"Retry-After": "5"})
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(_gateway)]
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]


def build_backends(settings: Settings) -> tuple[ImageBackend, ImageBackend | None]:
    """The edge pipeline and the cloud client the settings name (nothing is loaded yet)."""
    from backends.cloud import StabilityCloudBackend, WorkerCloudBackend
    from backends.edge import EdgeBackend

    if not settings.edge_model:
        raise ValueError("no edge model: set ROUTET2I_EDGE_MODEL to a diffusers pipeline path or hub id")
    edge = EdgeBackend(
        settings.edge_model, device=settings.edge_device, dtype=settings.edge_dtype, max_queue=settings.edge_max_queue,
        max_batch=settings.edge_max_batch, batch_window_ms=settings.edge_batch_window_ms,
        default_steps=settings.edge_default_steps, lazy=True,
    )  # fmt: skip
    options = {"timeout": settings.cloud_timeout_s, "max_retries": settings.cloud_retries}
    cloud: ImageBackend | None = None
    if settings.cloud_kind == "worker":
        if not settings.cloud_url:
            raise ValueError("cloud_kind=worker needs ROUTET2I_CLOUD_URL (or set ROUTET2I_CLOUD_KIND=none)")
        token = settings.cloud_token.get_secret_value() if settings.cloud_token else None
        cloud = WorkerCloudBackend(settings.cloud_url, token=token, **options)
    elif settings.cloud_kind == "stability":
        if not settings.stability_api_key:
            raise ValueError("cloud_kind=stability needs ROUTET2I_STABILITY_API_KEY")
        cloud = StabilityCloudBackend(
            settings.stability_api_key.get_secret_value(), model=settings.stability_model,
            base_url=settings.stability_base_url, **options,
        )  # fmt: skip
    return edge, cloud


def build_budget(settings: Settings) -> BudgetController:
    """The live budget controller on the store the settings name: in-memory (persisted to the state file),
    or Redis shared by every replica with that in-memory store as the fallback while Redis is away."""
    local = InMemoryBudgetStore(settings.rho, cost_cap=settings.cost_cap_per_minute, state_path=settings.state_file)
    store: BudgetStore = local
    if settings.redis_url is not None:
        shared = RedisBudgetStore.from_url(
            settings.redis_url.get_secret_value(), prefix=settings.redis_prefix, timeout_s=settings.redis_timeout_s,
            initial=local.settings(),
        )  # fmt: skip
        store = FailoverBudgetStore(shared, local, retry_interval_s=settings.redis_retry_s)
    return BudgetController(store, score_window=settings.score_window, decision_window=settings.decision_window)


def app_from_env() -> FastAPI:
    """`uvicorn gateway.app:app_from_env --factory --workers N`: each worker builds its app from the
    environment (ROUTET2I_*, ROUTET2I_CONFIG); set PROMETHEUS_MULTIPROC_DIR so /metrics adds up across workers."""
    ensure_multiprocess_dir()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(Settings())


def load_router(settings: Settings) -> PromptScorer:
    from router_model.model import RouteT2IRouter

    return RouteT2IRouter.from_pretrained(
        settings.router_path, device=settings.router_device, encoder_dtype=settings.router_encoder_dtype
    )


def create_app(
    settings: Settings | None = None,
    *,
    router: PromptScorer | None = None,
    edge: ImageBackend | None = None,
    cloud: ImageBackend | None = None,
) -> FastAPI:
    """The gateway app. Components not passed in are built from `settings` when the app starts."""
    settings = settings or Settings()
    metrics = GatewayMetrics()
    budget = build_budget(settings)
    if edge is None:
        edge, built_cloud = build_backends(settings)
        cloud = cloud if cloud is not None else built_cloud

    def sample_gauges() -> None:
        metrics.set_budget(budget.snapshot())
        if hasattr(edge, "queue_depth"):
            metrics.set_queue_depth(edge.queue_depth())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scorer = router if router is not None else load_router(settings)
        scoring = ScoringService(scorer, max_batch=settings.scoring_max_batch, window_ms=settings.scoring_window_ms)
        await scoring.start()
        if hasattr(edge, "load"):
            await edge.load()
        app.state.gateway = Gateway(
            scoring=scoring, budget=budget, metrics=metrics, edge=edge, cloud=cloud, log_prompts=settings.log_prompts
        )
        log.info("gateway ready: ρ=%.3f, cloud=%s", budget.rho, settings.cloud_kind if cloud else "none")
        stop_refresh = None
        if multiprocess_dir() is not None:  # keep this worker's gauges current between scrapes of any worker
            stop_refresh = metrics.start_refresh(sample_gauges)
        try:
            yield
        finally:
            if stop_refresh is not None:
                stop_refresh.set()
            await scoring.aclose()
            for backend in (edge, cloud):
                if backend is not None:
                    await backend.aclose()

    app = FastAPI(title="RouteT2I gateway", version="0.1.0", lifespan=lifespan)
    app.state.settings, app.state.budget, app.state.metrics = settings, budget, metrics

    app.state.in_flight = 0
    app.add_middleware(
        RequestGuard, metrics=metrics, max_body_bytes=settings.max_body_bytes, max_in_flight=settings.max_in_flight,
        state=app.state,
    )  # fmt: skip

    @app.exception_handler(GatewayError)
    async def gateway_error(_: Request, exc: GatewayError) -> JSONResponse:
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after else None
        return JSONResponse({"detail": exc.detail, "kind": exc.kind}, status_code=exc.status, headers=headers)

    def route_headers(response: Response, served: Served) -> None:
        response.headers["X-Route-Backend"] = served.route.backend
        response.headers["X-Route-Reason"] = served.route.reason

    async def images(served: Served) -> list[ImageData]:
        """Base64 PNGs: a cloud worker's bytes as received; edge images encoded off the event loop."""
        result = served.result
        pngs = result.png if result.png is not None else await asyncio.to_thread(result_pngs, result)
        return [ImageData(b64_json=base64.b64encode(png).decode()) for png in pngs]

    @app.post("/generate", response_model=GenerateResponse, responses=ERRORS, tags=["images"])
    async def generate(body: GenerateRequest, request: Request, response: Response, gw: GatewayDep) -> GenerateResponse:
        """Generate images; the router decides edge or cloud unless `route` or `private` says otherwise."""
        request.state.counted = True  # Gateway.generate counts it in the metrics, whatever the outcome
        served = await gw.generate(body)
        route_headers(response, served)
        r = served.route
        return GenerateResponse(
            created=int(time.time()), data=await images(served), seed=served.result.seed,
            route=RouteInfo(backend=r.backend, reason=r.reason, prs=r.prs, alpha=r.alpha, rho=r.rho),
        )  # fmt: skip

    @app.post("/v1/images/generations", response_model=OpenAIImageResponse, responses=ERRORS, tags=["images"])
    async def openai_generations(
        body: OpenAIImageRequest, request: Request, response: Response, gw: GatewayDep
    ) -> OpenAIImageResponse:
        """OpenAI Images API shape, served through the same routing as /generate."""
        request.state.counted = True
        served = await gw.generate(GenerateRequest(prompt=body.prompt, n=body.n, size=body.size))
        route_headers(response, served)
        return OpenAIImageResponse(created=int(time.time()), data=await images(served))

    @app.post("/route", response_model=ScoreResponse, tags=["routing"])
    async def route(body: ScoreRequest, gw: GatewayDep) -> ScoreResponse:
        """Score a prompt and say where it would go now; generates nothing and counts nothing."""
        score = await gw.score(body.prompt)
        decision = gw.would_route(score.prs, body.private)
        return ScoreResponse(
            prs=score.prs, per_metric=score.per_metric, backend=decision.backend, reason=decision.reason,
            alpha=decision.alpha, rho=decision.rho,
        )  # fmt: skip

    def require_admin(credentials: BearerDep) -> None:
        if settings.admin_token is None:
            raise HTTPException(404, "the admin endpoint is off: set ROUTET2I_ADMIN_TOKEN to enable it")
        if credentials is None:
            raise HTTPException(401, "admin token required: Authorization: Bearer <token>",
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        expected = settings.admin_token.get_secret_value().encode()
        if not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise HTTPException(403, "wrong admin token")

    @app.get("/admin/budget", dependencies=[Depends(require_admin)], tags=["admin"])
    async def get_budget() -> dict:
        """ρ, α, the windowed cloud fraction and cost-cap use."""
        return budget.snapshot()

    @app.put("/admin/budget", dependencies=[Depends(require_admin)], tags=["admin"])
    async def put_budget(body: BudgetUpdate, request: Request) -> dict:
        """Change ρ and/or the cost cap (0 removes it); effective on the next request, persisted."""
        before = budget.snapshot()
        if body.rho is not None:
            budget.set_rho(body.rho)
        if body.cost_cap_per_minute is not None:
            budget.set_cost_cap(body.cost_cap_per_minute or None)
        after = budget.snapshot()
        audit.warning(
            "admin budget change from %s: rho %s -> %s, cost_cap %s -> %s",
            request.client.host if request.client else "?", before["rho"], after["rho"], before["cost_cap"],
            after["cost_cap"],
        )  # fmt: skip
        return after

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        sample_gauges()
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/status", tags=["ops"])
    async def status(request: Request) -> dict:
        """Live numbers for dashboards and the console page: budget, readiness, queue depth (no secrets)."""
        return {
            "time": time.time(),
            "budget": budget.snapshot(),
            "ready": hasattr(request.app.state, "gateway") and edge.ready(),
            "cloud_configured": cloud is not None,
            "edge_queue_depth": edge.queue_depth() if hasattr(edge, "queue_depth") else None,
            "admin_enabled": settings.admin_token is not None,
        }

    @app.get("/", include_in_schema=False)
    async def console() -> Response:
        """The operator console and playground (static files shipped in the package)."""
        index = STATIC_DIR / "index.html"
        if not index.exists():
            return JSONResponse({"detail": "no console page in this build; see /docs for the API"}, status_code=404)
        return FileResponse(index)

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz(request: Request) -> JSONResponse:
        parts = {
            "router": hasattr(request.app.state, "gateway"),
            "edge": edge.ready(),
            "cloud": cloud.ready() if cloud is not None else None,
        }
        ready = parts["router"] and parts["edge"]
        return JSONResponse({"ready": ready, **parts}, status_code=200 if ready else 503)

    return app
