"""Helpers of bench/gateway_overhead.py: LiteLLM as a peer proxy (its own virtualenv, its config) and the
CPU time of a server process tree.

LiteLLM is never a dependency of the gateway: `ensure_litellm` installs `litellm[proxy]` from PyPI into
`.bench-venv/` (git-ignored) the first time, and the benchmark runs `litellm` from there as one process
with one worker, in front of the fake upstream's OpenAI Images API endpoint.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from demo.processes import free_port, spawn, stop

ROOT = Path(__file__).resolve().parents[1]
BENCH_VENV = ROOT / ".bench-venv"
LITELLM_REQUIREMENT = "litellm[proxy]"
LITELLM_MODEL = "bench-image"
PEER = "LiteLLM"  # the scenario's name in the page


@dataclass
class Run:
    latencies: np.ndarray  # seconds, successful requests
    errors: int
    seconds: float
    backends: dict[str, int]
    cpu_s: float = 0.0  # the serving process tree's CPU time over the run

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds


def litellm_executable(venv: Path = BENCH_VENV) -> Path:
    return venv / "bin" / "litellm"


def ensure_litellm(venv: Path = BENCH_VENV, install: bool = True) -> Path | None:
    """The `litellm` executable of the benchmark's own virtualenv, installed there first when `install`."""
    exe = litellm_executable(venv)
    if exe.exists() or not install:
        return exe if exe.exists() else None
    print(f"installing {LITELLM_REQUIREMENT} into {venv} (once; never into the gateway's environment)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", LITELLM_REQUIREMENT], check=True)
    return exe


def litellm_version(venv: Path = BENCH_VENV) -> str:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return out.stdout.strip() or "unknown"


def litellm_config(upstream_url: str) -> str:
    """The exact proxy config the benchmark runs (printed into the page): one model on the fake upstream's
    OpenAI Images API, no callbacks, no database, no retries, no spend logs, error-level logging only."""
    return f"""model_list:
  - model_name: {LITELLM_MODEL}
    litellm_params:
      model: openai/dall-e-2
      api_base: {upstream_url}/v1
      api_key: sk-bench
litellm_settings:
  num_retries: 0
  request_timeout: 120
  callbacks: []
  success_callback: []
  failure_callback: []
  drop_params: true
  set_verbose: false
  json_logs: false
general_settings:
  disable_spend_logs: true
  disable_error_logs: true
  disable_adding_master_key_hash_to_db: true
  allow_requests_on_db_unavailable: true
  background_health_checks: false
"""


LITELLM_ENV = {"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true",
               "DISABLE_SCHEMA_UPDATE": "true", "USE_DDTRACE": "false"}  # fmt: skip


@contextlib.contextmanager
def running_litellm(
    exe: Path, upstream_url: str, workdir: Path, log: Path | None = None
) -> Iterator[tuple[str, int, str]]:
    """(base URL, pid, master key) of `litellm --config ... --num_workers 1` on loopback, stopped on exit.
    LiteLLM refuses to start without a master key: a random one per run, sent as the bearer token."""
    import secrets

    config = workdir / "litellm.yaml"
    config.write_text(litellm_config(upstream_url))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "LITELLM_MASTER_KEY"))}
    env.update(LITELLM_ENV)
    env["LITELLM_MASTER_KEY"] = key = f"sk-{secrets.token_hex(16)}"
    process = spawn(
        [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
        cwd=workdir, env=env, log=log or Path(os.devnull),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"litellm exited with {process.returncode} (see --litellm-log)")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health/liveliness", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("litellm did not come up within 180 s")
            time.sleep(0.5)
        yield url, process.pid, key
    finally:
        stop(process)


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its descendants so far (Linux /proc; 0 elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        stack.extend(_children(current))
    return total
