"""Request and response models of the HTTP API: the single source of the OpenAPI schema.

Requests are validated strictly: no type coercion (`true` is not 1.0, `"0.5"` is not a number), finite
numbers only, no unknown fields, sizes of ASCII digits only, prompts with visible text.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from backends.base import MAX_SEED
from gateway.budget import Backend, Reason

Route = Literal["auto", "edge", "cloud"]
SIZE_PATTERN = re.compile(r"([0-9]{2,4})x([0-9]{2,4})")  # whole string, ASCII digits (fullmatch)
MIN_SIDE, MAX_SIDE = 64, 2048


def parse_size(size: str) -> tuple[int, int]:
    """'WxH' → (width, height); sides are multiples of 8 within [64, 2048]."""
    match = SIZE_PATTERN.fullmatch(size)
    if not match:
        raise ValueError("size must look like '512x512' (width x height in pixels)")
    width, height = int(match[1]), int(match[2])
    for side in (width, height):
        if not MIN_SIDE <= side <= MAX_SIDE or side % 8:
            raise ValueError(f"each side must be a multiple of 8 between {MIN_SIDE} and {MAX_SIDE}, got {size}")
    return width, height


def _not_blank(value: str) -> str:
    """Some visible text: a letter, digit, punctuation or symbol (not only spaces or zero-width characters)."""
    if not any(unicodedata.category(char)[0] in "LNPS" for char in value):
        raise ValueError("prompt must contain visible text (not only whitespace or zero-width characters)")
    return value


def _not_negative_zero(value: float | None) -> float | None:
    if value is not None and value == 0 and math.copysign(1.0, value) < 0:
        raise ValueError("-0.0 is not accepted: send 0")
    return value


def _valid_size(value: str) -> str:
    parse_size(value)
    return value


PromptText = Annotated[
    str, Field(min_length=1, max_length=2000, description="What to draw."), AfterValidator(_not_blank)
]
SizeText = Annotated[str, Field(description="'WxH', sides multiples of 8 in [64, 2048]."), AfterValidator(_valid_size)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class GenerateRequest(_Strict):
    prompt: PromptText
    negative_prompt: str | None = Field(default=None, max_length=2000)
    n: int = Field(default=1, ge=1, le=4, description="Number of images.")
    size: SizeText = "512x512"
    num_inference_steps: int | None = Field(default=None, ge=1, le=150)
    guidance_scale: Annotated[
        float | None, Field(default=None, ge=0, le=30, allow_inf_nan=False), AfterValidator(_not_negative_zero)
    ] = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    route: Route = Field(default="auto", description="auto: the router decides; edge/cloud: forced.")
    private: bool = Field(default=False, description="true: the prompt never leaves the edge.")
    cache: bool = Field(
        default=True, description="false: neither served from nor stored in the exact cache (seeded requests only)."
    )
    verify: bool | None = Field(
        default=None,
        description="true: check the edge image and re-run on the cloud if it scores under the threshold; false: "
        "don't; unset: the gateway's verify_enabled.",
    )
    response_format: Literal["b64_json"] = "b64_json"


class RouteInfo(BaseModel):
    """The HTTP view of a routing `Decision` (gateway.budget): where the request went and why."""

    model_config = ConfigDict(from_attributes=True)
    backend: Backend
    reason: Reason
    prs: float | None = Field(description="Predicted PRS of the edge over the cloud (None when not scored).")
    alpha: float | None
    rho: float
    verified: bool = Field(default=False, description="The edge image was checked (verify then escalate).")
    verify_score: float | None = Field(default=None, description="The check's score (lowest image), if it ran.")
    escalated: bool = Field(default=False, description="Re-run on the cloud after the edge image failed the check.")
    verify_result: Literal["pass", "escalated", "capped", "failed"] | None = Field(
        default=None,
        description="pass; escalated; capped: a cap or the key's share kept the edge image; failed: the check or the "
        "escalation failed, the edge image served.",
    )
    arm: str | None = Field(None, description="The arm that served it (two arms: edge or cloud).")
    cost: float | None = Field(None, description="What it cost, in the operator's unit (0 for a cache hit).")
    lam: float | None = Field(None, description="λ of the N-arm rule when it was decided (None with two arms).")


class ImageData(BaseModel):
    b64_json: str


class GenerateResponse(BaseModel):
    created: int
    data: list[ImageData]
    seed: int
    route: RouteInfo


def _no_user(value: str | None) -> str | None:
    if value is not None:
        raise ValueError(
            "user: per-end-user attribution is not supported by this gateway (nothing would honour it); drop the "
            "field, and send private: true for prompts that must not leave the edge"
        )
    return value


class OpenAIImageRequest(_Strict):
    """OpenAI's `POST /v1/images/generations`: every field is honoured or refused with 422, none ignored.
    `model` picks the route ("auto" or unset: the router; "edge"/"cloud": forced, the budget's caps apply)."""

    prompt: PromptText
    n: int = Field(default=1, ge=1, le=4)
    size: SizeText = "512x512"
    response_format: Literal["b64_json"] = "b64_json"
    model: Route | None = Field(default=None, description="auto (or unset): the router decides; edge/cloud: forced.")
    private: bool = Field(default=False, description="true: the prompt never leaves the edge.")
    user: Annotated[
        str | None, Field(default=None, description="Not supported: any value is refused (422)."),
        AfterValidator(_no_user),
    ] = None  # fmt: skip


class OpenAIImageResponse(BaseModel):
    created: int
    data: list[ImageData]


class ScoreRequest(_Strict):
    prompt: PromptText
    private: bool = False


class ScoreResponse(BaseModel):
    prs: float
    per_metric: dict[str, float]
    head: Literal["paper", "pair", "generic"] = Field(
        description="What scored the prompt: the paper's pair router, or a many-model router's pair head or "
        "generic edge-vs-cloud gap."
    )
    backend: Backend
    reason: Reason
    alpha: float | None = Field(description="α of the two-arm rule (None with N arms).")
    rho: float
    arm: str | None = Field(None, description="The arm it would go to (two arms: edge or cloud).")
    lam: float | None = Field(None, description="λ of the N-arm rule (None with two arms).")
    arm_quality: dict[str, float] | None = Field(None, description="Predicted quality per arm (N arms).")


class BudgetUpdate(_Strict):
    rho: Annotated[
        float | None,
        Field(default=None, ge=0, le=1, allow_inf_nan=False, description="Cloud share budget ρ in [0, 1]."),
        AfterValidator(_not_negative_zero),
    ] = None
    cost_cap_per_minute: int | None = Field(
        default=None, ge=0, description="Ceiling on cloud calls per minute on top of ρ; send 0 to remove it."
    )
    cost_budget: Annotated[
        float | None,
        Field(default=None, ge=0, allow_inf_nan=False, description="Mean cost per request, operator's unit."),
        AfterValidator(_not_negative_zero),
    ] = None


class ErrorResponse(BaseModel):
    detail: str
