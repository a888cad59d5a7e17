import asyncio
import threading
from dataclasses import dataclass

import numpy as np
import pytest

from gateway.routing import ScoringService


@dataclass
class Scores:
    prs: np.ndarray
    per_metric: np.ndarray
    metrics: tuple[str, ...] = ("short", "plain")


class LengthScorer:
    """A deterministic scorer that records its calls: PRS falls with prompt length."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[list[str]] = []
        self.threads: set[int] = set()
        self.fail_on = fail_on

    def score(self, prompts):
        self.calls.append(list(prompts))
        self.threads.add(threading.get_ident())
        if self.fail_on in prompts:
            raise RuntimeError("router broke")
        prs = np.array([1 / (1 + len(p)) for p in prompts])
        return Scores(prs, np.stack([prs, 1 - prs], axis=1))


@pytest.mark.asyncio
async def test_concurrent_requests_share_a_batch_off_the_loop():
    scorer = LengthScorer()
    service = ScoringService(scorer, max_batch=8, window_ms=50)
    await service.start()
    try:
        prompts = [f"prompt {'x' * i}" for i in range(20)]
        results = await asyncio.gather(*(service.score(p) for p in prompts))
    finally:
        await service.aclose()
    assert [r.prs for r in results] == pytest.approx([1 / (1 + len(p)) for p in prompts])
    assert results[3].per_metric["plain"] == pytest.approx(1 - results[3].prs)
    assert max(len(c) for c in scorer.calls) == 8 and len(scorer.calls) == 3
    assert threading.get_ident() not in scorer.threads


@pytest.mark.asyncio
async def test_router_error_fails_only_its_batch():
    scorer = LengthScorer(fail_on="bad")
    service = ScoringService(scorer, max_batch=4, window_ms=1)
    await service.start()
    try:
        with pytest.raises(RuntimeError, match="router broke"):
            await service.score("bad")
        assert (await service.score("good")).prs == pytest.approx(1 / 5)
    finally:
        await service.aclose()
