"""The local diffusers pipeline as an `ImageBackend`: a bounded queue, micro-batching, one call per device.

Diffusers pipelines are not thread-safe, so every pipeline call runs in a worker thread while holding a
per-device lock (two backends on one GPU take turns). A single dispatcher task drains the queue: it
takes the oldest request and any queued requests compatible with it (same size, steps, guidance and
negative prompt) up to `max_batch` images, and runs them as one pipeline call with one CPU
`torch.Generator` per image. Image i of a request with seed s is generated from seed s + i, so a seed
reproduces its images alone or inside any batch, on the CPU or on CUDA.

A caller that goes away (its task is cancelled) costs nothing more: a queued request is dropped
before it runs, and a running pipeline call whose callers have all gone stops at the end of the current
denoising step (diffusers' `callback_on_step_end`).

The worker (`backends/worker.py`) serves the cloud model with this same class.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from backends.base import (
    BackendError,
    BackendOverloaded,
    BackendUnavailable,
    GenerationRequest,
    GenerationResult,
    RequestRejected,
)
from backends.limits import MAX_SEED, draw_seed, size_limits, validate_request
from backends.loading import load_pipeline, resolve_device
from backends.logs import install_prompt_scrubber
from backends.pipeline_pool import PipelinePool, release, shared

log = logging.getLogger(__name__)

__all__ = ["MAX_SEED", "EdgeBackend", "device_lock", "draw_seed", "validate_request"]

_DEVICE_LOCKS: dict[str, threading.Lock] = {}
_DEVICE_LOCKS_GUARD = threading.Lock()


def device_lock(device: torch.device | str) -> threading.Lock:
    """The process-wide lock that serialises pipeline calls on one device."""
    key = str(device)
    with _DEVICE_LOCKS_GUARD:
        return _DEVICE_LOCKS.setdefault(key, threading.Lock())


def _is_oom(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom) or "out of memory" in str(exc).lower()


class _Abandoned(Exception):
    """Raised from the step callback to stop a pipeline call whose callers have all gone away."""


def _accepts_step_callback(pipeline: Any) -> bool:
    try:
        parameters = inspect.signature(pipeline).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "callback_on_step_end" or p.kind is p.VAR_KEYWORD for p in parameters)


def _free_accelerator_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class _Job:
    """One queued request, with everything resolved (seed, steps, guidance) before it is batched."""

    request: GenerationRequest
    seed: int
    steps: int
    guidance: float
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    abandoned: bool = False  # the caller went away; read by the pipeline thread between steps

    @property
    def key(self) -> tuple:
        r = self.request
        return (r.width, r.height, self.steps, self.guidance, r.negative_prompt or None)


class EdgeBackend:
    """A diffusers text-to-image pipeline behind a bounded queue with micro-batching (name "edge").

    `model` is a local path or hub id (`backends.loading.load_pipeline`; with a `pool`, shared by its backends of
    that model, device and dtype); `pipeline=` serves an already loaded pipeline. `lazy=True` defers loading to
    `await load()` (or the first request) so a server can answer health checks while the weights load.
    """

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_queue: int = 16,
        max_batch: int = 4,
        batch_window_ms: float = 10,
        default_steps: int = 25,
        default_guidance: float = 7.5,
        pipeline_class: str | None = None,
        pipeline: Any | None = None,
        lazy: bool = False,
        name: str = "edge",
        pool: PipelinePool | None = None,
    ):
        if max_queue < 1 or max_batch < 1 or batch_window_ms < 0:
            raise ValueError("max_queue and max_batch must be >= 1 and batch_window_ms >= 0")
        self.name = name
        self.model = model
        self.device = resolve_device(device)
        self.dtype = dtype
        self.pipeline_class = pipeline_class
        self.max_queue, self.max_batch = max_queue, max_batch
        self.batch_window = batch_window_ms / 1000.0
        self.default_steps = default_steps
        self.default_guidance = default_guidance
        self.pipeline, self.pool = pipeline, pool
        self._lock = device_lock(self.device)
        self._load_lock = threading.Lock()
        self._pending: deque[_Job] = deque()
        self._in_flight = 0
        self._wakeup: asyncio.Event | None = None
        self._dispatcher: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batch_seconds = 1.0  # running mean of one pipeline call, for Retry-After estimates
        self._closed = False
        self.pipeline_calls = 0
        install_prompt_scrubber()  # the text encoders' truncation warnings quote the prompt
        if pipeline is None and not lazy:
            self._load_sync()

    # ---- loading and lifecycle -------------------------------------------------------------------
    def _load_sync(self) -> None:
        with self._load_lock:
            if self.pipeline is None:
                started = time.perf_counter()
                key = (self.model, str(self.device), self.dtype, self.pipeline_class)
                self.pipeline = shared(self.pool, key, load_pipeline)
                log.info(
                    "%s: loaded %s on %s in %.1fs", self.name, self.model, self.device, time.perf_counter() - started
                )

    async def load(self) -> None:
        """Load the pipeline in a worker thread (idempotent)."""
        if self.pipeline is None:
            await asyncio.to_thread(self._load_sync)

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this: 8, or the pipeline's latent stride if larger (SD3: 16)."""
        return size_limits(self.pipeline)[0]

    @property
    def max_side(self) -> int:
        """The largest width or height the pipeline can run (see `backends.limits.size_limits`)."""
        return size_limits(self.pipeline)[1]

    def ready(self) -> bool:
        return self.pipeline is not None and not self._closed

    def queue_depth(self) -> int:
        """Requests waiting for the pipeline (not counting the batch that is running)."""
        return len(self._pending)

    def in_flight(self) -> int:
        """Requests inside the pipeline call that is running now."""
        return self._in_flight

    async def aclose(self) -> None:
        """Fail waiting requests, stop the dispatcher and release the pipeline's memory."""
        self._closed = True
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(BackendUnavailable(f"{self.name} backend is shutting down"))
        if self._dispatcher is not None and not self._dispatcher.done():
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._dispatcher
        self._dispatcher = None
        self.pipeline = release(self.pool, self.pipeline)  # None; a shared pipeline stays while others use it
        _free_accelerator_memory()

    # ---- the request path ------------------------------------------------------------------------
    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if self._closed:
            raise BackendUnavailable(f"{self.name} backend is closed")
        validate_request(request)
        if len(self._pending) >= self.max_queue:
            raise BackendOverloaded(
                f"{self.name} queue is full ({self.max_queue} requests waiting)", retry_after=self._retry_after()
            )
        if self.pipeline is None:
            try:
                await self.load()
            except Exception as exc:
                raise BackendUnavailable(f"{self.name}: cannot load {self.model}: {type(exc).__name__}: {exc}") from exc
        multiple, max_side = size_limits(self.pipeline)
        validate_request(request, multiple=multiple, max_side=max_side)  # this model's limits, before it runs
        loop = asyncio.get_running_loop()
        job = _Job(
            request=request,
            seed=request.seed if request.seed is not None else draw_seed(),
            steps=request.num_inference_steps or self.default_steps,
            guidance=float(request.guidance_scale if request.guidance_scale is not None else self.default_guidance),
            future=loop.create_future(),
        )
        self._ensure_dispatcher(loop)
        self._pending.append(job)
        self._wakeup.set()
        try:
            return await job.future
        except asyncio.CancelledError:
            job.abandoned = True  # running: the pipeline stops after this step if no one else waits for it
            with contextlib.suppress(ValueError):
                self._pending.remove(job)  # the caller went away before its turn: don't run it
            raise

    def _retry_after(self) -> float:
        rounds = math.ceil((len(self._pending) + 1) / self.max_batch) + 1
        return round(max(0.5, rounds * self._batch_seconds), 2)

    def _ensure_dispatcher(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._dispatcher is None or self._dispatcher.done() or self._loop is not loop:
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._dispatcher = loop.create_task(self._dispatch_loop(), name=f"{self.name}-dispatcher")

    async def _dispatch_loop(self) -> None:
        while not self._closed:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            head = self._pending[0]
            while self._batch_images(head) < self.max_batch:
                remaining = head.enqueued + self.batch_window - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                if not self._pending or self._pending[0] is not head:
                    break  # the head was cancelled: start over with the new head
            batch = self._pop_batch()
            try:
                await self._run(batch)
            except Exception as exc:  # a bug here must not leave callers waiting forever
                log.exception("%s: dispatcher error", self.name)
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(BackendError(f"{self.name}: {exc}", kind="edge_failure"))

    def _compatible(self, head: _Job) -> list[_Job]:
        """Queued jobs that can share a pipeline call with `head`, oldest first, within `max_batch` images."""
        chosen, images = [], 0
        for job in self._pending:
            if job.key != head.key or job.future.done():
                continue
            if chosen and images + job.request.n > self.max_batch:
                break
            chosen.append(job)
            images += job.request.n
        return chosen

    def _batch_images(self, head: _Job) -> int:
        return sum(job.request.n for job in self._compatible(head))

    def _pop_batch(self) -> list[_Job]:
        while self._pending and self._pending[0].future.done():
            self._pending.popleft()
        if not self._pending:
            return []
        batch = self._compatible(self._pending[0])
        for job in batch:
            self._pending.remove(job)
        return batch

    async def _run(self, batch: list[_Job]) -> None:
        batch = [job for job in batch if not job.abandoned]
        if not batch:
            return
        started = time.perf_counter()
        self._in_flight = len(batch)
        try:
            images = await asyncio.to_thread(self._call_pipeline, batch)
        except _Abandoned:  # every caller of the batch went away: nobody waits for these images
            log.info("%s: stopped a pipeline call early: its callers went away", self.name)
            for job in batch:
                job.future.cancel()
            return
        except asyncio.CancelledError:  # aclose() while the call runs: don't leave its callers waiting
            for job in batch:
                job.abandoned = True  # and stop the pipeline thread after its current step
                if not job.future.done():
                    job.future.set_exception(BackendUnavailable(f"{self.name} backend is shutting down"))
            raise
        except Exception as exc:
            if _is_oom(exc):
                _free_accelerator_memory()
                if len(batch) > 1:
                    log.warning(
                        "%s: out of memory on a batch of %d requests; running them one by one", self.name, len(batch)
                    )
                    for job in batch:
                        await self._run([job])
                    return
                error = BackendError(f"{self.name}: out of accelerator memory ({type(exc).__name__})", kind="edge_oom")
            elif isinstance(exc, ValueError):  # diffusers' input checks: this request cannot be run as asked
                log.warning("%s: the pipeline refused a request (%s)", self.name, type(exc).__name__)
                error = RequestRejected(f"{self.name}: the model cannot run this request: {exc}")
            else:
                log.exception("%s: pipeline call failed", self.name)
                error = BackendError(f"{self.name}: pipeline failed: {type(exc).__name__}: {exc}", kind="edge_failure")
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        finally:
            self._in_flight = 0
        elapsed = time.perf_counter() - started
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * elapsed
        offset = 0
        for job in batch:
            n = job.request.n
            result = GenerationResult(
                images=images[offset : offset + n],
                seed=job.seed,
                backend=self.name,
                model=self.model,
                timings={
                    "queue_s": started - job.enqueued,
                    "inference_s": elapsed,
                    "batch_images": float(len(images)),
                },
            )
            offset += n
            if not job.future.done():
                job.future.set_result(result)

    def _call_pipeline(self, batch: list[_Job]) -> list:
        """One pipeline call for the whole batch (runs in a worker thread, under the device lock)."""
        head = batch[0]
        prompts, generators = [], []
        for job in batch:
            for i in range(job.request.n):
                prompts.append(job.request.prompt)
                generators.append(torch.Generator(device="cpu").manual_seed(job.seed + i))
        negative = head.request.negative_prompt or None

        def stop_if_abandoned(pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
            if all(job.abandoned for job in batch):
                raise _Abandoned()
            return tensors

        with self._lock:
            pipeline = self.pipeline
            if pipeline is None:
                raise RuntimeError("the pipeline was released")
            if all(job.abandoned for job in batch):
                raise _Abandoned()
            options = {"callback_on_step_end": stop_if_abandoned} if _accepts_step_callback(pipeline) else {}
            self.pipeline_calls += 1
            output = pipeline(
                prompt=prompts,
                negative_prompt=[negative] * len(prompts) if negative else None,
                width=head.request.width,
                height=head.request.height,
                num_inference_steps=head.steps,
                guidance_scale=head.guidance,
                generator=generators,
                num_images_per_prompt=1,
                output_type="pil",
                **options,
            )
        images = list(output.images)
        if len(images) != len(prompts):
            raise RuntimeError(f"the pipeline returned {len(images)} images for {len(prompts)} prompts")
        return images
