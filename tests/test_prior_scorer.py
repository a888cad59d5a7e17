"""A checkpoint scored by its prior alone (γ = 0, the shipped one) is served without the encoder or the tower,
with the scores the full router computes."""

from __future__ import annotations

import numpy as np
import pytest

from bench.router_latency import CHECKPOINT
from router_model.model import RouteT2IRouter
from router_model.onnx_runtime import onnx_available, scorer_for
from router_model.prior_scorer import PriorScorer, scores_with_prior_only
from tests.standins import real_prompts

# a prompt past the encoder's 77-token window: the prior must count the truncated tokens, as the mask does
LONG = " ".join(["a small red wooden boat beside a tall white lighthouse"] * 12)


@pytest.fixture(scope="module")
def shipped() -> RouteT2IRouter:
    router = RouteT2IRouter.from_pretrained(CHECKPOINT, device="cpu")
    assert scores_with_prior_only(router), "the shipped checkpoint is documented as γ = 0 (README)"
    return router


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    return [*real_prompts(300), LONG, "", "a cat"]


def test_the_prior_scorer_scores_what_the_full_router_does(shipped, prompts):
    fast = PriorScorer(shipped)
    full = shipped.score(prompts)  # encoder + tower, weighted by 0
    got = fast.score(prompts)
    np.testing.assert_allclose(got.prs, full.prs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.per_metric, full.per_metric, rtol=0, atol=1e-6)
    assert got.metrics == full.metrics
    one_by_one = np.array([fast.score([p]).prs[0] for p in prompts[:20]])
    np.testing.assert_allclose(one_by_one, full.prs[:20], rtol=0, atol=1e-6)


def test_the_token_count_is_the_encoders_truncated_one(shipped):
    fast = PriorScorer(shipped)
    batch = shipped.encoder.tokenize([LONG, "a cat"])
    assert fast.token_counts([LONG, "a cat"]).squeeze(1).tolist() == batch["attention_mask"].sum(1).tolist()
    assert fast.token_counts([LONG])[0, 0] == shipped.config.max_length


@pytest.mark.parametrize("runtime", ["torch", "onnx", "onnx-int8"])
def test_every_runtime_serves_a_prior_only_checkpoint_without_its_encoder(runtime):
    if runtime != "torch" and not onnx_available():
        pytest.skip("onnxruntime is not installed")
    router = RouteT2IRouter.from_pretrained(CHECKPOINT, device="cpu")
    scorer = scorer_for(router, runtime)
    assert isinstance(scorer, PriorScorer)
    assert router._encoder is None  # neither loaded nor exported: no encoder weights in memory
    assert scorer.score(["a red bicycle"]).prs.shape == (1,)


def test_a_router_with_the_tower_weighted_is_not_served_by_its_prior(shipped, prompts):
    router = RouteT2IRouter.from_pretrained(CHECKPOINT, device="cpu")
    router.set_residual_scale(0.25)
    assert not scores_with_prior_only(router) and not isinstance(scorer_for(router, "torch"), PriorScorer)
    with pytest.raises(ValueError, match="γ"):
        PriorScorer(router)
    # and the tower does change the scores at γ > 0, so serving the prior alone there would be wrong
    assert np.abs(router.score(prompts[:50]).prs - PriorScorer(shipped).score(prompts[:50]).prs).max() > 1e-3
