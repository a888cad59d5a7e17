"""The console page at `/`, end to end: a real `routet2i serve --demo` process on loopback, driven by
Playwright through Debian's headless Chromium (the system browser; Playwright downloads none).

The test saves a screenshot to artifacts/console/; with ROUTET2I_UPDATE_DOCS=1 it also refreshes
docs/console.png (shown in the README).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from demo.processes import free_port

CHROMIUM = os.environ.get("ROUTET2I_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip(
        "no system Chromium (apt-get install chromium); the console test needs a browser", allow_module_level=True
    )

from playwright.sync_api import BrowserContext, Page, expect, sync_playwright  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "console.png"
ARTIFACTS = ROOT / "artifacts" / "console"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic", "--no-first-run",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
TOKEN_LINE = re.compile(r"demo: admin token: (\S+)")
FAST = {"size": "64x64", "steps": "2", "seed": "7"}


class DemoGateway:
    def __init__(self, url: str, token: str):
        self.url, self.token = url, token

    def admin_budget(self) -> dict:
        response = httpx.get(f"{self.url}/admin/budget", headers={"Authorization": f"Bearer {self.token}"})
        response.raise_for_status()
        return response.json()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoGateway]:
    """`routet2i serve --demo` as a subprocess; its admin token is read from what it prints."""
    workdir = tmp_path_factory.mktemp("console-gateway")
    log_path = workdir / "serve.log"
    port = free_port()
    # Only this test configures the gateway (no inherited ROUTET2I_*: the demo makes up its admin token);
    # one torch thread per process, as the gateway and its demo worker share a small CI machine.
    env = {key: value for key, value in os.environ.items() if not key.startswith("ROUTET2I_")}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", ROUTET2I_STATE_FILE=str(workdir / "state.json"))
    command = [sys.executable, "-m", "gateway.cli", "serve", "--demo", "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    url, token = f"http://127.0.0.1:{port}", None
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the demo gateway exited ({process.returncode}):\n{log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the demo gateway did not become ready:\n{log_path.read_text()[-3000:]}")
            if token is None and (match := TOKEN_LINE.search(log_path.read_text())):
                token = match[1]
            if token is not None:
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            time.sleep(0.3)
        yield DemoGateway(url, token)
    finally:
        process.send_signal(signal.SIGINT)  # uvicorn shuts down and `serve` stops its worker
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """Headless system Chromium with a fresh profile directory."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900}, device_scale_factor=1,
        )  # fmt: skip
        context.set_default_timeout(30_000)
        yield context
        context.close()


@pytest.fixture(scope="module", autouse=True)
def dashboard(context: BrowserContext, gateway: DemoGateway) -> Iterator[Page]:
    """A console left open for the whole module: its live chart has a history by the screenshot."""
    page = context.new_page()
    page.goto(gateway.url + "/")
    yield page
    page.close()


@pytest.fixture
def requested() -> list[str]:
    """Every URL the page asked for."""
    return []


@pytest.fixture
def page(context: BrowserContext, gateway: DemoGateway, requested: list[str]) -> Iterator[Page]:
    page = context.new_page()
    page.on("request", lambda request: requested.append(request.url))
    page.goto(gateway.url + "/")
    expect(page.locator("#ready")).to_have_text("ready")
    yield page
    page.close()


def fill_prompt(page: Page, prompt: str, *, route: str = "auto", private: bool = False, **knobs: str) -> None:
    values = {**FAST, **knobs}
    page.fill("#prompt", prompt)
    page.select_option("#size", values["size"])
    page.fill("#steps", values["steps"])
    page.fill("#seed", values["seed"])
    page.select_option("#route", route)
    page.set_checked("#private", private)


def generate(page: Page) -> dict:
    """Click Generate; the JSON /generate answered once the page has rendered it."""
    with page.expect_response(lambda r: r.url.endswith("/generate")) as answer:
        page.click("#generate")
    expect(page.locator("#generate")).to_be_enabled(timeout=60_000)
    return answer.value.json()


def test_prompt_shows_image_backend_reason_prs_and_metrics(page: Page, gateway: DemoGateway) -> None:
    fill_prompt(page, "a red bicycle leaning on a brick wall")
    body = generate(page)
    route = body["route"]
    expect(page.locator("#result")).to_be_visible()
    image = page.locator("#images img")
    expect(image).to_have_count(1)
    assert image.get_attribute("src") == "data:image/png;base64," + body["data"][0]["b64_json"]
    page.wait_for_function("() => document.querySelector('#images img').naturalWidth > 0")
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [64, 64]
    expect(page.locator("#backend")).to_have_text(route["backend"])
    expect(page.locator("#reason")).to_have_attribute("data-reason", route["reason"])
    assert route["reason"] in ("model", "budget")
    # The demo routes among three arms: the reason names the arm and λ of argmax quality − λ·cost.
    reason = page.locator("#reason").inner_text()
    assert f"λ {route['lam']:.3f}" in reason and f"arm {route['arm']}".lower() in reason.lower()
    expect(page.locator("#arm")).to_have_text(route["arm"])
    expect(page.locator("#route-cost")).to_have_text(f"{route['cost']:.2f}")
    assert page.locator("#seed-used").inner_text() == "7"
    assert re.fullmatch(r"\d+ ms|\d+\.\d\d s", page.locator("#latency").inner_text())
    expect(page.locator(".gauge-prs .gauge-tag")).to_have_text(f"PRS {route['prs']:.3f}")
    expect(page.locator("#arm-quality")).to_contain_text("edge-fast")
    scored = httpx.post(f"{gateway.url}/route", json={"prompt": "a red bicycle leaning on a brick wall"}).json()
    bars = page.locator("#per-metric .bar-row")
    expect(bars).to_have_count(len(scored["per_metric"]))
    for name, value in scored["per_metric"].items():
        expect(page.locator(f'#per-metric .bar-row[aria-label="{name} {value:.3f}"]')).to_have_count(1)
    assert page.locator("#generate-error").is_hidden()


def test_forced_and_private_routes_are_explained(page: Page) -> None:
    fill_prompt(page, "a lighthouse in a storm", route="cloud")
    route = generate(page)["route"]
    assert (route["backend"], route["reason"], route["arm"], route["alpha"]) == ("cloud", "forced", "cloud", None)
    expect(page.locator("#backend")).to_have_text("cloud")
    expect(page.locator("#reason")).to_contain_text("forced the cloud route")
    expect(page.locator(".gauge-prs")).to_have_count(1)
    fill_prompt(page, "my passport photo", route="cloud", private=True)
    assert generate(page)["route"]["reason"] == "private"
    expect(page.locator("#backend")).to_have_text("edge")
    expect(page.locator("#reason")).to_contain_text("never leaves the edge")


def test_api_errors_are_shown_as_they_are(page: Page) -> None:
    fill_prompt(page, "a cat")
    generate(page)
    expect(page.locator("#result")).to_be_visible()
    page.fill("#steps", "0")
    with page.expect_response(lambda r: r.url.endswith("/generate")) as answer:
        page.click("#generate")
    assert answer.value.status == 422
    error = page.locator("#generate-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("422")
    expect(error).to_contain_text("num_inference_steps: Input should be greater than or equal to 1")
    assert page.locator("#result").is_hidden()  # not the previous prompt's image under this error


def test_live_budget_is_read_from_the_gateway(page: Page, gateway: DemoGateway, requested: list[str]) -> None:
    status = httpx.get(f"{gateway.url}/v1/status").json()
    expect(page.locator("#stat-rho")).to_have_text(f"{status['budget']['rho']:.2f}")
    expect(page.locator("#stat-cap")).to_have_text("no cap")
    # each arm's cost, share and mean predicted quality, live
    expect(page.locator("#arms-table tbody tr")).to_have_count(3)
    for i, arm in enumerate(status["budget"]["arms"]):
        row = page.locator("#arms-table tbody tr").nth(i)
        expect(row.locator("td").first).to_have_text(arm["name"])
        expect(row.locator("td").nth(2)).to_have_text(f"{arm['cost']:.2f}")
    expect(page.locator("#stat-cost-budget")).to_have_text(f"{status['budget']['cost_budget']:.2f}")
    # Two polls draw a line (the page polls every few seconds).
    with page.expect_response(lambda r: r.url.endswith("/v1/status"), timeout=10_000):
        pass
    expect(page.locator("#fraction-chart svg path.line")).to_have_attribute("d", re.compile(r"^M[\d.,]+ L"))
    expect(page.locator("#fraction-chart svg path.ref")).to_have_count(1)
    origin = gateway.url + "/"
    assert all(url.startswith(origin) or url.startswith("data:") for url in requested), requested


def test_admin_changes_rho_with_the_right_token_only(page: Page, gateway: DemoGateway, requested: list[str]) -> None:
    before = gateway.admin_budget()["rho"]
    new_rho = 0.55 if before != 0.55 else 0.45
    page.click("#read-budget")
    expect(page.locator("#admin-error")).to_have_text("type the admin token first")
    page.fill("#token", "not-the-token")
    page.fill("#rho", str(new_rho))
    with page.expect_response(lambda r: r.url.endswith("/admin/budget") and r.request.method == "PUT") as answer:
        page.click("#apply")
    assert answer.value.status == 403
    expect(page.locator("#admin-error")).to_have_text("403 Forbidden: wrong admin token")
    assert page.locator("#admin-result").is_hidden()
    assert gateway.admin_budget()["rho"] == before

    page.fill("#token", gateway.token)
    page.click("#apply")
    expect(page.locator("#admin-result")).to_contain_text(f"ρ = {new_rho:.2f}")
    assert page.locator("#admin-error").is_hidden()
    assert gateway.admin_budget()["rho"] == pytest.approx(new_rho)
    expect(page.locator("#stat-rho")).to_have_text(f"{new_rho:.2f}")

    page.fill("#rho", "")
    page.click("#apply")
    expect(page.locator("#admin-error")).to_have_text("enter a new ρ or cost cap")
    page.fill("#cost-cap", "30")
    page.click("#apply")
    expect(page.locator("#admin-result")).to_contain_text("cost cap = 30 cloud calls/min")
    assert gateway.admin_budget()["cost_cap"] == 30
    expect(page.locator("#stat-cap")).to_contain_text("/ 30")
    page.fill("#cost-cap", "0")
    page.click("#apply")
    expect(page.locator("#admin-result")).to_contain_text("cost cap = none")
    page.click("#read-budget")
    served = re.compile(rf"^The gateway serves ρ = {new_rho:.2f}, cost cap = none")
    expect(page.locator("#admin-result")).to_have_text(served)

    # The token never leaves page memory: no storage, cookies or URLs hold it.
    stored = page.evaluate("() => [localStorage.length, sessionStorage.length, document.cookie]")
    assert stored == [0, 0, ""]
    assert not any(gateway.token in url for url in [*requested, page.url])
    page.click("#forget-token")
    assert page.input_value("#token") == ""


def test_phone_layout_fits_the_screen(context: BrowserContext, gateway: DemoGateway) -> None:
    page = context.new_page()
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(gateway.url + "/")
    expect(page.locator("#stat-rho")).not_to_have_text("–")
    fill_prompt(page, "a bowl of ramen")
    generate(page)
    widths = page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert widths[0] <= widths[1], f"page is wider than a phone screen: {widths}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "console-phone.png", full_page=True)
    page.close()


def test_screenshot(dashboard: Page) -> None:
    """The README's picture of the console after one routed prompt and the module's ρ changes."""
    page = dashboard
    fill_prompt(page, "a red bicycle leaning on a brick wall", size="256x256")
    generate(page)
    expect(page.locator("#images img")).to_have_count(1)
    with page.expect_response(lambda r: r.url.endswith("/v1/status"), timeout=10_000):
        pass  # the chart has caught up with the last request
    page.wait_for_timeout(200)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "console.png", full_page=True)
    if os.environ.get("ROUTET2I_UPDATE_DOCS") == "1":  # refresh the README's screenshot on request only
        shutil.copyfile(ARTIFACTS / "console.png", SCREENSHOT)
    assert SCREENSHOT.stat().st_size > 10_000


def test_admin_lists_client_keys_with_their_usage(page: Page, gateway: DemoGateway) -> None:
    admin = {"Authorization": f"Bearer {gateway.token}"}
    created = httpx.post(f"{gateway.url}/admin/keys", json={"name": "console-team", "requests_per_minute": 9},
                         headers=admin)  # fmt: skip
    assert created.status_code == 201
    key = created.json()["key"]
    try:
        assert page.locator("#api-key-label").is_hidden()  # an open gateway asks for no key
        page.fill("#token", gateway.token)
        page.click("#list-keys")
        row = page.locator("#keys-table tbody tr", has_text="console-team")
        expect(row).to_contain_text("9")
        expect(page.locator("#admin-result")).to_contain_text("client key(s)")
        assert key not in page.content()  # the table shows names and limits, never keys
        page.click("#forget-token")
        assert page.locator("#keys-table").is_hidden()
    finally:
        httpx.delete(f"{gateway.url}/admin/keys/console-team", headers=admin)
