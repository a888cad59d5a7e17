"""Schemathesis against the gateway's own OpenAPI schema, on a real server on loopback: no 5xx, and
every 4xx carries a message. The gateway runs the shipped router, a tiny SD pipeline on the edge and a
worker-protocol cloud that answers at once.

Generated bodies are left as they are except that, when their `size`, `num_inference_steps` or `n`
are valid, they are shrunk to 64×64, ≤ 2 steps and ≤ 2 images, so that a CPU runs them in
milliseconds; invalid values are sent unchanged, so validation is fuzzed in full.
"""

from __future__ import annotations

import base64

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from PIL import Image
from pydantic import SecretStr

from backends.base import png_bytes
from backends.cloud import WorkerCloudBackend
from backends.edge import EdgeBackend
from backends.loading import load_pipeline
from backends.worker import GenerateBody
from demo.tiny import build_tiny_sd_pipeline
from gateway.app import create_app
from gateway.schemas import parse_size
from gateway.settings import DEFAULT_ROUTER, Settings
from router_model.model import RouteT2IRouter
from tests.servers import LiveServer

MAX_EXAMPLES = 40
ADMIN_TOKEN = "fuzz-admin-token"


def instant_worker() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/generate")
    async def generate(body: GenerateBody) -> dict:
        png = base64.b64encode(png_bytes(Image.new("RGB", (body.width, body.height), (10, 120, 30)))).decode()
        return {"images": [png] * body.n, "seed": body.seed or 1, "model": "instant"}

    return app


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory):
    pipeline = load_pipeline(str(build_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny-sd"))), device="cpu")
    router = RouteT2IRouter.from_pretrained(DEFAULT_ROUTER, device="cpu")
    with LiveServer(instant_worker()) as worker:
        jobs_db = str(tmp_path_factory.mktemp("jobs") / "jobs.sqlite3")  # fuzzed POST /v1/jobs land here
        settings = Settings(state_file=None, jobs_db=jobs_db, admin_token=SecretStr(ADMIN_TOKEN), edge_default_steps=1)
        edge = EdgeBackend("tiny-sd", pipeline=pipeline, device="cpu", default_steps=1, max_queue=64)
        cloud = WorkerCloudBackend(worker.url, timeout=10, max_retries=0)
        with LiveServer(create_app(settings, router=router, edge=edge, cloud=cloud)) as server:
            yield server.url


def shrink(body: object) -> None:
    """Make a valid generation request cheap; leave anything invalid as generated."""
    if not isinstance(body, dict):
        return
    size = body.get("size")
    if isinstance(size, str):
        try:
            parse_size(size)
            body["size"] = "64x64"
        except ValueError:
            pass
    steps = body.get("num_inference_steps")
    if type(steps) is int and 1 <= steps <= 150:
        body["num_inference_steps"] = min(steps, 2)
    n = body.get("n")
    if type(n) is int and 1 <= n <= 4:
        body["n"] = min(n, 2)


def has_message(payload: object) -> bool:
    """FastAPI's 422 `detail` is a list of {loc, msg}; every other error here is {"detail": "text"}."""
    if not isinstance(payload, dict) or not payload.get("detail"):
        return False
    detail = payload["detail"]
    if isinstance(detail, list):
        return all(isinstance(item, dict) and item.get("msg") for item in detail)
    return isinstance(detail, str) and bool(detail.strip())


def operations(gateway_url: str) -> list:
    schema = schemathesis.openapi.from_url(f"{gateway_url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.slow
def test_no_5xx_and_every_4xx_says_why(gateway_url):
    """Every operation of the schema, `MAX_EXAMPLES` valid and as many invalid cases (derandomized).
    (Driven through hypothesis directly: schemathesis' pytest plugin does not load under pytest 9.)"""
    seen: dict[str, set[int]] = {}

    def check(case) -> None:
        shrink(case.body)
        if case.path.startswith("/admin"):  # authenticated, so that the body is fuzzed (auth is tested elsewhere)
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {ADMIN_TOKEN}"}
        response = case.call(base_url=gateway_url, timeout=60)
        seen.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)
        assert response.status_code < 500, f"{case.method} {case.path} → {response.status_code}: {response.text[:300]}"
        if 400 <= response.status_code < 500:
            assert has_message(response.json()), f"{response.status_code} without a message: {response.text[:300]}"

    ops = operations(gateway_url)
    assert {f"{op.method.upper()} {op.path}" for op in ops} >= {"POST /generate", "POST /v1/images/generations",
                                                                 "POST /route", "PUT /admin/budget"}  # fmt: skip
    budget = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
    for operation in ops:
        for mode in schemathesis.GenerationMode:  # valid bodies, then bodies that break the schema
            try:
                budget(given(case=operation.as_strategy(mode))(check))()
            except Unsatisfiable:  # an operation without inputs (GET /healthz) has no invalid form
                assert mode is schemathesis.GenerationMode.NEGATIVE, f"no valid case for {operation.path}"
    for operation in ("POST /generate", "POST /v1/images/generations", "POST /route", "PUT /admin/budget"):
        answered = seen.get(operation, set())
        assert {200, 422} <= answered, f"{operation} answered only {sorted(answered)}: the fuzzing missed a path"
