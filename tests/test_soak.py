"""Soak: 5,000 requests at concurrency 32 through the real gateway process (`gateway.cli serve`, the
shipped router deciding, ρ = 1) to a worker process that answers at once with a fixed image. No errors,
the gateway's resident memory grows < 10% after warm-up, and p99 holds between the first and last
thousand requests. The processes are those of bench/gateway_overhead.py.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.gateway_overhead import COCO, cloud_prompts
from bench.overhead_stack import running_stack
from router_model.lab.data import read_prompts

REQUESTS = 5000
WARMUP = 300
CONCURRENCY = 32
SAMPLE_EVERY = 250


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def soak(url: str, pid: int, prompts: list[str]) -> tuple[np.ndarray, list[str], list[tuple[int, int]]]:
    """(latency per request in completion order, errors, [(requests done, gateway RSS)])."""
    latencies: list[float] = []
    errors: list[str] = []
    stale: list[int] = []
    memory: list[tuple[int, int]] = []
    total = WARMUP + REQUESTS
    next_index = iter(range(total))
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one_worker() -> None:
            for i in next_index:
                # "cache": false: every seed is new, so the exact cache would only fill up to cache_max_bytes
                # (bounded by design) and read as growth here; this soak looks for leaks on the generation path.
                body = {"prompt": prompts[i % len(prompts)], "size": "64x64", "seed": i, "cache": False}
                started = time.perf_counter()
                try:
                    try:
                        response = await client.post("/generate", json=body)
                    except httpx.ReadError:  # a pooled keep-alive connection closed under us: retry once, counted
                        stale.append(i)
                        response = await client.post("/generate", json=body)
                    ok = response.status_code == 200 and len(response.json()["data"]) == 1
                    problem = "" if ok else f"HTTP {response.status_code}: {response.text[:200]}"
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                latencies.append(time.perf_counter() - started)
                if problem:
                    errors.append(problem)
                done = len(latencies)
                if done == WARMUP or (done > WARMUP and (done - WARMUP) % SAMPLE_EVERY == 0):
                    memory.append((done, rss_bytes(pid)))

        await asyncio.gather(*(one_worker() for _ in range(CONCURRENCY)))
    # one CI run (of many) saw a single ReadError in 5,300 requests (cause not found: its log was not kept); a client
    # retries that once (as urllib3 does for a stale pooled connection). More than a handful is a fault.
    assert len(stale) <= 3, f"{len(stale)} requests met a closed connection"
    return np.asarray(latencies[WARMUP:]), errors, memory


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_soak_5000_requests_at_concurrency_32(tmp_path):
    with running_stack(tmp_path, rho=1.0, gateway_log=tmp_path / "gateway.log") as stack:
        candidates = read_prompts(COCO)[:600]

        async def pick() -> list[str]:
            async with httpx.AsyncClient(timeout=30) as client:
                return await cloud_prompts(client, [stack.gateway_url], candidates, want=200)

        prompts = asyncio.run(pick())  # every soak request takes the same path: router → cloud worker
        latencies, errors, memory = asyncio.run(soak(stack.gateway_url, stack.gateway.pid, prompts))
        assert stack.gateway.poll() is None, "the gateway process died during the soak"

    first_p99, last_p99 = np.percentile(latencies[:1000], 99), np.percentile(latencies[-1000:], 99)
    after_warmup, last = memory[0][1], memory[-1][1]
    growth = last / after_warmup - 1
    print(f"soak: {len(errors)} errors, RSS {after_warmup >> 20} → {last >> 20} MiB ({growth:+.1%}), "
          f"p99 first/last thousand {first_p99 * 1e3:.0f}/{last_p99 * 1e3:.0f} ms")  # fmt: skip
    assert errors == [], f"{len(errors)} failed requests, e.g. {errors[:3]}"
    assert len(latencies) == REQUESTS
    assert growth < 0.10, f"gateway RSS grew {growth:.1%} after warm-up ({after_warmup >> 20} → {last >> 20} MiB)"
    # a shared CI machine is noisy: "stable" is within 2× (a leak or a growing queue shows as a steady climb)
    assert last_p99 < 2 * first_p99 + 0.05, f"p99 {first_p99 * 1e3:.0f} ms → {last_p99 * 1e3:.0f} ms"
