"""The demo's models and cloud worker: tiny random pipelines built offline, a real `routet2i worker` process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from backends.worker import TOKEN_ENV
from demo.processes import reap_when_exits, spawn, wait_until_ready
from demo.tiny import build_tiny_clip, build_tiny_sd3_pipeline, build_tiny_sd_pipeline

DEMO_DIR = Path(tempfile.gettempdir()) / "routet2i-demo-v2"  # bump when demo/tiny.py changes
DEMO_STEPS = 4
DEMO_FAST_STEPS = 2  # the demo's cheaper local arm: the same edge pipeline at fewer steps


def build_demo_models(directory: Path = DEMO_DIR) -> tuple[Path, Path]:
    """(edge pipeline dir, cloud pipeline dir), built once and reused."""
    edge, cloud = directory / "edge-tiny-sd", directory / "cloud-tiny-sd3"
    if not (edge / "model_index.json").exists():
        build_tiny_sd_pipeline(edge)
    if not (cloud / "model_index.json").exists():
        build_tiny_sd3_pipeline(cloud)
    return edge, cloud


def build_demo_clip(directory: Path = DEMO_DIR) -> Path:
    """The tiny random CLIP of the demo's image check (verify then escalate), built once and reused."""
    clip = directory / "verify-tiny-clip"
    if not (clip / "config.json").exists():
        build_tiny_clip(clip)
    return clip


def launch_worker(model: Path, token: str, port: int) -> subprocess.Popen:
    """Start a real `routet2i worker` process on loopback (not yet ready); it stops with this process."""
    command = [sys.executable, "-m", "gateway.cli", "worker", "--model", str(model), "--port", str(port),
               "--steps", str(DEMO_STEPS), "--device", "cpu"]  # fmt: skip
    return spawn(command, env={**os.environ, TOKEN_ENV: token}, tie_to_parent=True)


def start_worker(model: Path, token: str, port: int, timeout_s: float = 120.0) -> subprocess.Popen:
    """`launch_worker`, then wait until its /readyz answers; it is reaped as soon as it exits."""
    worker = reap_when_exits(launch_worker(model, token, port))
    return wait_until_ready(f"http://127.0.0.1:{port}", worker, timeout_s=timeout_s)
