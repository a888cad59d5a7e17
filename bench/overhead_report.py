"""The page section of bench/gateway_overhead.py: the table (latency, throughput, CPU per request) and the
issue-13 targets as ratios to LiteLLM measured in the same run."""

from __future__ import annotations

import argparse
import importlib.util

import numpy as np

from bench.markdown import run_note
from bench.overhead_peers import PEER, Run, litellm_config
from router_model.lab.markdown import table

ROUTER_ON = "router on"  # the shipped checkpoint: its prior alone (γ = 0), no encoder run
TOWER = "router on, tower"  # the same checkpoint with its MoE tower weighted: encoder + head on the runtime

HEADERS = ("image", "concurrency", "scenario", "ok", "errors", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms",
           "req/s", "CPU ms/req", "served by")  # fmt: skip


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def report(
    results: dict[tuple[int, int], dict[str, Run]], router_p50: dict[str, float], args: argparse.Namespace, n: int,
    peer: str,
) -> str:  # fmt: skip
    """`router_p50`: the single-prompt p50 seconds of each router scenario's scorer, measured alone."""
    from bench.router_latency import JUDGED_TOWER_WEIGHT  # here: the worker process imports this module, not torch

    router_text = {ROUTER_ON: "shipped checkpoint (prior alone, γ = 0: tokenizer and regex features, no encoder)",
                   TOWER: f"tower weighted (γ {JUDGED_TOWER_WEIGHT:g}: encoder + head)"}  # fmt: skip
    rows, notes = [], []
    json_lib = "orjson" if importlib.util.find_spec("orjson") else "stdlib json"
    peer_text = (
        f"LiteLLM {peer} (`litellm --num_workers 1`, config below) as the peer on the same upstream, " if peer else ""
    )
    for (side, c), runs in results.items():
        d50, d99 = np.percentile(runs["direct"].latencies, [50, 99])
        added = {}
        for scenario, run in runs.items():
            p50, p99 = np.percentile(run.latencies, [50, 99])
            added[scenario] = p50 - d50
            served = ", ".join(f"{k} {v}" for k, v in sorted(run.backends.items()))
            rows.append(
                [f"{side}×{side}", c, scenario, len(run.latencies), run.errors, ms(p50), ms(p99),
                 "" if scenario == "direct" else f"{(p50 - d50) * 1e3:+.2f}",
                 "" if scenario == "direct" else f"{(p99 - d99) * 1e3:+.2f}", f"{run.rate:.0f}",
                 ms(cpu_per(run)), served]
            )  # fmt: skip
        notes.append(cell_note(side, c, runs, added, router_p50))
    lines = [
        "## Gateway overhead",
        "",
        run_note(),
        "",
        "Worker returning a fixed PNG at once (512×512: about 400 kB, the size class of a real output; 64×64: "
        "the per-request cost without the payload); gateway `python -m gateway.cli serve` "
        f"(uvicorn, uvloop/httptools, INFO logging, {json_lib} "
        f"responses, `router_runtime: {args.router_runtime}`, `router_cache_size: 0` and `cache_enabled: false` "
        "because the timed prompts and seeds repeat across scenarios and a score or image cache hit would hide the "
        "router or the upstream call) and the worker as separate "
        f"processes, {peer_text}this process driving them with one httpx.AsyncClient; {args.rounds} rotating "
        f"rounds per cell, {n} COCO captions the router sends to the cloud at ρ = 1. Latency is client-side wall time "
        "per request, response JSON parsed; CPU per request is the serving process tree's user+system time. The "
        "machine has 2 cores shared with other work, so only ratios within this one run mean much.",
        "",
        table(HEADERS, rows, align="lrlrrrrrrrrl"),
        "",
        "Router alone (one prompt, in the load process, the gateway's scorer): "
        + "; ".join(f"{router_text[name]}, `{name}`: p50 {ms(p50)} ms" for name, p50 in router_p50.items())
        + ". At concurrency 1, more CPU per request than router off (compare the router alone): "
        + "; ".join(
            f"`{name}` "
            + ", ".join(
                f"{ms(cpu_per(runs[name]) - cpu_per(runs['router off']))} ms ({side}×{side})"
                for (side, c), runs in results.items()
                if c == 1 and name in runs
            )
            for name in router_p50
        )
        + ".",
        "",
        *notes,
    ]
    if peer:
        lines += ["", "LiteLLM config (`litellm --config litellm.yaml --num_workers 1`, `LITELLM_LOG=ERROR`, a random "
                  "master key as the bearer token):", "", "```yaml", litellm_config("http://127.0.0.1:PORT").rstrip(),
                  "```"]  # fmt: skip
    else:
        lines += ["", "LiteLLM was not run (`--no-litellm`): no peer ratios."]
    return "\n".join(lines)


def cpu_per(run: Run) -> float:
    return run.cpu_s / max(len(run.latencies) + run.errors, 1)


def verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def cell_note(side: int, c: int, runs: dict[str, Run], added: dict[str, float], router_p50: dict[str, float]) -> str:
    """One bullet: the added latencies and throughputs of this cell, checked against the targets of issue 13
    that apply to it (ratios to LiteLLM in this run when it ran), for each router scenario that ran."""
    off = added["router off"]
    rate = {s: r.rate for s, r in runs.items()}
    routers = [name for name in (ROUTER_ON, TOWER) if name in runs]
    parts = [f"added p50 router off **{ms(off)} ms**, "
             + ", ".join(f"{name} **{ms(added[name])} ms**" for name in routers)]  # fmt: skip
    for name in routers:
        on = added[name]
        if c == 1 and name in router_p50:
            extra = on - off
            parts.append(f"`{name}` adds {ms(extra)} ms over router off against its own p50 {ms(router_p50[name])} ms "
                         f"(target ≤ its p50 + 1 ms: {verdict(extra <= router_p50[name] + 1e-3)})")  # fmt: skip
        if PEER in runs:
            peer = added[PEER]
            parts.append(f"{name}/LiteLLM added p50 **{on / peer:.2f}×**"
                         + (f" (target ≤ 0.5: {verdict(on <= 0.5 * peer)})" if c == 1 else "")
                         + f", req/s **{rate[name] / rate[PEER]:.2f}×** LiteLLM's"
                         + (f" (target ≥ 1.5: {verdict(rate[name] >= 1.5 * rate[PEER])})"
                            if c == 16 else ""))  # fmt: skip
        parts.append(
            f"req/s {name} **{rate[name] / rate['router off']:.2f}×** router off's"
            + (f" (target ≥ 0.6: {verdict(rate[name] >= 0.6 * rate['router off'])})" if c == 16 else "")
        )
    if PEER in runs:
        peer = added[PEER]
        parts.append(f"LiteLLM adds **{ms(peer)} ms**; router off/LiteLLM **{off / peer:.2f}×**"
                     + (f" (target ≤ 0.3: {verdict(off <= 0.3 * peer)})" if side >= 512 else ""))  # fmt: skip
    return f"- {side}×{side}, concurrency {c}: " + "; ".join(parts) + "."
