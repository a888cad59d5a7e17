"""The N-arm pacer in Redis against a real redis-server: parity with the in-memory pacer, one window and one budget
across pacers and across two gateway apps (real uvicorn, real httpx, stand-in arms), and failover to the local
pacer while Redis is away."""

from __future__ import annotations

import threading

import httpx
import numpy as np
import pytest

from gateway.app import create_app
from gateway.budget.arm_pacer import ArmPacer
from gateway.budget.arm_redis import RedisArmPacer
from tests.servers import LiveServer, RedisServer
from tests.standins import HashScorer, InstantBackend, standin_settings
from tests.test_gateway import ADMIN
from tests.test_pacing import COSTS, stream
from tests.test_redis_budget import Clock


def shared(server: RedisServer, prefix: str, clock=None, **options) -> RedisArmPacer:
    return RedisArmPacer.from_url(server.url, COSTS, prefix=prefix, clock=clock or Clock(), timeout_s=1.0, **options)


def test_one_redis_pacer_decides_exactly_like_the_in_memory_pacer(redis_server, prefix):
    """Decisions, tickets, λ, amends, escalations and the snapshot agree: the Lua mirrors `ArmPacer`."""
    options = {"budget": 0.4, "decision_window": 150, "score_window": 150, "caps": [None, 40, None],
               "remote": [False, True, True], "remote_cap": 60}  # fmt: skip
    clocks = Clock(), Clock()
    memory = ArmPacer(COSTS, clock=clocks[0], **options)
    redis_pacer = shared(redis_server, prefix, clocks[1], **options)
    rng = np.random.default_rng(3)
    for i, q in enumerate(stream(900, seed=2)):
        step = float(rng.exponential(0.3))
        for clock in clocks:
            clock.now += step
        if i == 400:
            for pacer in (memory, redis_pacer):
                pacer.set_budget(0.25)
        if i == 650:
            for pacer in (memory, redis_pacer):
                pacer.remote_cap = None
        u = rng.random()
        if u < 0.05:
            tickets = [p.count(0, cost=0.0, quality=float(q[0])) for p in (memory, redis_pacer)]
            assert tickets[0] == tickets[1]
            continue
        kwargs = {"allowed": [True, True, False], "reason": "private"} if u < 0.12 else {}
        a, b = (p.decide(q, **kwargs) for p in (memory, redis_pacer))
        assert (a.arm, a.reason, a.ticket, a.cost) == (b.arm, b.reason, b.ticket, b.cost), i
        assert a.lam == pytest.approx(b.lam, rel=1e-12, abs=1e-12), i
        v = rng.random()
        if v < 0.1 and a.arm != 0:  # the arm failed: the cheapest served it
            assert memory.amend(a.ticket, 0, quality=float(q[0])) == redis_pacer.amend(b.ticket, 0, quality=float(q[0]))
        elif v < 0.2 and a.arm < 2:  # the image failed the check: escalated to the dearest arm, sometimes given back
            costs = [p.escalate(a.ticket, 2, quality=float(q[2])) for p in (memory, redis_pacer)]
            assert costs[0] == costs[1], i
            if costs[0] is not None and v < 0.13:
                for p in (memory, redis_pacer):
                    p.give_back(a.ticket, 2, cost=costs[0], to_arm=a.arm)
        if i % 97 == 0:
            preview = [p.preview(q) for p in (memory, redis_pacer)]
            assert (preview[0].arm, preview[0].reason) == (preview[1].arm, preview[1].reason)
    snaps = memory.snapshot(), redis_pacer.snapshot()
    for key in ("decisions", "cost_budget", "scores", "remote_calls_last_minute"):
        assert snaps[0][key] == snaps[1][key], key
    for key in ("window_cost", "window_allowance", "credit", "lambda"):
        assert snaps[0][key] == pytest.approx(snaps[1][key], rel=1e-9, abs=1e-9), key
    for mine, theirs in zip(snaps[0]["arms"], snaps[1]["arms"], strict=True):
        assert mine["requests"] == theirs["requests"] and mine["calls_last_minute"] == theirs["calls_last_minute"]
        assert mine["spent"] == pytest.approx(theirs["spent"])
        assert mine["mean_quality"] == pytest.approx(theirs["mean_quality"], rel=1e-12)
    assert snaps[1]["store"] == "redis"


def test_pacers_on_one_redis_share_one_window_and_the_budget_holds_across_them(redis_server, prefix):
    """Two replicas' pacers, deciding from two threads at once: one window, one λ, one budget, never overspent."""
    options = {"budget": 0.3, "decision_window": 200, "score_window": 200}
    pacers = [shared(redis_server, prefix, **options), shared(redis_server, prefix, **options)]
    q = stream(1200, seed=5)
    q[:, 2] += 0.5  # the dear arm is every prompt's best: only the budget holds it back
    costs: list[list[tuple[int, float]]] = [[], []]

    def run(k: int) -> None:
        for row in q[k::2]:
            choice = pacers[k].decide(row)
            costs[k].append((choice.ticket, choice.cost))

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snaps = [p.snapshot() for p in pacers]
    assert snaps[0]["decisions"] == snaps[1]["decisions"] == 200
    assert snaps[0]["window_cost"] == pytest.approx(snaps[1]["window_cost"]) and snaps[0]["lambda"] > 0
    by_ticket = [cost for _, cost in sorted(costs[0] + costs[1])]
    assert sorted(t for t, _ in costs[0] + costs[1]) == list(range(1, 1201))  # one ticket sequence
    means = [np.mean(by_ticket[s : s + 200]) for s in range(0, 1001, 20)]
    assert max(means) <= 0.3 + 1e-9  # the hard cap holds every window of the shared stream
    assert min(means[10:]) > 0.25  # and the pacer spends close to it

    pacers[0].set_budget(0.5)  # an admin change on one replica is the other's budget too
    assert pacers[1].budget == 0.5 and pacers[1].snapshot()["cost_budget"] == 0.5
    pacers[1].remote_cap = 7
    assert pacers[0].remote_cap == 7


def test_a_pacer_serves_alone_while_redis_is_away_and_rejoins(tmp_path, prefix):
    server = RedisServer(tmp_path).start()
    try:
        pacer = shared(server, prefix, budget=0.4, retry_interval_s=0.0)
        assert pacer.decide([0.5, 0.6, 0.9]).ticket == 1
        server.stop()
        alone = pacer.decide([0.5, 0.6, 0.9])
        assert alone.ticket < 0 and pacer.snapshot()["store"] == "memory"
        assert pacer.amend(alone.ticket, 0)  # its own tickets stay with the local window
        pacer.set_budget(0.6)  # made alone: written to Redis on re-join
        server.start()  # a Redis restarted empty
        back = pacer.decide([0.5, 0.6, 0.9])
        assert back.ticket > 0 and pacer.snapshot()["store"] == "redis"
        other = shared(server, prefix, budget=0.1)
        assert other.budget == 0.6
    finally:
        server.stop()


def test_two_gateway_apps_on_one_redis_pace_one_cost_budget(redis_server, prefix, tmp_path):
    arms = [
        {"name": "cheap", "kind": "local", "model_id": "sd-2.1", "model": "unused", "cost": 0.1},
        {"name": "dear", "kind": "worker", "model_id": "sd3.5-large", "url": "http://127.0.0.1:9", "cost": 1.0},
    ]  # fmt: skip
    settings = standin_settings(
        tmp_path, arms=arms, cost_budget=0.4, decision_window=40, cache_enabled=False,
        redis_url=redis_server.url, redis_prefix=prefix,
    )  # fmt: skip
    apps = [
        create_app(settings, router=HashScorer(), backends={name: InstantBackend(name) for name in ("cheap", "dear")})
        for _ in range(2)
    ]
    with LiveServer(apps[0]) as one, LiveServer(apps[1]) as two:
        clients = [httpx.Client(base_url=s.url, timeout=30) for s in (one, two)]
        try:
            assert clients[0].put("/admin/budget", json={"cost_budget": 0.3}, headers=ADMIN).status_code == 200
            assert clients[1].get("/admin/budget", headers=ADMIN).json()["cost_budget"] == 0.3
            spent = []
            for i in range(80):
                response = clients[i % 2].post("/generate", json={"prompt": f"a photo of thing {i}", "size": "64x64"})
                assert response.status_code == 200, response.text
                spent.append(response.json()["route"]["cost"])
            snaps = [c.get("/admin/budget", headers=ADMIN).json() for c in clients]
            assert snaps[0]["decisions"] == snaps[1]["decisions"] == 40  # one window of both apps' requests
            assert snaps[0]["window_cost"] == pytest.approx(snaps[1]["window_cost"])
            assert snaps[0]["window_cost"] == pytest.approx(sum(spent[-40:]))
            # the hard cap of the shared window: at most the budget, plus the cheapest arm's one call that serves
            # when no arm fits (the first window spends ahead on its empty slots)
            assert max(np.mean(spent[s : s + 40]) for s in range(0, 41)) <= 0.3 + 0.1 / 40 + 1e-9
            assert {r for r in spent} == {0.1, 1.0}  # both arms served
        finally:
            for client in clients:
                client.close()
