"""`RedisBudgetStore`: the budget shared by gateway replicas through Redis.

It holds exactly what `InMemoryBudgetStore` holds (the keys are listed in `lua.py`). `commit` and `amend`
are Lua scripts, so they are atomic across replicas and mirror the in-memory store operation for operation
(the same stream of calls gives the same decisions, which tests/test_redis_budget.py checks). Every script
also carries the caller's last known settings and re-seeds them if the keys are gone (a Redis restarted
without persistence), so the budget never silently reads as "no ρ".
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway.budget import lua
from gateway.budget.rules import MICRO, interpolate, quantile_position
from gateway.budget.store import (
    COST_CAP_PERIOD_S,
    BudgetSettings,
    Decision,
    StoreStatus,
    WindowPolicy,
    WindowState,
    validate_choice,
    validate_prs,
)


def redis_client(url: str, *, timeout_s: float = 0.25) -> redis.Redis:
    """A client that fails fast: short socket timeouts and no retries (failover is the caller's job)."""
    return redis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
    )


def _float(value: Any) -> float:
    return float(value.decode() if isinstance(value, bytes) else value)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBudgetStore:
    """`BudgetStore` on Redis: atomic `commit`/`amend`, ρ in a key every replica reads on every request.

    `initial` seeds the settings only if Redis holds none yet (Redis wins over a replica's defaults,
    like the state file does for one process). Redis errors propagate (`redis.RedisError`).
    """

    def __init__(self, client: redis.Redis, *, prefix: str = "routet2i", initial: BudgetSettings | None = None):
        if not prefix or any(c in prefix for c in "{} "):
            raise ValueError(f"redis prefix must be a non-empty name without braces or spaces, got {prefix!r}")
        self.client = client
        self.prefix = prefix
        self.keys = [f"{{{prefix}}}:{name}" for name in lua.KEY_NAMES]
        self._settings_script = client.register_script(lua.SETTINGS)
        self._state_script = client.register_script(lua.STATE)
        self._commit_script = client.register_script(lua.COMMIT)
        self._amend_script = client.register_script(lua.AMEND)
        self._quantile_script = client.register_script(lua.QUANTILE)
        self._known = initial or BudgetSettings(0.3, None)
        self._known_at = 0.0  # when `_known` was last changed by this replica (0: a default, never wins)

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "routet2i", timeout_s: float = 0.25, initial: BudgetSettings | None = None
    ) -> RedisBudgetStore:
        return cls(redis_client(url, timeout_s=timeout_s), prefix=prefix, initial=initial)

    # ------------------------------------------------------------ settings

    def _seed_args(self) -> list[str]:
        rho, cap = self._known.rho, self._known.cost_cap
        return [repr(rho), str(round(rho * MICRO)), "" if cap is None else str(cap), repr(self._known_at)]

    @property
    def known(self) -> BudgetSettings:
        """The settings as last read from or written to Redis (what scripts re-seed a wiped Redis with)."""
        return self._known

    def settings(self) -> BudgetSettings:
        """The settings in Redis (seeded with this replica's if Redis has none)."""
        rho, cap = self._settings_script(keys=self.keys, args=self._seed_args())
        self._known = BudgetSettings(_float(rho), int(_text(cap)) if _text(cap) else None)
        return self._known

    def updated_at(self) -> float | None:
        """When ρ or the cost cap was last changed in Redis (None: no settings there)."""
        raw = self.client.hget(self.keys[0], "updated_at")
        return None if raw is None else _float(raw)

    def write_settings(self, settings: BudgetSettings, updated_at: float) -> None:
        """Overwrite both settings (re-join after an admin change made while Redis was away)."""
        self._write(settings, updated_at, rho=True, cost_cap=True)

    def set_rho(self, rho: float) -> None:
        now = time.time()
        self._write(replace(self._known, rho=rho), now, rho=True)
        self._known_at = now

    def set_cost_cap(self, cost_cap: int | None) -> None:
        now = time.time()
        self._write(replace(self._known, cost_cap=cost_cap), now, cost_cap=True)
        self._known_at = now

    def _write(self, settings: BudgetSettings, updated_at: float, *, rho: bool = False, cost_cap: bool = False) -> None:
        mapping: dict[str, Any] = {"updated_at": repr(updated_at)}
        if rho:
            mapping.update(rho=repr(settings.rho), rho_micro=round(settings.rho * MICRO))
        if cost_cap:
            mapping["cost_cap"] = "" if settings.cost_cap is None else settings.cost_cap
        self.client.hset(self.keys[0], mapping=mapping)
        self._known = settings

    # ------------------------------------------------------------ windows

    def state(self, now: float) -> WindowState:
        raw = self._state_script(keys=self.keys, args=[*self._seed_args(), repr(now), repr(COST_CAP_PERIOD_S)])
        cap = _text(raw[1])
        self._known = BudgetSettings(_float(raw[0]), int(cap) if cap else None)
        return WindowState(
            rho=self._known.rho,
            cost_cap=self._known.cost_cap,
            scores=int(raw[2]),
            decisions=int(raw[3]),
            cloud=int(raw[4]),
            allowance_micro=int(raw[5]),
            cloud_last_minute=int(raw[6]),
            credit=_float(raw[7]),
        )

    def score_quantile(self, level: float) -> float | None:
        level = min(max(level, 0.0), 1.0)
        raw = self._quantile_script(keys=[self.keys[2]], args=[repr(level)])
        n = int(raw[0])
        if n == 0:
            return None
        _, _, weight = quantile_position(level, n)
        return interpolate(_float(raw[1]), _float(raw[2]), weight)

    def commit(
        self,
        *,
        backend: str,
        reason: str,
        prs: float | None,
        now: float,
        policy: WindowPolicy,
        enforce_caps: bool,
        window_cap: bool = True,
    ) -> Decision:
        validate_choice(backend, reason)
        if prs is not None:
            prs = validate_prs(prs)
        args = [
            *self._seed_args(), backend, reason, "" if prs is None else repr(float(prs)), repr(now),
            repr(COST_CAP_PERIOD_S), policy.score_window, policy.decision_window, repr(float(policy.credit_limit)),
            repr(float(policy.credit_margin)), "1" if enforce_caps else "0", "1" if window_cap else "0",
        ]  # fmt: skip
        ticket, kept_backend, kept_reason, rho = self._commit_script(keys=self.keys, args=args)
        kept = Decision(_text(kept_backend), _text(kept_reason), rho=_float(rho), ticket=int(ticket))  # type: ignore[arg-type]
        return kept

    def amend(self, ticket: int, *, backend: str, reason: str, now: float, policy: WindowPolicy) -> bool:
        validate_choice(backend, reason)
        args = [
            *self._seed_args(), str(int(ticket)), backend, reason, repr(now), repr(COST_CAP_PERIOD_S),
            repr(float(policy.credit_limit)),
        ]  # fmt: skip
        return bool(self._amend_script(keys=self.keys, args=args))

    def status(self) -> StoreStatus:
        return StoreStatus(kind="redis", shared=True, up=True)

    def clear(self) -> None:
        """Delete every key of this budget (tests and `redis_prefix` migrations)."""
        self.client.delete(*self.keys)
