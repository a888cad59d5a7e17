"""The arms the gateway routes among, with their live pacer: predicted quality per arm, budget, snapshot.

`ArmSet` is what the N-arm service (`gateway.arm_serving`), the admin API and the console read. The predicted
quality q_a of arm a for a prompt (`qualities`) is:

- a many-model checkpoint that knows every arm's model: <θ(p), a_m − ā>, its per-model quality
  (router_model/multi_router.py), plus the arm's `quality_offset`;
- otherwise (the paper's checkpoint, or models the checkpoint does not know): the two-arm score, PRŜ(p) for every
  arm but those serving `cloud_model_id`, 1 for those (PRŜ is the edge's quality relative to the cloud's), plus
  the arm's `quality_offset` (e.g. −0.05 for the same model at fewer steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.arms import ArmSpec
from gateway.budget import pacing
from gateway.budget.arm_pacer import ArmPacer
from gateway.budget.arm_redis import RedisArmPacer
from gateway.routing import PromptScore


def arm_qualities(score: PromptScore, arms: Sequence[ArmSpec], cloud_model_id: str) -> list[float]:
    """q_a for every arm (module docstring)."""
    per_model = score.quality
    if per_model and all(arm.model_id in per_model for arm in arms):
        return [per_model[arm.model_id] + arm.quality_offset for arm in arms]
    return [(1.0 if arm.model_id == cloud_model_id else score.prs) + arm.quality_offset for arm in arms]


class ArmSet:
    """The arms, in settings order, and the pacer that holds their budget."""

    def __init__(self, arms: Sequence[ArmSpec], pacer: ArmPacer | RedisArmPacer, *, cloud_model_id: str):
        self.specs = list(arms)
        self.pacer = pacer
        self.cloud_model_id = cloud_model_id
        self.names = [arm.name for arm in self.specs]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.costs = [arm.cost for arm in self.specs]
        self.local = [arm.local for arm in self.specs]

    @classmethod
    def build(
        cls, arms: Sequence[ArmSpec], *, cost_budget: float | None, rho: float, cloud_model_id: str,
        decision_window: int = 1000, cost_cap: int | None = None, redis_url: str | None = None,
        redis_prefix: str = "routet2i", redis_timeout_s: float = 0.25, redis_retry_s: float = 2.0,
    ) -> ArmSet:  # fmt: skip
        """The set with a fresh pacer; `cost_budget` unset: the cost ρ names (`pacing.rho_to_cost`); `cost_cap`:
        calls per minute over all remote arms together (the two-arm cost cap). With `redis_url`, λ, the credit, the
        cost window and the caps live in Redis, shared by every replica with the same arms (`RedisArmPacer`; the
        budget and cost cap given here only seed it)."""
        costs = [arm.cost for arm in arms]
        budget = cost_budget if cost_budget is not None else pacing.rho_to_cost(rho, costs)
        options = dict(
            budget=budget, decision_window=decision_window, score_window=decision_window,
            caps=[arm.max_calls_per_minute for arm in arms], remote=[bool(arm.remote) for arm in arms],
            remote_cap=cost_cap,
        )  # fmt: skip
        pacer: ArmPacer | RedisArmPacer
        if redis_url is None:
            pacer = ArmPacer(costs, **options)
        else:
            pacer = RedisArmPacer.from_url(
                redis_url, costs, timeout_s=redis_timeout_s, prefix=redis_prefix, names=[arm.name for arm in arms],
                retry_interval_s=redis_retry_s, **options,
            )  # fmt: skip
        return cls(arms, pacer, cloud_model_id=cloud_model_id)

    def qualities(self, score: PromptScore) -> list[float]:
        return arm_qualities(score, self.specs, self.cloud_model_id)

    def allowed(self, *, local_only: bool = False, remote_only: bool = False) -> list[bool]:
        if local_only:
            return list(self.local)
        if remote_only:
            return [not local for local in self.local]
        return [True] * len(self.specs)

    # ------------------------------------------------------------ budget

    @property
    def rho(self) -> float:
        """The ρ the cost budget amounts to (cheapest arm → 0, dearest → 1)."""
        return pacing.cost_to_rho(self.pacer.budget, self.costs)

    def set_rho(self, rho: float) -> None:
        self.pacer.set_budget(pacing.rho_to_cost(rho, self.costs))

    def set_cost_budget(self, budget: float) -> None:
        self.pacer.set_budget(budget)

    def snapshot(self) -> dict[str, Any]:
        """The pacer's numbers with each arm's name, kind, model, cost and remoteness."""
        live = self.pacer.snapshot()
        live["arms"] = [
            {"name": arm.name, "kind": arm.kind, "model_id": arm.model_id, "cost": arm.cost, "remote": bool(arm.remote),
             "steps": arm.steps, "max_calls_per_minute": arm.max_calls_per_minute, **numbers}
            for arm, numbers in zip(self.specs, live["arms"], strict=True)
        ]  # fmt: skip
        return live


def two_arm_summary(arms: Sequence[ArmSpec], rho: float) -> dict[str, Any]:
    """The two-arm shorthand in the N-arm vocabulary (GET /admin/budget): ρ as a cost budget, the arms' costs."""
    costs = [arm.cost for arm in arms]
    return {
        "cost_budget": pacing.rho_to_cost(rho, costs) if len(arms) > 1 else costs[0],
        "lambda": None,
        "arms": [
            {"name": arm.name, "kind": arm.kind, "model_id": arm.model_id, "cost": arm.cost, "remote": bool(arm.remote)}
            for arm in arms
        ],  # fmt: skip
    }
