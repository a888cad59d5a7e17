"""Scoring service: router calls off the event loop, with micro-batching of concurrent requests.

Requests that arrive within `window_ms` of each other (up to `max_batch`) share one router call in a
worker thread, so the event loop never blocks on the encoder and a burst costs one forward pass. A lone
request under light traffic does not wait for the window; requests that queue up during a router call
are batched into the next one.

A bounded LRU of recent scores (keyed by a hash of the prompt, never the text) answers a repeated prompt
without a router call or a thread hop; the router is deterministic in eval mode, so a cached score is the
score the router would give.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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
    latency_s: float  # the router call this prompt shared (0 for a cached score)
    batch_size: int  # 0 for a cached score
    cached: bool = False
    head: str = "paper"  # which head scored it: "paper" (pair router), or a many-model router's "pair"/"generic"
    quality: dict[str, float] | None = None  # a many-model router's per-model quality of the N arms' models


class ScoreCache:
    """The last `size` scores by prompt hash (blake2b, 16 bytes): bounded, least recently used out first."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[bytes, tuple[float, dict[str, float], str, dict[str, float] | None]] = OrderedDict()

    @staticmethod
    def key(prompt: str) -> bytes:
        return hashlib.blake2b(prompt.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, prompt: str) -> tuple[float, dict[str, float], str, dict[str, float] | None] | None:
        if not self.size:
            return None
        key = self.key(prompt)
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
        return hit

    def put(
        self, prompt: str, prs: float, per_metric: dict[str, float], head: str = "paper",
        quality: dict[str, float] | None = None,
    ) -> None:  # fmt: skip
        if not self.size:
            return
        self._items[self.key(prompt)] = (prs, per_metric, head, quality)
        self._items.move_to_end(self.key(prompt))
        while len(self._items) > self.size:
            self._items.popitem(last=False)


class ScoringService:
    def __init__(self, router: PromptScorer, *, max_batch: int = 32, window_ms: float = 2.0, cache_size: int = 0):
        self.router = router
        self.max_batch = max_batch
        self.window_s = window_ms / 1000
        self.cache = ScoreCache(cache_size)
        self._queue: asyncio.Queue[tuple[str, asyncio.Future[PromptScore]]] | None = None
        self._worker: asyncio.Task | None = None
        self._last_batch = 1
        # One thread of its own: router calls never wait behind other to_thread work (PNG encodes), and
        # the thread (and its torch/ORT state) stays warm between calls.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="router")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run(), name="router-batcher")

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def score(self, prompt: str) -> PromptScore:
        if self._queue is None:
            raise RuntimeError("ScoringService.start() was not awaited")
        hit = self.cache.get(prompt)
        if hit is not None:
            return PromptScore(
                prs=hit[0], per_metric=dict(hit[1]), latency_s=0.0, batch_size=0, cached=True, head=hit[2],
                quality=hit[3],
            )  # fmt: skip
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
                prompts = [p for p, _ in live]
                scores = await asyncio.get_running_loop().run_in_executor(self._executor, self.router.score, prompts)
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
            model_quality = getattr(scores, "quality", None)
            for i, (prompt, future) in enumerate(live):
                score = PromptScore(
                    prs=float(prs[i]),
                    per_metric={m: float(v) for m, v in zip(names, per_metric[i], strict=True)},
                    latency_s=latency,
                    batch_size=len(live),
                    head=head,
                    quality={m: float(v[i]) for m, v in model_quality.items()} if model_quality else None,
                )
                self.cache.put(prompt, score.prs, score.per_metric, head, score.quality)
                if not future.done():
                    future.set_result(score)
