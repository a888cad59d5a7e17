"""The router's cheap-feature prior: the fit, the untrained router equal to it, checkpoints and scoring paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from router_model.lab.data import RoutingExample
from router_model.lab.prior_fit import fit_prior, leave_one_out_errors, prior_inputs
from router_model.model import RouterConfig, RouteT2IRouter
from router_model.prior import PRIOR_FEATURES, TOKENS, FeaturePrior
from router_model.prs import fit_prs_stats
from tests.test_model import build_tiny_text_encoder

WORDS = [
    "red",
    "cat",
    "dog",
    "tree",
    "house",
    "blue",
    "car",
    "three",
    "left",
    "of",
    "under",
    "a",
    "the",
    "small",
    "big",
]


def examples(n: int = 200, seed: int = 0) -> list[RoutingExample]:
    """Long prompts favour the cloud (the pattern of public human ratings), plus noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(2, 30))
        prompt = " ".join(rng.choice(WORDS, length))
        gap = 0.08 * length + rng.normal(0, 0.3)
        out.append(RoutingExample(prompt, "edge", "cloud", ["m"], [2.0], [2.0 + gap]))
    return out


def test_the_fitted_prior_sends_long_prompts_to_the_cloud():
    data = examples()
    stats = fit_prs_stats(np.array([e.q_edge for e in data]), np.array([e.q_cloud for e in data]), ["m"])
    tokens = np.array([len(e.prompt.split()) + 2 for e in data])
    prior = fit_prior(data, tokens, stats, alpha=0.1)
    assert prior.features == list(PRIOR_FEATURES) and prior.features[-1] == TOKENS
    x = prior_inputs([e.prompt for e in data], tokens, prior.features)
    mask = torch.arange(40)[None, :] < torch.as_tensor(tokens)[:, None]
    logits = prior.logits(torch.from_numpy(prior.text_features([e.prompt for e in data])), mask).numpy()[:, 0]
    manual = ((x - np.array(prior.mean)) / np.array(prior.scale)) @ np.array(prior.weight)[0] + prior.bias[0]
    np.testing.assert_allclose(logits, manual, rtol=1e-4, atol=1e-4)
    gap = np.array([e.q_cloud[0] - e.q_edge[0] for e in data])
    assert np.corrcoef(-logits, gap)[0, 1] > 0.8  # logit of D = (edge − cloud)/scale: low logit = cloud better
    stronger = fit_prior(data, tokens, stats, alpha=100.0)
    assert np.abs(stronger.weight).sum() < np.abs(prior.weight).sum() / 10  # ridge shrinks


def test_a_prior_is_checked():
    with pytest.raises(ValueError, match="last"):
        FeaturePrior([TOKENS, "log_words"], [0, 0], [1, 1], [[0, 0]], [0], 1.0)
    with pytest.raises(ValueError, match="unknown"):
        FeaturePrior(["shoe_size"], [0], [1], [[0]], [0], 1.0)
    with pytest.raises(ValueError, match="one value per head"):
        FeaturePrior(["log_words"], [0], [1], [[0]], [0, 1], 1.0)


@pytest.fixture(scope="module")
def encoder_path(tmp_path_factory):
    return build_tiny_text_encoder(tmp_path_factory.mktemp("prior_bert"))


def prior_router(encoder_path, members: int = 1) -> RouteT2IRouter:
    data = examples(60)
    stats = fit_prs_stats(np.array([e.q_edge for e in data]), np.array([e.q_cloud for e in data]), ["m"])
    prior = fit_prior(data, [len(e.prompt.split()) + 2 for e in data], stats, alpha=0.1)
    config = RouterConfig(metrics=["m"], encoder=str(encoder_path), input_dim=32, top_k=3, low_rank=4, hidden=8,
                          members=members, prs_stats=stats.to_dict(), prior=prior.to_dict())  # fmt: skip
    return RouteT2IRouter(config).eval()


def test_an_untrained_router_is_its_prior_and_a_checkpoint_keeps_it(encoder_path, tmp_path):
    router = prior_router(encoder_path, members=2)
    prompts = ["a red cat", "three small blue cars left of a big tree under the house near a dog"]
    scores = router.score(prompts)
    tokens = router.encoder.tokenize(prompts)["attention_mask"]
    expected = torch.sigmoid(router.prior.logits(router.prior_features(prompts), tokens)).numpy()[:, 0]
    np.testing.assert_allclose(scores.prs, expected, atol=1e-6)
    assert scores.prs[1] < scores.prs[0]  # the long prompt is the cloud's
    router.save_pretrained(tmp_path / "ckpt")
    loaded = RouteT2IRouter.from_pretrained(tmp_path / "ckpt", device="cpu")
    assert loaded.prior == router.prior
    np.testing.assert_allclose(loaded.score(prompts).prs, scores.prs, atol=1e-6)


def test_scoring_token_states_needs_the_prompts(encoder_path):
    router = prior_router(encoder_path)
    prompts = ["a red cat", "two dogs"]
    states = router.encoder.encode(prompts)
    with pytest.raises(ValueError, match="prompts"):
        router.score_states(states)
    np.testing.assert_allclose(router.score_states(states, prompts=prompts).prs, router.score(prompts).prs, atol=1e-6)


def test_the_tower_weight_scales_only_the_correction(encoder_path):
    router = prior_router(encoder_path)
    torch.nn.init.normal_(router.head_weight)  # a "trained" tower
    prompts = ["a red cat", "three small blue cars left of a big tree"]
    batch = router.encoder.tokenize(prompts)
    states = router.encoder.forward_tokens(batch)
    features = router.prior_features(prompts)
    with torch.inference_mode():
        prior_only = router.logits(states.states, states.mask, features, residual_scale=0.0)
        full = router.logits(states.states, states.mask, features, residual_scale=1.0)
        half = router.logits(states.states, states.mask, features, residual_scale=0.5)
    torch.testing.assert_close(prior_only, router.prior.logits(features, states.mask))
    torch.testing.assert_close(half, (prior_only + full) / 2)
    assert not torch.allclose(full, prior_only)


def test_leave_one_out_errors_are_exact_and_choose_the_prior_strength():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(40, 3))
    target = np.c_[z @ np.array([1.0, 0.0, -0.5]) + rng.normal(0, 0.3, 40), rng.normal(size=40)]
    alpha = 0.1
    errors = leave_one_out_errors(z, target, [alpha])
    brute = []
    for i in range(40):
        keep = np.arange(40) != i
        zm, ym = z[keep].mean(0), target[keep].mean(0)
        zc = z[keep] - zm
        w = np.linalg.solve(zc.T @ zc + alpha * 40 * np.eye(3), zc.T @ (target[keep] - ym))
        brute.append(((target[i] - ym - (z[i] - zm) @ w) ** 2).sum())
    # exact: the refit on n − 1 prompts keeps the penalty alpha · n and an unpenalised intercept
    np.testing.assert_allclose(errors[alpha], brute, rtol=1e-9)

    data = examples()  # the gap grows with length: a weak penalty wins
    stats = fit_prs_stats(np.array([e.q_edge for e in data]), np.array([e.q_cloud for e in data]), ["m"])
    tokens = np.array([len(e.prompt.split()) + 2 for e in data])
    assert fit_prior(data, tokens, stats).alpha <= 1.0
    noise = [
        RoutingExample(e.prompt, "edge", "cloud", ["m"], [2.0], [2.0 + g])
        for e, g in zip(data, np.random.default_rng(2).normal(0, 0.3, len(data)), strict=True)
    ]
    assert fit_prior(noise, tokens, stats) is None  # no signal: a constant predicts as well, so no prior
    assert fit_prior(noise, tokens, stats, alpha=0.1) is not None  # a fixed strength always fits one
