"""The budget's rules in Python (gateway/budget/rules.py) and in Lua (gateway/budget/lua.py RULES, run by the
Redis store) agree on the same random inputs, evaluated by a real redis-server."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.budget import lua, rules
from gateway.budget.redis_store import redis_client
from tests.servers import RedisServer

CASES = 2000


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis-parity")).start()  # skips without redis-server
    yield redis_client(server.url, timeout_s=5)
    server.stop()


def run_lua(client, body: str, args: list) -> list[str]:
    """Evaluate `lua.RULES + body` on the server; numbers come back as %.17g strings (exact doubles)."""
    return [value.decode() for value in client.eval(lua.RULES + body, 0, *[repr(a) for a in args])]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20260101)


def test_window_and_cost_caps_agree(client, rng):
    body = """
local cap = ARGV[7] ~= '-1' and tonumber(ARGV[7]) or nil
local a = {}
for i = 1, 7 do a[i] = tonumber(ARGV[i]) end
local refused = caps_refuse(a[1], a[2], a[3], a[4], a[5], a[6], cap)
return {fmt(window_cloud_limit(a[2], a[3], a[4], a[5])), refused and '1' or '0'}
"""
    refusals = 0
    for _ in range(CASES):
        window = int(rng.integers(1, 2000))
        decisions = int(rng.integers(0, window + 1))
        rho = float(rng.choice([rng.random(), round(rng.random(), 3), 0.0, 1.0, 0.3]))
        if rng.random() < 0.5:  # Σ of per-request allowances, as the stores keep it
            allowance = int(sum(round(float(r) * rules.MICRO) for r in rng.choice([rho, rng.random()], decisions)))
        else:  # just under or at a whole number of calls, where the rounding guard matters
            allowance = max(0, int(rng.integers(0, decisions + 1)) * rules.MICRO - int(rng.integers(0, 3000)))
        cloud = int(rng.integers(0, decisions + 1))
        last_minute = int(rng.integers(0, cloud + 1))
        cap = None if rng.random() < 0.4 else int(rng.integers(1, 50))
        if rng.random() < 0.05:  # empty window of a two-decimal ρ: ρ·W lands just under a whole number (0.29·100)
            allowance = decisions = 0
            rho, window = round(float(rng.random()), 2), 100 * int(rng.integers(1, 20))
            cloud = last_minute = max(0, round(rho * window) - 1)
        args = [cloud, allowance, decisions, window, rho, last_minute, -1 if cap is None else cap]
        limit, refused = run_lua(client, body, args)
        expected = rules.caps_refuse(
            cloud=cloud, allowance_micro=allowance, decisions=decisions, decision_window=window, rho=rho,
            cloud_last_minute=last_minute, cost_cap=cap,
        )  # fmt: skip
        assert int(limit) == rules.window_cloud_limit(allowance, decisions, window, rho), args
        assert (refused == "1") == expected, args
        refusals += expected
    assert 0 < refusals < CASES  # the inputs reach both outcomes


def test_credit_agrees(client, rng):
    body = """
local credit, rho, margin, is_cloud, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4]), tonumber(ARGV[5])
local earned = credit_earned(rho, margin, is_cloud)
return {fmt(earned), fmt(clipped_credit(credit, earned, limit))}
"""
    clipped = 0
    for _ in range(CASES):
        limit = float(rng.choice([10.0, rng.uniform(0, 20)]))
        credit = float(rng.uniform(-limit, limit))
        rho, margin = float(rng.random()), float(rng.choice([0.002, rng.uniform(0, 0.5)]))
        cloud = bool(rng.random() < 0.5)
        earned, after = run_lua(client, body, [credit, rho, margin, int(cloud), limit])
        assert float(earned) == rules.credit_earned(rho, margin, cloud)
        assert float(after) == rules.clipped_credit(credit, rules.credit_earned(rho, margin, cloud), limit)
        clipped += abs(float(after)) == limit
    assert clipped > 0  # some inputs hit the clip


def test_quantile_position_agrees(client, rng):
    body = "local lo, hi = quantile_position(tonumber(ARGV[1]), tonumber(ARGV[2])); return {fmt(lo), fmt(hi)}"
    for _ in range(CASES):
        n = int(rng.integers(1, 3000))
        level = float(rng.choice([rng.random(), 0.0, 1.0, round(rng.random(), 2)]))
        lo, hi = run_lua(client, body, [level, n])
        expected_lo, expected_hi, _ = rules.quantile_position(level, n)
        assert (int(lo), int(hi)) == (expected_lo, expected_hi), (level, n)
