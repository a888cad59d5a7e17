"""Offline α for a budget ρ: never over budget, capped at ½, clear errors; a real (untrained) checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest

from router_model.lab.calibrate import ALPHA_CAP, calibrate_alpha, calibrate_checkpoint, cloud_fraction
from router_model.model import RouterConfig, RouteT2IRouter


def test_zero_budget_never_routes_to_the_cloud():
    scores = np.array([0.2, 0.05, 0.4, 0.3])
    alpha = calibrate_alpha(scores, 0.0)
    assert alpha == 0.05
    assert cloud_fraction(scores, alpha) == 0.0


def test_full_budget_is_capped_at_one_half():
    scores = np.array([0.1, 0.45, 0.5, 0.7, 0.9])
    alpha = calibrate_alpha(scores, 1.0)
    assert alpha == ALPHA_CAP
    assert cloud_fraction(scores, alpha) == pytest.approx(0.4)  # the edge-favoured prompts stay on the edge


def test_cap_binds_before_the_budget_when_the_edge_wins_most():
    scores = np.linspace(0.3, 0.9, 100)  # a sixth of the prompts favour the cloud
    assert calibrate_alpha(scores, 0.5) == ALPHA_CAP
    assert cloud_fraction(scores, ALPHA_CAP) < 0.5


@pytest.mark.parametrize("n", [7, 100, 1001])
def test_budget_is_used_fully_and_never_exceeded(n):
    scores = np.random.default_rng(n).uniform(0.0, 0.5, n)  # all below the cap, all distinct
    for rho in np.linspace(0, 1, 41):
        share = cloud_fraction(scores, calibrate_alpha(scores, rho))
        assert share <= rho + 1e-12
        assert share == pytest.approx(math.floor(rho * n + 1e-9) / n)


def test_ties_stay_within_budget():
    scores = np.array([0.2, 0.2, 0.2, 0.2, 0.4])
    assert cloud_fraction(scores, calibrate_alpha(scores, 0.6)) == 0.0  # all-or-nothing tie → nothing


@pytest.mark.parametrize("rho", [-0.1, 1.5, float("nan")])
def test_bad_budget_is_rejected(rho):
    with pytest.raises(ValueError, match="ρ must be in"):
        calibrate_alpha(np.array([0.3]), rho)


def test_bad_scores_are_rejected():
    with pytest.raises(ValueError, match="no PRS scores"):
        calibrate_alpha(np.array([]), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        calibrate_alpha(np.array([0.2, np.nan]), 0.5)


@pytest.mark.slow
def test_calibrate_checkpoint_on_prompts(tmp_path):
    import torch

    torch.manual_seed(0)
    router = RouteT2IRouter(RouterConfig(metrics=["a", "b"], input_dim=384))
    router.save_pretrained(tmp_path / "ckpt")
    prompts = [f"a photo of {n} {thing}" for n in range(1, 6) for thing in ("cats", "boats", "towers", "apples")]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")

    result = calibrate_checkpoint(tmp_path / "ckpt", prompts, 0.25)
    assert result["rho"] == 0.25 and result["n_prompts"] == 20
    assert 0.0 < result["alpha"] <= ALPHA_CAP
    assert result["cloud_fraction"] <= 0.25
    assert calibrate_checkpoint(tmp_path / "ckpt", tmp_path / "prompts.txt", 0.25) == result  # a prompt file

    with pytest.raises(FileNotFoundError, match="no such directory"):
        calibrate_checkpoint(tmp_path / "missing", prompts, 0.25)
