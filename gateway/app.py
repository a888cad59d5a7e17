"""`create_app(settings)` → the FastAPI gateway: builds the components, the lifespan and the wiring.

The routes live in `gateway/api/routes/`, the work in `serving.Gateway`, the budget in `gateway/budget/`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from backends.base import ImageBackend
from backends.pipeline_pool import PipelinePool
from gateway.api import api_router
from gateway.api.auth_failures import AuthFailures
from gateway.api.routes.console import STATIC_DIR
from gateway.api.routes.jobs import job_executor
from gateway.api.routes.ops import sample_gauges
from gateway.arm_routing import ArmSet
from gateway.arm_serving import ArmGateway
from gateway.arms import build_arm_backend, shorthand_arms
from gateway.budget import BudgetController, BudgetStore, FailoverBudgetStore, InMemoryBudgetStore, RedisBudgetStore
from gateway.cache import build_cache
from gateway.escalation import build_escalation
from gateway.guard import RequestGuard
from gateway.headers import SecurityHeaders
from gateway.idempotency import build_idempotency
from gateway.jobs import build_job_runner
from gateway.keys import ClientRefused, build_client_gate
from gateway.metrics import GatewayMetrics, ensure_multiprocess_dir, multiprocess_dir
from gateway.routing import PromptScorer, ScoringService
from gateway.serving import Gateway, GatewayError
from gateway.settings import Settings

log = logging.getLogger("routet2i.gateway")


def build_backends(settings: Settings) -> tuple[ImageBackend, ImageBackend | None]:
    """The edge pipeline and the cloud client the settings name (nothing is loaded yet)."""
    from backends.edge import EdgeBackend

    if not settings.edge_model:
        raise ValueError("no edge model: set ROUTET2I_EDGE_MODEL to a diffusers pipeline path or hub id")
    edge = EdgeBackend(
        settings.edge_model, device=settings.edge_device, dtype=settings.edge_dtype, max_queue=settings.edge_max_queue,
        max_batch=settings.edge_max_batch, batch_window_ms=settings.edge_batch_window_ms,
        default_steps=settings.edge_default_steps, lazy=True,
    )  # fmt: skip
    return edge, build_cloud(settings)


def build_cloud(settings: Settings) -> ImageBackend | None:
    """The cloud client `cloud_kind` names (None for `none`)."""
    from backends.cloud import OpenAICloudBackend, StabilityCloudBackend, WorkerCloudBackend

    options = {"timeout": settings.cloud_timeout_s, "max_retries": settings.cloud_retries}
    if settings.cloud_kind == "worker":
        if not settings.cloud_url:
            raise ValueError("cloud_kind=worker needs ROUTET2I_CLOUD_URL (or set ROUTET2I_CLOUD_KIND=none)")
        token = settings.cloud_token.get_secret_value() if settings.cloud_token else None
        return WorkerCloudBackend(settings.cloud_url, token=token, **options)
    if settings.cloud_kind == "stability":
        if not settings.stability_api_key:
            raise ValueError("cloud_kind=stability needs ROUTET2I_STABILITY_API_KEY")
        return StabilityCloudBackend(
            settings.stability_api_key.get_secret_value(), model=settings.stability_model,
            base_url=settings.stability_base_url, **options,
        )  # fmt: skip
    if settings.cloud_kind == "openai":
        if not settings.openai_api_key:
            raise ValueError("cloud_kind=openai needs ROUTET2I_OPENAI_API_KEY")
        return OpenAICloudBackend(
            settings.openai_api_key.get_secret_value(), model=settings.openai_model,
            base_url=settings.openai_base_url, **options,
        )  # fmt: skip
    return None


def arm_ids(settings: Settings) -> dict[str, str]:
    """What each backend is, in the exact cache's keys: a changed model or provider never serves another's images."""
    cloud = {
        "worker": f"worker:{settings.cloud_url}",
        "stability": f"stability:{settings.stability_base_url}:{settings.stability_model}",
        "openai": f"openai:{settings.openai_base_url}:{settings.openai_model}",
    }.get(settings.cloud_kind, "cloud")
    return {"edge": f"edge:{settings.edge_model or ''}", "cloud": cloud}


def _two_arm_rho(settings: Settings) -> float:
    from gateway.budget.pacing import cost_to_rho

    return cost_to_rho(settings.cost_budget or 0.0, [settings.edge_cost, settings.cloud_cost])


def build_budget(settings: Settings) -> BudgetController:
    """The live budget controller on the store the settings name: in-memory (persisted to the state file),
    or Redis shared by every replica with that in-memory store as the fallback while Redis is away."""
    rho = _two_arm_rho(settings) if settings.cost_budget is not None and not settings.arms else settings.rho
    local = InMemoryBudgetStore(rho, cost_cap=settings.cost_cap_per_minute, state_path=settings.state_file)
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
    """The checkpoint at `router_path`: the paper's pair router (on `router_runtime`), or a many-model router
    (`kind: multi`) fixed to the settings' edge and cloud model ids."""
    from router_model.onnx_runtime import scorer_for
    from router_model.prior_scorer import PriorScorer
    from router_model.scorers import load_scorer

    scorer = load_scorer(
        settings.router_path, edge_id=settings.edge_model_id, cloud_id=settings.cloud_model_id,
        device=settings.router_device, encoder_dtype=settings.router_encoder_dtype,
        models=[arm.model_id for arm in settings.arms],
    )  # fmt: skip
    if hasattr(scorer, "head"):
        if settings.router_runtime != "torch":
            raise ValueError(f"router_runtime={settings.router_runtime} serves the paper's checkpoints only; "
                             "a many-model checkpoint runs on torch")  # fmt: skip
        log.info("many-model router: %s → %s scored by the %s head", scorer.edge_id, scorer.cloud_id, scorer.head)
        return scorer
    scorer = scorer_for(scorer, settings.router_runtime)
    if isinstance(scorer, PriorScorer):
        log.info("router scores with its feature prior alone (γ = 0): no encoder loaded, router_runtime unused")
    return scorer


def create_app(
    settings: Settings | None = None,
    *,
    router: PromptScorer | None = None,
    edge: ImageBackend | None = None,
    cloud: ImageBackend | None = None,
    backends: Mapping[str, ImageBackend] | None = None,
) -> FastAPI:
    """The gateway app. Components not passed in are built from `settings` when the app starts.
    With `arms` set, `backends` (one per arm name) replaces `edge` and `cloud`."""
    settings = settings or Settings()
    metrics = GatewayMetrics()
    budget = build_budget(settings)
    cache = build_cache(settings, metrics)
    escalation = build_escalation(settings, budget, metrics)
    arm_set: ArmSet | None = None
    arm_backends: dict[str, ImageBackend] = {}
    if settings.arms:
        redis_url = settings.redis_url.get_secret_value() if settings.redis_url is not None else None
        arm_set = ArmSet.build(
            settings.arms, cost_budget=settings.cost_budget, rho=budget.rho, cloud_model_id=settings.cloud_model_id,
            decision_window=settings.decision_window, cost_cap=budget.store.settings().cost_cap, redis_url=redis_url,
            redis_prefix=settings.redis_prefix, redis_timeout_s=settings.redis_timeout_s,
            redis_retry_s=settings.redis_retry_s,
        )  # fmt: skip
        given, pool = dict(backends or {}), PipelinePool()  # local arms of one pipeline load it once
        arm_backends = {
            arm.name: given.get(arm.name) or build_arm_backend(arm, settings, pool) for arm in settings.arms
        }
        edge = arm_backends[next(arm.name for arm in settings.arms if arm.local)]
        cloud = next((arm_backends[arm.name] for arm in settings.arms if arm.remote), None)
    elif edge is None:
        edge, built_cloud = build_backends(settings)
        cloud = cloud if cloud is not None else built_cloud

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scorer = router if router is not None else load_router(settings)
        scoring = ScoringService(
            scorer, max_batch=settings.scoring_max_batch, window_ms=settings.scoring_window_ms,
            cache_size=settings.router_cache_size, inline=settings.scoring_inline,
        )  # fmt: skip
        await scoring.start()
        for backend in arm_backends.values() or [edge]:
            if hasattr(backend, "load"):
                await backend.load()
        common = dict(
            scoring=scoring, budget=budget, metrics=metrics, log_prompts=settings.log_prompts,
            max_compute_units=settings.max_compute_units, default_steps=settings.edge_default_steps,
            forced_cloud_may_exceed_rho=settings.forced_cloud_may_exceed_rho, cache=cache, escalation=escalation,
        )  # fmt: skip
        if escalation is not None:
            await escalation.load()
        if arm_set is not None:
            app.state.gateway = ArmGateway(arm_set=arm_set, backends=arm_backends, **common)
        else:
            app.state.gateway = Gateway(
                edge=edge, cloud=cloud, arms=arm_ids(settings),
                costs={"edge": settings.edge_cost, "cloud": settings.cloud_cost}, **common,
            )  # fmt: skip
        app.state.jobs = build_job_runner(settings, job_executor(app))
        await app.state.jobs.start()
        log.info("gateway ready: ρ=%.3f, cloud=%s", budget.rho, settings.cloud_kind if cloud else "none")
        stop_refresh = None
        if multiprocess_dir() is not None:  # keep this worker's gauges current between scrapes of any worker
            stop_refresh = metrics.start_refresh(
                lambda: sample_gauges(metrics, budget, edge, cloud, lam=arm_set.pacer.lam if arm_set else None)
            )
        try:
            yield
        finally:
            if stop_refresh is not None:
                stop_refresh.set()
            await app.state.jobs.stop()
            await scoring.aclose()
            if cache is not None:
                await cache.aclose()
            for backend in arm_backends.values() or (edge, cloud):
                if backend is not None:
                    await backend.aclose()

    # /docs and /redoc would load Swagger UI / ReDoc from a CDN: off (the schema is at /openapi.json).
    # No trailing-slash redirects: Starlette builds them from the Host header (GET /static → http://<Host>/static/).
    app = FastAPI(
        title="RouteT2I gateway", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
        redirect_slashes=False,
    )  # fmt: skip
    app.state.settings, app.state.budget, app.state.metrics = settings, budget, metrics
    app.state.edge, app.state.cloud = edge, cloud
    app.state.arm_set = arm_set  # None: two arms, routed by ρ
    app.state.arm_specs = list(settings.arms) or shorthand_arms(settings)
    app.state.clients = build_client_gate(settings, metrics.registry)
    app.state.idempotency = build_idempotency(settings)
    app.state.in_flight = 0
    app.state.admin_auth_failures = AuthFailures(settings.admin_auth_failures_per_minute)
    app.add_middleware(
        RequestGuard, metrics=metrics, max_body_bytes=settings.max_body_bytes, max_in_flight=settings.max_in_flight,
        state=app.state, body_read_timeout_s=settings.body_read_timeout_s, max_header_bytes=settings.max_header_bytes,
    )  # fmt: skip
    app.add_middleware(SecurityHeaders)
    app.add_exception_handler(GatewayError, gateway_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ClientRefused, client_refused)
    app.include_router(api_router)
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each problem's type, location and message, never the input: it may be a private prompt, and
    what could not be validated may not be encodable at all."""
    errors = [
        {"type": _text(error.get("type")), "loc": [_text(part) for part in error.get("loc", ())],
         "msg": _text(error.get("msg"))}
        for error in exc.errors()
    ]  # fmt: skip
    return JSONResponse({"detail": errors}, status_code=422)


def _text(value: object) -> str | int:
    """A location part or message that any JSON encoder can write (unpaired surrogates escaped)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


async def gateway_error(_: Request, exc: GatewayError) -> JSONResponse:
    """A `GatewayError` as JSON with its status, kind and (when it has one) Retry-After."""
    headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after else None
    return JSONResponse({"detail": exc.detail, "kind": exc.kind}, status_code=exc.status, headers=headers)


async def client_refused(_: Request, exc: ClientRefused) -> JSONResponse:
    """A refused client key (401, 403, 429 with Retry-After) as JSON."""
    return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers())
