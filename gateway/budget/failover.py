"""`FailoverBudgetStore`: Redis while it answers, the replica's own store while it does not.

It wraps a `RedisBudgetStore` and the replica's `InMemoryBudgetStore`. While Redis answers, every decision
is also mirrored into the local store (scores and outcomes, caps not re-applied), so that when Redis stops
answering the replica carries on from a warm local window: it holds ρ over its own traffic (every replica
doing so keeps the total under ρ), says so in `status()` (→ the `routet2i_budget_store_up` metric) and in
the log, and probes Redis again every `retry_interval_s`. An admin change made while alone is written to
Redis on re-join unless Redis holds a newer one.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import redis

from gateway.budget.memory import InMemoryBudgetStore
from gateway.budget.redis_store import RedisBudgetStore
from gateway.budget.store import BudgetSettings, Decision, StoreStatus, WindowPolicy, WindowState, validate_choice

log = logging.getLogger("routet2i.budget")


class FailoverBudgetStore:
    """Redis while it answers, the replica's own store while it does not; never raises a Redis error.

    Tickets: positive numbers are Redis tickets (the local mirror entry is found through a bounded
    map), negative numbers are decisions made while alone (local tickets, negated).
    """

    def __init__(self, shared: RedisBudgetStore, local: InMemoryBudgetStore, *, retry_interval_s: float = 2.0):
        self.shared, self.local = shared, local
        self.retry_interval_s = retry_interval_s
        self._lock = threading.Lock()
        self._up = True
        self._retry_at = 0.0
        self._failovers = 0
        self._tickets: collections.OrderedDict[int, int] = collections.OrderedDict()  # Redis ticket → local ticket
        self._pending: tuple[float, BudgetSettings] | None = None  # (time, settings) of a change made while alone
        self._synced = local.settings()
        self._try(lambda: self._rejoin(initial=True))

    # ------------------------------------------------------------ switching

    def _fail(self, exc: Exception) -> None:
        with self._lock:
            was_up, self._up = self._up, False
            self._retry_at = time.monotonic() + self.retry_interval_s
            if was_up:
                self._failovers += 1
        if was_up:
            log.warning(
                "budget store: Redis failed (%s: %s); serving on the local budget (this replica holds ρ over its "
                "own traffic) and retrying every %.1f s",
                type(exc).__name__, exc, self.retry_interval_s,
            )  # fmt: skip

    def _try(self, call):
        try:
            return call()
        except redis.RedisError as exc:
            self._fail(exc)
            return None

    def _rejoin(self, initial: bool = False) -> bool:
        """Push an admin change made while alone (if newer than Redis's), adopt Redis's settings, go shared."""
        pending = self._pending
        remote_at = self.shared.updated_at()
        if pending is not None and (remote_at is None or pending[0] > remote_at):
            self.shared.write_settings(pending[1], pending[0])
            log.warning("budget store: wrote the admin change made while Redis was away (ρ=%.3f)", pending[1].rho)
        elif remote_at is None:
            self.shared.write_settings(self.local.settings(), 0.0)
        self._sync_local(self.shared.settings())
        with self._lock:
            self._pending, self._up = None, True
        if not initial:
            log.warning("budget store: Redis answers again; the budget is shared across replicas again")
        return True

    def _shared_ready(self) -> bool:
        """True when calls should go to Redis (re-joining first if the retry time has come)."""
        if self._up:
            return True
        if time.monotonic() < self._retry_at:
            return False
        with self._lock:  # one probe per interval, whichever thread comes first
            if self._up or time.monotonic() < self._retry_at:
                return self._up
            self._retry_at = time.monotonic() + self.retry_interval_s
        return bool(self._try(self._rejoin))

    def _sync_local(self, settings: BudgetSettings) -> None:
        """Keep the local store (and its state file) on the shared settings, so a failover starts from them."""
        if settings == self._synced:
            return
        try:
            if settings.rho != self.local.settings().rho:
                self.local.set_rho(settings.rho)
            if settings.cost_cap != self.local.settings().cost_cap:
                self.local.set_cost_cap(settings.cost_cap)
        except OSError as exc:
            log.warning("budget store: could not persist the shared settings locally: %s", exc)
        self._synced = settings

    def _remember_ticket(self, shared: int, local: int, keep: int) -> None:
        with self._lock:
            self._tickets[shared] = local
            while len(self._tickets) > keep:
                self._tickets.popitem(last=False)

    # ------------------------------------------------------------ BudgetStore

    def settings(self) -> BudgetSettings:
        if self._shared_ready():
            settings = self._try(self.shared.settings)
            if settings is not None:
                self._sync_local(settings)
                return settings
        return self.local.settings()

    def set_rho(self, rho: float) -> None:
        self._set(lambda: self.shared.set_rho(rho), lambda: self.local.set_rho(rho))

    def set_cost_cap(self, cost_cap: int | None) -> None:
        self._set(lambda: self.shared.set_cost_cap(cost_cap), lambda: self.local.set_cost_cap(cost_cap))

    def _set(self, shared: Callable[[], None], local: Callable[[], None]) -> None:
        if self._shared_ready() and self._try(lambda: (shared(),)) is not None:
            self._sync_local(self.shared.known)
            return
        local()
        current = self.local.settings()
        self._synced = current
        self._pending = (time.time(), current)
        log.warning("budget store: admin change applied locally while Redis is away; it is shared on re-join")

    def state(self, now: float) -> WindowState:
        if self._shared_ready():
            state = self._try(lambda: self.shared.state(now))
            if state is not None:
                self._sync_local(BudgetSettings(state.rho, state.cost_cap))
                return state
        return self.local.state(now)

    def score_quantile(self, level: float) -> float | None:
        if self._shared_ready():
            value = self._try(lambda: (self.shared.score_quantile(level),))
            if value is not None:
                return value[0]
        return self.local.score_quantile(level)

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
        if self._shared_ready():
            kept = self._try(
                lambda: self.shared.commit(
                    backend=backend,
                    reason=reason,
                    prs=prs,
                    now=now,
                    policy=policy,
                    enforce_caps=enforce_caps,
                    window_cap=window_cap,
                )
            )
            if kept is not None:
                mirror = self.local.commit(
                    backend=kept.backend, reason=kept.reason, prs=prs, now=now, policy=policy, enforce_caps=False
                )
                self._remember_ticket(kept.ticket, mirror.ticket, 2 * policy.decision_window)
                return kept
        alone = self.local.commit(
            backend=backend,
            reason=reason,
            prs=prs,
            now=now,
            policy=policy,
            enforce_caps=enforce_caps,
            window_cap=window_cap,
        )
        return replace(alone, ticket=-alone.ticket)

    def amend(self, ticket: int, *, backend: str, reason: str, now: float, policy: WindowPolicy) -> bool:
        validate_choice(backend, reason)
        if ticket < 0:
            return self.local.amend(-ticket, backend=backend, reason=reason, now=now, policy=policy)
        with self._lock:
            mirror = self._tickets.get(ticket)
        if mirror is not None:
            self.local.amend(mirror, backend=backend, reason=reason, now=now, policy=policy)
        if self._shared_ready():
            done = self._try(lambda: self.shared.amend(ticket, backend=backend, reason=reason, now=now, policy=policy))
            if done is not None:
                return done
        return mirror is not None

    def status(self) -> StoreStatus:
        return StoreStatus(kind="redis", shared=self._up, up=self._up, failovers=self._failovers)
