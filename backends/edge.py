"""The local diffusers pipeline as an `ImageBackend`: a bounded queue, micro-batching, one call per device.

Diffusers pipelines are not thread-safe, so every pipeline call runs in a worker thread while holding a
per-device lock (two backends on one GPU take turns). A single dispatcher task drains the queue: it
takes the oldest request and any queued requests compatible with it (same size, steps, guidance and
negative prompt) up to `max_batch` images, and runs them as one pipeline call with one CPU
`torch.Generator` per image. Image i of a request with seed s is generated from seed s + i, so a seed
reproduces its images alone or inside any batch, on the CPU or on CUDA.

The worker (`backends/worker.py`) serves the cloud model with this same class.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from backends.base import (
    MAX_SEED,
    BackendError,
    BackendOverloaded,
    BackendUnavailable,
    GenerationRequest,
    GenerationResult,
)
from backends.loading import load_pipeline, resolve_device

log = logging.getLogger(__name__)

MAX_SIDE = 4096
SIZE_MULTIPLE = 8

_DEVICE_LOCKS: dict[str, threading.Lock] = {}
_DEVICE_LOCKS_GUARD = threading.Lock()


def device_lock(device: torch.device | str) -> threading.Lock:
    """The process-wide lock that serialises pipeline calls on one device."""
    key = str(device)
    with _DEVICE_LOCKS_GUARD:
        return _DEVICE_LOCKS.setdefault(key, threading.Lock())


def draw_seed() -> int:
    """A fresh seed in [1, 2**32 - 2] (0 means "random" to some providers, 2**32 - 1 is out of their range)."""
    return random.SystemRandom().randint(1, MAX_SEED - 1)


def validate_request(request: GenerationRequest, *, multiple: int = SIZE_MULTIPLE) -> None:
    """Raise `ValueError` naming the field and the fix when a request cannot be run by a local pipeline."""
    if not isinstance(request.prompt, str) or not request.prompt.strip():
        raise ValueError("prompt: must be a non-empty string")
    for name in ("width", "height"):
        value = getattr(request, name)
        if not isinstance(value, int) or value <= 0 or value > MAX_SIDE:
            raise ValueError(f"{name}: must be an integer in [{multiple}, {MAX_SIDE}], got {value!r}")
        if value % multiple:
            lower, upper = value - value % multiple, value - value % multiple + multiple
            raise ValueError(
                f"{name}: must be a multiple of {multiple} (diffusion latents are {multiple}x smaller), got {value}; "
                f"use {max(lower, multiple)} or {upper}"
            )
    if not isinstance(request.n, int) or request.n < 1:
        raise ValueError(f"n: must be a positive integer, got {request.n!r}")
    steps = request.num_inference_steps
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"num_inference_steps: must be a positive integer, got {steps!r}")
    guidance = request.guidance_scale
    if guidance is not None and (not isinstance(guidance, int | float) or not math.isfinite(guidance) or guidance < 0):
        raise ValueError(f"guidance_scale: must be a finite number >= 0, got {guidance!r}")
    if request.seed is not None and (not isinstance(request.seed, int) or not 0 <= request.seed <= MAX_SEED):
        raise ValueError(f"seed: must be an integer in [0, {MAX_SEED}], got {request.seed!r}")


def _is_oom(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom) or "out of memory" in str(exc).lower()


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

    @property
    def key(self) -> tuple:
        r = self.request
        return (r.width, r.height, self.steps, self.guidance, r.negative_prompt or None)


class EdgeBackend:
    """A diffusers text-to-image pipeline behind a bounded queue with micro-batching (name "edge").

    `model` is a local path or hub id loaded with `backends.loading.load_pipeline`; pass `pipeline=`
    to serve an already loaded pipeline instead. `lazy=True` defers loading to `await load()` (or the
    first request) so a server can answer health checks while the weights load.
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
    ):
        if max_queue < 1 or max_batch < 1 or batch_window_ms < 0:
            raise ValueError("max_queue and max_batch must be >= 1 and batch_window_ms >= 0")
        self.name = name
        self.model = model
        self.device = resolve_device(device)
        self.dtype = dtype
        self.pipeline_class = pipeline_class
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.batch_window = batch_window_ms / 1000.0
        self.default_steps = default_steps
        self.default_guidance = default_guidance
        self.pipeline = pipeline
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
        if pipeline is None and not lazy:
            self._load_sync()

    # ---- loading and lifecycle -------------------------------------------------------------------
    def _load_sync(self) -> None:
        with self._load_lock:
            if self.pipeline is None:
                started = time.perf_counter()
                self.pipeline = load_pipeline(self.model, str(self.device), self.dtype, self.pipeline_class)
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
        pipe = self.pipeline
        scale = getattr(pipe, "vae_scale_factor", None) or 1
        denoiser = getattr(pipe, "transformer", None)
        patch = getattr(getattr(denoiser, "config", None), "patch_size", None) or 1
        return math.lcm(SIZE_MULTIPLE, int(scale) * int(patch))

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
        self.pipeline = None
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
        if (multiple := self.size_multiple) != SIZE_MULTIPLE:
            validate_request(request, multiple=multiple)
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
        if not batch:
            return
        started = time.perf_counter()
        self._in_flight = len(batch)
        try:
            images = await asyncio.to_thread(self._call_pipeline, batch)
        except asyncio.CancelledError:  # aclose() while the call runs: don't leave its callers waiting
            for job in batch:
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
        with self._lock:
            pipeline = self.pipeline
            if pipeline is None:
                raise RuntimeError("the pipeline was released")
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
            )
        images = list(output.images)
        if len(images) != len(prompts):
            raise RuntimeError(f"the pipeline returned {len(images)} images for {len(prompts)} prompts")
        return images
