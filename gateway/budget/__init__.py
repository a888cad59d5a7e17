"""The live cloud budget: one controller, its store protocol and three stores.

store.py        the store protocol and its values (`Backend`, `Reason`, `Decision`, settings, validators)
rules.py        the cap, credit and quantile arithmetic as pure functions (mirrored in lua.py)
controller.py   `BudgetController`: α from live traffic, decide / preview / record
memory.py       `InMemoryBudgetStore` (one process) with the JSON state file
redis_store.py  `RedisBudgetStore` (shared by replicas; its Lua scripts in lua.py)
failover.py     `FailoverBudgetStore`: Redis while it answers, the local store while it does not
pacing.py       the N-arm rule (argmax q − λ·cost, λ paced to a cost budget) as pure functions
arm_pacer.py    `ArmPacer`: the N-arm rule's state in one process
arm_redis.py    `RedisArmPacer`: the same state in Redis, shared by replicas (its Lua scripts in arm_lua.py)
"""

from gateway.budget.controller import BudgetController
from gateway.budget.failover import FailoverBudgetStore
from gateway.budget.memory import InMemoryBudgetStore
from gateway.budget.redis_store import RedisBudgetStore, redis_client
from gateway.budget.store import (
    BACKENDS,
    COST_CAP_PERIOD_S,
    REASONS,
    Backend,
    BudgetSettings,
    BudgetStateError,
    BudgetStore,
    Decision,
    Reason,
    StoreStatus,
    WindowPolicy,
    WindowState,
    validate_choice,
    validate_cost_cap,
    validate_prs,
    validate_rho,
)

__all__ = [
    "BACKENDS", "COST_CAP_PERIOD_S", "REASONS", "Backend", "BudgetController", "BudgetSettings", "BudgetStateError",
    "BudgetStore", "Decision", "FailoverBudgetStore", "InMemoryBudgetStore", "Reason", "RedisBudgetStore",
    "StoreStatus", "WindowPolicy", "WindowState", "redis_client", "validate_choice", "validate_cost_cap",
    "validate_prs", "validate_rho",
]  # fmt: skip
