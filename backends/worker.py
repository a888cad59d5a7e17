"""The cloud side: a FastAPI app serving an SD3.5 diffusers pipeline to `WorkerCloudBackend`.

It reuses `EdgeBackend` for the pipeline machinery (device lock, micro-batching, per-image seeds,
bounded queue); this module only adds HTTP, bearer-token auth and readiness. The pipeline loads in
the background at startup, so `/healthz` answers at once and `/readyz` turns 200 when it is loaded.

A request the model cannot run (a side over what its position embedding covers, not a multiple of its
latent stride, anything diffusers' input checks refuse) is a 422 before or instead of a 500, so that the
client neither retries it nor counts it against the worker's health. When the client goes away (its
timeout, a cancelled gateway request) the generation is cancelled: dropped from the queue, or stopped
between denoising steps. Tokenizer warnings are scrubbed of prompt text (`backends.logs`).

    POST /v1/generate  {prompt, negative_prompt, n, width, height, num_inference_steps, guidance_scale, seed}
                       → {"images": [base64 PNG], "seed": int, "model": str, "timings": {...}}
                       422: a request this model cannot run; 503 + Retry-After: busy or loading
    GET  /healthz      alive
    GET  /readyz       pipeline loaded (503 while loading or after a failed load), queue depth, in flight
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import ipaddress
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator

from backends.base import MAX_SEED, BackendError, BackendOverloaded, BackendUnavailable, GenerationRequest, png_bytes
from backends.disconnect import ClientDisconnected, until_disconnected
from backends.edge import EdgeBackend
from backends.logs import install_prompt_scrubber

log = logging.getLogger(__name__)

TOKEN_ENV = "ROUTET2I_WORKER_TOKEN"
CLIENT_CLOSED = 499  # nginx's status for "the client closed the connection"; nobody reads it


class GenerateBody(BaseModel):
    """The worker's request body (unknown fields are rejected so that typos don't pass silently)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=10_000)
    negative_prompt: str | None = Field(default=None, max_length=10_000)
    n: int = Field(default=1, ge=1, le=4)
    width: int = Field(default=1024, ge=16, le=2048)
    height: int = Field(default=1024, ge=16, le=2048)
    num_inference_steps: int | None = Field(default=None, ge=1, le=200)
    guidance_scale: float | None = Field(default=None, ge=0, le=50)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8 (e.g. {value - value % 8} or {value - value % 8 + 8})")
        return value

    def to_request(self) -> GenerationRequest:
        return GenerationRequest(**self.model_dump())


def _unavailable(message: str, retry_after: float | None, status: int = 503) -> JSONResponse:
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def _bearer_auth(token: str | None):
    scheme = HTTPBearer(auto_error=False)

    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(scheme)) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise _AuthError()

    return check


class _AuthError(Exception):
    pass


def create_worker_app(
    model: str,
    *,
    token: str | None,
    device: str = "auto",
    dtype: str = "auto",
    max_queue: int = 8,
    max_batch: int = 2,
    batch_window_ms: float = 10,
    default_steps: int = 28,
    default_guidance: float = 3.5,
    pipeline_class: str | None = "StableDiffusion3Pipeline",
    model_name: str | None = None,
) -> FastAPI:
    """The worker app. `token=None` disables auth (only sensible on a private network)."""
    if token is not None and not token.strip():
        raise ValueError(f"token: empty; set {TOKEN_ENV} to a secret, or unset it to run without auth")
    install_prompt_scrubber()
    backend = EdgeBackend(
        model,
        device=device,
        dtype=dtype,
        max_queue=max_queue,
        max_batch=max_batch,
        batch_window_ms=batch_window_ms,
        default_steps=default_steps,
        default_guidance=default_guidance,
        pipeline_class=pipeline_class,
        lazy=True,
        name="worker",
    )
    label = model_name or model
    state: dict[str, Any] = {"load_error": None}

    async def load() -> None:
        try:
            await backend.load()
        except Exception as exc:  # keep serving /healthz and report the failure on /readyz
            log.exception("worker: failed to load %s", model)
            state["load_error"] = f"{type(exc).__name__}: {exc}"

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(load())
        try:
            yield
        finally:
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            await backend.aclose()

    app = FastAPI(title="RouteT2I cloud worker", lifespan=lifespan)
    app.state.backend = backend

    @app.exception_handler(_AuthError)
    async def _auth_failed(request: Request, exc: _AuthError) -> JSONResponse:
        return JSONResponse(
            {"detail": "invalid or missing bearer token"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if backend.ready():
            return JSONResponse(
                {
                    "status": "ready",
                    "model": label,
                    "queue_depth": backend.queue_depth(),
                    "in_flight": backend.in_flight(),
                }
            )
        if state["load_error"]:
            return JSONResponse({"status": "failed", "detail": state["load_error"]}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "5"})

    @app.post("/v1/generate", dependencies=[Depends(_bearer_auth(token))])
    async def generate(body: GenerateBody, request: Request) -> Response:
        if not backend.ready():
            return _unavailable(state["load_error"] or "the model is still loading", 5.0)
        try:
            result = await until_disconnected(request, backend.generate(body.to_request()))
        except ClientDisconnected:
            return Response(status_code=CLIENT_CLOSED)
        except ValueError as exc:  # includes RequestRejected: the model cannot run this request as asked
            return JSONResponse({"detail": str(exc)}, status_code=422)
        except BackendOverloaded as exc:
            return _unavailable(str(exc), exc.retry_after or 1.0)
        except BackendUnavailable as exc:
            return _unavailable(str(exc), exc.retry_after)
        except BackendError as exc:
            if exc.kind == "edge_oom":
                return _unavailable("the worker ran out of accelerator memory; try again", 1.0)
            return JSONResponse({"detail": str(exc), "kind": exc.kind}, status_code=500)
        images = await asyncio.to_thread(lambda: [base64.b64encode(png_bytes(im)).decode() for im in result.images])
        return JSONResponse({"images": images, "seed": result.seed, "model": label, "timings": result.timings})

    return app


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run_worker(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8001,
    token: str | None = None,
    *,
    log_level: str = "info",
    **options: Any,
) -> None:
    """Serve `create_worker_app(model, token=token, **options)` with uvicorn until interrupted."""
    import uvicorn

    if token is None and not _is_loopback(host):
        log.warning(
            "worker: no token (%s unset) while listening on %s: anyone who can reach it can use it", TOKEN_ENV, host
        )
    app = create_worker_app(model, token=token, **options)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
