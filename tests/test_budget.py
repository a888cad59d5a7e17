"""The live budget controller: ρ held on drifting real prompt traffic, hard caps, honest accounting, persistence."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest

from bench.budget_replay import (
    replay_live,
    rho_per_request,
    selection_ratio,
    window_report,
)
from gateway.budget import BudgetController, BudgetStateError, InMemoryBudgetStore
from router_model.lab.calibrate import calibrate_alpha


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def controller(rho: float = 0.3, **kwargs) -> tuple[BudgetController, Clock]:
    clock = Clock()
    store = InMemoryBudgetStore(rho, cost_cap=kwargs.pop("cost_cap", None))
    return BudgetController(store, clock=clock, **kwargs), clock


# ---------------------------------------------------------------- replay of real traffic with drift


@pytest.mark.slow
@pytest.mark.parametrize("rho_before, rho_after", [(0.3, 0.5), (0.5, 0.3)])
def test_live_alpha_holds_rho_on_drifting_traffic_where_fixed_alpha_misses(
    replay_scores, rho_before, rho_after, capsys
):
    by_source = replay_scores
    scores = np.concatenate(list(by_source.values()))
    change = len(scores) // 2
    schedule = [(0, rho_before), (change, rho_after)]
    rho = rho_per_request(len(scores), schedule)
    live = replay_live(scores, schedule)
    fixed_alpha = {r: calibrate_alpha(by_source["coco"], r) for r in (rho_before, rho_after)}
    fixed = scores < np.array([fixed_alpha[r] for r in rho])

    # Windows of 1,000 requests after 200 warm-up requests; the windows straddling the ρ change are
    # excluded from the ±1 point check (they mix two budgets) and checked against the larger ρ.
    live_report = window_report(live, rho, [change])
    fixed_report = window_report(fixed, rho, [change])
    live_selection = selection_ratio(scores, live)
    with capsys.disabled():
        print(
            f"\nreplay ρ {rho_before}→{rho_after} over {len(scores)} requests ({live_report['windows']} windows): "
            f"max |realised − ρ| live {live_report['max_abs_dev']:.4f} (max over {live_report['max_over']:+.4f}), "
            f"fixed COCO-calibrated α {fixed_report['max_abs_dev']:.4f} (max over {fixed_report['max_over']:+.4f}); "
            f"selection ratio live {live_selection:.2f}, fixed {selection_ratio(scores, fixed):.2f} (1 = ideal)"
        )
    assert live_report["max_abs_dev"] <= 0.01
    assert live_report["max_over"] <= 0.02
    sums = np.concatenate([[0], np.cumsum(live)])
    straddling = [(sums[s + 1000] - sums[s]) / 1000 for s in range(change - 999, change)]
    assert max(straddling) <= max(rho_before, rho_after) + 0.02
    # Holding ρ must not cost the routing much: the cloud calls still go mostly to the lowest scores
    # (1.2 here; a controller aiming exactly at the window cap pins α near ½ and scores 1.75-1.9,
    # the sliding quantile without feedback 1.1 but it misses ρ by 7-9 points; random picks ≈ 1/ρ).
    assert live_selection < 1.5
    # The replay really drifts: the offline α misses by far more than the live one.
    assert fixed_report["max_abs_dev"] > 0.05


def test_hard_cap_holds_every_window_even_when_scores_collapse():
    ctl, clock = controller(0.2, decision_window=100, min_scores=5)
    rng = np.random.default_rng(0)
    cloud = []
    # Scores fall from "edge wins" to "cloud wins everything": α lags, the window cap does not.
    for prs in np.concatenate([rng.uniform(0.3, 1.0, 300), rng.uniform(0.0, 0.1, 300)]):
        clock.now += 0.01
        cloud.append(ctl.decide(float(prs)).cloud)
    sums = np.concatenate([[0], np.cumsum(cloud)])
    assert max(sums[s + 100] - sums[s] for s in range(len(cloud) - 99)) <= 20
    assert sum(cloud[-300:]) >= 55  # and the budget is still spent


def test_cap_holds_under_concurrent_decisions():
    # α stays at the prior ½ (min_scores is never reached), so every request below wants the cloud.
    ctl = BudgetController(InMemoryBudgetStore(0.1), decision_window=1000, min_scores=10_000, prior_alpha=0.5)

    def worker() -> None:
        for _ in range(250):
            ctl.decide(0.0)  # every request wants the cloud

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = ctl.snapshot()
    assert snap["decisions"] == 1000
    assert snap["cloud_calls"] <= 100


# ---------------------------------------------------------------- the decision rule


def test_cold_start_uses_prior_alpha_then_live_quantile():
    ctl, _ = controller(0.3, min_scores=20, prior_alpha=0.25)
    assert ctl.decide(0.24).cloud and ctl.decide(0.24).alpha == 0.25
    assert not ctl.decide(0.26).cloud
    for prs in np.linspace(0.6, 0.9, 40):  # live scores all well above the prior
        ctl.decide(float(prs))
    assert ctl.alpha() == 0.5  # the live quantile is over the cap, so α sits at the cap
    ctl2, _ = controller(0.3, min_scores=20, alpha_cap=1.0)
    for prs in np.linspace(0.6, 0.9, 40):
        ctl2.decide(float(prs))
    assert 0.6 < ctl2.alpha() < 0.9


def test_model_reason_and_alpha_cap():
    ctl, _ = controller(0.5, min_scores=1, decision_window=10)
    first = ctl.decide(0.49)
    assert first.cloud and first.reason == "model" and first.rho == 0.5 and first.backend == "cloud"
    edge = ctl.decide(0.51)  # above α ≤ ½: the edge wins, never sent to the cloud
    assert not edge.cloud and edge.reason == "model"


def test_rho_zero_never_cloud_and_rho_one_alpha_at_cap():
    ctl, _ = controller(0.0, min_scores=1)
    for prs in (0.0, 0.1, 0.4):
        d = ctl.decide(prs)
        assert not d.cloud and d.alpha == 0.0 and d.reason == "model"
    ctl.set_rho(1.0)
    assert ctl.alpha() == 0.5
    assert all(ctl.decide(0.49).cloud for _ in range(50))
    assert not ctl.decide(0.5).cloud
    assert ctl.snapshot()["alpha"] == 0.5


def test_rho_change_takes_effect_on_next_request():
    ctl, _ = controller(0.0, min_scores=1)
    assert not ctl.decide(0.1).cloud
    ctl.set_rho(1.0)
    d = ctl.decide(0.1)
    assert d.cloud and d.rho == 1.0


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan, "0.3", None, True])
def test_invalid_rho_rejected(bad):
    ctl, _ = controller(0.3)
    with pytest.raises(ValueError, match="rho must be a number in"):
        ctl.set_rho(bad)
    assert ctl.rho == 0.3
    with pytest.raises(ValueError, match="rho"):
        InMemoryBudgetStore(bad)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10", True])
def test_invalid_cost_cap_rejected(bad):
    ctl, _ = controller(0.3)
    with pytest.raises(ValueError, match="cost_cap"):
        ctl.set_cost_cap(bad)


@pytest.mark.parametrize("bad", [math.nan, math.inf, "0.2", None])
def test_invalid_score_rejected(bad):
    ctl, _ = controller(0.3)
    with pytest.raises(ValueError, match="prs must be a finite number"):
        ctl.decide(bad)


# ---------------------------------------------------------------- caps and honest accounting


def test_cost_cap_limits_cloud_calls_per_minute():
    ctl, clock = controller(1.0, cost_cap=3, min_scores=1)
    decisions = []
    for _ in range(5):
        clock.now += 1
        decisions.append(ctl.decide(0.1))
    assert [d.cloud for d in decisions] == [True, True, True, False, False]
    assert [d.reason for d in decisions[3:]] == ["budget", "budget"]
    snap = ctl.snapshot()
    assert snap["cloud_calls_last_minute"] == 3 and snap["cost_cap_use"] == 1.0
    clock.now += 60  # the first calls leave the minute
    assert ctl.decide(0.1).cloud
    ctl.set_cost_cap(None)
    assert all(ctl.decide(0.1).cloud for _ in range(10))
    assert ctl.snapshot()["cost_cap_use"] is None


def test_preview_applies_the_caps_and_counts_nothing():
    ctl, clock = controller(0.5, decision_window=10, min_scores=1)
    assert ctl.preview(0.0) == ctl.preview(0.0)
    first = ctl.preview(0.0)
    assert (first.backend, first.reason, first.ticket) == ("cloud", "model", None)
    assert (ctl.preview(0.0, private=True).backend, ctl.preview(0.0, private=True).reason) == ("edge", "private")
    assert ctl.preview(0.9).backend == "edge"  # above α: the edge wins
    assert ctl.snapshot()["decisions"] == 0 and ctl.snapshot()["scores"] == 0  # nothing counted
    for _ in range(5):  # ⌊0.5·10⌋ = 5 cloud calls fill the window's allowance
        ctl.record("cloud", "forced", prs=0.2)
    refused, decided = ctl.preview(0.0), ctl.decide(0.0)
    assert (refused.backend, refused.reason) == (decided.backend, decided.reason) == ("edge", "budget")


def test_forced_private_and_fallback_count_in_realised_fraction():
    ctl, clock = controller(0.5, decision_window=10, min_scores=1)
    for _ in range(5):
        ctl.record("cloud", "forced", prs=0.2)
    snap = ctl.snapshot()
    assert snap["cloud_calls"] == 5 and snap["cloud_fraction"] == 1.0 and snap["scores"] == 5
    # The forced calls used the window's whole allowance (⌊0.5·10⌋ = 5): the model may not add one.
    refused = ctl.decide(0.0)
    assert not refused.cloud and refused.reason == "budget"
    for _ in range(4):
        ctl.record("edge", "private")
    snap = ctl.snapshot()
    assert snap["decisions"] == 10 and snap["cloud_fraction"] == 0.5
    # A forced call left the window: a model decision may take its place, then falls back to the edge.
    decision = ctl.decide(0.0)
    assert decision.cloud
    before = ctl.snapshot()
    assert ctl.record("edge", "fallback", ticket=decision.ticket)
    after = ctl.snapshot()
    assert after["cloud_calls"] == before["cloud_calls"] - 1
    assert after["cloud_calls_last_minute"] == before["cloud_calls_last_minute"] - 1
    assert after["decisions"] == before["decisions"]  # replaced, not added
    assert ctl.decide(0.0).cloud  # the freed slot is usable again
    assert not ctl.record("edge", "fallback", ticket=10_000)  # unknown ticket: nothing to amend


def test_forced_cloud_traffic_lowers_alpha():
    ctl, _ = controller(0.3, min_scores=10)
    for prs in np.linspace(0.0, 1.0, 200):
        ctl.record("edge", "private", prs=float(prs))
    high = ctl.alpha()
    for _ in range(30):
        ctl.record("cloud", "forced")
    assert ctl.alpha() < high


def test_record_rejects_unknown_backend_or_reason():
    ctl, _ = controller(0.3)
    with pytest.raises(ValueError, match="backend"):
        ctl.record("gpu", "model")
    with pytest.raises(ValueError, match="reason"):
        ctl.record("edge", "because")


# ---------------------------------------------------------------- persistence


def test_rho_and_cost_cap_survive_a_new_store_on_the_same_state_file(tmp_path):
    path = tmp_path / "state" / "budget.json"
    store = InMemoryBudgetStore(0.3, state_path=path)
    assert not path.exists()  # nothing to persist until an admin change
    BudgetController(store).set_rho(0.42)
    store.set_cost_cap(7)
    assert json.loads(path.read_text())["rho"] == 0.42
    assert [p.name for p in path.parent.iterdir()] == ["budget.json"]  # the atomic write left no temp file

    reopened = InMemoryBudgetStore(0.1, cost_cap=None, state_path=path)  # the file wins over the defaults
    assert (reopened.settings().rho, reopened.settings().cost_cap) == (0.42, 7)
    assert BudgetController(reopened).snapshot()["rho"] == 0.42


def test_failed_persist_keeps_old_rho(tmp_path):
    folder = tmp_path / "state"
    store = InMemoryBudgetStore(0.3, state_path=folder / "budget.json")
    folder.rmdir()
    folder.write_text("")  # the folder became a file: every write fails from now on
    with pytest.raises(OSError):
        store.set_rho(0.6)
    assert store.settings().rho == 0.3


def test_unwritable_state_file_is_refused_at_start(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    with pytest.raises(BudgetStateError, match="not_a_dir.*cannot be written"):
        InMemoryBudgetStore(0.3, state_path=blocker / "budget.json")


@pytest.mark.parametrize(
    "content, message",
    [("{not json", "not a readable JSON"), ('{"cost_cap": 3}', "expected an object"), ('{"rho": 7}', "rho must be")],
)
def test_bad_state_file_names_the_file(tmp_path, content, message):
    path = tmp_path / "budget.json"
    path.write_text(content)
    with pytest.raises(BudgetStateError, match=message) as info:
        InMemoryBudgetStore(0.3, state_path=path)
    assert str(path) in str(info.value) and "delete it" in str(info.value)
