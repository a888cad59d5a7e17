"""The router's faster paths keep its decisions: the score cache of the scoring service, and the ONNX Runtime
graph (`router_runtime: onnx`, where onnxruntime is installed)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.routing import ScoreCache, ScoringService
from router_model.onnx_runtime import onnx_available, scorer_for
from tests.standins import HashScorer, real_prompts
from tests.test_routing import LengthScorer


def test_the_cache_is_bounded_and_evicts_the_least_recently_used():
    cache = ScoreCache(3)
    for i in range(3):
        cache.put(f"p{i}", i / 10, {"m": i})
    assert cache.get("p0") == (0.0, {"m": 0}, "paper")  # p0 is now the most recent (and which head scored it)
    cache.put("p3", 0.3, {"m": 3})
    assert len(cache) == 3 and cache.get("p1") is None and cache.get("p0") is not None
    assert all(isinstance(k, bytes) and len(k) == 16 for k in cache._items)  # hashes, never the prompt text
    off = ScoreCache(0)
    off.put("p", 0.5, {})
    assert off.get("p") is None and len(off) == 0


@pytest.mark.asyncio
async def test_a_repeated_prompt_gets_the_same_score_without_a_router_call():
    scorer = LengthScorer()
    service = ScoringService(scorer, max_batch=4, window_ms=0, cache_size=2)
    await service.start()
    try:
        first = await service.score("a red bicycle")
        again = await service.score("a red bicycle")
        for prompt in ("one", "two", "three"):
            await service.score(prompt)
        evicted = await service.score("a red bicycle")
    finally:
        await service.aclose()
    assert (again.prs, again.per_metric) == (first.prs, first.per_metric) and again.cached and not first.cached
    assert [c for c in scorer.calls if "a red bicycle" in c] == [["a red bicycle"], ["a red bicycle"]]
    assert evicted.prs == first.prs and not evicted.cached


@pytest.mark.asyncio
async def test_concurrent_requests_fill_the_cache_once_each():
    scorer = HashScorer()
    service = ScoringService(scorer, max_batch=8, window_ms=5, cache_size=100)
    await service.start()
    try:
        prompts = [f"prompt {i % 5}" for i in range(20)]
        scores = await asyncio.gather(*(service.score(p) for p in prompts))
    finally:
        await service.aclose()
    by_prompt = {}
    for prompt, score in zip(prompts, scores, strict=True):
        assert by_prompt.setdefault(prompt, score.prs) == score.prs
    assert len(service.cache) == 5


def test_an_unknown_runtime_is_refused():
    with pytest.raises(ValueError, match="torch, onnx"):
        scorer_for(object(), "onnx-int8")


@pytest.mark.slow
@pytest.mark.skipif(not onnx_available(), reason="onnxruntime/onnx not installed (pip install 'routet2i[onnx]')")
def test_the_onnx_graph_agrees_with_torch_on_real_prompts(tmp_path, monkeypatch):
    import torch

    from bench.router_latency import agreement, load_router

    monkeypatch.setenv("ROUTET2I_ONNX_CACHE", str(tmp_path))
    torch.set_num_threads(1)
    router = load_router()
    graph = scorer_for(router, "onnx")
    prompts = real_prompts(400) + ["cat", "a dog", "sunset"]  # three shorter than top_k tokens: padded inputs
    reference = router.score(prompts).prs
    single = np.concatenate([graph.score([p]).prs for p in prompts[:50]])
    batched = graph.score(prompts).prs
    assert np.abs(batched - reference).max() < 1e-4 and np.abs(single - reference[:50]).max() < 1e-4
    assert agreement(reference, batched, rho=0.3) >= 0.99
    assert list(tmp_path.glob("router-*.onnx")), "the exported graph is cached"
