"""The one-standard-error rule that picks γ, the tower's weight over the prior, from the heads' validation folds."""

from __future__ import annotations

import numpy as np
import pytest

from router_model.lab.losses import spearman
from router_model.lab.residual_scale import choose_residual_scale, cross_half_table, validation_halves


def heads(*tables: dict[float, float]) -> list[dict]:
    return [{"val_spearman_by_residual_scale": {str(g): s for g, s in t.items()}} for t in tables]


def test_a_clear_gain_of_the_tower_keeps_it():
    gamma, record = choose_residual_scale(
        heads({0.0: 0.10, 0.5: 0.30, 1.0: 0.42}, {0.0: 0.12, 0.5: 0.33, 1.0: 0.44}, {0.0: 0.08, 0.5: 0.29, 1.0: 0.40})
    )
    assert gamma == 1.0 and record["best"] == 1.0 and record["heads"] == 3


def test_a_gain_inside_the_noise_leans_to_the_prior():
    # γ = 1 is best on average, but by less than one paired standard error: the smallest γ within it wins
    gamma, record = choose_residual_scale(
        heads(
            {0.0: 0.30, 0.25: 0.31, 1.0: 0.50},
            {0.0: 0.30, 0.25: 0.30, 1.0: 0.10},
            {0.0: 0.30, 0.25: 0.32, 1.0: 0.35},
        )
    )
    assert record["best"] == 1.0 and gamma == 0.0
    assert record["mean_val_spearman"]["1.0"] == pytest.approx(0.3167, abs=1e-4)


def test_one_head_takes_the_maximum_and_missing_tables_keep_gamma():
    assert choose_residual_scale(heads({0.0: 0.2, 0.25: 0.5, 1.0: 0.4}))[0] == 0.25
    assert choose_residual_scale([{}, {"val_spearman_by_residual_scale": None}]) is None
    # an undefined Spearman (null in JSON) is skipped, not counted as zero
    assert choose_residual_scale(heads({0.0: 0.2, 1.0: None}, {0.0: 0.1, 1.0: None}))[0] == 0.0
    assert choose_residual_scale(heads({0.0: None, 1.0: 0.2}, {0.0: 0.1, 1.0: 0.3}))[1]["heads"] == 1


def test_the_error_is_paired_across_heads():
    # folds differ a lot (0.0 vs 0.4), but γ = 1 beats γ = 0 by about 0.1 on every fold: a clear, paired gain
    gamma, record = choose_residual_scale(
        heads({0.0: 0.00, 1.0: 0.10}, {0.0: 0.40, 1.0: 0.49}, {0.0: 0.20, 1.0: 0.31}, {0.0: 0.10, 1.0: 0.21})
    )
    assert gamma == 1.0 and record["paired_standard_error"]["0.0"] < 0.01


def _fold(seed: int, n: int = 120, checks: int = 30, tower_signal: float = 0.0):
    """A validation fold: the prior carries half the signal; the tower's logits at each check are noise plus
    `tower_signal` × the rest of it."""
    rng = np.random.default_rng(seed)
    truth_a, truth_b = rng.normal(size=n), rng.normal(size=n)
    prs = truth_a + truth_b
    prior = truth_a[:, None] * 0.5
    full = [prior + (tower_signal * truth_b + rng.normal(size=n))[:, None] * 0.5 for _ in range(checks)]
    halves = np.arange(n) % 2
    return prior, full, np.ones(1), prs, halves


def test_the_cross_half_table_does_not_flatter_a_tower_of_pure_noise():
    # the early stop picks, among 30 checks of pure noise, the one that fits the fold best: scored on that same
    # fold the tower looks better than it is; scored on the half that did not pick the check, it does not
    in_fold_gain, cross_gain = [], []
    for seed in range(20):
        prior, full, weights, prs, halves = _fold(seed)
        table, picked = cross_half_table(prior, full, weights, prs, halves)
        assert len(picked) == 2
        cross_gain.append(table["1.0"] - table["0.0"])
        best = max(full, key=lambda logits: spearman(logits[:, 0], prs))
        in_fold_gain.append(spearman(best[:, 0], prs) - spearman(prior[:, 0], prs))
    assert np.mean(cross_gain) < -0.1
    assert np.mean(in_fold_gain) > np.mean(cross_gain) + 0.07  # the in-fold estimate is the optimistic one


def test_the_cross_half_table_keeps_a_tower_that_learned_something():
    gains = [cross_half_table(*_fold(seed, tower_signal=3.0))[0] for seed in range(10)]
    assert np.mean([t["0.5"] - t["0.0"] for t in gains]) > 0.1
    assert choose_residual_scale(heads(*({float(g): s for g, s in t.items()} for t in gains)))[0] > 0.0


def test_validation_halves_keep_one_prompt_together_and_split_the_rest():
    prompts = [f"a photo of {i} cats" for i in range(200)]
    halves = validation_halves(prompts + ["A  photo of 3 CATS"])
    assert halves[-1] == halves[3] and set(halves.tolist()) == {0, 1}
    assert 70 < halves[:200].sum() < 130
