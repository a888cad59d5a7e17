"""kNN, MLP, matrix factorisation and IRT: each learns a planted signal, and MF/IRT learn one model of
abilities from two pairs that share a model. Embeddings are planted directly (no encoder), so the
signal is known and the tests take seconds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from router_model.encoder import TokenStates
from router_model.lab.baselines import BASELINES, ROUTERS, SEEDED, make_router
from router_model.lab.baselines_extra import EXTRA, TRAINING_FREE, _model_key, model_qualities
from router_model.lab.data import RoutingExample
from router_model.lab.delta_p import delta_p_curve

N, D = 240, 16
TRAIN, TEST = list(range(160)), list(range(160, N))


@pytest.fixture(scope="module")
def planted() -> tuple[np.ndarray, TokenStates]:
    x = np.random.default_rng(0).normal(size=(N, D))
    states = TokenStates(torch.tensor(x, dtype=torch.float32)[:, None, :], torch.ones(N, 1, dtype=torch.bool))
    return x, states


def _ex(i: int, edge: str, cloud: str, q_e: float, q_c: float, metrics: tuple[str, ...] = ("m",)) -> RoutingExample:
    return RoutingExample(
        prompt=f"prompt {i}", edge_model=edge, cloud_model=cloud, metrics=list(metrics),
        q_edge=[q_e] * len(metrics), q_cloud=[q_c] * len(metrics),
    )  # fmt: skip


def test_registered_between_the_heuristics_and_the_oracle():
    assert set(EXTRA) <= set(ROUTERS) and set(EXTRA) <= SEEDED
    order = BASELINES
    assert order.index("prompt_length") < min(order.index(n) for n in EXTRA) < order.index("oracle")
    assert set(TRAINING_FREE) <= set(BASELINES)
    assert _model_key("DALLE_3") == _model_key("dalle3") == "dall-e-3"  # one id across sets
    assert _model_key("Some_New_Model") == "some_new_model"


@pytest.mark.parametrize("name", list(EXTRA))
def test_learns_a_gap_driven_by_one_embedding_direction(name, planted):
    x, states = planted
    noise = np.random.default_rng(1).normal(scale=0.3, size=N)
    examples = [_ex(i, "e", "c", 3.0 + noise[i], 3.5 + x[i, 0]) for i in range(N)]  # cloud better on average
    router = make_router(name, seed=0).fit([examples[i] for i in TRAIN], states.subset(TRAIN))
    test = [examples[i] for i in TEST]
    scores = router.cloud_advantage(test, states.subset(TEST))
    again = make_router(name, seed=0).fit([examples[i] for i in TRAIN], states.subset(TRAIN))
    np.testing.assert_array_equal(scores, again.cloud_advantage(test, states.subset(TEST)))  # seeded
    assert spearmanr(scores, x[TEST, 0]).statistic > 0.6, name
    q_e = np.array([ex.q_edge for ex in test])
    q_c = np.array([ex.q_cloud for ex in test])
    random = np.random.default_rng(0).random(len(test))
    learned, chance = (delta_p_curve(s, q_e, q_c, [0.5])[0] for s in (scores, random))
    assert learned > chance + 20, (name, learned, chance)


@pytest.mark.parametrize("name", ["matrix_factorization", "irt"])
def test_mf_and_irt_learn_a_new_pair_from_two_pairs_sharing_a_model(name, planted):
    """quality(p, m) = x_p · a_m with a_e, a_mid, a_top three different directions. Pair A is e → mid and
    pair B mid → top (on other prompts); the test pair e → top was never seen as a pair."""
    x, states = planted
    ability = {"e": 0, "mid": 1, "top": 2}

    def q(i: int, m: str) -> float:
        return float(x[i, ability[m]])

    pair_a = [_ex(i, "E", "MID", q(i, "e"), q(i, "mid")) for i in TRAIN[0::2]]  # ids are matched case-blind
    pair_b = [_ex(i, "mid", "Top", q(i, "mid"), q(i, "top")) for i in TRAIN[1::2]]
    test = [_ex(i, "e", "top", q(i, "e"), q(i, "top")) for i in TEST]
    truth = x[TEST, 2] - x[TEST, 0]
    idx = TRAIN[0::2] + TRAIN[1::2]
    both = make_router(name, seed=0).fit(pair_a + pair_b, states.subset(idx))
    a_only = make_router(name, seed=0).fit(pair_a, states.subset(TRAIN[0::2]))
    rho_both = spearmanr(both.cloud_advantage(test, states.subset(TEST)), truth).statistic
    rho_a = spearmanr(a_only.cloud_advantage(test, states.subset(TEST)), truth).statistic
    assert rho_both > 0.9 and rho_both > rho_a + 0.2, (rho_both, rho_a)


def test_unknown_models_are_scored_as_the_generic_edge_and_cloud(planted):
    x, states = planted
    examples = [_ex(i, "e", "c", 3.0, 3.0 + x[i, 0]) for i in range(N)]
    router = make_router("irt", seed=0).fit([examples[i] for i in TRAIN], states.subset(TRAIN))
    unknown = [_ex(i, "never-seen-edge", "never-seen-cloud", 0.0, 1.0) for i in TEST]
    scores = router.cloud_advantage(unknown, states.subset(TEST))
    assert np.isfinite(scores).all() and spearmanr(scores, x[TEST, 0]).statistic > 0.6


def test_model_qualities_share_one_scale_per_metric_list():
    a = [_ex(0, "x", "y", 1.0, 3.0), _ex(1, "y", "z", 3.0, 5.0)]
    b = [_ex(2, "u", "v", 10.0, 30.0, metrics=("p", "q"))]
    q_e, q_c = model_qualities(a + b)
    assert q_c[0] == pytest.approx(q_e[1])  # model y: one level in both pairs of the same metric list
    assert q_e[0] < q_c[0] < q_c[1]
    assert q_e[2] == pytest.approx(-1.0) and q_c[2] == pytest.approx(1.0)  # its own scale
