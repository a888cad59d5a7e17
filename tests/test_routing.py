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


@pytest.mark.asyncio
async def test_a_lone_request_is_scored_inline_unless_a_batch_is_running():
    """`alone=True` with the router idle: scored on the loop's own thread (no hop); `inline=False`, or a batch
    in the router thread at that moment: queued for the router thread as before, never two router calls at once."""
    loop_thread = threading.get_ident()
    scorer = LengthScorer()
    service = ScoringService(scorer, max_batch=8, window_ms=0)
    await service.start()
    try:
        lone = await service.score("a lone prompt", alone=True)
        assert scorer.threads == {loop_thread} and scorer.calls == [["a lone prompt"]]
        assert lone.prs == pytest.approx(1 / 14) and lone.batch_size == 1 and lone.latency_s > 0
        assert lone.per_metric == {"short": lone.prs, "plain": pytest.approx(1 - lone.prs)}

        release = threading.Event()
        slow = SlowScorer(release)
        service.router = slow
        batched = asyncio.create_task(service.score("first"))
        while not slow.started.is_set():
            await asyncio.sleep(0.001)
        second = asyncio.create_task(service.score("second", alone=True))  # the router is busy: it queues
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(batched, second)
        assert loop_thread not in slow.threads and ["second"] in slow.calls
    finally:
        await service.aclose()

    off = ScoringService(LengthScorer(), inline=False)
    await off.start()
    try:
        await off.score("lone", alone=True)
        assert loop_thread not in off.router.threads
    finally:
        await off.aclose()


class SlowScorer(LengthScorer):
    """Holds its first call until `release` is set."""

    def __init__(self, release: threading.Event):
        super().__init__()
        self.release, self.started = release, threading.Event()

    def score(self, prompts):
        self.started.set()
        self.release.wait(5)
        return super().score(prompts)


def test_the_gateway_scores_inline_only_what_is_alone(tmp_path):
    """Through the real app: a request with nothing else in flight is scored on the event loop's thread; of 8
    concurrent ones (their upstream calls overlap), at least some go through the router thread's micro-batches."""
    import httpx

    from gateway.app import create_app
    from tests.servers import LiveServer
    from tests.standins import HashScorer, InstantBackend, standin_settings

    class Recording(HashScorer):
        def __init__(self):
            self.threads: list[str] = []

        def score(self, prompts):
            self.threads.append(threading.current_thread().name)
            return super().score(prompts)

    scorer = Recording()
    settings = standin_settings(tmp_path, rho=1.0, router_cache_size=0)
    edge, cloud = InstantBackend("edge", delay_s=0.05), InstantBackend("cloud", delay_s=0.05)
    app = create_app(settings, router=scorer, edge=edge, cloud=cloud)
    with LiveServer(app) as server:
        body = {"prompt": "a lone one", "size": "64x64"}
        assert httpx.post(f"{server.url}/generate", json=body, timeout=30).status_code == 200
        assert len(scorer.threads) == 1 and not scorer.threads[0].startswith("router")

        async def burst() -> list[int]:
            async with httpx.AsyncClient(timeout=30) as client:
                responses = await asyncio.gather(
                    *(client.post(f"{server.url}/generate", json={**body, "prompt": f"p{i}"}) for i in range(8))
                )
            return [r.status_code for r in responses]

        assert asyncio.run(burst()) == [200] * 8
        assert any(name.startswith("router") for name in scorer.threads[1:])
        assert httpx.post(f"{server.url}/generate", json=body, timeout=30).status_code == 200  # alone again
    assert not scorer.threads[-1].startswith("router")
