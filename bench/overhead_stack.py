"""The processes of bench/gateway_overhead.py (and tests/test_soak.py): a worker that answers at once with a fixed
PNG (the worker protocol and the OpenAI Images API), and the real gateway in front of it, on loopback."""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backends.worker import GenerateBody
from bench.overhead_peers import PEER
from bench.overhead_report import TOWER
from demo.processes import free_port, spawn, stop, wait_until_ready
from demo.tiny import build_tiny_sd_pipeline

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the fixed-image worker


def fixed_png(width: int, height: int, seed: int = 0) -> bytes:
    """A deterministic photo-like PNG (smooth colour fields plus mild noise): about 400 kB at 512×512,
    the size class of a real diffusion output, so encode/decode costs are realistic."""
    from PIL import Image

    from backends.base import png_bytes

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([200 * x + 30 * np.sin(9 * y), 160 * y + 40 * np.cos(7 * x), 120 + 80 * np.sin(5 * (x + y))], -1)
    pixels = np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)
    return png_bytes(Image.fromarray(pixels))


def fixed_image_app():
    """A FastAPI app speaking the worker protocol of backends/worker.py that answers at once:
    POST /v1/generate → {"images": [b64 PNG] * n, "seed", "model"}; the PNG of each size is made once."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI(title="fixed-image worker")
    cache: dict[tuple[int, int], str] = {}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> dict:
        return {"status": "ready", "model": "fixed-image"}

    @app.post("/v1/generate")
    async def generate(body: GenerateBody) -> JSONResponse:
        key = (body.width, body.height)
        if key not in cache:
            cache[key] = base64.b64encode(fixed_png(*key)).decode()
        return JSONResponse({"images": [cache[key]] * body.n, "seed": body.seed or 0, "model": "fixed-image"})

    @app.post("/v1/images/generations")
    async def openai_images(body: dict) -> JSONResponse:
        """The OpenAI Images API shape (for LiteLLM): the same cached PNG as b64_json."""
        width, height = (int(v) for v in str(body.get("size") or "512x512").split("x"))
        if (width, height) not in cache:
            cache[width, height] = base64.b64encode(fixed_png(width, height)).decode()
        data = [{"b64_json": cache[width, height]}] * int(body.get("n") or 1)
        return JSONResponse({"created": int(time.time()), "data": data})

    return app


def serve_worker(port: int) -> None:
    import uvicorn

    uvicorn.run(fixed_image_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---------------------------------------------------------------- processes


@dataclass
class Stack:
    worker_url: str
    gateway_url: str
    worker: subprocess.Popen
    gateway: subprocess.Popen
    tower: subprocess.Popen | None = None  # the second gateway, its router's tower weighted (TOWER)
    tower_url: str = ""
    litellm_url: str | None = None
    litellm_pid: int | None = None
    litellm_key: str = ""

    def pid(self, scenario: str) -> int:
        """The server process whose CPU a scenario's requests cost."""
        tower = self.tower.pid if self.tower is not None else None
        return {"direct": self.worker.pid, PEER: self.litellm_pid, TOWER: tower}.get(scenario) or self.gateway.pid

    @property
    def gateway_urls(self) -> list[str]:
        return [self.gateway_url, *([self.tower_url] if self.tower is not None else [])]


@contextlib.contextmanager
def running_stack(
    workdir: Path, *, rho: float = 1.0, gateway_log: Path | None = None, extra_env: dict[str, str] | None = None,
    tower_checkpoint: Path | None = None,
) -> Iterator[Stack]:  # fmt: skip
    """The fixed-image worker and the real gateway (`gateway.cli serve`) as processes on loopback; with
    `tower_checkpoint`, a second gateway serving that router checkpoint (the TOWER scenario)."""
    edge = build_tiny_sd_pipeline(workdir / "edge-tiny-sd")
    worker_port, gateway_port = free_port(), free_port()
    worker_url, gateway_url = f"http://127.0.0.1:{worker_port}", f"http://127.0.0.1:{gateway_port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    worker = spawn(
        [sys.executable, "-m", "bench.gateway_overhead", "worker", "--port", str(worker_port)], cwd=ROOT, env=env
    )
    gateway_env = {
        **env,
        "ROUTET2I_RHO": str(rho),
        "ROUTET2I_STATE_FILE": str(workdir / "state.json"),
        "ROUTET2I_EDGE_MODEL": str(edge),
        "ROUTET2I_EDGE_DEVICE": "cpu",
        "ROUTET2I_EDGE_DEFAULT_STEPS": "1",
        "ROUTET2I_ROUTER_DEVICE": "cpu",
        "ROUTET2I_CLOUD_KIND": "worker",
        "ROUTET2I_CLOUD_URL": worker_url,
        "ROUTET2I_MAX_IN_FLIGHT": "1024",
        "OMP_NUM_THREADS": "1",
        **(extra_env or {}),
    }
    gateway = spawn(
        [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", "--port", str(gateway_port)],
        cwd=workdir, env=gateway_env, log=gateway_log or Path(os.devnull),
    )  # fmt: skip
    tower, tower_url = None, ""
    if tower_checkpoint is not None:
        tower_port, tower_dir = free_port(), workdir / "tower"
        tower_dir.mkdir(exist_ok=True)
        tower_url = f"http://127.0.0.1:{tower_port}"
        tower_env = {**gateway_env, "ROUTET2I_ROUTER_PATH": str(tower_checkpoint),
                     "ROUTET2I_STATE_FILE": str(tower_dir / "state.json")}  # fmt: skip
        tower = spawn(
            [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", "--port", str(tower_port)],
            cwd=tower_dir, env=tower_env, log=Path(os.devnull),
        )  # fmt: skip
    try:
        wait_until_ready(worker_url, worker)
        wait_until_ready(gateway_url, gateway, log=gateway_log)
        if tower is not None:
            wait_until_ready(tower_url, tower)
        yield Stack(worker_url, gateway_url, worker, gateway, tower, tower_url)
    finally:
        stop(*([tower] if tower is not None else []), gateway, worker)
