"""Client API keys against a real uvicorn (and a real redis-server): 401s, per-key 429s, arms, private default,
per-key cloud share over a 2,000-request replay, keys and counters shared by two replicas through Redis."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.keys import ApiKey, hash_key, open_warning
from tests.servers import LiveServer
from tests.standins import HashScorer, InstantBackend, real_prompts, standin_settings

ADMIN = {"Authorization": "Bearer admin-secret"}
FAST = {"size": "64x64", "num_inference_steps": 1}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def gateway(tmp_path, **overrides) -> LiveServer:
    app = create_app(
        standin_settings(tmp_path, **overrides), router=HashScorer(), edge=InstantBackend("edge"),
        cloud=InstantBackend("cloud"),
    )  # fmt: skip
    return LiveServer(app)


def new_key(url: str, name: str, **limits) -> str:
    response = httpx.post(f"{url}/admin/keys", json={"name": name, **limits}, headers=ADMIN)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == name and body["key"].startswith("rt2i_") and "key_sha256" not in body
    return body["key"]


def test_missing_wrong_and_revoked_keys_get_401(tmp_path):
    keys_file = tmp_path / "keys.json"
    with gateway(tmp_path, require_api_key=True, api_keys_file=str(keys_file)) as server:
        url = server.url
        key = new_key(url, "team-a")
        assert key not in keys_file.read_text() and hash_key(key) in keys_file.read_text()  # only the hash is stored
        listed = httpx.get(f"{url}/admin/keys", headers=ADMIN).json()
        assert [k["name"] for k in listed["keys"]] == ["team-a"] and listed["required"] is True
        assert key not in str(listed) and hash_key(key) not in str(listed)
        body = {"prompt": "a red bicycle", **FAST}
        missing = httpx.post(f"{url}/generate", json=body)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert httpx.post(f"{url}/generate", json=body, headers=bearer(key + "x")).status_code == 401
        assert httpx.post(f"{url}/route", json={"prompt": "x"}).status_code == 401
        assert httpx.post(f"{url}/v1/images/generations", json={"prompt": "x"}).status_code == 401
        assert httpx.post(f"{url}/generate", json=body, headers=bearer(key)).status_code == 200
        assert httpx.post(f"{url}/admin/keys", json={"name": "team-a"}, headers=ADMIN).status_code == 409
        assert httpx.delete(f"{url}/admin/keys/team-a", headers=ADMIN).json() == {"name": "team-a", "revoked": True}
        assert httpx.post(f"{url}/generate", json=body, headers=bearer(key)).status_code == 401
        assert httpx.delete(f"{url}/admin/keys/team-a", headers=ADMIN).status_code == 404
        assert httpx.post(f"{url}/admin/keys", json={"name": "x"}).status_code == 401  # admin token still needed
        assert httpx.get(f"{url}/healthz").status_code == 200  # ops endpoints stay open
        kept = new_key(url, "team-b")
    # A restarted gateway reads the file: a key created before the restart still works, a revoked one does not.
    with gateway(tmp_path, require_api_key=True, api_keys_file=str(keys_file)) as server:
        assert [k["name"] for k in httpx.get(f"{server.url}/admin/keys", headers=ADMIN).json()["keys"]] == ["team-b"]
        assert httpx.post(f"{server.url}/generate", json=body, headers=bearer(kept)).status_code == 200
        assert httpx.post(f"{server.url}/generate", json=body, headers=bearer(key)).status_code == 401


def test_configured_keys_from_settings_and_open_gateway(tmp_path):
    configured = ApiKey(name="ops", key_sha256=hash_key("rt2i_configured-key"), requests_per_minute=100)
    with gateway(tmp_path, require_api_key=True, api_keys=[configured]) as server:
        body = {"prompt": "a cat", **FAST}
        assert httpx.post(f"{server.url}/generate", json=body, headers=bearer("rt2i_configured-key")).status_code == 200
        assert httpx.delete(f"{server.url}/admin/keys/ops", headers=ADMIN).status_code == 409
    with gateway(tmp_path) as server:  # no keys, not required: open as before, an unknown key is ignored
        assert httpx.post(f"{server.url}/generate", json={"prompt": "a cat", **FAST}).status_code == 200
        assert (
            httpx.post(
                f"{server.url}/generate", json={"prompt": "a cat", **FAST}, headers=bearer("sk-anything")
            ).status_code
            == 200
        )


def test_open_warning_only_for_open_non_loopback_binds():
    assert open_warning("0.0.0.0", required=False) and "ROUTET2I_REQUIRE_API_KEY" in open_warning("::", False)
    assert open_warning("10.1.2.3", required=False)
    assert open_warning("127.0.0.1", required=False) is None and open_warning("localhost", False) is None
    assert open_warning("::1", required=False) is None and open_warning("0.0.0.0", required=True) is None


@pytest.mark.parametrize(
    ("host", "required", "warned"),
    [("0.0.0.0", "false", True), ("0.0.0.0", "true", False), ("127.0.0.1", "false", False)],
)
def test_serve_prints_the_open_warning(monkeypatch, capsys, tmp_path, host, required, warned):
    import uvicorn

    from gateway import cli

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(kw["host"]))  # start nothing
    for name in [k for k in os.environ if k.startswith("ROUTET2I_")]:
        monkeypatch.delenv(name)
    for name, value in {"EDGE_MODEL": str(tmp_path), "CLOUD_KIND": "none", "STATE_FILE": str(tmp_path / "s.json"),
                        "REQUIRE_API_KEY": required}.items():  # fmt: skip
        monkeypatch.setenv(f"ROUTET2I_{name}", value)
    assert cli.main(["serve", "--host", host]) == 0 and served == [host]
    assert ("WARNING: the gateway is open" in capsys.readouterr().err) is warned


def test_rate_limit_429_for_one_key_while_another_goes_on(tmp_path):
    with gateway(tmp_path, require_api_key=True) as server:
        url = server.url
        slow, free = new_key(url, "slow", requests_per_minute=3), new_key(url, "free")
        body = {"prompt": "a lighthouse", **FAST}
        if time.time() % 60 > 57:  # the per-minute window is the clock minute: do not straddle it
            time.sleep(60 - time.time() % 60 + 0.1)
        codes = [httpx.post(f"{url}/generate", json=body, headers=bearer(slow)).status_code for _ in range(3)]
        assert codes == [200, 200, 200]
        refused = httpx.post(f"{url}/generate", json=body, headers=bearer(slow))
        assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60
        assert "3 requests/min" in refused.json()["detail"]
        assert [httpx.post(f"{url}/generate", json=body, headers=bearer(free)).status_code for _ in range(10)] == [
            200
        ] * 10
        daily = new_key(url, "daily", images_per_day=3)
        assert httpx.post(f"{url}/generate", json={**body, "n": 2}, headers=bearer(daily)).status_code == 200
        over = httpx.post(f"{url}/generate", json={**body, "n": 2}, headers=bearer(daily))
        assert over.status_code == 429 and int(over.headers["retry-after"]) >= 1
        assert httpx.post(f"{url}/generate", json=body, headers=bearer(daily)).status_code == 200  # the 3rd image
        usage = {k["name"]: k["usage"] for k in httpx.get(f"{url}/admin/keys", headers=ADMIN).json()["keys"]}
        assert usage["slow"]["requests_this_minute"] == 3 and usage["daily"]["images_today"] == 3
        metrics = httpx.get(f"{url}/metrics").text
        assert 'routet2i_client_requests_total{key="slow",outcome="rate_limited"} 1.0' in metrics
        assert 'routet2i_client_requests_total{key="daily",outcome="quota_exceeded"} 1.0' in metrics
        assert slow not in metrics and free not in metrics


def test_allowed_arms_and_private_default(tmp_path):
    with gateway(tmp_path, require_api_key=True, rho=1.0) as server:
        url = server.url
        edge_only, private = new_key(url, "edge-only", allowed_arms=["edge"]), new_key(url, "secret", private=True)
        body = {"prompt": "a quiet harbour at dawn", **FAST}
        forced = httpx.post(f"{url}/generate", json={**body, "route": "cloud"}, headers=bearer(edge_only))
        assert forced.status_code == 403
        routes = [
            httpx.post(f"{url}/generate", json={**body, "prompt": f"scene {i}"}, headers=bearer(edge_only)).json()
            for i in range(30)
        ]
        assert {r["route"]["backend"] for r in routes} == {"edge"}
        assert "budget" in {r["route"]["reason"] for r in routes}  # ρ = 1: the model wanted the cloud for some
        kept = httpx.post(f"{url}/generate", json=body, headers=bearer(private)).json()["route"]
        assert (kept["backend"], kept["reason"]) == ("edge", "private")
        opted_out = httpx.post(f"{url}/generate", json={**body, "private": False}, headers=bearer(private)).json()
        assert opted_out["route"]["reason"] != "private"


async def _replay(url: str, prompts: list[str], keys: dict[str, str], concurrency: int = 16) -> list[tuple]:
    """Send every prompt once per key, `concurrency` at a time; (key name, backend, reason) per response."""
    jobs = [(name, prompt) for prompt in prompts for name in keys]
    results: list[tuple] = []
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(name: str, prompt: str) -> None:
            async with limit:
                response = await client.post("/generate", json={"prompt": prompt, **FAST}, headers=bearer(keys[name]))
                assert response.status_code == 200, response.text
                route = response.json()["route"]
                results.append((name, route["backend"], route["reason"]))

        await asyncio.gather(*(one(n, p) for n, p in jobs))
    return results


def _cloud_share_replay(tmp_path, extra: dict) -> None:
    share, rho = 0.1, 0.3
    with gateway(tmp_path, require_api_key=True, rho=rho, **extra) as server:
        keys = {"capped": new_key(server.url, "capped", max_cloud_share=share), "plain": new_key(server.url, "plain")}
        prompts = real_prompts(2000)
        started = time.monotonic()
        results = asyncio.run(_replay(server.url, prompts, keys))
        seconds = time.monotonic() - started
        cloud = Counter(name for name, backend, _ in results if backend == "cloud")
        capped_share, plain_share = cloud["capped"] / len(prompts), cloud["plain"] / len(prompts)
        refused = sum(1 for name, _, reason in results if name == "capped" and reason == "budget")
        print(
            f"\nper-key share replay ({'redis' if 'redis_url' in extra else 'memory'}): {len(results)} requests in "
            f"{seconds:.1f} s; capped key {capped_share:.4f} (max {share}), plain key {plain_share:.4f}, "
            f"all {(cloud['capped'] + cloud['plain']) / len(results):.4f} (ρ {rho}); {refused} refused for the key"
        )
        assert abs(capped_share - share) <= 0.01  # the cap binds: the key gets its share and not one point more
        assert refused > 0
        assert (cloud["capped"] + cloud["plain"]) / len(results) <= rho + 0.01
        samples = {
            (s.labels.get("key"), s.labels.get("backend")): s.value
            for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)
            for s in family.samples
            if s.name == "routet2i_client_decisions_total"
        }
        assert samples[("capped", "cloud")] == cloud["capped"]


@pytest.mark.slow
def test_per_key_cloud_share_holds_over_a_2000_request_replay(tmp_path, capsys):
    with capsys.disabled():
        _cloud_share_replay(tmp_path, {})


@pytest.mark.slow
def test_per_key_cloud_share_holds_with_counters_in_redis(tmp_path, redis_server, capsys):
    with capsys.disabled():
        _cloud_share_replay(tmp_path, {"redis_url": redis_server.url, "redis_prefix": f"k-{uuid.uuid4().hex[:8]}"})


def test_keys_and_counters_are_shared_by_replicas_through_redis(tmp_path, redis_server):
    shared = {"require_api_key": True, "redis_url": redis_server.url, "redis_prefix": f"k-{uuid.uuid4().hex[:8]}"}
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    with gateway(tmp_path / "a", **shared) as a, gateway(tmp_path / "b", **shared) as b:
        key = new_key(a.url, "shared", requests_per_minute=4)
        body = {"prompt": "two replicas", **FAST}
        if time.time() % 60 > 57:
            time.sleep(60 - time.time() % 60 + 0.1)
        codes = [httpx.post(f"{u}/generate", json=body, headers=bearer(key)).status_code for u in (a.url, b.url) * 3]
        assert codes == [200, 200, 200, 200, 429, 429]  # one limit across both replicas
        assert [k["name"] for k in httpx.get(f"{b.url}/admin/keys", headers=ADMIN).json()["keys"]] == ["shared"]
        assert httpx.delete(f"{b.url}/admin/keys/shared", headers=ADMIN).status_code == 200
        assert httpx.post(f"{a.url}/generate", json=body, headers=bearer(key)).status_code == 401  # revoked everywhere
