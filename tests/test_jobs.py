"""Async jobs against a real uvicorn, a real local webhook receiver and (SQLite) the store on disk:
lifecycle, signed webhooks with retries, cancel, idempotency, ownership by key."""

from __future__ import annotations

import time

import httpx
import pytest

from gateway.app import create_app
from tests.servers import LiveServer
from tests.standins import HashScorer, InstantBackend, standin_settings
from tests.webhook_receiver import Receiver

SECRET = "whsec-test"
ADMIN = {"Authorization": "Bearer admin-secret"}
BODY = {"prompt": "a lantern in the fog", "size": "64x64", "num_inference_steps": 1}


def gateway(tmp_path, edge=None, **overrides) -> tuple[LiveServer, InstantBackend]:
    edge = edge or InstantBackend("edge")
    settings = standin_settings(
        tmp_path, jobs_db=str(tmp_path / "jobs.sqlite3"), webhook_secret=SECRET, webhook_backoff_s=0.1,
        jobs_lease_s=2.0, **overrides,
    )  # fmt: skip
    return LiveServer(create_app(settings, router=HashScorer(), edge=edge, cloud=InstantBackend("cloud"))), edge


def wait_for(url: str, job_id: str, *, until=("succeeded", "failed", "canceled"), timeout_s: float = 30, **kw) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/v1/jobs/{job_id}", **kw).json()
        if job["status"] in until and (job.get("webhook") is None or job["webhook"]["state"] != "pending"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout_s} s: {job}")


def test_a_job_runs_once_and_its_signed_webhook_arrives(tmp_path):
    receiver = Receiver(SECRET)
    server, edge = gateway(tmp_path)
    with LiveServer(receiver.app()) as hook, server:
        url = server.url
        accepted = httpx.post(f"{url}/v1/jobs", json={**BODY, "seed": 5, "webhook_url": f"{hook.url}/hook"})
        assert accepted.status_code == 202
        job_id = accepted.json()["id"]
        assert accepted.json() == {"id": job_id, "status": "queued", "status_url": f"{url}/v1/jobs/{job_id}"}
        assert accepted.headers["location"] == accepted.json()["status_url"]
        job = wait_for(url, job_id)
        assert job["status"] == "succeeded" and job["runs"] == 1
        assert httpx.get(f"{url}/admin/budget", headers=ADMIN).json()["decisions"] == 1  # generated once
        result = job["result"]
        assert set(result) == {"created", "data", "seed", "route"} and result["seed"] == 5 and len(result["data"]) == 1
        assert "prompt" not in str({k: v for k, v in job.items() if k != "result"})  # the prompt is not shown back
        [delivery] = receiver.deliveries
        assert delivery.valid and delivery.job_id == job_id and delivery.attempt == 1
        assert delivery.body["status"] == "succeeded" and delivery.body["result"] == result
        assert [a["status_code"] for a in job["webhook"]["attempts"]] == [204]
        assert job["webhook"]["state"] == "delivered"
        assert httpx.get(f"{url}/v1/jobs/nope").status_code == 404
        assert httpx.delete(f"{url}/v1/jobs/{job_id}").status_code == 409  # finished: nothing to cancel
        no_secret = httpx.post(f"{url}/v1/jobs", json={**BODY, "webhook_url": "ftp://x"})
        assert no_secret.status_code == 422


def test_webhook_retries_back_off_and_every_attempt_is_in_the_job(tmp_path):
    receiver = Receiver(SECRET, fail_first=2)
    server, _ = gateway(tmp_path)
    with LiveServer(receiver.app()) as hook, server:
        job_id = httpx.post(f"{server.url}/v1/jobs", json={**BODY, "webhook_url": f"{hook.url}/hook"}).json()["id"]
        job = wait_for(server.url, job_id)
        attempts = job["webhook"]["attempts"]
        assert [a["status_code"] for a in attempts] == [500, 500, 204] and job["webhook"]["state"] == "delivered"
        gaps = [b["at"] - a["at"] for a, b in zip(attempts, attempts[1:], strict=False)]
        assert gaps[0] >= 0.09 and gaps[1] >= 0.19  # 0.1 s, then 0.2 s
        assert [d.attempt for d in receiver.deliveries] == [1, 2, 3] and all(d.valid for d in receiver.deliveries)


def test_cancel_a_queued_job_and_it_never_runs(tmp_path):
    slow = InstantBackend("edge", delay_s=0.5)
    server, edge = gateway(tmp_path, edge=slow, jobs_concurrency=1)
    with server:
        url = server.url
        ids = [httpx.post(f"{url}/v1/jobs", json={**BODY, "route": "edge", "seed": i}).json()["id"] for i in range(3)]
        canceled = httpx.delete(f"{url}/v1/jobs/{ids[2]}")
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
        assert [wait_for(url, i)["status"] for i in ids] == ["succeeded", "succeeded", "canceled"]
        time.sleep(0.3)
        assert slow.calls == 2
        assert httpx.get(f"{url}/admin/budget", headers=ADMIN).json()["decisions"] == 2  # the canceled one: not counted


def test_idempotent_submission_and_jobs_belong_to_their_key(tmp_path):
    server, edge = gateway(tmp_path, require_api_key=True)
    with server:
        url = server.url
        keys = [httpx.post(f"{url}/admin/keys", json={"name": n}, headers=ADMIN).json()["key"] for n in ("a", "b")]
        a, b = ({"Authorization": f"Bearer {k}"} for k in keys)
        assert httpx.post(f"{url}/v1/jobs", json=BODY).status_code == 401
        first = httpx.post(f"{url}/v1/jobs", json=BODY, headers={**a, "Idempotency-Key": "j1"})
        again = httpx.post(f"{url}/v1/jobs", json=BODY, headers={**a, "Idempotency-Key": "j1"})
        assert first.status_code == again.status_code == 202 and first.json() == again.json()
        other = httpx.post(f"{url}/v1/jobs", json={**BODY, "n": 2}, headers={**a, "Idempotency-Key": "j1"})
        assert other.status_code == 422
        job_id = first.json()["id"]
        assert wait_for(url, job_id, headers=a)["status"] == "succeeded"
        assert httpx.get(f"{url}/admin/budget", headers=ADMIN).json()["decisions"] == 1  # one job, not two
        assert httpx.get(f"{url}/v1/jobs/{job_id}", headers=b).status_code == 404  # b cannot see a's job
        assert httpx.delete(f"{url}/v1/jobs/{job_id}", headers=b).status_code == 404


def test_jobs_persist_in_sqlite_across_a_restart(tmp_path):
    server, _ = gateway(tmp_path, edge=InstantBackend("edge", delay_s=0.05), jobs_concurrency=1)
    with server:
        ids = [httpx.post(f"{server.url}/v1/jobs", json={**BODY, "seed": i}).json()["id"] for i in range(20)]
    # stopped with jobs still queued: the next process runs them, and finished ones stay finished
    server, edge = gateway(tmp_path)
    with server:
        jobs = [wait_for(server.url, i) for i in ids]
        assert {j["status"] for j in jobs} == {"succeeded"}
        # a job running at the stop was given back and ran again here; the others ran once
        assert sum(j["runs"] for j in jobs) <= len(jobs) + 1
        assert [j["result"]["seed"] for j in jobs] == list(range(20))


@pytest.fixture(autouse=True)
def _no_stray_db(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # a default jobs_db would land here, not in the repository


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    from gateway.jobs.store import RedisJobStore, SqliteJobStore

    if request.param == "sqlite":
        return SqliteJobStore(str(tmp_path / "store.sqlite3"))
    import redis

    server = request.getfixturevalue("redis_server")
    return RedisJobStore(redis.Redis.from_url(server.url), prefix=f"t-{time.time_ns()}")


def test_a_claimed_job_gets_one_outcome_and_a_dead_workers_job_is_taken_over(store):
    from functools import partial

    from gateway.jobs import model

    job = model.new_job({"prompt": "x"}, client=None, webhook_url=None, now=100.0)
    store.create(job)
    claim = partial(model.claim, now=100.0, lease_s=10)
    assert store.update(job["id"], partial(claim, owner="a")) is True
    assert store.update(job["id"], partial(claim, owner="b")) is False  # a holds it
    # a dies; its lease runs out; b takes the job over
    assert store.update(job["id"], partial(model.claim, owner="b", now=111.0, lease_s=10)) is True
    late = partial(model.complete, now=112.0, ttl_s=60)
    assert store.update(job["id"], partial(late, owner="a", result={"from": "a"})) is False  # a's result is dropped
    assert store.update(job["id"], partial(late, owner="b", result={"from": "b"})) is True
    assert store.update(job["id"], partial(late, owner="b", result={"again": 1})) is False  # never twice
    done = store.get(job["id"])
    assert (done["status"], done["result"], done["runs"]) == ("succeeded", {"from": "b"}, 2)
    assert store.update(job["id"], partial(model.claim, owner="c", now=500.0, lease_s=10)) is False  # finished
    assert [j["id"] for j in store.active_jobs()] == []


def test_finished_jobs_expire_after_their_ttl(store):
    from functools import partial

    from gateway.jobs import model

    job = model.new_job({"prompt": "x"}, client=None, webhook_url=None)
    store.create(job)
    store.update(job["id"], partial(model.cancel, now=time.time(), ttl_s=1.0))
    assert store.get(job["id"])["status"] == "canceled"
    if hasattr(store, "client"):
        assert 0 < store.client.ttl(store._key(job["id"])) <= 1  # Redis expires it by itself
        time.sleep(1.2)
    else:
        assert store.purge(time.time() + 2) == 1
    assert store.get(job["id"]) is None
