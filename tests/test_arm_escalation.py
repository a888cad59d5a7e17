"""Verify then escalate among N arms: real uvicorn on 127.0.0.1, real httpx, a real tiny random CLIP check loaded
with from_pretrained, and instant stand-in arms that count their calls.

Arms by cost: `cheap` (local, 0.1), `mid` (remote, 0.5), `top` (local, 1.0). `cheap`'s quality offset makes it every
prompt's best arm (λ = 0 under a budget of 2), so the router serves every request there; the tiny CLIP scores
every image near 0, so a threshold of 1 fails them all and -1 passes them all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backends.base import BackendUnavailable, GenerationRequest, GenerationResult
from demo.tiny import build_tiny_clip
from gateway.app import create_app
from gateway.budget.arm_pacer import ArmPacer
from tests.servers import LiveServer
from tests.standins import HashScorer, InstantBackend, standin_settings
from tests.test_gateway import ADMIN, sample, scrape

COSTS = {"cheap": 0.1, "mid": 0.5, "top": 1.0}


def arms(**extra: dict) -> list[dict]:
    local = {"kind": "local", "model_id": "sd-2.1", "model": "unused-stand-in", "device": "cpu"}
    listed = [
        {"name": "cheap", "cost": COSTS["cheap"], "quality_offset": 1.0, **local},
        {"name": "mid", "kind": "worker", "model_id": "sd-2.1", "cost": COSTS["mid"], "url": "http://127.0.0.1:9",
         "token_env": "ROUTET2I_TEST_UNUSED"},
        {"name": "top", "cost": COSTS["top"], **local},
    ]  # fmt: skip
    return [{**arm, **extra.get(arm["name"], {})} for arm in listed]


class FlakyBackend(InstantBackend):
    """An instant arm that can be down (`up`) or fail its calls (`failing`)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.up, self.failing = True, False

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if self.failing:
            self.calls += 1
            raise BackendUnavailable(f"{self.name} is failing")
        return await super().generate(request)

    def ready(self) -> bool:
        return self.up


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


@pytest.fixture
def serve(clip, tmp_path):
    @contextlib.contextmanager
    def start(arm_list: list[dict], **overrides) -> Iterator[tuple[LiveServer, httpx.Client, dict]]:
        settings = standin_settings(
            tmp_path, arms=arm_list, cost_budget=2.0, decision_window=50, cache_enabled=False,
            verify_clip_model=str(clip), verify_device="cpu", verify_threshold=1.0, **overrides,
        )  # fmt: skip
        backends = {name: FlakyBackend(name) for name in COSTS}
        app = create_app(settings, router=HashScorer(), backends=backends)
        with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as http:
            yield server, http, backends

    return start


def generate(http: httpx.Client, prompt: str, **fields) -> tuple[dict, httpx.Headers]:
    response = http.post("/generate", json={"prompt": prompt, "size": "64x64", "verify": True, **fields})
    assert response.status_code == 200, response.text
    route = response.json()["route"]
    assert response.headers["x-route-arm"] == route["arm"] and response.headers["x-route-reason"] == route["reason"]
    return route, response.headers


def calls(backends: dict) -> dict[str, int]:
    return {name: backend.calls for name, backend in backends.items()}


def budget(http: httpx.Client) -> dict:
    return http.get("/admin/budget", headers=ADMIN).json()


def test_a_failed_cheap_image_escalates_to_the_middle_arm_and_both_costs_are_counted(serve):
    with serve(arms()) as (server, http, backends):
        route, headers = generate(http, "a red bicycle")
        assert (route["arm"], route["reason"], route["backend"]) == ("mid", "escalated", "cloud")
        assert (route["verified"], route["escalated"], route["verify_result"]) == (True, True, "escalated")
        assert headers["x-route-escalated"] == "true"
        assert calls(backends) == {"cheap": 1, "mid": 1, "top": 0}  # the next arm up, not the dearest
        assert route["cost"] == pytest.approx(COSTS["cheap"] + COSTS["mid"])

        snap = budget(http)  # one request in the window, charged both calls
        assert snap["decisions"] == 1 and snap["window_cost"] == pytest.approx(0.6)
        spent = {arm["name"]: arm["spent"] for arm in snap["arms"]}
        assert spent["mid"] == pytest.approx(0.6) and snap["remote_calls_last_minute"] == 1

        metrics = scrape(server.url)
        assert sample(metrics, "routet2i_escalations_total", from_arm="cheap", to_arm="mid") == 1
        assert sample(metrics, "routet2i_arm_cost_total", arm="cheap") == pytest.approx(0.1)
        assert sample(metrics, "routet2i_arm_cost_total", arm="mid") == pytest.approx(0.5)
        assert sample(metrics, "routet2i_arm_requests_total", arm="mid", reason="escalated") == 1
        assert sample(metrics, "routet2i_verify_total", result="escalated") == 1

        # not verified: served on the cheap arm, one call in the window
        with_pass = http.post("/generate", json={"prompt": "a cat", "size": "64x64", "verify": False}).json()["route"]
        assert (with_pass["arm"], with_pass["verified"]) == ("cheap", False)
        assert budget(http)["window_cost"] == pytest.approx(0.7)


def test_a_private_prompt_never_escalates_to_a_remote_arm(serve):
    with serve(arms()) as (_, http, backends):
        route, _ = generate(http, "a red bicycle", private=True)
        assert (route["arm"], route["reason"], route["backend"]) == ("top", "escalated", "edge")
        assert calls(backends) == {"cheap": 1, "mid": 0, "top": 1}  # the remote middle arm passed over

    # on the dearest local arm a private request keeps its image: nothing to escalate to, not checked
    with serve(arms(cheap={"quality_offset": 0.0}, top={"quality_offset": 2.0})) as (_, http, backends):
        route, headers = generate(http, "a lighthouse", private=True)
        assert (route["arm"], route["reason"], route["verified"]) == ("top", "private", False)
        assert "x-route-escalated" not in headers and calls(backends) == {"cheap": 0, "mid": 0, "top": 1}


def test_a_capped_or_down_next_arm_passes_to_the_next_up_or_the_image_is_kept(serve):
    capped = arms(mid={"max_calls_per_minute": 1}, top={"max_calls_per_minute": 1})
    with serve(capped) as (server, http, backends):
        assert generate(http, "one")[0]["arm"] == "mid"
        second, _ = generate(http, "two")  # mid is at its cap: the next arm up
        assert (second["arm"], second["reason"]) == ("top", "escalated")
        third, headers = generate(http, "three")  # both at their caps: the cheap image is kept
        assert (third["arm"], third["reason"], third["verify_result"]) == ("cheap", "model", "capped")
        assert headers["x-route-escalated"] == "false"
        assert calls(backends) == {"cheap": 3, "mid": 1, "top": 1}
        assert budget(http)["window_cost"] == pytest.approx(0.3 + 0.5 + 1.0)
        metrics = scrape(server.url)
        assert sample(metrics, "routet2i_escalations_total", from_arm="cheap", to_arm="top") == 1

    with serve(arms()) as (_, http, backends):
        backends["mid"].up = False  # its circuit is open: passed over
        assert generate(http, "four")[0]["arm"] == "top"
        backends["top"].failing = True  # the escalation fails: the call is given back, the cheap image kept
        failed, _ = generate(http, "five", private=True)
        assert (failed["arm"], failed["verify_result"], failed["cost"]) == ("cheap", "failed", pytest.approx(0.1))
        assert budget(http)["window_cost"] == pytest.approx(0.1 + 1.0 + 0.1)


def test_the_pacer_refuses_an_escalation_the_window_cannot_pay_for():
    pacer = ArmPacer([0.1, 1.0], budget=0.1, decision_window=4)
    tickets = [pacer.decide([0.5, 0.5]).ticket for _ in range(4)]  # a full window at the budget
    assert pacer.escalate(tickets[-1], 1) is None and pacer.snapshot()["window_cost"] == pytest.approx(0.4)
    pacer = ArmPacer([0.1, 1.0], budget=0.5, decision_window=4)
    ticket = pacer.decide([0.5, 0.5]).ticket
    assert pacer.escalate(ticket, 1) == pytest.approx(1.0)  # 0.1 + 1.0 within the window's 4 × 0.5
    snap = pacer.snapshot()
    assert snap["window_cost"] == pytest.approx(1.1) and snap["arms"][1]["requests"] == 1
    pacer.give_back(ticket, 1, cost=1.0, to_arm=0)
    snap = pacer.snapshot()
    assert snap["window_cost"] == pytest.approx(0.1) and snap["arms"][1]["calls_last_minute"] == 0
