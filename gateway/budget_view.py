"""One view of the live budget for the admin API, the status page and the gauges: two arms (ρ) or N arms (cost).

Two arms: the controller's snapshot, plus ρ as a cost budget between `edge_cost` and `cloud_cost`.
N arms: the pacer's numbers (cost budget, λ, the window's mean cost, each arm's share, cost and mean predicted
quality) over the idle two-arm fields, with ρ the cost budget's place between the cheapest and the dearest arm
and the cloud fraction the share of remote arms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.arm_routing import ArmSet, two_arm_summary
from gateway.arms import ArmSpec
from gateway.budget import BudgetController, pacing


class BudgetView:
    def __init__(self, budget: BudgetController, arm_set: ArmSet | None, specs: Sequence[ArmSpec]):
        self.budget, self.arm_set, self.specs = budget, arm_set, list(specs)
        self.costs = [arm.cost for arm in self.specs]

    def snapshot(self) -> dict[str, Any]:
        snap = self.budget.snapshot()
        if self.arm_set is None:
            return {**snap, "mode": "two-arm", **two_arm_summary(self.specs, snap["rho"])}
        live = self.arm_set.snapshot()
        decisions, cap, minute = live["decisions"], self.arm_set.pacer.remote_cap, live["remote_calls_last_minute"]
        remote = sum(a["requests"] for a in live["arms"] if a["remote"])
        return {
            **snap, "mode": "arms", "rho": self.arm_set.rho, "alpha": None, "cloud_calls": remote,
            "cloud_fraction": remote / decisions if decisions else None, "cost_cap": cap,
            "cloud_calls_last_minute": minute, "cost_cap_use": minute / cap if cap else None, **live,
        }  # fmt: skip

    def set_rho(self, rho: float) -> None:
        if self.arm_set is None:
            self.budget.set_rho(rho)
        else:
            self.arm_set.set_rho(rho)

    def set_cost_budget(self, cost_budget: float) -> None:
        """ValueError for a budget no mix of arms can hold (below the cheapest arm's cost)."""
        if self.arm_set is not None:
            self.arm_set.set_cost_budget(cost_budget)
            return
        if cost_budget + pacing.EPS < min(self.costs):
            raise ValueError(f"cost_budget {cost_budget} is below the edge's cost {min(self.costs)}")
        self.budget.set_rho(pacing.cost_to_rho(cost_budget, self.costs) if len(self.costs) > 1 else 0.0)

    def set_cost_cap(self, cost_cap: int | None) -> None:
        """Two arms: the cloud's calls per minute. N arms: the calls per minute of all remote arms together."""
        self.budget.set_cost_cap(cost_cap)
        if self.arm_set is not None:
            self.arm_set.pacer.remote_cap = cost_cap
