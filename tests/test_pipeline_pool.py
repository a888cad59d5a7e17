"""Two local arms of one pipeline share it: loaded once per (model, device, dtype), each arm keeping its own steps.

A real tiny random diffusers pipeline saved to disk and loaded with from_pretrained; loads are counted by wrapping
the loader the edge backend calls."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

import backends.edge as edge_module
from backends.base import GenerationRequest
from backends.edge import EdgeBackend
from backends.pipeline_pool import PipelinePool
from demo.processes import free_port
from demo.tiny import build_tiny_sd_pipeline
from gateway.app import create_app
from tests.servers import LiveServer
from tests.standins import HashScorer, standin_settings


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_sd_pipeline(tmp_path_factory.mktemp("pool") / "sd")


@pytest.fixture
def loads(monkeypatch) -> list[tuple]:
    """Every pipeline load the edge backend makes: (model, device, dtype)."""
    seen: list[tuple] = []
    real = edge_module.load_pipeline

    def counting(model, device="auto", dtype="auto", pipeline_class=None):
        seen.append((model, device, dtype))
        return real(model, device, dtype, pipeline_class)

    monkeypatch.setattr(edge_module, "load_pipeline", counting)
    return seen


def backend(tiny: Path, pool: PipelinePool, steps: int, **kwargs) -> EdgeBackend:
    return EdgeBackend(str(tiny), device="cpu", default_steps=steps, lazy=True, pool=pool, name=f"s{steps}", **kwargs)


def test_backends_of_one_pipeline_load_it_once_and_keep_their_steps(tiny, loads):
    async def scenario() -> None:
        pool = PipelinePool()
        fast, slow = backend(tiny, pool, 1), backend(tiny, pool, 2)
        await asyncio.gather(fast.load(), slow.load())
        assert fast.pipeline is slow.pipeline and len(loads) == 1 and pool.users(fast.pipeline) == 2

        steps: list[int] = []
        real_call = fast.pipeline.__class__.__call__

        def spy(pipe, *args, **kwargs):
            steps.append(kwargs["num_inference_steps"])
            return real_call(pipe, *args, **kwargs)

        fast.pipeline.__class__.__call__ = spy
        try:
            request = GenerationRequest(prompt="a red bicycle", width=64, height=64, seed=3)
            await fast.generate(request)
            await slow.generate(request)
        finally:
            fast.pipeline.__class__.__call__ = real_call
        assert steps == [1, 2]  # one pipeline, each arm's own steps

        other = backend(tiny, pool, 1, dtype="bfloat16")  # another dtype is another pipeline
        await other.load()
        assert other.pipeline is not fast.pipeline and len(loads) == 2 and len(pool) == 2

        shared_pipeline = slow.pipeline
        await fast.aclose()  # the other user keeps it
        assert slow.pipeline is shared_pipeline and pool.users(shared_pipeline) == 1
        await slow.generate(GenerationRequest(prompt="a cat", width=64, height=64, seed=1))
        await slow.aclose()
        await other.aclose()
        assert len(pool) == 0

        alone = EdgeBackend(str(tiny), device="cpu", lazy=True)  # no pool: its own load, as before
        await alone.load()
        assert len(loads) == 3
        await alone.aclose()

    asyncio.run(scenario())


def test_the_gateway_loads_two_local_arms_of_one_model_once(tiny, loads, tmp_path):
    local = {"kind": "local", "model_id": "sd-2.1", "model": str(tiny), "device": "cpu"}
    arms = [
        {"name": "edge-fast", "cost": 0.1, "steps": 1, "quality_offset": 0.5, **local},
        {"name": "edge", "cost": 0.25, "steps": 2, **local},
        {"name": "cloud", "kind": "worker", "model_id": "sd3.5-large", "cost": 1.0,
         "url": f"http://127.0.0.1:{free_port()}"},
    ]  # fmt: skip
    settings = standin_settings(tmp_path, arms=arms, cost_budget=0.3, cache_enabled=False)
    app = create_app(settings, router=HashScorer())
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        backends = app.state.gateway.backends
        assert backends["edge-fast"].pipeline is backends["edge"].pipeline and len(loads) == 1
        for route in ("edge", "edge"):
            response = http.post("/generate", json={"prompt": "a lighthouse", "size": "64x64", "route": route})
            assert response.status_code == 200, response.text
        assert response.json()["route"]["arm"] in ("edge-fast", "edge")
        assert len(loads) == 1
