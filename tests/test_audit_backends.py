"""Issue 15, backend side: regression tests against a real `routet2i worker` process (tiny SD3) over loopback
with real httpx clients, and a real edge pipeline (tiny SD 2.1-class).

- item 7: a size the model cannot run is a 422, not retried, and leaves the circuit closed; a client that
  gives up (timeout) cancels the generation on the worker.
- item 8: a killed worker makes the client report the circuit open, how long until it retries, and not ready.
- item 5: a prompt longer than the tokenizer's window leaves no prompt text in the worker's or the edge's logs.
- item 2: a running edge batch whose callers all went away stops between denoising steps.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backends.base import BackendError, BackendUnavailable, GenerationRequest, compute_units
from backends.cloud import WorkerCloudBackend
from backends.edge import EdgeBackend
from backends.worker import TOKEN_ENV
from demo.tiny import build_tiny_sd3_pipeline, build_tiny_sd_pipeline

TOKEN = "audit-secret"
AUTH = {"authorization": f"Bearer {TOKEN}"}
# Past the 77-token window of CLIP (the tiny tokenizers cut after 77 characters): the tail must not be logged.
TAIL_WORDS = ("quokka", "marmalade", "zeppelin", "ultramarine", "xylophone")
LONG_PROMPT = "a small red house on a green hill under a pale blue sky, " * 3 + " ".join(TAIL_WORDS * 4)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WorkerProcess:
    """`python -m gateway.cli worker` on a loopback port, its stdout and stderr in a log file."""

    def __init__(self, model: Path, log_path: Path):
        self.port, self.log_path = free_port(), log_path
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, TOKEN_ENV: TOKEN, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "gateway.cli", "worker", "--model", str(model), "--port", str(self.port),
                   "--steps", "2", "--device", "cpu", "--max-batch", "1"]  # fmt: skip
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(command, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> WorkerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the worker exited: {self.log()[-2000:]}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("the worker did not become ready")

    def readyz(self) -> dict:
        return httpx.get(f"{self.url}/readyz", timeout=5).json()

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, and reap it (no zombie)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="module")
def sd3_path(tmp_path_factory) -> Path:
    return build_tiny_sd3_pipeline(tmp_path_factory.mktemp("tiny-sd3"))


@pytest.fixture(scope="module")
def worker(sd3_path, tmp_path_factory) -> Iterator[WorkerProcess]:
    process = WorkerProcess(sd3_path, tmp_path_factory.mktemp("worker-log") / "worker.log")
    try:
        yield process.wait_ready()
    finally:
        process.kill()


def client(url: str, **options) -> tuple[WorkerCloudBackend, list[str]]:
    """A worker client and the list of HTTP attempts it makes."""
    options = {"max_retries": 2, "backoff_base": 0.01, "backoff_max": 0.05, **options}
    backend = WorkerCloudBackend(url, token=TOKEN, **options)
    attempts: list[str] = []

    async def count(request: httpx.Request) -> None:
        attempts.append(request.url.path)

    backend.client.event_hooks["request"].append(count)
    return backend, attempts


def req(**fields) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a castle at dusk", "width": 64, "height": 48, "seed": 1, **fields})


async def until(condition, timeout: float, what: str) -> float:
    """Seconds until `condition()` held; fail after `timeout`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what} not within {timeout}s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


# ---- item 7: bad sizes are the caller's fault, not the worker's ------------------------------------------------------
@pytest.mark.asyncio
@pytest.mark.slow
async def test_a_size_the_model_cannot_run_is_422_not_retried_and_cannot_open_the_circuit(worker):
    # tiny SD3: 8 pixels a latent, a position embedding of 96 patches: 768 pixels a side at most
    response = httpx.post(f"{worker.url}/v1/generate", json={"prompt": "x", "width": 64, "height": 776}, headers=AUTH)
    assert response.status_code == 422 and "height" in response.json()["detail"]

    backend, attempts = client(worker.url, failure_threshold=5)
    try:
        for _ in range(5):  # what opened the circuit for everyone in the audit
            with pytest.raises(BackendError) as info:
                await backend.generate(req(width=64, height=776))
            assert info.value.kind == "http_4xx" and "768" in str(info.value)
        assert len(attempts) == 5  # one attempt each: a deterministic refusal is not retried
        assert backend.circuit_state == "closed" and backend.ready()
        assert backend.breaker_status().consecutive_failures == 0
        result = await backend.generate(req(width=64, height=768))  # the largest side it can run
        assert result.images[0].size == (64, 768)
    finally:
        await backend.aclose()


@pytest.mark.asyncio
@pytest.mark.slow
async def test_a_client_that_gives_up_cancels_the_generation_on_the_worker(worker):
    heavy = req(width=512, height=512, num_inference_steps=200)  # about a minute of CPU on the tiny SD3
    backend, attempts = client(worker.url, timeout=1.5, max_retries=1)
    started = time.monotonic()
    try:
        with pytest.raises(BackendUnavailable) as info:
            await backend.generate(heavy)
    finally:
        await backend.aclose()
    assert info.value.kind == "timeout" and len(attempts) == 2
    gave_up = time.monotonic() - started
    # both attempts were stopped within a denoising step or two of the client going away ...
    idle_after = await until(lambda: worker.readyz().get("in_flight", 1) == 0, 5.0, "the worker to go idle")
    # ... so the next request does not queue behind a generation nobody waits for
    async with httpx.AsyncClient(base_url=worker.url, headers=AUTH, timeout=20) as http:
        before = time.monotonic()
        response = await http.post("/v1/generate", json={"prompt": "a boat", "width": 64, "height": 64})
        small = time.monotonic() - before
    assert response.status_code == 200 and small < 5.0, (gave_up, idle_after, small)

    # the same when the caller is cancelled (the gateway's client went away): the connection closes
    backend, attempts = client(worker.url, timeout=60)
    try:
        call = asyncio.create_task(backend.generate(heavy))
        await until(lambda: worker.readyz().get("in_flight") == 1, 20, "the worker to start")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await until(lambda: worker.readyz().get("in_flight", 1) == 0, 5.0, "the worker to go idle")
        assert backend.circuit_state == "closed" and len(attempts) == 1  # no outcome: nothing recorded
    finally:
        await backend.aclose()


# ---- item 8: a dead worker shows in the client's health ------------------------------------------------------------
@pytest.mark.asyncio
@pytest.mark.slow
async def test_a_killed_worker_makes_the_client_report_an_open_circuit(sd3_path, tmp_path):
    process = WorkerProcess(sd3_path, tmp_path / "worker.log").wait_ready()
    backend, attempts = client(process.url, max_retries=1, failure_threshold=2, cooldown_s=30)
    try:
        await backend.generate(req())
        assert backend.ready() and backend.breaker_status().state == "closed"
        process.kill()
        for _ in range(2):
            with pytest.raises(BackendUnavailable) as info:
                await backend.generate(req())
            assert info.value.kind == "unavailable"
        status = backend.breaker_status()
        assert not backend.ready()
        assert status.state == "open" and not status.healthy and status.consecutive_failures == 2
        assert 25 < status.retry_in_s <= 30
        assert status.as_dict()["state"] == "open"
        attempts.clear()
        with pytest.raises(BackendUnavailable, match="circuit open"):
            await backend.generate(req())
        assert attempts == []  # fails fast without touching the network
    finally:
        await backend.aclose()
        process.kill()


# ---- item 5: no prompt text in logs ---------------------------------------------------------------------------------
def assert_no_tail_words(text: str) -> None:
    leaked = [word for word in TAIL_WORDS if word in text.lower()]
    assert not leaked, f"prompt words in the log: {leaked}"


@pytest.mark.slow
def test_a_long_prompt_leaves_no_prompt_text_in_the_worker_log(worker):
    body = {"prompt": LONG_PROMPT, "negative_prompt": LONG_PROMPT, "width": 64, "height": 64}
    response = httpx.post(f"{worker.url}/v1/generate", json=body, headers=AUTH, timeout=60)
    assert response.status_code == 200
    log = worker.log()
    assert "part of your input was truncated" in log  # the warning was written ...
    assert "characters of prompt text not logged" in log
    assert_no_tail_words(log)  # ... without what it cut off


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def sd_path(tmp_path_factory) -> Path:
    return build_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny-sd"))


@pytest.mark.asyncio
async def test_a_long_prompt_leaves_no_prompt_text_in_the_edge_logs(sd_path, capfd):
    collect = Collect()
    loggers = [logging.getLogger(name) for name in ("", "diffusers", "transformers")]
    for logger in loggers:
        logger.addHandler(collect)
    edge = EdgeBackend(str(sd_path), device="cpu", default_steps=1)
    try:
        result = await edge.generate(GenerationRequest(prompt=LONG_PROMPT, width=64, height=64, seed=3))
    finally:
        await edge.aclose()
        for logger in loggers:
            logger.removeHandler(collect)
    assert result.images[0].size == (64, 64)
    out, err = capfd.readouterr()
    text = "\n".join(collect.lines) + out + err
    assert "part of your input was truncated" in text
    assert_no_tail_words(text)


# ---- item 2: abandoned edge work ------------------------------------------------------------------------------------
class StepCounter:
    """The real pipeline, counting the denoising steps it runs (through diffusers' step callback)."""

    def __init__(self, pipeline) -> None:
        self.pipeline, self.steps, self.calls = pipeline, 0, 0

    def __call__(self, **kwargs):
        self.calls += 1
        inner = kwargs.get("callback_on_step_end")

        def count(pipe, step, timestep, tensors):
            self.steps += 1
            return inner(pipe, step, timestep, tensors) if inner else tensors

        return self.pipeline(**{**kwargs, "callback_on_step_end": count})


@pytest.fixture(scope="module")
def sd_pipeline(sd_path):
    edge = EdgeBackend(str(sd_path), device="cpu")
    return edge.pipeline


@pytest.mark.asyncio
async def test_a_running_edge_batch_whose_callers_went_away_stops_between_steps(sd_pipeline):
    counter = StepCounter(sd_pipeline)
    edge = EdgeBackend("tiny-sd", pipeline=counter, device="cpu", batch_window_ms=1)
    try:
        abandoned = asyncio.create_task(edge.generate(req(width=256, height=256, num_inference_steps=900)))
        await until(lambda: counter.steps >= 3, 30, "the pipeline to start")
        abandoned.cancel()
        stopped_in = await until(lambda: edge.in_flight() == 0, 3.0, "the pipeline to stop")
        assert counter.steps < 900
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        after = await edge.generate(req(width=64, height=64, num_inference_steps=2))  # the device is free again
        assert after.images[0].size == (64, 64) and counter.calls == 2, stopped_in
    finally:
        await edge.aclose()


@pytest.mark.asyncio
async def test_a_batch_runs_to_the_end_while_one_caller_still_waits(sd_pipeline):
    counter = StepCounter(sd_pipeline)
    edge = EdgeBackend("tiny-sd", pipeline=counter, device="cpu", max_batch=2, batch_window_ms=200)
    try:
        tasks = [asyncio.create_task(edge.generate(req(seed=s, num_inference_steps=40))) for s in (1, 2)]
        await until(lambda: edge.in_flight() == 2, 30, "the batch to start")
        tasks[0].cancel()
        result = await tasks[1]
        assert result.images[0].size == (64, 48) and counter.steps == 40 and counter.calls == 1
    finally:
        await edge.aclose()


def test_compute_units_is_pixels_times_steps_times_images():
    assert compute_units(512, 512, 25, 1) == 6_553_600
    assert compute_units(2048, 2048, 150, 4) == 2048 * 2048 * 150 * 4 == 384 * compute_units(512, 512, 25, 1)
