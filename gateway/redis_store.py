"""Budget state shared by gateway replicas through Redis, and the failover that keeps a replica serving without it.

`RedisBudgetStore` holds exactly what `InMemoryBudgetStore` holds, under one key prefix (a Redis Cluster
hash tag, so every key lives in one slot):

    {prefix}:settings   hash   rho, rho_micro, cost_cap ("" = none), updated_at   (what PUT /admin/budget writes)
    {prefix}:counters   hash   next_ticket, score_seq, cloud, allowance (ρ millionths), credit
    {prefix}:scores     zset   score window: member = sequence number, score = PRŜ (quantiles by rank)
    {prefix}:score_fifo list   the score window's sequence numbers, oldest first (what to trim)
    {prefix}:order      list   decision window tickets, oldest first
    {prefix}:entries    hash   ticket → "backend|reason|allowance" for the decision window
    {prefix}:cloud_times zset  cloud calls of the last minute: member = ticket, score = time

`commit` and `amend` are Lua scripts, so they are atomic across replicas and mirror the in-memory
store operation for operation (the same stream of calls gives the same decisions, which the tests check).
Every script also carries the caller's last known settings and re-seeds them if the keys are gone
(a Redis restarted without persistence), so the budget never silently reads as "no ρ".

`FailoverBudgetStore` wraps a `RedisBudgetStore` and the replica's `InMemoryBudgetStore`. While Redis
answers, every decision is also mirrored into the local store (scores and outcomes, caps not
re-applied), so that when Redis stops answering the replica carries on from a warm local window: it
holds ρ over its own traffic (every replica doing so keeps the total under ρ), says so in
`status()` (→ the `routet2i_budget_store_up` metric) and in the log, and probes Redis again every
`retry_interval_s`. An admin change made while alone is written to Redis on re-join unless Redis holds
a newer one.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway.budget import (
    _MICRO,
    COST_CAP_PERIOD_S,
    BudgetSettings,
    Committed,
    InMemoryBudgetStore,
    StoreStatus,
    WindowPolicy,
    WindowState,
    _check_choice,
    validate_cost_cap,
    validate_rho,
)

log = logging.getLogger("routet2i.budget")

KEY_NAMES = ("settings", "counters", "scores", "score_fifo", "order", "entries", "cloud_times")

# Shared prologue: KEYS in KEY_NAMES order; ARGV[1..4] = the caller's last known rho, rho_micro, cost_cap, updated_at.
_SEED = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'rho', ARGV[1], 'rho_micro', ARGV[2], 'cost_cap', ARGV[3], 'updated_at', ARGV[4])
end
local rho = tonumber(redis.call('HGET', KEYS[1], 'rho'))
local rho_micro = tonumber(redis.call('HGET', KEYS[1], 'rho_micro'))
local cost_cap = tonumber(redis.call('HGET', KEYS[1], 'cost_cap') or '')
local function counter(name)
  return tonumber(redis.call('HGET', KEYS[2], name) or '0')
end
local function fmt(x)
  return string.format('%.17g', x)
end
local function clip_credit(amount, limit)
  local c = counter('credit') + amount
  if c > limit then c = limit elseif c < -limit then c = -limit end
  redis.call('HSET', KEYS[2], 'credit', fmt(c))
end
local function parse_entry(raw)
  local backend, reason, allowance = string.match(raw, '^([^|]*)|([^|]*)|(-?%d+)$')
  return backend, reason, tonumber(allowance)
end
"""

_SETTINGS = _SEED + "return {fmt(rho), redis.call('HGET', KEYS[1], 'cost_cap') or ''}"

# ARGV[5..] = now, period
_STATE = (
    _SEED
    + """
local now, period = tonumber(ARGV[5]), tonumber(ARGV[6])
return {fmt(rho), redis.call('HGET', KEYS[1], 'cost_cap') or '', redis.call('ZCARD', KEYS[3]),
        redis.call('LLEN', KEYS[5]), counter('cloud'), counter('allowance'),
        redis.call('ZCOUNT', KEYS[7], '(' .. fmt(now - period), '+inf'), fmt(counter('credit'))}
"""
)

# ARGV[5..] = backend, reason, prs ("" = none), now, period, score_window, decision_window, credit_limit,
#             credit_margin, enforce_caps ("1"/"0")
_COMMIT = (
    _SEED
    + """
local backend, reason, prs = ARGV[5], ARGV[6], ARGV[7]
local now, period = tonumber(ARGV[8]), tonumber(ARGV[9])
local score_window, decision_window = tonumber(ARGV[10]), tonumber(ARGV[11])
local credit_limit, credit_margin, enforce = tonumber(ARGV[12]), tonumber(ARGV[13]), ARGV[14] == '1'
if prs ~= '' then
  local seq = redis.call('HINCRBY', KEYS[2], 'score_seq', 1)
  redis.call('ZADD', KEYS[3], prs, seq)
  redis.call('RPUSH', KEYS[4], seq)
  while redis.call('LLEN', KEYS[4]) > score_window do
    redis.call('ZREM', KEYS[3], redis.call('LPOP', KEYS[4]))
  end
end
while redis.call('LLEN', KEYS[5]) > decision_window - 1 do
  local old = redis.call('LPOP', KEYS[5])
  local old_backend, _, old_allowance = parse_entry(redis.call('HGET', KEYS[6], old))
  redis.call('HDEL', KEYS[6], old)
  if old_backend == 'cloud' then redis.call('HINCRBY', KEYS[2], 'cloud', -1) end
  redis.call('HINCRBY', KEYS[2], 'allowance', -old_allowance)
end
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', fmt(now - period))
if backend == 'cloud' and enforce then
  local decisions = redis.call('LLEN', KEYS[5])
  local allowance = counter('allowance') / 1000000 + math.max(decision_window - decisions, 0) * rho
  local over_window = counter('cloud') + 1 > math.floor(allowance + 1e-6)
  local over_minute = cost_cap ~= nil and redis.call('ZCARD', KEYS[7]) + 1 > cost_cap
  if over_window or over_minute then backend, reason = 'edge', 'budget' end
end
local ticket = redis.call('HINCRBY', KEYS[2], 'next_ticket', 1)
redis.call('RPUSH', KEYS[5], ticket)
redis.call('HSET', KEYS[6], ticket, backend .. '|' .. reason .. '|' .. rho_micro)
redis.call('HINCRBY', KEYS[2], 'allowance', rho_micro)
local is_cloud = 0
if backend == 'cloud' then
  is_cloud = 1
  redis.call('HINCRBY', KEYS[2], 'cloud', 1)
  redis.call('ZADD', KEYS[7], fmt(now), ticket)
end
clip_credit(math.max(0, rho - credit_margin) - is_cloud, credit_limit)
return {ticket, backend, reason}
"""
)

# ARGV[5..] = ticket, backend, reason, now, period, credit_limit
_AMEND = (
    _SEED
    + """
local ticket, backend, reason = ARGV[5], ARGV[6], ARGV[7]
local now, period, credit_limit = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', fmt(now - period))
local raw = redis.call('HGET', KEYS[6], ticket)
local timed = redis.call('ZSCORE', KEYS[7], ticket)
if not raw and not timed then return 0 end
local was_cloud = true
local allowance = 0
if raw then
  local old_backend, _, old_allowance = parse_entry(raw)
  was_cloud, allowance = old_backend == 'cloud', old_allowance
end
local is_cloud = backend == 'cloud'
clip_credit((was_cloud and 1 or 0) - (is_cloud and 1 or 0), credit_limit)
if raw then
  redis.call('HINCRBY', KEYS[2], 'cloud', (is_cloud and 1 or 0) - (was_cloud and 1 or 0))
  redis.call('HSET', KEYS[6], ticket, backend .. '|' .. reason .. '|' .. allowance)
end
if was_cloud and not is_cloud and timed then
  redis.call('ZREM', KEYS[7], ticket)
elseif not was_cloud and is_cloud then
  redis.call('ZADD', KEYS[7], fmt(now), ticket)
end
return 1
"""
)

# KEYS[1] = scores; ARGV[1] = level in [0, 1]
_QUANTILE = """
local n = redis.call('ZCARD', KEYS[1])
if n == 0 then return {0} end
local lo = math.floor(tonumber(ARGV[1]) * (n - 1))
local hi = math.min(lo + 1, n - 1)
local r = redis.call('ZRANGE', KEYS[1], lo, hi, 'WITHSCORES')
return {n, r[2], r[#r]}
"""


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
        self.keys = [f"{{{prefix}}}:{name}" for name in KEY_NAMES]
        self._settings_script = client.register_script(_SETTINGS)
        self._state_script = client.register_script(_STATE)
        self._commit_script = client.register_script(_COMMIT)
        self._amend_script = client.register_script(_AMEND)
        self._quantile_script = client.register_script(_QUANTILE)
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
        return [repr(rho), str(round(rho * _MICRO)), "" if cap is None else str(cap), repr(self._known_at)]

    def _remember(self, rho: float, cost_cap: int | None) -> None:
        self._known = BudgetSettings(rho, cost_cap)

    @property
    def known(self) -> BudgetSettings:
        """The settings as last read from or written to Redis (what scripts re-seed a wiped Redis with)."""
        return self._known

    def settings(self) -> BudgetSettings:
        """The settings in Redis (seeded with this replica's if Redis has none)."""
        rho, cap = self._settings_script(keys=self.keys, args=self._seed_args())
        self._remember(_float(rho), int(_text(cap)) if _text(cap) else None)
        return self._known

    def updated_at(self) -> float | None:
        """When ρ or the cost cap was last changed in Redis (None: no settings there)."""
        raw = self.client.hget(self.keys[0], "updated_at")
        return None if raw is None else _float(raw)

    def write_settings(self, rho: float, cost_cap: int | None, updated_at: float) -> None:
        """Overwrite both settings (re-join after an admin change made while Redis was away)."""
        rho, cost_cap = validate_rho(rho), validate_cost_cap(cost_cap)
        self.client.hset(
            self.keys[0],
            mapping={
                "rho": repr(rho),
                "rho_micro": round(rho * _MICRO),
                "cost_cap": "" if cost_cap is None else cost_cap,
                "updated_at": repr(updated_at),
            },
        )
        self._remember(rho, cost_cap)

    def set_rho(self, rho: float) -> None:
        rho = validate_rho(rho)
        now = time.time()
        self.client.hset(
            self.keys[0], mapping={"rho": repr(rho), "rho_micro": round(rho * _MICRO), "updated_at": repr(now)}
        )
        self._remember(rho, self._known.cost_cap)
        self._known_at = now

    def set_cost_cap(self, cost_cap: int | None) -> None:
        cost_cap = validate_cost_cap(cost_cap)
        now = time.time()
        self.client.hset(
            self.keys[0], mapping={"cost_cap": "" if cost_cap is None else cost_cap, "updated_at": repr(now)}
        )
        self._remember(self._known.rho, cost_cap)
        self._known_at = now

    # ------------------------------------------------------------ windows

    def state(self, now: float) -> WindowState:
        raw = self._state_script(keys=self.keys, args=[*self._seed_args(), repr(now), repr(COST_CAP_PERIOD_S)])
        rho, cap = _float(raw[0]), _text(raw[1])
        self._remember(rho, int(cap) if cap else None)
        return WindowState(
            rho=rho,
            cost_cap=self._known.cost_cap,
            scores=int(raw[2]),
            decisions=int(raw[3]),
            cloud=int(raw[4]),
            allowance=int(raw[5]) / _MICRO,
            cloud_last_minute=int(raw[6]),
            credit=_float(raw[7]),
        )

    def score_quantile(self, level: float) -> float | None:
        level = min(max(level, 0.0), 1.0)
        raw = self._quantile_script(keys=[self.keys[2]], args=[repr(level)])
        n = int(raw[0])
        if n == 0:
            return None
        pos = level * (n - 1)
        lo_value, hi_value = _float(raw[1]), _float(raw[2])
        return lo_value + (pos - int(pos)) * (hi_value - lo_value)

    def commit(
        self,
        *,
        backend: str,
        reason: str,
        prs: float | None,
        now: float,
        policy: WindowPolicy,
        enforce_caps: bool,
    ) -> Committed:
        _check_choice(backend, reason)
        if prs is not None and not math.isfinite(prs):
            raise ValueError(f"prs must be a finite number, got {prs!r}")
        args = [
            *self._seed_args(), backend, reason, "" if prs is None else repr(float(prs)), repr(now),
            repr(COST_CAP_PERIOD_S), policy.score_window, policy.decision_window, repr(float(policy.credit_limit)),
            repr(float(policy.credit_margin)), "1" if enforce_caps else "0",
        ]  # fmt: skip
        ticket, kept_backend, kept_reason = self._commit_script(keys=self.keys, args=args)
        return Committed(int(ticket), _text(kept_backend), _text(kept_reason))

    def amend(self, ticket: int, *, backend: str, reason: str, now: float, policy: WindowPolicy) -> bool:
        _check_choice(backend, reason)
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
        self._pending: tuple[float, float, int | None] | None = None  # (time, ρ, cost cap) changed while alone
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
            self.shared.write_settings(pending[1], pending[2], pending[0])
            log.warning("budget store: wrote the admin change made while Redis was away (ρ=%.3f)", pending[1])
        elif remote_at is None:
            local = self.local.settings()
            self.shared.write_settings(local.rho, local.cost_cap, 0.0)
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
        rho = validate_rho(rho)
        self._set(lambda: self.shared.set_rho(rho), lambda: self.local.set_rho(rho))

    def set_cost_cap(self, cost_cap: int | None) -> None:
        cost_cap = validate_cost_cap(cost_cap)
        self._set(lambda: self.shared.set_cost_cap(cost_cap), lambda: self.local.set_cost_cap(cost_cap))

    def _set(self, shared: Callable[[], None], local: Callable[[], None]) -> None:
        if self._shared_ready() and self._try(lambda: (shared(),)) is not None:
            self._sync_local(self.shared.known)
            return
        local()
        current = self.local.settings()
        self._synced = current
        self._pending = (time.time(), current.rho, current.cost_cap)
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
    ) -> Committed:
        _check_choice(backend, reason)
        if self._shared_ready():
            kept = self._try(
                lambda: self.shared.commit(
                    backend=backend, reason=reason, prs=prs, now=now, policy=policy, enforce_caps=enforce_caps
                )
            )
            if kept is not None:
                mirror = self.local.commit(
                    backend=kept.backend, reason=kept.reason, prs=prs, now=now, policy=policy, enforce_caps=False
                )
                self._remember_ticket(kept.ticket, mirror.ticket, 2 * policy.decision_window)
                return kept
        alone = self.local.commit(
            backend=backend, reason=reason, prs=prs, now=now, policy=policy, enforce_caps=enforce_caps
        )
        return Committed(-alone.ticket, alone.backend, alone.reason)

    def amend(self, ticket: int, *, backend: str, reason: str, now: float, policy: WindowPolicy) -> bool:
        _check_choice(backend, reason)
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
