"""The ρ race: a decision reports the ρ its atomic commit enforced, not the ρ read before it.

Another replica changes ρ between the controller's read of the window state and its commit; the decision
must carry the new ρ (the one the commit counted it under), on the in-memory store and on Redis.
"""

from __future__ import annotations

import uuid

from gateway.budget import BudgetController, BudgetSettings, InMemoryBudgetStore, RedisBudgetStore


class ChangesRhoAfterRead:
    """A store proxy: right after the controller reads the state, 'another replica' sets ρ."""

    def __init__(self, store, other, new_rho: float):
        self.store, self.other, self.new_rho = store, other, new_rho

    def state(self, now):
        state = self.store.state(now)
        self.other.set_rho(self.new_rho)
        return state

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_memory_commit_reports_the_rho_it_enforced():
    store = InMemoryBudgetStore(0.3)
    ctl = BudgetController(ChangesRhoAfterRead(store, store, 0.6), min_scores=1)
    decision = ctl.decide(0.9)
    assert decision.rho == 0.6  # the read said 0.3; the commit counted it under 0.6
    assert store.state(0).allowance_micro == 600_000


def test_redis_commit_reports_the_rho_it_enforced(redis_server):
    prefix = f"race-{uuid.uuid4().hex[:8]}"
    mine = RedisBudgetStore.from_url(redis_server.url, prefix=prefix, initial=BudgetSettings(0.3, None))
    other = RedisBudgetStore.from_url(redis_server.url, prefix=prefix, initial=BudgetSettings(0.3, None))
    ctl = BudgetController(ChangesRhoAfterRead(mine, other, 0.45), min_scores=1)
    decisions = [ctl.decide(0.9)]
    other.set_rho(0.45)  # no change this time: both agree
    decisions.append(BudgetController(mine, min_scores=1).decide(0.9))
    assert [d.rho for d in decisions] == [0.45, 0.45]
    assert mine.state(0).allowance_micro == 900_000


def test_a_forced_request_reports_the_rho_its_count_enforced(tmp_path):
    """A forced cloud call is counted (through the caps) before the cloud is called; an admin change of ρ that lands
    while the call runs applies to the next request, and each reports the ρ its own count enforced."""
    import httpx

    from gateway.app import create_app
    from tests.servers import LiveServer
    from tests.standins import HashScorer, InstantBackend, standin_settings

    class ChangesRho(InstantBackend):
        async def generate(self, request):
            if app.state.budget.rho == 0.3:
                app.state.budget.set_rho(0.55)  # an admin change lands while the first cloud call runs
            return await super().generate(request)

    app = create_app(standin_settings(tmp_path), router=HashScorer(), edge=InstantBackend("edge"),
                     cloud=ChangesRho("cloud"))  # fmt: skip
    with LiveServer(app) as server:
        body = {"prompt": "a forced one", "size": "64x64", "route": "cloud"}
        first = httpx.post(f"{server.url}/generate", json=body).json()["route"]
        second = httpx.post(f"{server.url}/generate", json=body).json()["route"]
    assert (first["backend"], first["reason"], first["rho"]) == ("cloud", "forced", 0.3)
    assert (second["backend"], second["reason"], second["rho"]) == ("cloud", "forced", 0.55)
