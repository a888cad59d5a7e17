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


def demo_settings(base: Settings, worker_url: str, worker_token: str, edge: Path) -> Settings:
    """The given settings with the demo's pipelines, worker and (unless set) a fresh admin token."""
    admin = base.admin_token or SecretStr(secrets.token_urlsafe(16))
    return base.model_copy(
        update={
            "edge_model": str(edge), "edge_device": "cpu", "edge_default_steps": DEMO_STEPS, "cloud_kind": "worker",
            "cloud_url": worker_url, "cloud_token": SecretStr(worker_token), "admin_token": admin, "demo": True,
        }
    )  # fmt: skip
