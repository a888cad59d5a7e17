"""The exact cache: seeded requests served again without calling any backend, through a real gateway on
127.0.0.1 (counting stand-in backends), in memory and in a real redis-server shared by two gateway processes."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import redis
from PIL import Image

from backends.base import GenerationRequest, GenerationResult, png_bytes
from demo.processes import free_port, spawn, stop, wait_until_ready
from gateway.app import create_app
from gateway.cache import CachedImages, MemoryImageCache, cache_key
from tests.servers import LiveServer, RedisServer
from tests.standins import HashScorer, InstantBackend, standin_settings
from tests.test_gateway import ADMIN, sample, scrape

SEEDED = {"prompt": "a lighthouse at dusk", "size": "64x64", "seed": 1234}


class CountingBackend(InstantBackend):
    """Counts its calls; every call draws a different image, so a regenerated image never equals a cached one."""

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        await super().generate(request)
        images = [Image.new("RGB", (8, 8), (self.calls % 256, i, 0)) for i in range(request.n)]
        seed = request.seed if request.seed is not None else 7
        return GenerationResult(images=images, seed=seed, backend=self.name, model=f"counting-{self.name}")


def entry(size: int, tag: int = 0) -> CachedImages:
    return CachedImages((bytes([tag]) * size,), seed=1, model="m", backend="edge")


# ---- pieces --------------------------------------------------------------------------------------------------------
def test_key_covers_every_field_and_needs_a_seed():
    base = GenerationRequest(prompt="p", negative_prompt="n", width=64, height=64, num_inference_steps=4,
                             guidance_scale=5.0, seed=1)  # fmt: skip
    key = cache_key(base, "edge:sd")
    assert key == cache_key(replace(base), "edge:sd") and len(key) == 64
    changed = [replace(base, prompt="p "), replace(base, negative_prompt="m"), replace(base, width=72),
               replace(base, height=72), replace(base, n=2), replace(base, num_inference_steps=5),
               replace(base, guidance_scale=5.5), replace(base, seed=2)]  # fmt: skip
    keys = {cache_key(r, "edge:sd") for r in changed} | {
        cache_key(base, "cloud:x"),
        cache_key(base, "edge:sd", private=True),
    }
    assert key not in keys and len(keys) == len(changed) + 2
    unset = replace(base, num_inference_steps=None)
    assert cache_key(unset, "edge:sd", default_steps=4) == key  # the edge's default is the same work
    with pytest.raises(ValueError, match="seeded"):
        cache_key(replace(base, seed=None), "edge:sd")


def test_entry_bytes_round_trip():
    images = CachedImages((png_bytes(Image.new("RGB", (4, 4))), b"\x89PNG second"), seed=9, model="sd", backend="cloud")
    assert CachedImages.decode(images.encode()) == images
    for broken in (b"", b"\x00\x00\x00\x05{}", images.encode()[:-1]):
        with pytest.raises(ValueError, match="not a cache entry"):
            CachedImages.decode(broken)


def test_memory_cache_expires_after_the_ttl():
    now = [0.0]
    cache = MemoryImageCache(max_bytes=1000, ttl_s=10, clock=lambda: now[0])
    cache.set("a", entry(100))
    now[0] = 9.9
    assert cache.get("a") == entry(100)
    now[0] = 10.0
    assert cache.get("a") is None and cache.bytes == 0 and len(cache) == 0


def test_memory_cache_evicts_least_recently_used_under_the_byte_bound():
    cache = MemoryImageCache(max_bytes=300, ttl_s=60)
    for key in "abc":
        assert cache.set(key, entry(100, ord(key)))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.set("d", entry(150))
    assert cache.get("b") is None and cache.get("c") is None  # the two least recently used made room
    assert cache.get("a") is not None and cache.get("d") is not None and cache.bytes == 250
    assert not cache.set("huge", entry(301)) and cache.get("huge") is None and cache.bytes == 250


# ---- through the gateway -------------------------------------------------------------------------------------------
@pytest.fixture
def gateway(tmp_path):
    edge, cloud = CountingBackend("edge"), CountingBackend("cloud")
    app = create_app(standin_settings(tmp_path, rho=1.0, cache_ttl_s=60), router=HashScorer(), edge=edge, cloud=cloud)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        server.edge, server.cloud, server.http = edge, cloud, http
        yield server


def post(http: httpx.Client, **body) -> httpx.Response:
    response = http.post("/generate", json=body)
    assert response.status_code == 200, response.text
    return response


def budget(http: httpx.Client) -> dict:
    return http.get("/admin/budget", headers=ADMIN).json()


def cache_count(url: str, result: str) -> float:
    return sample(scrape(url), "routet2i_cache_requests_total", result=result)


def test_a_repeated_seeded_request_is_served_from_the_cache(gateway):
    http = gateway.http
    first = post(http, **SEEDED, route="edge")
    assert first.json()["route"]["reason"] == "forced" and gateway.edge.calls == 1
    again = post(http, **SEEDED, route="edge")
    assert gateway.edge.calls == 1 and gateway.cloud.calls == 0  # no backend was called
    assert again.headers["X-Route-Reason"] == "cache" and again.json()["route"]["reason"] == "cache"
    assert again.headers["X-Route-Backend"] == "edge" and again.json()["route"]["backend"] == "edge"
    assert again.json()["data"] == first.json()["data"] and again.json()["seed"] == 1234
    other_seed = post(http, **{**SEEDED, "seed": 1235}, route="edge")
    assert gateway.edge.calls == 2 and other_seed.json()["data"] != first.json()["data"]
    metrics = scrape(gateway.url)
    assert sample(metrics, "routet2i_cache_requests_total", result="hit") == 1
    assert sample(metrics, "routet2i_cache_requests_total", result="miss") == 2
    assert sample(metrics, "routet2i_requests_total", backend="edge", reason="cache", status="200") == 1
    assert sample(metrics, "routet2i_cache_bytes") > 0


def test_unseeded_and_opted_out_requests_never_touch_the_cache(gateway):
    http = gateway.http
    unseeded = {"prompt": "a lighthouse at dusk", "size": "64x64", "route": "edge"}
    answers = [post(http, **unseeded).json() for _ in range(2)]
    assert gateway.edge.calls == 2 and all(a["route"]["reason"] == "forced" for a in answers)
    assert answers[0]["data"] != answers[1]["data"]
    post(http, **SEEDED, route="edge", cache=False)
    opted_out = post(http, **SEEDED, route="edge", cache=False)
    assert gateway.edge.calls == 4 and opted_out.headers["X-Route-Reason"] == "forced"
    post(http, **SEEDED, route="edge")  # the opted-out ones stored nothing: a miss
    assert gateway.edge.calls == 5
    assert cache_count(gateway.url, "bypass") == 4 and cache_count(gateway.url, "hit") == 0


def test_a_cloud_hit_is_not_a_cloud_call_against_the_budget(gateway):
    http = gateway.http
    prompt = next(p for p in (f"cloud prompt {i}" for i in range(100)) if HashScorer().score([p]).prs[0] < 0.5)
    first = post(http, **{**SEEDED, "prompt": prompt})
    assert first.json()["route"]["backend"] == "cloud" and first.json()["route"]["reason"] == "model"
    before = budget(http)
    assert before["cloud_calls"] == 1 and before["cloud_calls_last_minute"] == 1
    hits = [post(http, **{**SEEDED, "prompt": prompt}) for _ in range(3)] + [
        post(http, **{**SEEDED, "prompt": prompt}, route="cloud")  # a forced one too: same arm, same key
    ]
    assert gateway.cloud.calls == 1 and gateway.edge.calls == 0
    assert [(h.json()["route"]["backend"], h.json()["route"]["reason"]) for h in hits] == [("cloud", "cache")] * 4
    assert all(h.json()["data"] == first.json()["data"] for h in hits)
    after = budget(http)
    assert (after["cloud_calls"], after["cloud_calls_last_minute"]) == (1, 1)  # the budget's cloud counters held
    assert after["decisions"] == before["decisions"] + 4  # each hit is a zero-cost request in the window
    assert cache_count(gateway.url, "hit") == 4


def test_private_requests_have_their_own_entries(gateway):
    http = gateway.http
    post(http, **SEEDED, route="edge")
    private = post(http, **SEEDED, private=True)
    assert private.json()["route"]["reason"] == "private" and gateway.edge.calls == 2  # public entry not served
    again = post(http, **SEEDED, private=True)
    assert again.json()["route"]["reason"] == "cache" and again.json()["data"] == private.json()["data"]
    assert gateway.edge.calls == 2 and budget(http)["decisions"] == 3


def test_entries_expire_and_the_byte_bound_holds(tmp_path):
    edge = CountingBackend("edge")
    size = len(png_bytes(Image.new("RGB", (8, 8), (1, 0, 0))))
    settings = standin_settings(tmp_path, cache_ttl_s=0.5, cache_max_bytes=2 * size + size // 2)
    app = create_app(settings, router=HashScorer(), edge=edge, cloud=None)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        for seed in (1, 2, 3):  # room for two: seed 1's entry is evicted
            post(http, **{**SEEDED, "seed": seed}, route="edge")
        post(http, **{**SEEDED, "seed": 3}, route="edge")
        assert edge.calls == 3
        post(http, **{**SEEDED, "seed": 1}, route="edge")
        assert edge.calls == 4
        assert 0 < sample(scrape(server.url), "routet2i_cache_bytes") <= settings.cache_max_bytes
        time.sleep(0.6)
        post(http, **{**SEEDED, "seed": 1}, route="edge")  # expired
        assert edge.calls == 5


def test_cache_disabled_calls_the_backend_every_time(tmp_path):
    edge = CountingBackend("edge")
    app = create_app(standin_settings(tmp_path, cache_enabled=False), router=HashScorer(), edge=edge, cloud=None)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        reasons = [post(http, **SEEDED, route="edge").headers["X-Route-Reason"] for _ in range(2)]
        assert reasons == ["forced", "forced"] and edge.calls == 2
        assert cache_count(server.url, "bypass") == 0


# ---- Redis: shared by two gateway processes ------------------------------------------------------------------------
def gateway_process(root: Path, name: str, redis_url: str, log: Path) -> tuple[str, object]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTET2I_")}
    env.update(ROUTET2I_REDIS_URL=redis_url, ROUTET2I_REDIS_PREFIX="cachetest", ROUTET2I_CLOUD_KIND="none",
               ROUTET2I_STATE_FILE=str(root / f"{name}.json"), ROUTET2I_JOBS_DB=str(root / f"{name}.sqlite3"),
               ROUTET2I_ADMIN_TOKEN="admin-secret", ROUTET2I_RHO="1.0", STANDIN_LOG=str(log))  # fmt: skip
    command = [sys.executable, "-m", "uvicorn", "tests.standin_app:app", "--factory", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning"]  # fmt: skip
    process = spawn(command, env=env, log=root / f"{name}.log")
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(url, process, timeout_s=90, log=root / f"{name}.log")
    return url, process


def test_redis_cache_is_shared_by_two_gateway_processes(tmp_path):
    server = RedisServer(tmp_path).start()
    generated = tmp_path / "generated.log"  # one line per generation, by either process
    processes = []
    try:
        a, pa = gateway_process(tmp_path, "a", server.url, generated)
        processes.append(pa)
        b, pb = gateway_process(tmp_path, "b", server.url, generated)
        processes.append(pb)
        first = httpx.post(f"{a}/generate", json={**SEEDED, "route": "cloud"}, timeout=30)
        assert first.status_code == 200 and first.json()["route"]["reason"] == "forced"
        hit = httpx.post(f"{b}/generate", json={**SEEDED, "route": "cloud"}, timeout=30)
        assert hit.status_code == 200 and hit.headers["X-Route-Reason"] == "cache", hit.text
        assert hit.json()["route"]["backend"] == "cloud" and hit.json()["data"] == first.json()["data"]
        assert generated.read_text().splitlines() == ["1234"]  # generated once, by A
        keys = redis.Redis.from_url(server.url).keys("{cachetest}:cache:*")
        assert len(keys) == 1

        private = {**SEEDED, "prompt": "a private prompt", "private": True}
        assert httpx.post(f"{a}/generate", json=private, timeout=30).json()["route"]["reason"] == "private"
        assert httpx.post(f"{a}/generate", json=private, timeout=30).json()["route"]["reason"] == "cache"
        assert httpx.post(f"{b}/generate", json=private, timeout=30).json()["route"]["reason"] == "private"
        assert len(generated.read_text().splitlines()) == 3  # private entries stay in each process' memory
        assert len(redis.Redis.from_url(server.url).keys("{cachetest}:cache:*")) == 1  # never in Redis
        ttl = redis.Redis.from_url(server.url).ttl(keys[0])
        assert 0 < ttl <= 86_400

        server.stop()  # Redis gone: the cache misses, nothing fails
        again = httpx.post(f"{b}/generate", json={**SEEDED, "route": "edge"}, timeout=30)
        assert again.status_code == 200 and again.json()["route"]["reason"] != "cache"
    finally:
        stop(*processes)
        server.stop()
