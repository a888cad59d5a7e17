"""Gateway settings: environment variables `ROUTET2I_*` over an optional YAML/TOML file over defaults.

The file is named by `ROUTET2I_CONFIG` (or `routet2i serve --config`). Secrets (admin token, worker
token, Stability and OpenAI keys) come from the environment or a file the operator controls, never from code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from gateway.arms import ArmSpec, validate_arms
from gateway.keys.model import ApiKey
from router_model import DEFAULT_ROUTER
from router_model.model_ids import DEFAULT_CLOUD_ID, DEFAULT_EDGE_ID


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROUTET2I_", extra="forbid")

    # router
    router_path: str = Field(str(DEFAULT_ROUTER), description="Router checkpoint directory.")
    router_device: str = "auto"
    edge_model_id: str = Field(
        DEFAULT_EDGE_ID,
        description="Canonical id of the edge model (router_model/model_ids.py); a many-model router scores the pair "
        "(edge_model_id, cloud_model_id).",
    )
    cloud_model_id: str = Field(DEFAULT_CLOUD_ID, description="Canonical id of the cloud model (see edge_model_id).")
    router_encoder_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="bfloat16: faster encoder on CPUs with bf16 (see docs/BENCHMARKS.md)."
    )
    router_runtime: Literal["torch", "onnx", "onnx-int8"] = Field(
        "torch",
        description="onnx: the whole router on ONNX Runtime, same decisions, faster; onnx-int8: its encoder in int8 "
        "(dynamic, FFN down-projections blockwise), ≥ 99% same decisions, faster again (both need routet2i[onnx]).",
    )
    router_cache_size: int = Field(
        4096, ge=0, description="Recent prompt scores kept (by prompt hash) to skip the router; 0 = off."
    )
    scoring_max_batch: int = Field(32, ge=1, description="Most prompts scored in one router call.")
    scoring_window_ms: float = Field(2.0, ge=0, description="How long a scoring batch waits for company.")
    scoring_inline: bool = Field(
        True, description="Score a lone request (nothing else in flight) on the event loop's thread: no thread hops."
    )

    # budget
    rho: float = Field(0.3, ge=0, le=1, description="Initial cloud budget ρ (the state file wins once written).")
    cost_cap_per_minute: int | None = Field(None, ge=1)
    state_file: str | None = Field("routet2i_state.json", description="Where ρ and the cost cap persist.")
    score_window: int = Field(2000, ge=10)
    decision_window: int = Field(1000, ge=10)
    redis_url: SecretStr | None = Field(
        None, description="redis://[:password@]host:port/db shared by all replicas; unset = one-process budget."
    )
    redis_prefix: str = Field("routet2i", pattern=r"^[A-Za-z0-9_.:-]+$", description="Key prefix of this budget.")
    redis_timeout_s: float = Field(0.25, gt=0, description="Redis socket timeout before serving on the local store.")
    redis_retry_s: float = Field(2.0, gt=0, description="How often a replica alone retries Redis.")

    # arms (N-arm routing; unset: the edge_*/cloud_* settings are two arms routed by ρ)
    arms: list[ArmSpec] = Field(
        default_factory=list,
        description="The arms to route among (README: N arms); unset = the two-arm edge/cloud settings.",
    )
    cost_budget: float | None = Field(
        None, ge=0, allow_inf_nan=False,
        description="Mean cost per request the N-arm rule holds (unset: the cost ρ names between the cheapest "
        "and the dearest arm). Two arms: the same as ρ in units of edge_cost..cloud_cost.",
    )  # fmt: skip
    edge_cost: float = Field(0.0, ge=0, allow_inf_nan=False, description="Two-arm shorthand: cost per edge image.")
    cloud_cost: float = Field(1.0, ge=0, allow_inf_nan=False, description="Two-arm shorthand: cost per cloud image.")

    # edge backend
    edge_model: str | None = Field(None, description="Diffusers pipeline path or hub id (SD 2.1 class).")
    edge_device: str = "auto"
    edge_dtype: str = "auto"
    edge_max_queue: int = Field(16, ge=1)
    edge_max_batch: int = Field(4, ge=1)
    edge_batch_window_ms: float = Field(10.0, ge=0)
    edge_default_steps: int = Field(25, ge=1)

    # cloud backend
    cloud_kind: Literal["worker", "stability", "openai", "none"] = "worker"
    cloud_url: str | None = Field(None, description="Base URL of a `routet2i worker`.")
    cloud_token: SecretStr | None = Field(None, description="Bearer token of the worker.")
    stability_api_key: SecretStr | None = None
    stability_model: Literal["sd3.5-large", "sd3.5-large-turbo", "sd3.5-medium"] = "sd3.5-large"
    stability_base_url: str = Field("https://api.stability.ai", description="Stability API base URL (a proxy).")
    openai_api_key: SecretStr | None = Field(None, description="OpenAI API key (cloud_kind=openai).")
    openai_model: str = Field(
        "gpt-image-1", min_length=1, description="OpenAI image model: gpt-image-1, dall-e-3, ... (or a server's own)."
    )
    openai_base_url: str = Field("https://api.openai.com", description="OpenAI API base URL (or a proxy).")
    cloud_timeout_s: float = Field(120.0, gt=0)
    cloud_retries: int = Field(2, ge=0)

    # exact cache (seeded requests only)
    cache_enabled: bool = Field(True, description="Serve a repeated seeded request from the cache (no backend call).")
    cache_max_bytes: int = Field(256 * 1024 * 1024, ge=0, description="Image bytes the in-memory cache holds (LRU).")
    cache_ttl_s: float = Field(86_400.0, gt=0, description="How long a cached image is served.")

    # verify then escalate
    verify_enabled: bool = Field(
        False, description='Check edge images and re-run on the cloud under verify_threshold (per request: "verify").'
    )
    verify_threshold: float = Field(
        0.2, ge=-1, le=1, description="CLIP image–text cosine similarity under which an edge image is escalated."
    )
    verify_clip_model: str | None = Field(None, description="CLIP checkpoint (path or hub id) of the image check.")
    verify_device: str = Field("auto", description="Device of the image check (auto: CUDA if available).")

    # service
    admin_token: SecretStr | None = Field(None, description="Bearer token for /admin; unset = admin off.")
    require_api_key: bool = Field(False, description="Clients must send Authorization: Bearer <key> (401 if not).")
    api_keys: list[ApiKey] = Field(default_factory=list, description="Client keys (SHA-256 only) and their limits.")
    api_keys_file: str | None = Field(None, description="JSON keys file; admin-created keys go there without Redis.")
    idempotency_ttl_s: float = Field(86_400.0, gt=0, description="How long an Idempotency-Key's response is kept.")
    jobs_concurrency: int = Field(4, ge=1, description="Jobs this process runs at once.")
    jobs_lease_s: float = Field(30.0, gt=0, description="A running job's lease; renewed while it runs.")
    jobs_ttl_s: float = Field(86_400.0, gt=0, description="How long a finished job and its result are kept.")
    webhook_secret: SecretStr | None = Field(None, description="HMAC-SHA256 key of job webhooks (needed for them).")
    webhook_max_attempts: int = Field(6, ge=1)
    webhook_backoff_s: float = Field(1.0, gt=0, description="First retry delay; doubles on every attempt.")
    jobs_db: str = Field("routet2i_jobs.sqlite3", description="SQLite file of jobs and idempotency keys without Redis.")
    log_prompts: bool = Field(False, description="Log prompt text (off: prompts can be private).")
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    max_in_flight: int = Field(256, ge=1, description="Generation requests in flight before 429.")
    body_read_timeout_s: float = Field(
        10.0, gt=0, description="A request body not complete within this many seconds gets 408 (slow senders)."
    )
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="Request headers larger than this get 431.")
    max_compute_units: int = Field(
        1024 * 1024 * 50 * 4, ge=64 * 64,
        description="Most work per request, width × height × steps × n (steps unset: edge_default_steps) → 422.",
    )  # fmt: skip
    forced_cloud_may_exceed_rho: bool = Field(
        False, description='true: {"route": "cloud"} may exceed ρ\'s window cap (never the cost cap).'
    )
    admin_auth_failures_per_minute: int = Field(
        10, ge=1, description="Wrong admin tokens per client address and minute before 429 (audited)."
    )
    demo: bool = False

    @field_validator("arms")
    @classmethod
    def _arms(cls, arms: list[ArmSpec]) -> list[ArmSpec]:
        return validate_arms(arms)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = os.environ.get("ROUTET2I_CONFIG")
        if config:
            path = Path(config)
            if not path.exists():
                raise FileNotFoundError(f"ROUTET2I_CONFIG={config}: no such file")
            if path.suffix == ".toml":
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            elif path.suffix in (".yaml", ".yml"):
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
            else:
                raise ValueError(f"ROUTET2I_CONFIG={config}: use a .yaml, .yml or .toml file")
        return tuple(sources)
