"""The N-arm rule: the pure pacing arithmetic, and `ArmPacer` holding a cost budget on a drifting stream."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.budget import pacing
from gateway.budget.arm_pacer import ArmPacer

COSTS = [0.1, 0.4, 1.0]


class Clock:
    def __init__(self, step: float = 0.05):
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def stream(n: int, seed: int = 0) -> np.ndarray:
    """[n, 3] predicted qualities: a better, dearer arm helps some prompts more, with a drift at n/3 and 2n/3."""
    rng = np.random.default_rng(seed)
    p = rng.normal(size=n)
    drift = np.select([np.arange(n) < n // 3, np.arange(n) < 2 * n // 3], [0.0, 0.5], -0.3)
    return np.stack(
        [
            0.5 + 0.1 * p,
            0.65 + 0.15 * p + 0.05 * rng.normal(size=n),
            0.8 + 0.3 * (p + drift) + 0.05 * rng.normal(size=n),
        ],
        axis=1,
    )


def test_ranking_is_argmax_of_quality_minus_lambda_cost():
    q = [0.5, 0.7, 0.9]
    assert pacing.ranking(q, COSTS, 0.0) == [2, 1, 0]  # free: the best quality
    assert pacing.ranking(q, COSTS, 10.0) == [0, 1, 2]  # dear: the cheapest
    assert pacing.ranking(q, COSTS, 0.5) == [1, 0, 2]  # 0.45, 0.5, 0.4
    assert pacing.ranking(q, COSTS, 0.5, allowed=[True, False, True]) == [0, 2]
    assert pacing.ranking([0.5, 0.5], [1.0, 0.2], 0.0) == [1, 0]  # a tie goes to the cheaper arm


def test_calibrated_lambda_is_the_smallest_that_meets_the_target():
    q = stream(2000)[:1000]
    for target in (0.2, 0.35, 0.6):
        lam = pacing.calibrated_lambda(q, COSTS, target)
        assert pacing.window_mean_cost(q, COSTS, lam) <= target + 1e-9
        assert pacing.window_mean_cost(q, COSTS, lam * 0.99) > target  # a little less λ spends more
        assert pacing.calibrated_lambda(q, COSTS, target, hint=lam * 3) == pytest.approx(lam, rel=2e-3)
    assert pacing.calibrated_lambda(q, COSTS, 5.0) == 0.0  # everything to the best arm is within budget


def test_rho_and_cost_budget_name_the_same_mix_with_two_arms():
    assert pacing.rho_to_cost(0.3, [0.0, 1.0]) == pytest.approx(0.3)
    assert pacing.cost_to_rho(0.3, [0.0, 1.0]) == pytest.approx(0.3)
    assert pacing.cost_to_rho(pacing.rho_to_cost(0.25, COSTS), COSTS) == pytest.approx(0.25)
    assert pacing.cost_to_rho(5.0, COSTS) == 1.0 and pacing.cost_to_rho(0.0, COSTS) == 0.0


def test_pacer_holds_the_budget_in_every_window_through_drift_and_a_budget_change():
    q = stream(9000)
    pacer = ArmPacer(COSTS, budget=0.4, decision_window=1000, clock=Clock())
    cost, budget = np.zeros(len(q)), np.zeros(len(q))
    for i, row in enumerate(q):
        if i == 4500:
            pacer.set_budget(0.25)
        choice = pacer.decide(row)
        assert choice.reason in ("model", "budget")
        cost[i], budget[i] = choice.cost, pacer.budget
    deviations = [
        cost[s : s + 1000].mean() / budget[s + 999] - 1
        for s in range(200, len(q) - 999, 50)
        if not s < 4500 < s + 1000  # windows straddling the change are held to a moving allowance
    ]
    assert max(abs(d) for d in deviations) < 0.02
    assert max(deviations) <= 1e-9  # the hard cap: never above the budget
    assert len(set(np.round(cost, 6))) == 3  # every arm served some prompts


def test_pacer_sends_what_pays_off_to_the_dear_arm():
    """At the same mean cost, the rule's prompts on the dear arm gain more than random ones would."""
    q = stream(3000, seed=1)
    pacer = ArmPacer(COSTS, budget=0.4, clock=Clock())
    arms = np.array([pacer.decide(row).arm for row in q])
    gain = q[:, 2] - q[:, 0]
    assert gain[arms == 2].mean() > gain.mean() + 0.1


def test_caps_refuse_and_the_next_arm_serves():
    clock = Clock(step=0.0)
    pacer = ArmPacer(COSTS, budget=5.0, caps=[None, None, 2], clock=clock)
    choices = [pacer.decide([0.1, 0.2, 0.9]) for _ in range(4)]
    assert [c.arm for c in choices] == [2, 2, 1, 1] and [c.reason for c in choices] == ["model"] * 2 + ["budget"] * 2
    clock.now += 61  # the minute has passed
    assert pacer.decide([0.1, 0.2, 0.9]).arm == 2


def test_private_requests_stay_on_allowed_arms_and_keep_their_reason():
    pacer = ArmPacer(COSTS, budget=1.0, caps=[None, 1, None], clock=Clock())
    first = pacer.decide([0.1, 0.9, 0.95], allowed=[True, True, False], reason="private")
    second = pacer.decide([0.1, 0.9, 0.95], allowed=[True, True, False], reason="private")
    assert (first.arm, first.reason) == (1, "private") and (second.arm, second.reason) == (0, "private")
    with pytest.raises(ValueError, match="no arm"):
        pacer.decide([0.1, 0.2, 0.3], allowed=[False, False, False])


def test_amend_moves_the_cost_to_the_arm_that_served():
    pacer = ArmPacer(COSTS, budget=1.0, clock=Clock())
    choice = pacer.decide([0.1, 0.2, 0.9])
    assert pacer.snapshot()["window_cost"] == pytest.approx(1.0)
    assert pacer.amend(choice.ticket, 0)
    snap = pacer.snapshot()
    assert snap["window_cost"] == pytest.approx(0.1) and snap["arms"][0]["requests"] == 1
    assert pacer.amend(choice.ticket, 0, cost=0.0) and pacer.snapshot()["window_cost"] == pytest.approx(0.0)


def test_a_budget_below_the_cheapest_arm_is_refused():
    pacer = ArmPacer(COSTS, budget=0.5)
    with pytest.raises(ValueError, match="cheapest arm"):
        pacer.set_budget(0.05)
    with pytest.raises(ValueError, match="finite"):
        pacer.set_budget(float("nan"))
    assert pacer.budget == 0.5


def test_a_refused_forced_call_goes_to_the_arms_it_may_fall_back_to():
    clock = Clock(step=0.0)
    pacer = ArmPacer(COSTS, budget=5.0, caps=[None, None, 1], clock=clock)
    remote, local = [False, False, True], [True, True, False]
    first = pacer.decide([0.1, 0.2, 0.9], allowed=remote, reason="forced", refused_to=local)
    second = pacer.decide([0.1, 0.2, 0.9], allowed=remote, reason="forced", refused_to=local)
    assert (first.arm, first.reason) == (2, "forced") and (second.arm, second.reason) == (1, "budget")
