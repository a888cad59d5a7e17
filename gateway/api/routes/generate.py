"""Image generation (native and OpenAI-shaped) and the routing preview."""

from __future__ import annotations

import asyncio
import base64
import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from backends.base import GenerationRequest, result_pngs
from gateway.api.auth import ClientDep, ClientsDep, keyed
from gateway.api.deps import GatewayDep
from gateway.api.idempotent import idempotent
from gateway.fast_json import FastJSONResponse
from gateway.keys import ApiKey, ClientGate
from gateway.schemas import (
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    ImageData,
    OpenAIImageRequest,
    OpenAIImageResponse,
    RouteInfo,
    ScoreRequest,
    ScoreResponse,
    parse_size,
)
from gateway.serving import Gateway, Served, ServeRequest

router = APIRouter()

ERRORS = {
    400: {"model": ErrorResponse, "description": "Refused by the cloud provider's content filter"},
    401: {"model": ErrorResponse, "description": "Missing, wrong or revoked API key (when keys are required)"},
    403: {"model": ErrorResponse, "description": "The API key may not use the requested backend"},
    408: {"model": ErrorResponse, "description": "Body not complete within body_read_timeout_s"},
    409: {"model": ErrorResponse, "description": "The first request with this Idempotency-Key is still running"},
    411: {"model": ErrorResponse, "description": "Chunked body without Content-Length"},
    413: {"model": ErrorResponse, "description": "Body larger than max_body_bytes"},
    422: {"model": ErrorResponse, "description": "Invalid body, or an Idempotency-Key reused with another body"},
    429: {"model": ErrorResponse, "description": "In-flight cap or a key's limit; see Retry-After"},
    431: {"model": ErrorResponse, "description": "Headers larger than max_header_bytes"},
    503: {"model": ErrorResponse, "description": "Backend busy or failed; see Retry-After"},
}


def serve_request(body: GenerateRequest) -> ServeRequest:
    """The service's request for an HTTP body (the size already validated by the schema)."""
    width, height = parse_size(body.size)
    generation = GenerationRequest(
        prompt=body.prompt, negative_prompt=body.negative_prompt, n=body.n, width=width, height=height,
        num_inference_steps=body.num_inference_steps, guidance_scale=body.guidance_scale, seed=body.seed,
    )  # fmt: skip
    return ServeRequest(generation, route=body.route, private=body.private, cache=body.cache, verify=body.verify)


def route_headers(response: Response, served: Served) -> None:
    response.headers["X-Route-Backend"] = served.route.backend
    response.headers["X-Route-Reason"] = served.route.reason
    response.headers["X-Route-Arm"] = served.route.arm or served.route.backend
    if served.verify is not None:
        response.headers["X-Route-Escalated"] = "true" if served.verify.escalated else "false"


def route_info(served: Served) -> RouteInfo:
    """The route of a served request, with what verify-then-escalate did (when it ran)."""
    info = RouteInfo.model_validate(served.route)
    verdict = served.verify
    if verdict is None:
        return info
    update = {"verified": True, "verify_score": verdict.score, "escalated": verdict.escalated}
    return info.model_copy(update={**update, "verify_result": verdict.result})


async def images(served: Served) -> list[ImageData]:
    """Base64 images: a cloud worker's base64 passed through as received (checked, not re-encoded: PNG or JPEG);
    edge images encoded as PNG off the event loop."""
    result = served.result
    if result.b64 is not None and len(result.b64) == len(result.images):
        return [ImageData(b64_json=data) for data in result.b64]
    pngs = result.png if result.png is not None else await asyncio.to_thread(result_pngs, result)
    return [ImageData(b64_json=base64.b64encode(png).decode()) for png in pngs]


async def generate_response(
    body: GenerateRequest, gw: Gateway, clients: ClientGate, client: ApiKey | None, *, admit: bool = True
) -> tuple[GenerateResponse, Served]:
    """What POST /generate answers for `body` (also what a job's result is): quotas, routing, generation."""
    job = keyed(clients, client, serve_request(body), private_given="private" in body.model_fields_set, admit=admit)
    served = await gw.generate(job)
    clients.served(client, served.route.backend, served.route.reason)
    return GenerateResponse(
        created=int(time.time()), data=await images(served), seed=served.result.seed,
        route=route_info(served),
    ), served  # fmt: skip


@router.post("/generate", response_model=GenerateResponse, responses=ERRORS, tags=["images"])
async def generate(
    body: GenerateRequest, request: Request, gw: GatewayDep, client: ClientDep, clients: ClientsDep
) -> Response:
    """Generate images; the router decides edge or cloud unless `route` or `private` says otherwise.
    With an `Idempotency-Key` header, a retry with the same body gets the first response (generated once)."""

    async def produce() -> JSONResponse:
        request.state.counted = True  # Gateway.generate counts it in the metrics, whatever the outcome
        answer, served = await generate_response(body, gw, clients, client)
        response = FastJSONResponse(answer.model_dump(mode="json"))
        route_headers(response, served)
        return response

    return await idempotent(request, client, body.model_dump(mode="json"), produce)


@router.post("/v1/images/generations", response_model=OpenAIImageResponse, responses=ERRORS, tags=["images"])
async def openai_generations(
    body: OpenAIImageRequest,
    request: Request,
    response: Response,
    gw: GatewayDep,
    client: ClientDep,
    clients: ClientsDep,
) -> Response:
    """OpenAI Images API shape, served through the same routing as /generate (`private`, the caps and keys included)."""
    native = GenerateRequest(prompt=body.prompt, n=body.n, size=body.size, route=body.model or "auto",
                             private=body.private)  # fmt: skip
    job = keyed(clients, client, serve_request(native), private_given="private" in body.model_fields_set)
    request.state.counted = True
    served = await gw.generate(job)
    clients.served(client, served.route.backend, served.route.reason)
    answer = OpenAIImageResponse(created=int(time.time()), data=await images(served))
    kept = {k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")}
    fast = FastJSONResponse(answer.model_dump(mode="json"), headers=kept)  # headers set on `response` by the deps
    route_headers(fast, served)
    return fast


@router.post("/route", response_model=ScoreResponse, tags=["routing"])
async def route(body: ScoreRequest, gw: GatewayDep, client: ClientDep) -> ScoreResponse:
    """Score a prompt and say where it would go now (the budget's caps included); generates and counts nothing."""
    score, decision = await gw.preview(body.prompt, private=body.private)
    qualities = decision.qualities
    names = [arm.name for arm in gw_arm_specs(gw)] if qualities is not None else []
    return ScoreResponse(
        prs=score.prs, per_metric=score.per_metric, head=score.head, backend=decision.backend, reason=decision.reason,
        alpha=decision.alpha, rho=decision.rho, arm=decision.arm or decision.backend, lam=decision.lam,
        arm_quality=dict(zip(names, qualities, strict=True)) if qualities is not None else None,
    )  # fmt: skip


def gw_arm_specs(gw: Gateway) -> list:
    """The arms of an N-arm gateway (none with two arms)."""
    arm_set = getattr(gw, "arm_set", None)
    return arm_set.specs if arm_set is not None else []
