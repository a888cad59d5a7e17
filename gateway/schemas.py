"""Request and response models of the HTTP API: the single source of the OpenAPI schema."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from backends.base import MAX_SEED
from gateway.budget import Backend, Reason

Route = Literal["auto", "edge", "cloud"]
SIZE_PATTERN = re.compile(r"^(\d{2,4})x(\d{2,4})$")
MIN_SIDE, MAX_SIDE = 64, 2048


def parse_size(size: str) -> tuple[int, int]:
    """'WxH' → (width, height); sides are multiples of 8 within [64, 2048]."""
    match = SIZE_PATTERN.match(size)
    if not match:
        raise ValueError("size must look like '512x512' (width x height in pixels)")
    width, height = int(match[1]), int(match[2])
    for side in (width, height):
        if not MIN_SIDE <= side <= MAX_SIDE or side % 8:
            raise ValueError(f"each side must be a multiple of 8 between {MIN_SIDE} and {MAX_SIDE}, got {size}")
    return width, height


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("prompt must contain non-whitespace text")
    return value


def _valid_size(value: str) -> str:
    parse_size(value)
    return value


PromptText = Annotated[
    str, Field(min_length=1, max_length=2000, description="What to draw."), AfterValidator(_not_blank)
]
SizeText = Annotated[str, Field(description="'WxH', sides multiples of 8 in [64, 2048]."), AfterValidator(_valid_size)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerateRequest(_Strict):
    prompt: PromptText
    negative_prompt: str | None = Field(default=None, max_length=2000)
    n: int = Field(default=1, ge=1, le=4, description="Number of images.")
    size: SizeText = "512x512"
    num_inference_steps: int | None = Field(default=None, ge=1, le=150)
    guidance_scale: float | None = Field(default=None, ge=0, le=30)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    route: Route = Field(default="auto", description="auto: the router decides; edge/cloud: forced.")
    private: bool = Field(default=False, description="true: the prompt never leaves the edge.")
    response_format: Literal["b64_json"] = "b64_json"


class RouteInfo(BaseModel):
    """The HTTP view of a routing `Decision` (gateway.budget): where the request went and why."""

    model_config = ConfigDict(from_attributes=True)
    backend: Backend
    reason: Reason
    prs: float | None = Field(description="Predicted PRS of the edge over the cloud (None when not scored).")
    alpha: float | None
    rho: float


class ImageData(BaseModel):
    b64_json: str


class GenerateResponse(BaseModel):
    created: int
    data: list[ImageData]
    seed: int
    route: RouteInfo


class OpenAIImageRequest(BaseModel):
    """The fields of OpenAI's `POST /v1/images/generations` this gateway honours; others are ignored."""

    model_config = ConfigDict(extra="ignore")
    prompt: PromptText
    n: int = Field(default=1, ge=1, le=4)
    size: SizeText = "512x512"
    response_format: Literal["b64_json"] = "b64_json"
    model: str | None = None
    user: str | None = None


class OpenAIImageResponse(BaseModel):
    created: int
    data: list[ImageData]


class ScoreRequest(_Strict):
    prompt: PromptText
    private: bool = False


class ScoreResponse(BaseModel):
    prs: float
    per_metric: dict[str, float]
    backend: Backend
    reason: Reason
    alpha: float
    rho: float


class BudgetUpdate(_Strict):
    rho: float | None = Field(default=None, ge=0, le=1, description="Cloud share budget ρ in [0, 1].")
    cost_cap_per_minute: int | None = Field(
        default=None, ge=0, description="Ceiling on cloud calls per minute on top of ρ; send 0 to remove it."
    )


class ErrorResponse(BaseModel):
    detail: str
