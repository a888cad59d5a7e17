"""The one-standard-error rule that picks γ, the tower's weight over the prior, from the heads' validation folds."""

from __future__ import annotations

import pytest

from router_model.lab.residual_scale import choose_residual_scale


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
