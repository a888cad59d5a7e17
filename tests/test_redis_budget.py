"""The Redis budget store against a real redis-server: parity with the in-memory store, atomic caps across
replicas and processes, admin changes seen by every replica, failover to the local store and re-join."""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time

import numpy as np
import pytest

from demo.processes import free_port
from gateway.budget import (
    BudgetController,
    BudgetSettings,
    FailoverBudgetStore,
    InMemoryBudgetStore,
    RedisBudgetStore,
    redis_client,
)
from gateway.metrics import GatewayMetrics
from tests.servers import RedisServer


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def redis_store(server: RedisServer, prefix: str, rho: float = 0.3, cost_cap: int | None = None) -> RedisBudgetStore:
    return RedisBudgetStore.from_url(server.url, prefix=prefix, initial=BudgetSettings(rho, cost_cap))


# ---------------------------------------------------------------- parity and atomicity


def test_redis_store_decides_exactly_like_the_in_memory_store(redis_server, prefix):
    """The same calls give the same decisions, α, tickets and snapshot: the Lua scripts mirror the in-memory store."""
    kwargs = {"score_window": 300, "decision_window": 200, "min_scores": 20}
    clocks = Clock(), Clock()
    memory = BudgetController(InMemoryBudgetStore(0.3, cost_cap=12), clock=clocks[0], **kwargs)
    shared = BudgetController(redis_store(redis_server, prefix, 0.3, 12), clock=clocks[1], **kwargs)
    rng = np.random.default_rng(7)
    drift = np.concatenate([rng.beta(2, 3, 1200), rng.beta(1.5, 4, 1200)])  # the score mix moves mid-stream
    for i, prs in enumerate(drift):
        step = float(rng.exponential(0.4))
        for clock in clocks:
            clock.now += step
        rng_state = rng.random()
        if i == 900:
            for ctl in (memory, shared):
                ctl.set_rho(0.45)
        if i == 1500:
            for ctl in (memory, shared):
                ctl.set_cost_cap(None)
        if rng_state < 0.08:
            results = [ctl.record("cloud", "forced", prs=float(prs)) for ctl in (memory, shared)]
        elif rng_state < 0.15:
            results = [ctl.record("edge", "private") for ctl in (memory, shared)]
        else:
            results = [ctl.decide(float(prs)) for ctl in (memory, shared)]
            if results[0].cloud and rng.random() < 0.15:  # the cloud failed: served by the edge
                amended = [
                    ctl.record("edge", "fallback", ticket=d.ticket)
                    for ctl, d in zip((memory, shared), results, strict=True)
                ]
                assert amended == [True, True]
        assert results[0] == results[1], f"request {i}"
    a, b = memory.snapshot(), shared.snapshot()
    assert [(a.pop(k), b.pop(k)) for k in ("store", "store_shared")] == [("memory", "redis"), (False, True)]
    assert a == b
    assert 0 < a["cloud_calls"] < a["window_cloud_limit"] + 1
    assert memory.record("edge", "fallback", ticket=1) == shared.record("edge", "fallback", ticket=1) is False


def test_window_cap_holds_across_concurrent_replicas(redis_server, prefix):
    # α stays at the prior ½ (min_scores is never reached): every request below wants the cloud.
    replicas = [
        BudgetController(
            redis_store(redis_server, prefix, 0.1), decision_window=1000, min_scores=10**6, prior_alpha=0.5
        )
        for _ in range(4)
    ]

    def worker(ctl: BudgetController) -> None:
        for _ in range(250):
            ctl.decide(0.0)

    threads = [threading.Thread(target=worker, args=(ctl,)) for ctl in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = replicas[0].snapshot()
    assert snap["decisions"] == 1000
    assert snap["cloud_calls"] == 100  # the whole allowance is used, and not one call more


def test_admin_change_on_one_replica_is_seen_by_all_on_their_next_request(redis_server, prefix):
    a = BudgetController(redis_store(redis_server, prefix, 0.3), min_scores=1)
    assert a.rho == 0.3  # the first replica to reach Redis seeds it
    b = BudgetController(redis_store(redis_server, prefix, 0.9), min_scores=1)
    assert b.rho == 0.3  # Redis already holds ρ: it wins over b's own default
    a.set_rho(0.0)
    assert not b.decide(0.01).cloud and b.decide(0.01).rho == 0.0
    a.set_cost_cap(4)
    b.set_rho(1.0)
    assert a.decide(0.01).rho == 1.0
    assert b.snapshot()["cost_cap"] == 4


def test_bad_prefix_is_refused(redis_server):
    with pytest.raises(ValueError, match="redis prefix"):
        RedisBudgetStore(redis_client(redis_server.url), prefix="a{b}")
    from pydantic import ValidationError

    from gateway.settings import Settings

    with pytest.raises(ValidationError, match="redis_prefix"):
        Settings(redis_prefix="has space")


# ---------------------------------------------------------------- failover


def test_replica_serves_alone_when_redis_stops_and_rejoins_when_it_returns(tmp_path, caplog):
    server = RedisServer(tmp_path).start()
    clock = Clock()
    local = InMemoryBudgetStore(0.2, state_path=tmp_path / "state.json")
    shared = RedisBudgetStore.from_url(server.url, prefix="failover", initial=local.settings())
    store = FailoverBudgetStore(shared, local, retry_interval_s=0.2)
    ctl = BudgetController(store, decision_window=100, min_scores=10**6, prior_alpha=0.5, clock=clock)
    metrics = GatewayMetrics()
    cloud = []
    try:
        for _ in range(150):  # shared: every request wants the cloud, the shared cap allows 20 in 100
            clock.now += 0.1
            cloud.append(ctl.decide(0.0).cloud)
        assert ctl.snapshot()["store_up"] is True
        server.stop()
        with caplog.at_level(logging.WARNING, logger="routet2i.budget"):
            for _ in range(250):  # alone: no error, the local window (warm from the mirror) keeps the cap
                clock.now += 0.1
                cloud.append(ctl.decide(0.0).cloud)
        assert "serving on the local budget" in caplog.text
        snap = ctl.snapshot()
        assert (snap["store"], snap["store_up"], snap["store_shared"], snap["store_failovers"]) == (
            "redis",
            False,
            False,
            1,
        )
        metrics.set_budget(snap)
        assert b'routet2i_budget_store_up{store="redis"} 0.0' in metrics.render()[0]
        sums = np.concatenate([[0], np.cumsum(cloud)])
        assert max(sums[s + 100] - sums[s] for s in range(len(cloud) - 99)) <= 20
        assert sum(cloud[-100:]) == 20  # and the replica still spends its share

        ctl.set_rho(0.35)  # an admin change while alone: applied locally, persisted, shared on re-join
        assert ctl.rho == 0.35 and "0.35" in (tmp_path / "state.json").read_text()
        server.start()  # an empty Redis (no persistence): the replica re-seeds it
        time.sleep(0.25)
        with caplog.at_level(logging.WARNING, logger="routet2i.budget"):
            decision = ctl.decide(0.0)
        assert "shared across replicas again" in caplog.text
        assert ctl.snapshot()["store_up"] is True and decision.ticket > 0
        assert decision.rho == 0.35 and shared.settings().rho == 0.35
        assert redis_store(server, "failover", 0.9).settings().rho == 0.35  # another replica sees it too
    finally:
        server.stop()


def test_newer_admin_change_in_redis_wins_over_one_made_while_alone(tmp_path):
    server = RedisServer(tmp_path).start()
    try:
        alone = FailoverBudgetStore(
            RedisBudgetStore.from_url(server.url, prefix="p", initial=BudgetSettings(0.3, None)),
            InMemoryBudgetStore(0.3),
            retry_interval_s=0.1,
        )
        server.stop()
        alone.set_rho(0.1)  # made first, while Redis is away
        server.start()
        other = redis_store(server, "p")
        other.set_rho(0.6)  # made later by a replica that reached Redis
        time.sleep(0.15)
        assert BudgetController(alone).rho == 0.6
        assert alone.local.settings().rho == 0.6  # the local fallback follows the shared settings
    finally:
        server.stop()


def test_redis_unreachable_at_start_serves_locally(tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    store = FailoverBudgetStore(
        RedisBudgetStore.from_url(url, initial=BudgetSettings(0.5, None)), InMemoryBudgetStore(0.5)
    )
    ctl = BudgetController(store, min_scores=1)
    started = time.monotonic()
    decisions = [ctl.decide(0.1) for _ in range(20)]
    assert time.monotonic() - started < 2  # no per-request wait on a dead Redis
    assert all(d.ticket < 0 for d in decisions) and ctl.snapshot()["store_up"] is False
    assert ctl.record("edge", "fallback", ticket=decisions[0].ticket)


# ---------------------------------------------------------------- several processes, one stream of real prompts


def _replica(url: str, prefix: str, scores: list[float], change: tuple[int, float], counter, out) -> None:
    """One replica's budget in its own process: takes the next request of the shared stream until none is left."""
    ctl = BudgetController(RedisBudgetStore.from_url(url, prefix=prefix, timeout_s=5.0))
    taken = []
    while True:
        with counter.get_lock():
            index = counter.value
            counter.value += 1
        if index >= len(scores):
            break
        if index == change[0]:
            ctl.set_rho(change[1])
        decision = ctl.decide(scores[index])
        taken.append((decision.ticket, decision.cloud, decision.rho))
    out.put(taken)


@pytest.mark.slow
def test_three_processes_hold_rho_on_one_drifting_stream_of_real_prompts(redis_server, prefix, replay_scores, capsys):
    from bench.budget_replay import window_report

    rho_before, rho_after = 0.3, 0.5
    scores = np.concatenate(list(replay_scores.values())).tolist()
    change = len(scores) // 2
    RedisBudgetStore.from_url(redis_server.url, prefix=prefix, initial=BudgetSettings(rho_before, None)).settings()
    context = multiprocessing.get_context("spawn")
    counter, out = context.Value("i", 0), context.Queue()
    args = (redis_server.url, prefix, scores, (change, rho_after), counter, out)
    started = time.monotonic()
    processes = [context.Process(target=_replica, args=args) for _ in range(3)]
    for p in processes:
        p.start()
    results = [out.get(timeout=300) for _ in processes]
    for p in processes:
        p.join(timeout=30)
        assert p.exitcode == 0
    seconds = time.monotonic() - started
    merged = sorted(entry for taken in results for entry in taken)  # ticket order = the order Redis committed them
    assert [t for t, _, _ in merged] == list(range(1, len(scores) + 1))
    assert min(len(taken) for taken in results) > len(scores) // 10  # all three really served
    cloud = np.array([c for _, c, _ in merged])
    rho = np.array([r for _, _, r in merged])
    first_after = int(np.argmax(rho == rho_after))
    # Each decision reports the ρ its atomic commit enforced, so in commit order ρ changes exactly once.
    assert set(rho[:first_after]) == {rho_before} and set(rho[first_after:]) == {rho_after}
    report = window_report(cloud, rho, [first_after])
    with capsys.disabled():
        print(
            f"\n3 processes, one stream of {len(scores)} real prompts (ρ {rho_before}→{rho_after}), "
            f"{report['windows']} windows of 1,000: max |realised − ρ| {report['max_abs_dev']:.4f}, "
            f"max over {report['max_over']:+.4f}; {len(scores) / seconds:.0f} decisions/s"
        )
    assert report["max_abs_dev"] <= 0.01
    assert report["max_over"] <= 0.02
    sums = np.concatenate([[0], np.cumsum(cloud)])
    straddling = [(sums[s + 1000] - sums[s]) / 1000 for s in range(first_after - 999, first_after)]
    assert max(straddling) <= rho_after + 0.02


@pytest.mark.parametrize("shared", [False, True], ids=["memory", "redis"])
def test_forced_cloud_obeys_the_caps_in_both_stores(redis_server, prefix, shared):
    """A forced cloud call is refused by the window cap (ρ = 0) unless allowed past ρ, and by the cost cap always."""

    def controller(suffix: str) -> BudgetController:
        store = redis_store(redis_server, f"{prefix}{suffix}", rho=0.0, cost_cap=2) if shared else (
            InMemoryBudgetStore(0.0, cost_cap=2))  # fmt: skip
        return BudgetController(store)

    strict = controller(":strict")
    assert [strict.force("cloud").backend for _ in range(2)] == ["edge", "edge"]
    assert strict.force("cloud").reason == "budget" and strict.force("edge").reason == "forced"
    past_rho = controller(":past-rho")
    kept = [past_rho.force("cloud", may_exceed_rho=True) for _ in range(3)]
    assert [(d.backend, d.reason) for d in kept] == [("cloud", "forced")] * 2 + [("edge", "budget")]
    assert past_rho.snapshot()["cloud_calls_last_minute"] == 2
