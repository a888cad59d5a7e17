"""Scoring service: router calls off the event loop, with micro-batching of concurrent requests.

Requests that arrive within `window_ms` of each other (up to `max_batch`) share one router call in a
worker thread, so the event loop never blocks on the encoder and a burst costs one forward pass. A lone
request under light traffic does not wait for the window; requests that queue up during a router call
are batched into the next one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class PromptScorer(Protocol):
    """What the gateway needs of a router (RouteT2IRouter satisfies it)."""

    def score(self, prompts: Sequence[str]): ...  # -> object with .prs [B], .per_metric [B, k], .metrics


@dataclass
class PromptScore:
    prs: float
    per_metric: dict[str, float]
    latency_s: float  # the router call this prompt shared
    batch_size: int
    head: str = "paper"  # which head scored it: "paper" (pair router), or a many-model router's "pair"/"generic"


class ScoringService:
    def __init__(self, router: PromptScorer, *, max_batch: int = 32, window_ms: float = 2.0):
        self.router = router
        self.max_batch = max_batch
        self.window_s = window_ms / 1000
        self._queue: asyncio.Queue[tuple[str, asyncio.Future[PromptScore]]] | None = None
        self._worker: asyncio.Task | None = None
        self._last_batch = 1

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run(), name="router-batcher")

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    async def score(self, prompt: str) -> PromptScore:
        if self._queue is None:
            raise RuntimeError("ScoringService.start() was not awaited")
        future: asyncio.Future[PromptScore] = asyncio.get_running_loop().create_future()
        await self._queue.put((prompt, future))
        return await future

    async def _collect(self) -> list[tuple[str, asyncio.Future[PromptScore]]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        # Wait for company only when traffic is concurrent (the last batch had it, or more are queued):
        # a lone request should not pay the window.
        window = self.window_s if (self._last_batch > 1 or not self._queue.empty()) else 0.0
        deadline = time.monotonic() + window
        while len(batch) < self.max_batch:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                while len(batch) < self.max_batch and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), timeout))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            live = [(p, f) for p, f in batch if not f.cancelled()]
            self._last_batch = len(batch)
            if not live:
                continue
            started = time.perf_counter()
            try:
                scores = await asyncio.to_thread(self.router.score, [p for p, _ in live])
            except Exception as exc:  # the router failing must fail these requests, not the batcher
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            latency = time.perf_counter() - started
            prs = np.asarray(scores.prs, dtype=float)
            per_metric = np.asarray(scores.per_metric, dtype=float)
            names = list(scores.metrics)
            head = getattr(scores, "head", "paper")
            for i, (_, future) in enumerate(live):
                if not future.done():
                    future.set_result(
                        PromptScore(
                            prs=float(prs[i]),
                            per_metric={m: float(v) for m, v in zip(names, per_metric[i], strict=True)},
                            latency_s=latency,
                            batch_size=len(live),
                            head=head,
                        )
                    )
