import math

import numpy as np
import pytest

from router_model.prs import PRSStats, fit_prs_stats, normalized_distances, pareto_relative_superiority


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_hand_computed_two_metrics():
    stats = PRSStats(metrics=["a", "b"], mu_edge=[0.5, 2.0], mu_cloud=[0.7, 1.0], gamma=2.0, weights=[3, 1])
    d = normalized_distances(np.array([[0.6, 2.0]]), np.array([[0.5, 3.0]]), stats)
    # D_a = σ(0.1 / (2·0.2)), D_b = σ(−1 / (2·1))
    assert d[0, 0] == pytest.approx(sigmoid(0.25))
    assert d[0, 1] == pytest.approx(sigmoid(-0.5))
    prs = pareto_relative_superiority(np.array([[0.6, 2.0]]), np.array([[0.5, 3.0]]), stats)
    assert prs[0] == pytest.approx(0.75 * sigmoid(0.25) + 0.25 * sigmoid(-0.5))


def test_symmetry_with_uniform_weights():
    rng = np.random.default_rng(0)
    q_e, q_c = rng.random((50, 4)), rng.random((50, 4))
    stats = fit_prs_stats(q_e, q_c, list("abcd"), gamma=0.7)
    swapped = PRSStats(list("abcd"), stats.mu_cloud, stats.mu_edge, gamma=0.7)
    assert np.allclose(pareto_relative_superiority(q_e, q_c, stats), 1 - pareto_relative_superiority(q_c, q_e, swapped))


def test_ties_give_one_half_and_edge_better_above_half():
    stats = PRSStats(["m"], [1.0], [2.0])
    assert pareto_relative_superiority(np.array([[3.0]]), np.array([[3.0]]), stats)[0] == pytest.approx(0.5)
    assert pareto_relative_superiority(np.array([[4.0]]), np.array([[3.0]]), stats)[0] > 0.5
    assert pareto_relative_superiority(np.array([[2.0]]), np.array([[3.0]]), stats)[0] < 0.5


def test_epsilon_guards_equal_means():
    stats = PRSStats(["m"], [1.0], [1.0], eps=1e-3)
    value = pareto_relative_superiority(np.array([[1.0005]]), np.array([[1.0]]), stats)[0]
    assert np.isfinite(value) and value == pytest.approx(sigmoid(0.5))


def test_fit_uses_means_and_round_trips(tmp_path):
    stats = fit_prs_stats(np.array([[1.0], [3.0]]), np.array([[4.0], [4.0]]), ["m"], gamma=1.5)
    assert stats.mu_edge == [2.0] and stats.mu_cloud == [4.0] and stats.weights == [1.0]
    stats.save(tmp_path / "s.json")
    assert PRSStats.load(tmp_path / "s.json") == stats


@pytest.mark.parametrize(
    "kwargs", [dict(gamma=0), dict(weights=[1, -1]), dict(mu_edge=[1.0])], ids=["gamma", "weights", "shape"]
)
def test_invalid_statistics_rejected(kwargs):
    base = dict(metrics=["a", "b"], mu_edge=[1.0, 1.0], mu_cloud=[2.0, 2.0])
    with pytest.raises(ValueError):
        PRSStats(**(base | kwargs))
