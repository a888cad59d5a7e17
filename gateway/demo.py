"""Demo mode: the whole product on a CPU-only machine with no downloads.

Tiny random pipelines are built offline (an SD 2.1-class edge pipeline, an SD3 pipeline for a cloud
worker started on loopback as a real `routet2i worker` process), the shipped router checkpoint
routes, and an admin token is made up and printed. The images are noise; everything else — routing,
budget, HTTP, metrics, fallbacks — is the real path.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from pydantic import SecretStr

from backends.tiny import build_tiny_sd3_pipeline, build_tiny_sd_pipeline
from backends.worker import TOKEN_ENV
from gateway.settings import Settings

DEMO_DIR = Path(tempfile.gettempdir()) / "routet2i-demo-v2"  # bump when backends/tiny.py changes
DEMO_STEPS = 4


def build_demo_models(directory: Path = DEMO_DIR) -> tuple[Path, Path]:
    """(edge pipeline dir, cloud pipeline dir), built once and reused."""
    edge, cloud = directory / "edge-tiny-sd", directory / "cloud-tiny-sd3"
    if not (edge / "model_index.json").exists():
        build_tiny_sd_pipeline(edge)
    if not (cloud / "model_index.json").exists():
        build_tiny_sd3_pipeline(cloud)
    return edge, cloud


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tie_to_parent() -> Callable[[], None] | None:
    """A `preexec_fn` after which Linux sends the child SIGTERM when this process dies, however it dies.

    uvicorn re-raises SIGTERM after its graceful shutdown, so `routet2i serve --demo` stopped by
    `docker stop`, systemd or `kill` ends without running its `finally`; the worker must not outlive it.
    libc is resolved here, in the parent, so the child only makes the one system call before exec.
    Linux ties the child to the thread that starts it: call `start_worker` from a long-lived thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl, parent = ctypes.CDLL(None, use_errno=True).prctl, os.getpid()

    def tie() -> None:
        prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # this process died before the prctl
            os._exit(1)

    return tie


def launch_worker(model: Path, token: str, port: int) -> subprocess.Popen:
    """Start a real `routet2i worker` process on loopback (not yet ready); it stops with this process."""
    env = {**os.environ, TOKEN_ENV: token}
    command = [sys.executable, "-m", "gateway.cli", "worker", "--model", str(model), "--port", str(port),
               "--steps", str(DEMO_STEPS), "--device", "cpu"]  # fmt: skip
    return subprocess.Popen(command, env=env, preexec_fn=_tie_to_parent())


def wait_ready(process: subprocess.Popen, port: int, timeout_s: float = 120.0) -> subprocess.Popen:
    """Return the worker once its /readyz answers 200; raise if it exits or takes too long."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the demo worker exited with status {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise RuntimeError("the demo worker did not become ready in time")


def start_worker(model: Path, token: str, port: int, timeout_s: float = 120.0) -> subprocess.Popen:
    """`launch_worker`, then `wait_ready`."""
    return wait_ready(launch_worker(model, token, port), port, timeout_s)


def demo_settings(base: Settings, worker_url: str, worker_token: str, edge: Path) -> Settings:
    """The given settings with the demo's pipelines, worker and (unless set) a fresh admin token."""
    admin = base.admin_token or SecretStr(secrets.token_urlsafe(16))
    return base.model_copy(
        update={
            "edge_model": str(edge), "edge_device": "cpu", "edge_default_steps": DEMO_STEPS, "cloud_kind": "worker",
            "cloud_url": worker_url, "cloud_token": SecretStr(worker_token), "admin_token": admin, "demo": True,
        }
    )  # fmt: skip
