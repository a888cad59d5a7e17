"""Scoring service: router calls off the event loop, with micro-batching of concurrent requests.

Requests that arrive within `window_ms` of each other (up to `max_batch`) share one router call in a
worker thread, so the event loop does not block on the encoder while other requests need it and a burst
costs one forward pass. A lone request under light traffic does not wait for the window; requests that
queue up during a router call are batched into the next one.

A request the caller says is alone (`alone=True`: nothing else in flight in the gateway) while the router is
idle is scored on the event loop's own thread (`inline`): with nobody to block, the thread hops cost more
than they save (submit to the router thread, its wake-up, the result handed back through the loop, each
handover of the GIL: about 1-2 ms on a loaded 2-core machine, docs/BENCHMARKS.md).

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
        key = self.key(prompt)
        self._items[key] = (prs, per_metric, head, quality)
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


class ScoringService:
    def __init__(
        self, router: PromptScorer, *, max_batch: int = 32, window_ms: float = 2.0, cache_size: int = 0,
        inline: bool = True,
    ):  # fmt: skip
        self.router = router
        self.inline = inline
        self._running = False  # a batch is in the router thread
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

    async def score(self, prompt: str, *, alone: bool = False) -> PromptScore:
        """The prompt's score: cached, inline (`alone` and the router idle, see the module doc) or micro-batched."""
        if self._queue is None:
            raise RuntimeError("ScoringService.start() was not awaited")
        hit = self.cache.get(prompt)
        if hit is not None:
            return PromptScore(
                prs=hit[0], per_metric=dict(hit[1]), latency_s=0.0, batch_size=0, cached=True, head=hit[2],
                quality=hit[3],
            )  # fmt: skip
        if alone and self.inline and not self._running and self._queue.empty():
            started = time.perf_counter()
            scores = self.router.score([prompt])
            return self._unpack([prompt], scores, time.perf_counter() - started)[0]
        future: asyncio.Future[PromptScore] = asyncio.get_running_loop().create_future()
        await self._queue.put((prompt, future))
        return await future

    def _unpack(self, prompts: Sequence[str], scores, latency: float) -> list[PromptScore]:
        """One PromptScore per prompt of a router call (each also cached)."""
        prs = np.asarray(scores.prs, dtype=float).tolist()
        per_metric = np.asarray(scores.per_metric, dtype=float).tolist()
        names = list(scores.metrics)
        head = getattr(scores, "head", "paper")
        model_quality = getattr(scores, "quality", None)
        out = []
        for i, prompt in enumerate(prompts):
            score = PromptScore(
                prs=prs[i],
                per_metric=dict(zip(names, per_metric[i], strict=True)),
                latency_s=latency,
                batch_size=len(prompts),
                head=head,
                quality={m: float(v[i]) for m, v in model_quality.items()} if model_quality else None,
            )
            self.cache.put(prompt, score.prs, score.per_metric, head, score.quality)
            out.append(score)
        return out

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
            self._running = True
            try:
                prompts = [p for p, _ in live]
                scores = await asyncio.get_running_loop().run_in_executor(self._executor, self.router.score, prompts)
                results = self._unpack(prompts, scores, time.perf_counter() - started)
            except Exception as exc:  # the router failing must fail these requests, not the batcher
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            finally:
                self._running = False
            for (_, future), score in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(score)
