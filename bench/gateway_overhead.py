"""Gateway overhead on loopback: a worker that answers at once with a fixed image, called directly and
through the gateway, at several concurrencies: added p50/p99 latency and requests/s.

Three processes: the fixed-image worker (`python -m bench.gateway_overhead worker`), the real gateway
(`python -m gateway.cli serve`, configured by ROUTET2I_* variables: the shipped router, a tiny edge
pipeline that no timed request reaches, the worker as its cloud), and this process as the load
generator (httpx.AsyncClient); LiteLLM (its own virtualenv, `.bench-venv/`, see bench/overhead_peers.py) as the
peer proxy on the same upstream's OpenAI Images API. Scenarios, side by side in rotating rounds at each concurrency:
- direct: POST {worker}/v1/generate;
- router off: POST {gateway}/generate with route "cloud" (forced, no scoring);
- router on: POST {gateway}/generate with route "auto" under ρ = 1, on COCO captions the gateway's own
  POST /route sends to the cloud at ρ = 1 (α is capped at ½, so prompts the router thinks the edge
  wins would stay on the edge; they are left out so that every timed request takes the same path). The
  shipped checkpoint scores with its prior alone (γ = 0), so the gateway runs no encoder (router_model/prior_scorer.py);
- router on, tower: the same through a second gateway whose checkpoint is the shipped one with its MoE tower
  weighted (γ = `JUDGED_TOWER_WEIGHT` of bench/router_latency.py, which judges the faster paths there), on
  `--router-runtime`: what a router that runs its encoder costs;
- LiteLLM: POST {litellm}/v1/images/generations (b64_json), one worker, callbacks/DB/retries off.
CPU per request is the server process tree's user+system time over the requests it served (from /proc).
The router's own single-prompt cost is measured in this process (as in bench/router_latency.py) for
the "router adds no more than its own cost + 1 ms" check; the headline is the ratio to LiteLLM in the same run.

    python -m bench.gateway_overhead                 # writes its section of docs/BENCHMARKS.md
    python -m bench.gateway_overhead --requests 100 --concurrency 1 16 --no-markdown   # quick look
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np

from bench.markdown import add_output_arguments, publish
from bench.overhead_peers import LITELLM_MODEL, PEER, Run, cpu_seconds, ensure_litellm, litellm_version, running_litellm
from bench.overhead_report import ROUTER_ON, TOWER, report
from bench.overhead_stack import ROOT, Stack, running_stack, serve_worker

DATA_DIR = Path(os.environ.get("ROUTET2I_DATA_DIR", ROOT.parent / "shared" / "data"))
COCO = DATA_DIR / "coco2014_val_captions_5k.tsv"
IMAGE_SIDE = 512
SCENARIOS = ("direct", "router off", ROUTER_ON, TOWER)


# ---------------------------------------------------------------- load


def request_for(scenario: str, stack: Stack, prompt: str, seed: int, side: int = IMAGE_SIDE) -> tuple[str, dict]:
    if scenario == "direct":
        return f"{stack.worker_url}/v1/generate", {"prompt": prompt, "width": side, "height": side, "seed": seed}
    if scenario == PEER:
        body = {"model": LITELLM_MODEL, "prompt": prompt, "size": f"{side}x{side}", "response_format": "b64_json"}
        return f"{stack.litellm_url}/v1/images/generations", body
    route = "cloud" if scenario == "router off" else "auto"
    url = stack.tower_url if scenario == TOWER else stack.gateway_url
    return f"{url}/generate", {"prompt": prompt, "size": f"{side}x{side}", "seed": seed, "route": route}


async def drive(
    client: httpx.AsyncClient,
    scenario: str,
    stack: Stack,
    prompts: Sequence[str],
    concurrency: int,
    start: int = 0,
    side: int = IMAGE_SIDE,
) -> Run:
    """`len(prompts)` requests with `concurrency` in flight; each response is parsed and checked."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(prompts)):
        queue.put_nowait(i)
    latencies: list[float] = []
    backends: dict[str, int] = {}
    errors = 0

    async def one() -> None:
        nonlocal errors
        while not queue.empty():
            i = queue.get_nowait()
            url, body = request_for(scenario, stack, prompts[i], seed=start + i, side=side)
            started = time.perf_counter()
            headers = {"authorization": f"Bearer {stack.litellm_key}"} if scenario == PEER else None
            try:
                response = await client.post(url, json=body, headers=headers)
                payload = response.json()
                ok = response.status_code == 200 and len(payload.get("images") or payload.get("data") or []) == 1
            except (httpx.HTTPError, ValueError):
                ok = False
            elapsed = time.perf_counter() - started
            if ok:
                latencies.append(elapsed)
                backend = response.headers.get("x-route-backend", "worker")
                backends[backend] = backends.get(backend, 0) + 1
            else:
                errors += 1

    cpu, started = cpu_seconds(stack.pid(scenario)), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    return Run(np.asarray(latencies), errors, seconds, backends, cpu_seconds(stack.pid(scenario)) - cpu)


async def cloud_prompts(client: httpx.AsyncClient, urls: Sequence[str], prompts: Sequence[str], want: int) -> list[str]:
    """Prompts the POST /route of every gateway at `urls` sends to the cloud now (ρ = 1: PRŜ < ½)."""
    chosen: list[str] = []
    for prompt in prompts:
        backends = []
        for url in urls:
            response = await client.post(f"{url}/route", json={"prompt": prompt})
            response.raise_for_status()
            backends.append(response.json()["backend"])
        if all(b == "cloud" for b in backends):
            chosen.append(prompt)
            if len(chosen) == want:
                break
    if not chosen:
        raise RuntimeError("the router sends none of these prompts to the cloud at ρ = 1; check the checkpoint")
    return chosen


async def measure(
    stack: Stack, prompts: Sequence[str], sides: Sequence[int], concurrencies: Sequence[int], requests: int, rounds: int
):  # fmt: skip
    """{(image side, concurrency): {scenario: Run}}, each scenario run `rounds` times per cell in rotating order."""
    limits = httpx.Limits(max_connections=max(concurrencies) * 2, max_keepalive_connections=max(concurrencies) * 2)
    results: dict[tuple[int, int], dict[str, Run]] = {}
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        chosen = await cloud_prompts(client, stack.gateway_urls, prompts, want=max(requests // rounds, 20))
        warm = [chosen[i % len(chosen)] for i in range(32)]
        scenarios = tuple(s for s in SCENARIOS if s != TOWER or stack.tower is not None)
        scenarios += (PEER,) if stack.litellm_url else ()
        for scenario, side in [(s, side) for side in sides for s in scenarios]:  # connections, caches, router
            run = await drive(client, scenario, stack, warm, 16, side=side)
            if run.errors or set(run.backends) - {"worker", "cloud"}:  # LiteLLM's responses count as "worker"
                raise RuntimeError(
                    f"warm-up of {scenario!r}: {run.errors} errors, served by {run.backends}; the timed requests must "
                    "all reach the worker (see --gateway-log)"
                )
        for side in sides:
            for c in concurrencies:
                per_round = max(requests // rounds, c)
                parts: dict[str, list[Run]] = {s: [] for s in scenarios}
                for r in range(rounds):
                    batch = [chosen[(r * per_round + i) % len(chosen)] for i in range(per_round)]
                    k = r % len(scenarios)
                    for scenario in scenarios[k:] + scenarios[:k]:
                        run = await drive(client, scenario, stack, batch, c, start=r * per_round, side=side)
                        parts[scenario].append(run)
                results[side, c] = {s: _merge(runs) for s, runs in parts.items()}
    return chosen, results


def _merge(runs: Sequence[Run]) -> Run:
    backends: dict[str, int] = {}
    for run in runs:
        for k, v in run.backends.items():
            backends[k] = backends.get(k, 0) + v
    return Run(
        np.concatenate([r.latencies for r in runs]),
        sum(r.errors for r in runs),
        sum(r.seconds for r in runs),
        backends,
        sum(r.cpu_s for r in runs),
    )


def router_single_costs(routers: dict, prompts: Sequence[str], runtime: str) -> dict[str, float]:
    """p50 seconds of one single-prompt call, in this process, of the scorer each scenario's gateway runs for its
    router (`scorer_for` on `runtime`: the shipped checkpoint is served by its prior alone)."""
    import torch

    from bench.router_latency import full_router, paired_latency
    from router_model.onnx_runtime import scorer_for

    torch.set_num_threads(1)
    scorers = {name: full_router(scorer_for(router, runtime)) for name, router in routers.items()}
    return {name: float(np.percentile(t, 50)) for name, t in paired_latency(scorers, prompts).items()}


def main(argv: Sequence[str] | None = None) -> None:
    from router_model.onnx_runtime import RUNTIMES, onnx_available

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    worker = sub.add_parser("worker", help="serve only the fixed-image worker")
    worker.add_argument("--port", type=int, default=8001)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--requests", type=int, default=300, help="requests per scenario and cell")
    parser.add_argument("--sides", type=int, nargs="+", default=[512, 64], help="image sizes (square) to return")
    parser.add_argument("--rounds", type=int, default=3, help="rotating rounds the requests are split into")
    parser.add_argument("--prompts", type=Path, default=COCO)
    parser.add_argument("--router-prompts", type=int, default=200, help="prompts timing the router alone")
    parser.add_argument("--router-runtime", choices=RUNTIMES, default="onnx-int8" if onnx_available() else "torch")
    parser.add_argument("--gateway-log", type=Path, help="keep the gateway's log here")
    parser.add_argument("--litellm-log", type=Path, help="keep LiteLLM's log here")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out (no install, no peer rows)")
    parser.add_argument("--no-install", action="store_true", help="use LiteLLM only if .bench-venv/ already has it")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    if args.command == "worker":
        serve_worker(args.port)
        return

    from router_model.lab.data import read_prompts

    exe = None if args.no_litellm else ensure_litellm(install=not args.no_install)
    prompts = read_prompts(args.prompts)[:2000]
    from bench.router_latency import load_router

    # ROUTER_ON: the shipped checkpoint as it is; TOWER: the same with its tower at bench/router_latency.py's weight
    routers = {ROUTER_ON: load_router(tower_weight=None), TOWER: load_router()}
    router_p50 = router_single_costs(routers, prompts[: args.router_prompts], args.router_runtime)
    # No score cache and no exact image cache: router on and router off send the same seeded prompts in each round,
    # so with the image cache on, whichever ran second was served from it without calling the worker.
    env = {"ROUTET2I_ROUTER_RUNTIME": args.router_runtime, "ROUTET2I_ROUTER_CACHE_SIZE": "0",
           "ROUTET2I_CACHE_ENABLED": "false"}  # fmt: skip
    with contextlib.ExitStack() as stack_of:
        tmp = Path(stack_of.enter_context(tempfile.TemporaryDirectory(prefix="routet2i-overhead-")))
        tower = routers[TOWER].save_pretrained(tmp / "tower-checkpoint")
        stack = stack_of.enter_context(
            running_stack(tmp, gateway_log=args.gateway_log, extra_env=env, tower_checkpoint=tower)
        )
        if exe is not None:
            stack.litellm_url, stack.litellm_pid, stack.litellm_key = stack_of.enter_context(
                running_litellm(exe, stack.worker_url, tmp, log=args.litellm_log)
            )
        chosen, results = _run_async(measure(stack, prompts, args.sides, args.concurrency, args.requests, args.rounds))
    text = report(results, router_p50, args, len(chosen), litellm_version() if exe is not None else "")
    publish("gateway-overhead", text, args)


def _run_async(coro):
    """Run on uvloop when it is installed (it is, with uvicorn[standard]), so the load generator is cheap."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


if __name__ == "__main__":
    main()
