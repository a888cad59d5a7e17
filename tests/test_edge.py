"""EdgeBackend on a real tiny SD 2.1-class pipeline (64x64, 2 steps)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch

from backends.base import BackendError, BackendOverloaded, BackendUnavailable, GenerationRequest, ImageBackend
from backends.edge import EdgeBackend
from demo.tiny import build_tiny_sd_pipeline


class Probe:
    """The real pipeline, recording each call's batch size; it can hold calls at a gate or fail on demand."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail: BaseException | None = None
        self.fail_batches_over: int | None = None

    def __call__(self, **kwargs):
        size = len(kwargs["prompt"])
        self.calls.append(size)
        assert self.gate.wait(30), "the test never opened the gate"
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        if self.fail_batches_over is not None and size > self.fail_batches_over:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.pipeline(**kwargs)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> EdgeBackend:
    """Loaded once through the real path-based loader; other tests serve its pipeline."""
    path = build_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny-sd"))
    return EdgeBackend(str(path), device="cpu", default_steps=2)


@pytest.fixture
def probe(loaded) -> Probe:
    return Probe(loaded.pipeline)


def make(probe: Probe, **options) -> EdgeBackend:
    options = {"device": "cpu", "default_steps": 2, "batch_window_ms": 5, **options}
    return EdgeBackend("tiny-sd", pipeline=probe, **options)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def same(a, b) -> bool:
    """Equal up to batch-dependent float rounding (off by at most a couple of 8-bit levels)."""
    return int(np.abs(pixels(a) - pixels(b)).max()) <= 2


async def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def req(seed: int | None = None, **fields) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a red bicycle", "width": 64, "height": 64, "seed": seed, **fields})


def test_loads_from_a_path(loaded):
    assert isinstance(loaded, ImageBackend) and loaded.ready() and loaded.name == "edge"
    assert type(loaded.pipeline).__name__ == "StableDiffusionPipeline"


@pytest.mark.asyncio
async def test_size_and_drawn_seed(probe):
    backend = make(probe)
    result = await backend.generate(req(width=64, height=48))
    await backend.aclose()
    assert [im.size for im in result.images] == [(64, 48)]
    assert isinstance(result.seed, int) and result.seed > 0
    assert result.backend == "edge" and result.model == "tiny-sd"
    assert result.timings["inference_s"] > 0


@pytest.mark.asyncio
async def test_seed_reproduces_alone_and_inside_a_micro_batch(probe):
    backend = make(probe, max_batch=4)
    alone = (await backend.generate(req(seed=7))).images[0]
    again = (await backend.generate(req(seed=7))).images[0]
    assert same(alone, again)

    probe.gate.clear()  # hold a first call so that the next three queue up together
    blocker = asyncio.create_task(backend.generate(req(seed=1, prompt="a blue car")))
    await wait_until(lambda: backend.in_flight() == 1)
    batch = [asyncio.create_task(backend.generate(req(seed=s))) for s in (5, 7, 9)]
    await wait_until(lambda: backend.queue_depth() == 3)
    probe.gate.set()
    results = await asyncio.gather(blocker, *batch)
    await backend.aclose()

    assert probe.calls == [1, 1, 1, 3]  # two alone, the blocker, then one call for the three queued
    in_batch = {r.seed: r.images[0] for r in results[1:]}
    assert all(r.timings["batch_images"] == 3 for r in results[1:])
    assert same(in_batch[7], alone)
    assert not same(in_batch[5], in_batch[7])


@pytest.mark.asyncio
async def test_only_compatible_requests_share_a_call_and_order_is_kept(probe):
    backend = make(probe, max_batch=4)
    probe.gate.clear()
    blocker = asyncio.create_task(backend.generate(req(seed=1)))
    await wait_until(lambda: backend.in_flight() == 1)
    a = asyncio.create_task(backend.generate(req(seed=2)))
    b = asyncio.create_task(backend.generate(req(seed=3, width=32, height=32)))
    c = asyncio.create_task(backend.generate(req(seed=4)))
    d = asyncio.create_task(backend.generate(req(seed=5, negative_prompt="blurry")))
    await wait_until(lambda: backend.queue_depth() == 4)
    probe.gate.set()
    results = await asyncio.gather(blocker, a, b, c, d)
    await backend.aclose()
    assert probe.calls == [1, 2, 1, 1]  # a+c together; b (other size) and d (other negative prompt) alone
    assert results[2].images[0].size == (32, 32)


@pytest.mark.asyncio
async def test_n_images_use_consecutive_seeds(probe):
    backend = make(probe)
    two = await backend.generate(req(seed=20, n=2))
    single = await backend.generate(req(seed=21))
    await backend.aclose()
    assert len(two.images) == 2 and two.seed == 20
    assert same(two.images[1], single.images[0])


@pytest.mark.asyncio
async def test_full_queue_is_overloaded_with_retry_after(probe):
    backend = make(probe, max_queue=2, max_batch=1)
    probe.gate.clear()
    running = asyncio.create_task(backend.generate(req(seed=1)))
    await wait_until(lambda: backend.in_flight() == 1)
    waiting = [asyncio.create_task(backend.generate(req(seed=s))) for s in (2, 3)]
    await wait_until(lambda: backend.queue_depth() == 2)
    with pytest.raises(BackendOverloaded) as info:
        await backend.generate(req(seed=4))
    assert info.value.retry_after > 0 and info.value.kind == "overloaded"
    probe.gate.set()
    assert len(await asyncio.gather(running, *waiting)) == 3
    await backend.aclose()


@pytest.mark.asyncio
async def test_pipeline_error_is_reported_and_the_backend_keeps_serving(probe):
    backend = make(probe)
    probe.fail = RuntimeError("scheduler exploded")
    with pytest.raises(BackendError) as info:
        await backend.generate(req(seed=1))
    assert info.value.kind == "edge_failure" and "scheduler exploded" in str(info.value)
    result = await backend.generate(req(seed=1))
    await backend.aclose()
    assert result.images[0].size == (64, 64)


@pytest.mark.asyncio
async def test_out_of_memory_splits_the_batch_and_reports_edge_oom(probe):
    backend = make(probe, max_batch=4)
    probe.fail_batches_over = 1  # any batch of more than one image runs out of memory
    probe.gate.clear()
    blocker = asyncio.create_task(backend.generate(req(seed=1)))
    await wait_until(lambda: backend.in_flight() == 1)
    queued = [asyncio.create_task(backend.generate(req(seed=s))) for s in (2, 3)]
    await wait_until(lambda: backend.queue_depth() == 2)
    probe.gate.set()
    results = await asyncio.gather(blocker, *queued)
    assert probe.calls == [1, 2, 1, 1] and [r.seed for r in results] == [1, 2, 3]

    with pytest.raises(BackendError) as info:
        await backend.generate(req(seed=5, n=2))  # cannot be split further
    assert info.value.kind == "edge_oom"
    probe.fail_batches_over = None
    assert len((await backend.generate(req(seed=5, n=2))).images) == 2
    await backend.aclose()


@pytest.mark.asyncio
async def test_a_cancelled_request_is_not_run(probe):
    backend = make(probe)
    probe.gate.clear()
    running = asyncio.create_task(backend.generate(req(seed=1)))
    await wait_until(lambda: backend.in_flight() == 1)
    abandoned = asyncio.create_task(backend.generate(req(seed=2, width=32, height=32)))
    await wait_until(lambda: backend.queue_depth() == 1)
    abandoned.cancel()
    await asyncio.sleep(0)
    assert backend.queue_depth() == 0
    probe.gate.set()
    await running
    await backend.aclose()
    assert probe.calls == [1]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"width": 60}, "width: must be a multiple of 8"),
        ({"height": 0}, "height: must be an integer"),
        ({"n": 0}, "n: must be a positive integer"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"prompt": "  "}, "prompt"),
    ],
)
async def test_bad_requests_name_the_field(probe, fields, message):
    backend = make(probe)
    with pytest.raises(ValueError, match=message):
        await backend.generate(req(**fields))
    await backend.aclose()
    assert probe.calls == []


@pytest.mark.asyncio
async def test_close_fails_waiting_requests_and_refuses_new_ones(probe):
    backend = make(probe)
    probe.gate.clear()
    running = asyncio.create_task(backend.generate(req(seed=1)))
    await wait_until(lambda: backend.in_flight() == 1)
    waiting = asyncio.create_task(backend.generate(req(seed=2, width=32, height=32)))
    await wait_until(lambda: backend.queue_depth() == 1)
    await backend.aclose()
    probe.gate.set()
    for task in (running, waiting):
        with pytest.raises(BackendUnavailable, match="shutting down"):
            await task
    assert not backend.ready()
    with pytest.raises(BackendUnavailable):
        await backend.generate(req(seed=3))


@pytest.mark.asyncio
async def test_a_request_the_pipeline_refuses_is_a_value_error_not_a_backend_failure(probe):
    """Diffusers' input checks raise ValueError: that is the request's fault (422), not the edge failing (503)."""
    backend = make(probe)
    probe.fail = ValueError("`height` and `width` have to be divisible by 16 but are 48 and 64.")
    with pytest.raises(ValueError, match="divisible by 16") as info:
        await backend.generate(req(seed=1, width=64, height=48))
    assert isinstance(info.value, BackendError) and info.value.kind == "rejected"
    assert (await backend.generate(req(seed=1))).images[0].size == (64, 64)  # and it keeps serving
    await backend.aclose()
