"""Demo mode: the whole product on a CPU-only machine with no downloads.

Tiny random pipelines are built offline (an SD 2.1-class edge pipeline, an SD3 pipeline for a cloud
worker started on loopback as a real `routet2i worker` process; see the `demo` package), the shipped
router checkpoint routes, and an admin token is made up and printed. The images are noise; everything
else — routing, budget, HTTP, metrics, fallbacks — is the real path.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import SecretStr

from demo.stack import DEMO_STEPS
from gateway.settings import Settings


def demo_settings(base: Settings, worker_url: str, worker_token: str, edge: Path, clip: Path | None = None) -> Settings:
    """The given settings with the demo's pipelines, worker and (unless set) a fresh admin token; with `clip`, the
    image check of verify-then-escalate (on per request with "verify": true; the tiny CLIP scores near 0, so the
    demo's threshold, unless set, is 0: about half of the checked images escalate)."""
    admin = base.admin_token or SecretStr(secrets.token_urlsafe(16))
    verify = {} if clip is None else {"verify_clip_model": str(clip), "verify_device": "cpu"}
    if clip is not None and "verify_threshold" not in base.model_fields_set:
        verify["verify_threshold"] = 0.0
    return base.model_copy(
        update={
            "edge_model": str(edge), "edge_device": "cpu", "edge_default_steps": DEMO_STEPS, "cloud_kind": "worker",
            "cloud_url": worker_url, "cloud_token": SecretStr(worker_token), "admin_token": admin, "demo": True,
            **verify,
        }
    )  # fmt: skip
