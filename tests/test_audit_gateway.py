"""Issue 15, gateway side: one regression test per finding of the outside audit, against the real gateway on
uvicorn (loopback, raw sockets where the finding is about the wire) with a real `routet2i worker` process (tiny
SD3) as its cloud, a tiny SD pipeline on the edge and the shipped router.

1 slow bodies · 2 compute cap, abandoned work · 3 forced cloud past the caps · 4 NaN/surrogates → 500 ·
6 `private` on the OpenAI route · 8 client disconnects counted as 400 · 9 the low items (state file, console
headers, CDN docs, Host reflection, lax coercion, admin token guessing, header size, the <defunct> worker).
(Items 5 and 7, and the breaker side of 8, are the backends' : tests/test_audit_backends.py.)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from demo.processes import free_port, stop
from demo.stack import start_worker
from demo.tiny import build_tiny_sd3_pipeline, build_tiny_sd_pipeline
from gateway.app import create_app
from gateway.budget import BudgetStateError
from gateway.settings import DEFAULT_ROUTER
from router_model.model import RouteT2IRouter
from tests.servers import LiveServer
from tests.test_gateway import ADMIN, make_settings, sample, scrape, served

WORKER_TOKEN = secrets.token_urlsafe(12)
SMALL = {"size": "64x64", "num_inference_steps": 1}
MARKER = "zebracornish"  # prompt text that must never reach a response or a log line


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {"edge": build_tiny_sd_pipeline(root / "sd"), "cloud": build_tiny_sd3_pipeline(root / "sd3")}


@pytest.fixture(scope="module")
def router() -> RouteT2IRouter:
    return RouteT2IRouter.from_pretrained(str(DEFAULT_ROUTER), device="cpu")


@pytest.fixture(scope="module")
def worker(models) -> Iterator[dict]:
    """A real `routet2i worker` process, started the way `routet2i serve --demo` starts it."""
    port = free_port()
    process = start_worker(models["cloud"], WORKER_TOKEN, port, timeout_s=240)
    try:
        yield {"url": f"http://127.0.0.1:{port}", "process": process}
    finally:
        stop(process, timeout_s=10)


@pytest.fixture
def serve(models, router, worker, tmp_path):
    """`serve(**settings)`: a gateway on loopback in front of the worker process (a fresh app per call)."""

    @contextlib.contextmanager
    def start(**overrides) -> Iterator[LiveServer]:
        values = {"cloud_kind": "worker", "cloud_url": worker["url"], "cloud_token": WORKER_TOKEN,
                  "state_file": str(tmp_path / f"state-{secrets.token_hex(4)}.json"), **overrides}  # fmt: skip
        settings = make_settings(models["edge"], Path(values.pop("state_file")), **values)
        with LiveServer(create_app(settings, router=router)) as server:
            server.settings = settings
            yield server

    return start


@pytest.fixture
def logs(caplog) -> pytest.LogCaptureFixture:
    """Every log record of the gateway and of uvicorn (whose loggers do not propagate to the root)."""
    caplog.set_level(logging.INFO)
    uvicorn_logger = logging.getLogger("uvicorn")
    uvicorn_logger.addHandler(caplog.handler)
    yield caplog
    uvicorn_logger.removeHandler(caplog.handler)


def raw_post(url: str, path: str, body: bytes, headers: dict[str, str] | None = None, timeout: float = 60):
    return httpx.post(f"{url}{path}", content=body, headers={"content-type": "application/json", **(headers or {})},
                      timeout=timeout)  # fmt: skip


def route_of(response: httpx.Response) -> tuple[str, str]:
    assert response.status_code == 200, response.text
    return response.headers["x-route-backend"], response.headers["x-route-reason"]


# ---- 1: slow request bodies --------------------------------------------------------------------------------------
def test_slow_bodies_hold_sockets_not_slots(serve):
    """260 sockets that promise 1000 bytes and send 10 take no slot among the 256 in flight: a real request is
    served, and each slow socket gets 408 and is closed after body_read_timeout_s."""
    with serve(body_read_timeout_s=2.0) as gw:
        assert gw.settings.max_in_flight == 256
        head = (b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"prompt":')  # fmt: skip
        slow = []
        for _ in range(260):
            sock = socket.create_connection(("127.0.0.1", gw.port))
            sock.sendall(head)
            slow.append(sock)
        try:
            time.sleep(0.5)
            real = httpx.post(f"{gw.url}/generate", json={"prompt": "a cat", "route": "edge", **SMALL}, timeout=60)
            assert real.status_code == 200, real.text  # before: 429, Retry-After: 1
            started = time.monotonic()
            for sock in slow:
                sock.settimeout(max(1.0, 15 - (time.monotonic() - started)))
                answer = b""
                while chunk := sock.recv(4096):  # until the server closes the connection
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
            assert time.monotonic() - started < 15
        finally:
            for sock in slow:
                sock.close()


# ---- 2: compute cap; abandoned work ------------------------------------------------------------------------------
def test_compute_cap_applies_to_every_route(serve):
    cap = 64 * 64 * 2 * 2
    with serve(max_compute_units=cap, edge_default_steps=2) as gw, httpx.Client(base_url=gw.url, timeout=60) as http:
        over = {"prompt": "a castle", "size": "128x128", "num_inference_steps": 2}  # 128²×2 = 2 × cap
        for route in ("auto", "edge", "cloud"):
            response = http.post("/generate", json={**over, "route": route})
            assert response.status_code == 422, (route, response.text)
            detail = response.json()["detail"]
            assert all(word in detail for word in ("size", "num_inference_steps", "n", "max_compute_units")), detail
        openai = http.post("/v1/images/generations", json={"prompt": "a castle", "size": "64x64", "n": 3})
        assert openai.status_code == 422 and "max_compute_units" in openai.json()["detail"]  # 64²×2 default steps×3
        assert http.post("/generate", json={"prompt": "a castle", "size": "64x64", "n": 2, "route": "edge",
                                            "num_inference_steps": 2}).status_code == 200  # fmt: skip # = cap


def test_an_abandoned_edge_job_stops_and_counts_as_499(serve):
    """A large edge job whose client gives up after 2 s is cancelled (the handler at once, the pipeline at its
    next denoising step): the metrics say 499, not 400, and the next small request is not kept waiting for it.
    (1024², 24 steps: about a minute on a loaded 2-core machine, a few seconds per step; 2048² steps take ~10 s.)"""
    with serve() as gw:
        before = scrape(gw.url)
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{gw.url}/generate", timeout=2, json={
                "prompt": "a harbour", "size": "1024x1024", "num_inference_steps": 24, "route": "edge"})  # fmt: skip
        deadline = time.monotonic() + 10
        while served(scrape(gw.url), "edge", "forced", 499) == served(before, "edge", "forced", 499):
            assert time.monotonic() < deadline, "the abandoned request was not counted as 499"
            time.sleep(0.1)
        started = time.monotonic()
        next_one = httpx.post(f"{gw.url}/generate", json={"prompt": "a cat", "route": "edge", **SMALL}, timeout=180)
        waited = time.monotonic() - started
        assert next_one.status_code == 200, next_one.text
        assert waited < 20, f"the next request waited {waited:.1f} s behind abandoned work"
        after = scrape(gw.url)
        assert served(after, "edge", "forced", 499) == served(before, "edge", "forced", 499) + 1
        assert sample(after, "routet2i_requests_total", backend="none", reason="none", status="400") == sample(
            before, "routet2i_requests_total", backend="none", reason="none", status="400")  # fmt: skip


# ---- 3: forced cloud requests obey the hard caps -----------------------------------------------------------------
def test_forced_cloud_obeys_the_window_cap_and_the_cost_cap(serve):
    def forced_cloud(http: httpx.Client) -> tuple[str, str]:
        response = http.post("/generate", json={"prompt": "a lighthouse", "route": "cloud", **SMALL})
        backend, reason = route_of(response)
        assert (response.json()["route"]["backend"], response.json()["route"]["reason"]) == (backend, reason)
        return backend, reason

    with serve(rho=0.0, cost_cap_per_minute=1) as gw, httpx.Client(base_url=gw.url, timeout=60) as http:
        assert [forced_cloud(http) for _ in range(3)] == [("edge", "budget")] * 3  # ρ = 0: no cloud call at all
        assert served(scrape(gw.url), "cloud", "forced") == 0
        assert http.put("/admin/budget", json={"rho": 1.0}, headers=ADMIN).status_code == 200
        assert [forced_cloud(http) for _ in range(3)] == [("cloud", "forced")] + [("edge", "budget")] * 2  # cost cap
        assert http.get("/admin/budget", headers=ADMIN).json()["cloud_calls_last_minute"] == 1
    allowed = serve(rho=0.0, cost_cap_per_minute=2, forced_cloud_may_exceed_rho=True)
    with allowed as gw, httpx.Client(base_url=gw.url, timeout=60) as http:  # past ρ if allowed, never the cost cap
        assert [forced_cloud(http) for _ in range(3)] == [("cloud", "forced")] * 2 + [("edge", "budget")]


# ---- 4 (and 9: lax coercion): strict JSON, strict types, an error handler that can always encode -----------------
NOT_STRICT_JSON = [
    ("/generate", b'{"prompt": "cat", "guidance_scale": NaN}'),
    ("/generate", b'{"prompt": "cat", "guidance_scale": Infinity}'),
    ("/generate", b'{"prompt": "cat", "guidance_scale": -Infinity}'),
    ("/generate", b'{"prompt": "cat", "guidance_scale": 1e309}'),
    ("/generate", b'{"prompt": "cat", "seed": ' + b"9" * 5000 + b"}"),
    ("/generate", b'{"prompt": "' + MARKER.encode() + b' \\ud800"}'),
    ("/generate", b'{"prompt": "cat", "' + MARKER.encode() + b'\\udc00": 1}'),
    ("/v1/images/generations", b'{"prompt": "' + MARKER.encode() + b' \\udfff"}'),
    ("/v1/images/generations", b'{"prompt": "cat", "n": 1e309}'),
    ("/route", b'{"prompt": "' + MARKER.encode() + b'\\ud83d"}'),
    ("/admin/budget", b'{"rho": NaN}'),
    ("/admin/budget", b'{"rho": 1e309}'),
    ("/admin/budget", b'{"cost_cap_per_minute": Infinity}'),
]
LAX = [
    ("/admin/budget", {"rho": True}),
    ("/admin/budget", {"rho": "0.5"}),
    ("/admin/budget", {"rho": -0.0}),
    ("/admin/budget", {"cost_cap_per_minute": True}),
    ("/generate", {"prompt": "cat", "size": "64x64\n"}),
    ("/generate", {"prompt": "cat", "size": "６４x64"}),
    ("/generate", {"prompt": "\u200b\u200c\u2060"}),
    ("/generate", {"prompt": "cat", "n": True}),
    ("/generate", {"prompt": "cat", "num_inference_steps": "2"}),
    ("/generate", {"prompt": "cat", "seed": 7.0}),
    ("/route", {"prompt": "cat", "private": "true"}),
    ("/v1/images/generations", {"prompt": "cat", "n": 1.0}),
]


def test_non_finite_numbers_lone_surrogates_and_lax_types_are_422(serve, logs):
    with serve() as gw, httpx.Client(base_url=gw.url, timeout=60) as http:
        before = http.get("/admin/budget", headers=ADMIN).json()
        for path, body in NOT_STRICT_JSON:
            method = "PUT" if path.startswith("/admin") else "POST"
            response = http.request(method, path, content=body, headers={"content-type": "application/json", **ADMIN})
            assert response.status_code == 422, (path, body[:60], response.status_code, response.text[:200])
            detail = response.json()["detail"]  # strict JSON that parses, with a message, without the input
            assert detail and all(item["msg"] for item in detail) and MARKER not in response.text, response.text
        for path, body in LAX:
            method = "PUT" if path.startswith("/admin") else "POST"
            response = http.request(method, path, json=body, headers=ADMIN)
            assert response.status_code == 422, (path, body, response.status_code, response.text[:200])
        after = http.get("/admin/budget", headers=ADMIN).json()
        assert (after["rho"], after["cost_cap"]) == (before["rho"], before["cost_cap"])
        assert math.copysign(1.0, after["rho"]) > 0
    assert not [r for r in logs.records if r.exc_info], "a traceback was logged"
    assert not [r for r in logs.records if MARKER in r.getMessage()], "prompt text was logged"


# ---- 6: the OpenAI route honours `private`, and maps or refuses OpenAI's other fields -----------------------------
def test_openai_route_honours_private_and_refuses_what_it_cannot_honour(serve):
    with serve(rho=1.0) as gw, httpx.Client(base_url=gw.url, timeout=60) as http:
        before = scrape(gw.url)
        for model in (None, "auto", "cloud"):
            body = {"prompt": "a red bicycle", "size": "64x64", "private": True, **({"model": model} if model else {})}
            response = http.post("/v1/images/generations", json=body)
            assert route_of(response) == ("edge", "private"), model
        forced = http.post("/v1/images/generations", json={"prompt": "a red bicycle", "size": "64x64", "model": "edge"})
        assert route_of(forced) == ("edge", "forced")
        after = scrape(gw.url)
        assert sum(served(after, "cloud", r) - served(before, "cloud", r) for r in ("model", "forced")) == 0
        for extra, field in (({"user": "user-1"}, "user"), ({"model": "dall-e-3"}, "model"),
                             ({"quality": "hd"}, "quality")):  # fmt: skip
            refused = http.post("/v1/images/generations", json={"prompt": "a cat", "size": "64x64", **extra})
            assert refused.status_code == 422, (extra, refused.text)
            assert field in [loc for item in refused.json()["detail"] for loc in item["loc"]], refused.text


# ---- 9: the low items ---------------------------------------------------------------------------------------------
def test_unwritable_state_file_is_refused_at_start_and_a_failed_write_is_a_json_503(models, router, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the state folder should be")
    with pytest.raises(BudgetStateError, match="not-a-folder"):
        create_app(make_settings(models["edge"], blocker / "state.json"), router=router)
    folder = tmp_path / "state"
    with LiveServer(create_app(make_settings(models["edge"], folder / "state.json"), router=router)) as gw:
        shutil.rmtree(folder)
        folder.write_text("the folder became a file")  # every later write fails
        response = httpx.put(f"{gw.url}/admin/budget", json={"rho": 0.4}, headers=ADMIN, timeout=30)
        assert response.status_code == 503 and "persist" in response.json()["detail"], response.text
        assert httpx.get(f"{gw.url}/admin/budget", headers=ADMIN).json()["rho"] == 0.3


def test_console_headers_docs_without_cdn_and_no_host_reflection(serve):
    with serve() as gw, httpx.Client(base_url=gw.url, timeout=30) as http:
        page = http.get("/")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert page.headers["x-content-type-options"] == "nosniff" and page.headers["x-frame-options"] == "DENY"
        assert http.get("/static/app.js").headers["x-content-type-options"] == "nosniff"
        assert "http" not in page.text.replace("http-equiv", "")  # nothing loaded from elsewhere
        docs = http.get("/docs")
        assert docs.status_code == 404 or "cdn" not in docs.text  # before: Swagger UI from cdn.jsdelivr.net
        assert http.get("/openapi.json").status_code == 200
        for path in ("/static", "/generate/", "/admin/budget/"):
            response = http.get(path, headers={"host": "evil.example"}, follow_redirects=False)
            assert "evil.example" not in response.headers.get("location", ""), (path, response.headers)


def test_wrong_admin_tokens_are_rate_limited_and_audited(serve, logs):
    with serve(admin_auth_failures_per_minute=5) as gw, httpx.Client(base_url=gw.url, timeout=30) as http:
        guesses = [f"guess-{i}-{secrets.token_hex(4)}" for i in range(5)]
        for guess in guesses:
            assert http.get("/admin/budget", headers={"Authorization": f"Bearer {guess}"}).status_code == 403
        blocked = http.get("/admin/budget", headers={"Authorization": "Bearer one-more"})
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
        assert http.get("/admin/budget", headers=ADMIN).status_code == 429  # blocked, whatever the address sends
    audit = [r.getMessage() for r in logs.records if r.name == "routet2i.audit" and "auth failed" in r.getMessage()]
    assert len(audit) == 5 and all("127.0.0.1" in line for line in audit), audit
    assert not any(guess in r.getMessage() for r in logs.records for guess in guesses), "a token was logged"


def test_oversized_headers_are_431(serve):
    with serve() as gw:
        response = httpx.get(f"{gw.url}/healthz", headers={"x-padding": "a" * 64 * 1024}, timeout=30)
        assert response.status_code == 431, response.status_code  # before: 200 for any size
        assert httpx.get(f"{gw.url}/healthz", headers={"x-padding": "a" * 1024}, timeout=30).status_code == 200


def test_a_killed_worker_is_reaped(worker):
    """Last in this module: it kills the shared worker. Started as `serve --demo` starts it, a SIGKILLed worker
    must not stay <defunct> while the gateway runs."""
    process = worker["process"]
    os.kill(process.pid, signal.SIGKILL)
    stat = Path(f"/proc/{process.pid}/stat")
    deadline = time.monotonic() + 10
    while stat.exists() and time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z":
                time.sleep(0.05)
                continue
        time.sleep(0.05)
    assert not stat.exists(), f"the killed worker is still in the process table ({stat.read_text()[:80]})"
