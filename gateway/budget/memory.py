"""The one-process budget store, with ρ and the cost cap persisted in a JSON state file."""

from __future__ import annotations

import bisect
import json
import logging
import os
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path

from gateway.budget.rules import MICRO, caps_refuse, clipped_credit, credit_earned, interpolate, quantile_position
from gateway.budget.store import (
    COST_CAP_PERIOD_S,
    BudgetSettings,
    BudgetStateError,
    Decision,
    StoreStatus,
    WindowPolicy,
    WindowState,
    validate_choice,
)

log = logging.getLogger("routet2i.budget")


def file_stamp(path: Path | None) -> tuple[int, int] | None:
    """(mtime ns, size) of a file another process may rewrite, None while it is missing: cheap change detection."""
    try:
        st = path.stat() if path is not None else None
    except OSError:
        return None
    return None if st is None else (st.st_mtime_ns, st.st_size)


@dataclass
class _Entry:
    ticket: int
    backend: str
    reason: str
    allowance: int  # ρ in force when it came, in millionths


def check_writable(path: Path) -> None:
    """Raise `BudgetStateError` (at start, naming the file) when the state file could not be written later:
    its folder cannot be made or no file can be created in it (every admin change would fail)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=path.name + ".", suffix=".probe", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BudgetStateError(
            f"{path}: the budget state file cannot be written there ({type(exc).__name__}: {exc.strerror or exc}); "
            "fix the permissions or set ROUTET2I_STATE_FILE to a writable path"
        ) from exc


class InMemoryBudgetStore:
    """One-process store (thread-safe; every call is short and never awaits, so it is async-safe too).

    With `state_path`, ρ and the cost cap are written there atomically on every change and read back
    at start: a file that exists wins over the `rho`/`cost_cap` arguments, so an admin change survives
    restarts. The file is also re-read whenever it changes, so the workers of one host (`uvicorn
    --workers N`, each with its own store) all follow an admin change made through any of them. The
    windows themselves are not persisted (they refill within minutes).
    """

    def __init__(self, rho: float = 0.3, *, cost_cap: int | None = None, state_path: str | Path | None = None):
        self._lock = threading.RLock()
        self._path = Path(state_path) if state_path is not None else None
        self._settings = BudgetSettings(rho, cost_cap)
        self._stamp: tuple[int, int] | None = None  # (mtime ns, size) of the state file last read or written
        if self._path is not None:
            check_writable(self._path)
        if self._path is not None and self._path.exists():
            self._settings = self._read_state(self._path)
            self._stamp = file_stamp(self._path)
        self._scores: deque[float] = deque()
        self._sorted: list[float] = []
        self._decisions: deque[_Entry] = deque()
        self._by_ticket: dict[int, _Entry] = {}
        self._cloud = 0
        self._allowance = 0  # millionths
        self._cloud_times: deque[tuple[float, int]] = deque()  # (time, ticket) of cloud calls, oldest first
        self._credit = 0.0
        self._next_ticket = 1

    # ------------------------------------------------------------ settings and persistence

    @staticmethod
    def _read_state(path: Path) -> BudgetSettings:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BudgetStateError(f"{path}: not a readable JSON budget state ({exc}); fix it or delete it") from exc
        if not isinstance(data, dict) or "rho" not in data:
            raise BudgetStateError(
                f'{path}: expected an object like {{"rho": 0.3, "cost_cap": null}}; fix or delete it'
            )
        try:
            return BudgetSettings(data["rho"], data.get("cost_cap"))
        except ValueError as exc:
            raise BudgetStateError(f"{path}: {exc}; fix the file or delete it") from exc

    def _follow_file(self) -> None:
        """Adopt a state file another process wrote (an admin change through another worker)."""
        if self._path is None:
            return
        stamp = file_stamp(self._path)
        if stamp is None or stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self._settings = self._read_state(self._path)
        except BudgetStateError as exc:  # keep serving on the values in force; the next good write wins
            log.warning("budget state file changed but cannot be read, keeping rho=%.3f: %s", self._settings.rho, exc)

    def _write_state(self) -> None:
        if self._path is None:
            return
        payload = {"rho": self._settings.rho, "cost_cap": self._settings.cost_cap, "updated_at": time.time()}
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self._path.name + ".", suffix=".tmp", dir=self._path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(payload, fh)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._stamp = file_stamp(self._path)

    def settings(self) -> BudgetSettings:
        with self._lock:
            self._follow_file()
            return self._settings

    def status(self) -> StoreStatus:
        return StoreStatus(kind="memory", shared=False, up=True)

    def set_rho(self, rho: float) -> None:
        with self._lock:
            self._put(replace(self._settings, rho=rho))

    def set_cost_cap(self, cost_cap: int | None) -> None:
        with self._lock:
            self._put(replace(self._settings, cost_cap=cost_cap))

    def _put(self, settings: BudgetSettings) -> None:
        old, self._settings = self._settings, settings
        try:
            self._write_state()
        except BaseException:
            self._settings = old
            raise

    # ------------------------------------------------------------ windows

    def _expire_cloud_times(self, now: float) -> None:
        while self._cloud_times and self._cloud_times[0][0] <= now - COST_CAP_PERIOD_S:
            self._cloud_times.popleft()

    def _push_score(self, prs: float, score_window: int) -> None:
        self._scores.append(prs)
        bisect.insort(self._sorted, prs)
        while len(self._scores) > score_window:
            old = self._scores.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]

    def _trim_decisions(self, keep: int) -> None:
        while len(self._decisions) > keep:
            old = self._decisions.popleft()
            del self._by_ticket[old.ticket]
            self._cloud -= old.backend == "cloud"
            self._allowance -= old.allowance

    def _add_credit(self, amount: float, limit: float) -> None:
        self._credit = clipped_credit(self._credit, amount, limit)

    def _state(self, now: float) -> WindowState:
        self._follow_file()
        self._expire_cloud_times(now)
        return WindowState(
            rho=self._settings.rho,
            cost_cap=self._settings.cost_cap,
            scores=len(self._scores),
            decisions=len(self._decisions),
            cloud=self._cloud,
            allowance_micro=self._allowance,
            cloud_last_minute=len(self._cloud_times),
            credit=self._credit,
        )

    def state(self, now: float) -> WindowState:
        with self._lock:
            return self._state(now)

    def score_quantile(self, level: float) -> float | None:
        with self._lock:
            n = len(self._sorted)
            if n == 0:
                return None
            lo, hi, weight = quantile_position(level, n)
            return interpolate(self._sorted[lo], self._sorted[hi], weight)

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
        with self._lock:
            if prs is not None:
                self._push_score(prs, policy.score_window)
            self._trim_decisions(policy.decision_window - 1)  # room for this one
            state = self._state(now)
            if backend == "cloud" and enforce_caps and caps_refuse(
                cloud=state.cloud, allowance_micro=state.allowance_micro, decisions=state.decisions,
                decision_window=policy.decision_window, rho=state.rho, cloud_last_minute=state.cloud_last_minute,
                cost_cap=state.cost_cap, window_cap=window_cap,
            ):  # fmt: skip
                backend, reason = "edge", "budget"
            entry = _Entry(self._next_ticket, backend, reason, round(state.rho * MICRO))
            self._next_ticket += 1
            self._decisions.append(entry)
            self._by_ticket[entry.ticket] = entry
            self._allowance += entry.allowance
            if backend == "cloud":
                self._cloud += 1
                self._cloud_times.append((now, entry.ticket))
            self._add_credit(credit_earned(state.rho, policy.credit_margin, backend == "cloud"), policy.credit_limit)
            return Decision(backend, reason, rho=state.rho, ticket=entry.ticket)  # type: ignore[arg-type]

    def amend(self, ticket: int, *, backend: str, reason: str, now: float, policy: WindowPolicy) -> bool:
        validate_choice(backend, reason)
        with self._lock:
            self._expire_cloud_times(now)
            entry = self._by_ticket.get(ticket)
            timed = next((i for i, (_, t) in enumerate(self._cloud_times) if t == ticket), None)
            if entry is None and timed is None:
                return False
            was_cloud = entry.backend == "cloud" if entry is not None else True
            self._add_credit(was_cloud - (backend == "cloud"), policy.credit_limit)
            if entry is not None:
                self._cloud += (backend == "cloud") - was_cloud
                entry.backend, entry.reason = backend, reason
            if was_cloud and backend != "cloud" and timed is not None:
                del self._cloud_times[timed]
            elif not was_cloud and backend == "cloud":
                self._cloud_times.append((now, ticket))
            return True
