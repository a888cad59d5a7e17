"""Demo mode: the whole product on a CPU-only machine with no downloads.

Tiny random pipelines are built offline (an SD 2.1-class edge pipeline, an SD3 pipeline for a cloud
worker started on loopback as a real `routet2i worker` process; see the `demo` package), the shipped
router checkpoint routes, and an admin token is made up and printed. Three arms (unless the settings list
their own): the edge pipeline at DEMO_FAST_STEPS and at its own steps (two local arms, different costs) and the
worker (remote). The images are noise; everything else — routing, budget, HTTP, metrics, fallbacks — is the
real path.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import SecretStr

from demo.stack import DEMO_FAST_STEPS, DEMO_STEPS
from gateway.arms import ArmSpec
from gateway.settings import Settings

WORKER_TOKEN_ENV = "ROUTET2I_DEMO_WORKER_TOKEN"  # the demo worker's token, for its arm's token_env
DEMO_COSTS = {"edge-fast": 0.1, "edge": 0.25, "cloud": 1.0}  # relative GPU-seconds, roughly steps × model size


def demo_arms(worker_url: str, edge: Path) -> list[ArmSpec]:
    """Two local arms (the edge pipeline at two step counts) and the remote worker."""
    local = {"kind": "local", "model_id": "sd-2.1", "model": str(edge), "device": "cpu"}
    return [
        ArmSpec(name="edge-fast", cost=DEMO_COSTS["edge-fast"], steps=DEMO_FAST_STEPS, quality_offset=-0.05, **local),
        ArmSpec(name="edge", cost=DEMO_COSTS["edge"], **local),  # edge_default_steps, or the steps asked for
        ArmSpec(name="cloud", kind="worker", model_id="sd-3.5-large", cost=DEMO_COSTS["cloud"], url=worker_url,
                token_env=WORKER_TOKEN_ENV),
    ]  # fmt: skip


def demo_settings(base: Settings, worker_url: str, worker_token: str, edge: Path, clip: Path | None = None) -> Settings:
    """The given settings with the demo's pipelines, worker, three arms (unless `arms` is set) and (unless set) a
    fresh admin token; the worker's token is put in this process' environment for its arm. With `clip`, the image
    check of verify-then-escalate (on per request with "verify": true; the tiny CLIP scores near 0, so the demo's
    threshold, unless set, is 0: about half of the checked images escalate)."""
    admin = base.admin_token or SecretStr(secrets.token_urlsafe(16))
    os.environ[WORKER_TOKEN_ENV] = worker_token
    verify = {} if clip is None else {"verify_clip_model": str(clip), "verify_device": "cpu"}
    if clip is not None and "verify_threshold" not in base.model_fields_set:
        verify["verify_threshold"] = 0.0
    return base.model_copy(
        update={
            "edge_model": str(edge), "edge_device": "cpu", "edge_default_steps": DEMO_STEPS, "cloud_kind": "worker",
            "cloud_url": worker_url, "cloud_token": SecretStr(worker_token), "admin_token": admin, "demo": True,
            **verify,
            "arms": base.arms or demo_arms(worker_url, edge),
        }
    )  # fmt: skip
