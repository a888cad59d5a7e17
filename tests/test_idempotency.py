"""Idempotency-Key on POST /generate against a real uvicorn (SQLite store) and two replicas on one Redis."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from backends.base import BackendUnavailable
from gateway.app import create_app
from tests.servers import LiveServer
from tests.standins import HashScorer, InstantBackend, standin_settings

ADMIN = {"Authorization": "Bearer admin-secret"}
BODY = {"prompt": "a paper boat on a pond", "size": "64x64", "num_inference_steps": 1}


class FlakyEdge(InstantBackend):
    """Fails its first call, then answers (a request worth retrying)."""

    async def generate(self, request):
        if self.calls == 0:
            self.calls += 1
            raise BackendUnavailable("the edge hiccupped")
        return await super().generate(request)


def served(tmp_path, edge=None, **overrides) -> tuple[LiveServer, InstantBackend]:
    edge = edge or InstantBackend("edge", delay_s=0.2)
    settings = standin_settings(tmp_path, jobs_db=str(tmp_path / "jobs.sqlite3"), **overrides)
    return LiveServer(create_app(settings, router=HashScorer(), edge=edge, cloud=None)), edge


def decisions(url: str) -> int:
    return httpx.get(f"{url}/admin/budget", headers=ADMIN).json()["decisions"]


def test_same_key_and_body_get_the_first_response_generated_and_counted_once(tmp_path):
    server, edge = served(tmp_path)
    with server:
        url, key = server.url, {"Idempotency-Key": "order-1"}
        first = httpx.post(f"{url}/generate", json=BODY, headers=key)
        again = httpx.post(f"{url}/generate", json=dict(reversed(list(BODY.items()))), headers=key)  # same body
        assert first.status_code == again.status_code == 200
        assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" not in first.headers
        assert again.headers["x-route-backend"] == first.headers["x-route-backend"]
        assert edge.calls == 1 and decisions(url) == 1
        other = httpx.post(f"{url}/generate", json={**BODY, "prompt": "another prompt"}, headers=key)
        assert other.status_code == 422 and "another body" in other.json()["detail"]
        assert httpx.post(f"{url}/generate", json=BODY).status_code == 200  # no key: generated again
        assert edge.calls == 2 and decisions(url) == 2


def test_concurrent_retries_wait_for_the_first_and_a_failure_frees_the_key(tmp_path):
    server, edge = served(tmp_path)
    with server:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                headers = {"Idempotency-Key": "burst"}
                return await asyncio.gather(*(client.post("/generate", json=BODY, headers=headers) for _ in range(8)))

        responses = asyncio.run(burst())
        assert [r.status_code for r in responses] == [200] * 8
        assert len({r.text for r in responses}) == 1 and edge.calls == 1 and decisions(server.url) == 1
        assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 7
    flaky = FlakyEdge("edge")
    (tmp_path / "flaky").mkdir()
    server, _ = served(tmp_path / "flaky", edge=flaky)
    with server:
        headers = {"Idempotency-Key": "retry-me"}
        assert httpx.post(f"{server.url}/generate", json=BODY, headers=headers).status_code == 503
        retried = httpx.post(f"{server.url}/generate", json=BODY, headers=headers)
        assert retried.status_code == 200 and "idempotent-replayed" not in retried.headers
        assert flaky.calls == 2


def test_keys_survive_a_restart_with_sqlite_and_are_scoped_per_client(tmp_path):
    server, edge = served(tmp_path)
    with server:
        first = httpx.post(f"{server.url}/generate", json=BODY, headers={"Idempotency-Key": "k"})
    server, edge = served(tmp_path)
    with server:
        again = httpx.post(f"{server.url}/generate", json=BODY, headers={"Idempotency-Key": "k"})
        assert again.json() == first.json() and edge.calls == 0
        created = httpx.post(f"{server.url}/admin/keys", json={"name": "team"}, headers=ADMIN).json()["key"]
        keyed = httpx.post(
            f"{server.url}/generate", json=BODY, headers={"Idempotency-Key": "k", "Authorization": f"Bearer {created}"}
        )
        assert keyed.status_code == 200 and "idempotent-replayed" not in keyed.headers and edge.calls == 1


def test_replicas_on_one_redis_share_idempotency_keys(tmp_path, redis_server):
    shared = {"redis_url": redis_server.url, "redis_prefix": f"i-{uuid.uuid4().hex[:8]}"}
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    (a, edge_a), (b, edge_b) = served(tmp_path / "a", **shared), served(tmp_path / "b", **shared)
    with a, b:
        headers = {"Idempotency-Key": "across"}
        first = httpx.post(f"{a.url}/generate", json=BODY, headers=headers)
        again = httpx.post(f"{b.url}/generate", json=BODY, headers=headers)
        assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
        assert edge_a.calls + edge_b.calls == 1
        assert httpx.post(f"{b.url}/generate", json={**BODY, "n": 2}, headers=headers).status_code == 422
