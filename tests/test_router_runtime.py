"""The router's faster paths keep its decisions: the score cache of the scoring service, and the ONNX Runtime
graph in float32 (`router_runtime: onnx`) and with blockwise int8 weights (`onnx-int8`), where onnxruntime is
installed."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.routing import ScoreCache, ScoringService
from router_model.onnx_runtime import (
    block_int8,
    onnx_available,
    quantize_blockwise_int8,
    quantize_mixed_int8,
    scorer_for,
)
from tests.standins import HashScorer, real_prompts
from tests.test_routing import LengthScorer


def test_the_cache_is_bounded_and_evicts_the_least_recently_used():
    cache = ScoreCache(3)
    for i in range(3):
        cache.put(f"p{i}", i / 10, {"m": i})
    assert cache.get("p0") == (0.0, {"m": 0}, "paper", None)  # p0 is now the most recent (and which head scored it)
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
    with pytest.raises(ValueError, match="torch, onnx, onnx-int8"):
        scorer_for(object(), "onnx-int4")


def test_blockwise_int8_weights_are_what_onnxruntime_packs():
    """block_int8 lays out and scales the weights exactly as ONNX Runtime's own MatMulNBits quantiser does, and
    dequantises to within half a step of each block's scale (K not a whole number of blocks: zero-padded)."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(72, 5)).astype(np.float32)
    weight[:32, 0] = 0.0  # an all-zero block: scale 0, no division by zero
    packed, scales = block_int8(weight, 32)
    assert packed.shape == (5, 3, 32) and packed.dtype == np.uint8 and scales.shape == (5, 3)
    restored = ((packed.astype(np.float32) - 128) * scales[..., None]).reshape(5, -1)[:, :72].T
    step = np.repeat(np.abs(scales), 32, axis=1)[:, :72].T
    assert np.all(np.abs(restored - weight) <= step / 2 + 1e-7) and np.all(restored[:32, 0] == 0)
    pybind = pytest.importorskip("onnxruntime.capi._pybind_state")
    if not hasattr(pybind, "quantize_matmul_8bits"):
        pytest.skip("this onnxruntime has no 8-bit MatMulNBits quantiser to compare with")
    theirs, their_scales = np.zeros((5, 3, 32), np.uint8), np.zeros((5, 3), np.float32)
    padded = np.pad(weight, ((0, 24), (0, 0)))
    pybind.quantize_matmul_8bits(theirs, padded, their_scales, np.zeros((5, 3), np.uint8), 32, 5, 96, True)
    assert np.array_equal(packed, theirs) and np.allclose(scales, their_scales, rtol=0, atol=1e-9)


@pytest.mark.skipif(not onnx_available(), reason="onnxruntime/onnx not installed (pip install 'routet2i[onnx]')")
def test_the_blockwise_graph_computes_the_float_matmul(tmp_path):
    """A one-MatMul graph quantised by quantize_blockwise_int8 runs in ONNX Runtime (MatMulNBits) and stays
    within the int8 error of the float product; a MatMul of two activations is left alone."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    weight = rng.normal(size=(64, 16)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="proj"), helper.make_node("MatMul", ["y", "z"], ["out"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 64]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [16, 2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", 2])],
        [numpy_helper.from_array(weight, "w")],
    )  # fmt: skip
    source = tmp_path / "f.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    quantised = onnx.load(str(quantize_blockwise_int8(source, tmp_path / "q.onnx")))
    assert [n.op_type for n in quantised.graph.node] == ["MatMulNBits", "MatMul"]
    assert "w" not in {t.name for t in quantised.graph.initializer}
    x, z = rng.normal(size=(3, 64)).astype(np.float32), rng.normal(size=(16, 2)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(["out"], {"x": x, "z": z})[0]
    exact = x @ weight @ z
    assert np.abs(out - exact).max() < 0.02 * np.abs(exact).max() and not np.array_equal(out, exact)
    with pytest.raises(ValueError, match="power-of-two"):  # what MatMulNBits refuses at session start
        quantize_blockwise_int8(source, tmp_path / "q48.onnx", block_size=48)


def _matmul_chain(path, shapes: list[tuple[int, int]], seed: int = 2) -> list[np.ndarray]:
    """A graph x → MatMul(w0) → MatMul(w1) → … saved at `path`; returns the weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=shape).astype(np.float32) for shape in shapes]
    nodes = [helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"h{i + 1}"], name=f"mm{i}") for i in range(len(shapes))]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("h0", TensorProto.FLOAT, ["b", shapes[0][0]])],
        [helper.make_tensor_value_info(f"h{len(shapes)}", TensorProto.FLOAT, ["b", shapes[-1][1]])],
        [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return weights


@pytest.mark.skipif(not onnx_available(), reason="onnxruntime/onnx not installed (pip install 'routet2i[onnx]')")
def test_the_mixed_graph_quantises_each_matmul_by_its_shape(tmp_path):
    """int8-mixed: dynamic int8 where K ≤ N (an up-projection), blockwise where K > N (a down-projection), float
    for a narrow weight (N < 16, the gate's); the blockwise pass alone leaves the narrow weight float too; both
    stay within int8 error of the float chain."""
    import onnx
    import onnxruntime as ort

    weights = _matmul_chain(tmp_path / "f.onnx", [(32, 64), (64, 32), (32, 1)])
    x = np.random.default_rng(3).normal(size=(4, 32)).astype(np.float32)
    exact = x @ weights[0] @ weights[1] @ weights[2]
    for quantise, ops in [
        (quantize_mixed_int8, ["MatMulInteger", "MatMulNBits", "MatMul"]),  # ORT fuses it: DynamicQuantizeMatMul
        (quantize_blockwise_int8, ["MatMulNBits", "MatMulNBits", "MatMul"]),
    ]:
        path = quantise(tmp_path / "f.onnx", tmp_path / f"{quantise.__name__}.onnx")
        assert [n.op_type for n in onnx.load(str(path)).graph.node if "MatMul" in n.op_type] == ops
        out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"h0": x})[0]
        assert np.abs(out - exact).max() < 0.05 * np.abs(exact).max() and not np.array_equal(out, exact)


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


@pytest.mark.slow
@pytest.mark.skipif(not onnx_available(), reason="onnxruntime/onnx not installed (pip install 'routet2i[onnx]')")
def test_the_int8_graph_keeps_99_percent_of_decisions_on_real_prompts(tmp_path, monkeypatch):
    """`router_runtime: onnx-int8` (int8-mixed) on the real MiniLM and the shipped checkpoint: ≥ 99% of the
    decisions PRŜ < α (α calibrated at ρ = 0.3) of the torch router on 1,000 COCO captions, one at a time as in a
    batch; the scores differ (it is not the float graph) but by little."""
    import torch

    from bench.router_latency import agreement, load_router

    monkeypatch.setenv("ROUTET2I_ONNX_CACHE", str(tmp_path))
    torch.set_num_threads(1)
    router = load_router()
    graph = scorer_for(router, "onnx-int8")
    assert graph.model_path.name.endswith("-int8-mixed.onnx")
    prompts = real_prompts(1000)
    reference = router.score(prompts).prs
    batched = graph.score(prompts).prs
    single = np.concatenate([graph.score([p]).prs for p in prompts])
    assert np.abs(single - batched).max() < 1e-2  # the batch's padding moves the per-tensor int8 scales a little
    assert 0 < np.abs(batched - reference).max() < 0.05
    assert agreement(reference, batched, rho=0.3) >= 0.99 and agreement(reference, single, rho=0.3) >= 0.99


@pytest.mark.parametrize(
    "overrides",
    [{}, {"members": 1}, {"use_prior": False}, {"token_selection": False}, {"dual_gate": False}],
    ids=["ensemble", "one head", "no prior", "no token selection", "one gate"],
)
def test_the_merged_head_is_the_routers_arithmetic(overrides):
    """The exported graph's head (`_MergedHead`: the members stacked into one head) gives the torch router's D̂ and
    PRŜ on random token states: ragged lengths, padding, a prior with and without `log_tokens`."""
    import torch

    from router_model.model import RouterConfig, RouteT2IRouter
    from router_model.onnx_runtime import _MergedHead
    from router_model.prior import TOKENS, FeaturePrior
    from router_model.prs import PRSStats

    use_prior = overrides.pop("use_prior", True)
    prior = FeaturePrior(["log_words", "log_commas", TOKENS], [1.0, 0.2, 2.0], [0.5, 0.3, 0.4],
                         [[0.3, -0.2, 0.5], [-0.1, 0.4, 0.2]], [0.1, -0.3], 1.0)  # fmt: skip
    stats = PRSStats(["a", "b"], mu_edge=[0.4, 0.3], mu_cloud=[0.6, 0.7], gamma=1.0, weights=[0.25, 0.75])
    config = {"metrics": ["a", "b"], "input_dim": 16, "top_k": 3, "low_rank": 4, "hidden": 8, "members": 3,
              "prs_stats": stats.to_dict(), "prior": prior.to_dict() if use_prior else None, **overrides}  # fmt: skip
    torch.manual_seed(0)
    router = RouteT2IRouter(RouterConfig(**config)).eval()
    with torch.no_grad():
        for parameter in router.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.5)
    lengths = [6, 3, 1, 4]
    states = torch.randn(len(lengths), 6, 16)
    mask = torch.arange(6)[None, :] < torch.tensor(lengths)[:, None]
    features = torch.randn(len(lengths), 2) if use_prior else None
    with torch.inference_mode():
        expected = router(states, mask, features)
        merged = _MergedHead(router).eval()(states, mask, features)
    for got, want in zip(merged, expected, strict=True):
        assert got.shape == want.shape and torch.allclose(got, want, atol=2e-6), (got, want)
