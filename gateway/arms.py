"""Arms: the backends the gateway routes among, each a model with a cost per image.

An arm is a local diffusers pipeline (`local`), a `routet2i worker`, the Stability API or an OpenAI-compatible
Images API, named by the operator, with the canonical id of its model (router_model/model_ids.py), its cost per
image in the operator's unit, an optional steps override (one model at fewer steps is its own arm), whether it
is remote (private prompts only ever use arms that are not) and an optional calls-per-minute cap.

The `arms` setting lists them. Unset, today's `edge_*` / `cloud_*` settings describe two arms, "edge" and
"cloud" (`shorthand_arms`), and the two-arm controller (ρ, α) routes as before. Secrets are never in an arm:
`token_env` names the environment variable that holds the worker token or API key.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from router_model.model_ids import canonical_id

if TYPE_CHECKING:
    from backends.base import ImageBackend
    from backends.pipeline_pool import PipelinePool
    from gateway.settings import Settings

ArmKind = Literal["local", "worker", "stability", "openai"]
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,31}$"
RESERVED_NAMES = ("auto",)


class ArmSpec(BaseModel):
    """One arm as the settings give it (YAML/JSON list `arms`, env `ROUTET2I_ARMS` as JSON)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Arm name in responses and metrics (lowercase, ≤ 32).")
    kind: ArmKind
    model_id: str = Field(min_length=1, description="Canonical model id (aliases are mapped; router_model/model_ids).")
    cost: float = Field(ge=0, allow_inf_nan=False, description="Cost per image, in the operator's unit.")
    steps: int | None = Field(None, ge=1, le=150, description="Inference steps this arm always runs (its own arm).")
    remote: bool | None = Field(None, description="Prompts leave the machine (default: every kind but local).")
    max_calls_per_minute: int | None = Field(None, ge=1, description="Cap on this arm's calls per minute.")
    quality_offset: float = Field(
        0.0, allow_inf_nan=False, description="Added to the arm's predicted quality (see README: N arms)."
    )
    model: str | None = Field(None, description="local: pipeline path or hub id; stability/openai: the API's model.")
    url: str | None = Field(None, description="worker: its base URL; stability/openai: the API base URL (optional).")
    token_env: str | None = Field(
        None, pattern=r"^[A-Z_][A-Z0-9_]*$", description="Env var holding the worker token or API key."
    )
    device: str = "auto"
    dtype: str = "auto"

    @field_validator("model_id")
    @classmethod
    def _canonical(cls, value: str) -> str:
        return canonical_id(value.strip())

    @model_validator(mode="after")
    def _consistent(self) -> ArmSpec:
        where = f"arm {self.name!r}"
        if self.name in RESERVED_NAMES:
            raise ValueError(f"{where}: the name {self.name!r} is reserved")
        if self.remote is None:
            self.remote = self.kind != "local"
        if self.kind == "local" and self.remote:
            raise ValueError(f"{where}: a local pipeline runs here; remote must be false")
        if self.kind in ("stability", "openai") and not self.remote:
            raise ValueError(f"{where}: a {self.kind} arm sends prompts to a provider; remote must be true")
        if self.kind == "local" and not self.model:
            raise ValueError(f"{where}: kind local needs model (a diffusers pipeline path or hub id)")
        if self.kind == "worker" and not self.url:
            raise ValueError(f"{where}: kind worker needs url (the worker's base URL)")
        if self.kind in ("stability", "openai") and not self.token_env:
            raise ValueError(f"{where}: kind {self.kind} needs token_env (the env var holding its API key)")
        if self.steps is not None and self.kind in ("stability", "openai"):
            raise ValueError(f"{where}: {self.kind} has no steps to override; drop steps")
        return self

    @property
    def local(self) -> bool:
        """Prompts stay on this machine: the only arms a private request may use."""
        return not self.remote

    def identity(self) -> str:
        """What this arm is, in the exact cache's keys (a changed model, URL or step count never serves another's)."""
        return f"{self.kind}:{self.model or ''}:{self.url or ''}:{self.model_id}:{self.steps or ''}"


def validate_arms(arms: Sequence[ArmSpec]) -> list[ArmSpec]:
    """The arms, or ValueError saying what is wrong with the list as a whole."""
    arms = list(arms)
    if not arms:
        return arms
    if len(arms) < 2:
        raise ValueError("arms: list at least two arms (or none, for the edge_*/cloud_* two-arm settings)")
    names = [arm.name for arm in arms]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"arms: names must be unique, {', '.join(duplicated)} repeated")
    if not any(arm.local for arm in arms):
        raise ValueError("arms: at least one arm must not be remote (private prompts only ever use local arms)")
    return arms


def shorthand_arms(settings: Settings) -> list[ArmSpec]:
    """The two arms today's edge_*/cloud_* settings describe: "edge" (local) and "cloud" (remote, if any).
    Descriptive only (names, costs, metrics): the two-arm controller routes them; nothing is built from these."""
    fields = ArmSpec.model_fields
    defaults = {name: field.default for name, field in fields.items() if not field.is_required()}
    arms = [ArmSpec.model_construct(**{**defaults, "name": "edge", "kind": "local", "remote": False,
                                       "model_id": canonical_id(settings.edge_model_id), "cost": settings.edge_cost,
                                       "model": settings.edge_model})]  # fmt: skip
    if settings.cloud_kind != "none":
        url = {"worker": settings.cloud_url, "stability": settings.stability_base_url,
               "openai": settings.openai_base_url}[settings.cloud_kind]  # fmt: skip
        model = {"worker": None, "stability": settings.stability_model,
                 "openai": settings.openai_model}[settings.cloud_kind]  # fmt: skip
        arms.append(ArmSpec.model_construct(**{
            **defaults, "name": "cloud", "kind": settings.cloud_kind, "remote": True, "url": url, "model": model,
            "model_id": canonical_id(settings.cloud_model_id), "cost": settings.cloud_cost,
        }))  # fmt: skip
    return arms


def _secret(arm: ArmSpec) -> str | None:
    if arm.token_env is None:
        return None
    value = os.environ.get(arm.token_env)
    if arm.kind in ("stability", "openai") and not value:
        raise ValueError(f"arm {arm.name!r}: the environment variable {arm.token_env} (its API key) is not set")
    return value or None


def build_arm_backend(arm: ArmSpec, settings: Settings, pool: PipelinePool | None = None) -> ImageBackend:
    """The backend serving `arm` (nothing is loaded yet; a local pipeline loads when the app starts). Local arms
    given one `pool` share the pipeline of their model, device and dtype (loaded once); `steps` stays per arm."""
    from backends.cloud import OpenAICloudBackend, StabilityCloudBackend, WorkerCloudBackend
    from backends.edge import EdgeBackend

    options = {"timeout": settings.cloud_timeout_s, "max_retries": settings.cloud_retries}
    if arm.kind == "local":
        assert arm.model is not None
        return EdgeBackend(
            arm.model, device=arm.device, dtype=arm.dtype, max_queue=settings.edge_max_queue,
            max_batch=settings.edge_max_batch, batch_window_ms=settings.edge_batch_window_ms,
            default_steps=arm.steps or settings.edge_default_steps, lazy=True, name=arm.name, pool=pool,
        )  # fmt: skip
    if arm.kind == "worker":
        assert arm.url is not None
        return WorkerCloudBackend(arm.url, token=_secret(arm), **options)
    key = _secret(arm)
    assert key is not None
    if arm.kind == "stability":
        model = arm.model or settings.stability_model
        if model not in ("sd3.5-large", "sd3.5-large-turbo", "sd3.5-medium"):
            raise ValueError(f"arm {arm.name!r}: stability model: sd3.5-large, sd3.5-large-turbo or sd3.5-medium")
        return StabilityCloudBackend(key, model=model, base_url=arm.url or settings.stability_base_url, **options)
    return OpenAICloudBackend(
        key, model=arm.model or settings.openai_model, base_url=arm.url or settings.openai_base_url, **options
    )
