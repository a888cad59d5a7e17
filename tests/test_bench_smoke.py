"""The bench scripts run end to end at toy sizes (one documented command each) and write only their
own section of the benchmarks page; bench/markdown.py keeps sections in order and apart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.markdown import SECTIONS, end_marker, gpu_edge_section, start_marker, write_section
from bench.overhead_peers import litellm_executable
from router_model.onnx_runtime import onnx_available

ROOT = Path(__file__).resolve().parents[1]


def run_bench(module: str, *args: str, timeout: int = 240) -> str:
    done = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{module} failed:\n{done.stderr[-3000:]}"
    return done.stdout


def section(text: str, name: str) -> str:
    start, end = text.index(start_marker(name)), text.index(end_marker(name))
    return text[start:end]


def test_sections_are_replaced_in_place_and_kept_in_order(tmp_path):
    page = tmp_path / "BENCHMARKS.md"
    write_section("gpu-edge", "## GPU\nold", page)
    write_section("router-latency", "## Router\nfirst", page)
    write_section("budget-tracking", "## Budget\nx", page)
    write_section("router-latency", "## Router\nsecond", page)
    text = page.read_text()
    assert "first" not in text and "second" in text and "old" in text
    positions = [text.index(start_marker(n)) for n in SECTIONS if start_marker(n) in text]
    assert positions == sorted(positions) and len(positions) == 3
    assert text.startswith("# Benchmarks")


def test_broken_markers_and_unknown_sections_are_refused(tmp_path):
    page = tmp_path / "BENCHMARKS.md"
    page.write_text(f"# Benchmarks\n{end_marker('router-latency')}\n{start_marker('router-latency')}\n")
    with pytest.raises(ValueError, match="markers of section 'router-latency' are broken"):
        write_section("router-latency", "x", page)
    with pytest.raises(ValueError, match="unknown benchmark section"):
        write_section("nonsense", "x", page)


def test_gpu_edge_section_copies_the_generated_table_and_says_it_is_the_h100_run():
    text = gpu_edge_section()
    assert "H100" in text and (ROOT / "docs/bench/gpu_edge.md").read_text().strip() in text


@pytest.mark.slow
def test_router_latency_smoke(tmp_path):
    page = tmp_path / "BENCHMARKS.md"
    out = run_bench("bench.router_latency", "--single", "4", "--batched", "64", "--agree", "150",
                    "--max-lengths", "32", "--out", str(page))  # fmt: skip
    part = section(page.read_text(), "router-latency")
    for row in ("| encoder alone |", "| full router |", "| bfloat16 encoder |", "| max_length 32 |"):
        assert row in part
    assert "Target full router p50" in part and "python -m bench.router_latency" in part
    assert "## Router cost" in out
    if onnx_available():  # the gateway's two ONNX runtimes, and the check against the fp32 graph (then and now)
        assert "| ONNX Runtime fp32 |" in part and "| ONNX Runtime int8 mixed |" in part
        assert "| ONNX Runtime fp32, members one by one |" in part
        assert "faster single-prompt p50 than the fp32 graph as it was" in part and "against today's fp32" in part


@pytest.mark.slow
def test_gateway_overhead_smoke(tmp_path):
    page = tmp_path / "BENCHMARKS.md"
    run_bench("bench.gateway_overhead", "--requests", "8", "--rounds", "1", "--concurrency", "1", "4",
              "--sides", "64", "--router-prompts", "10", "--no-litellm", "--out", str(page))  # fmt: skip
    part = section(page.read_text(), "gateway-overhead")
    for scenario in ("direct", "router off", "router on", "router on, tower"):
        assert f"| {scenario} | 8 | 0 |" in part  # every request answered, none failed
    assert "prior alone, γ = 0" in part and "`router on, tower` adds" in part
    assert "64×64, concurrency 4: added p50 router off" in part and "LiteLLM was not run" in part


@pytest.mark.slow
@pytest.mark.skipif(
    not litellm_executable().exists(),
    reason="LiteLLM is not in .bench-venv/ (python -m bench.gateway_overhead installs it; CI never downloads it)",
)
def test_gateway_overhead_with_the_litellm_peer(tmp_path):
    page = tmp_path / "BENCHMARKS.md"
    run_bench("bench.gateway_overhead", "--requests", "8", "--rounds", "2", "--concurrency", "2",
              "--sides", "64", "--router-prompts", "10", "--no-install", "--out", str(page))  # fmt: skip
    part = section(page.read_text(), "gateway-overhead")
    assert "| LiteLLM | 8 | 0 |" in part and "router on/LiteLLM" in part
    assert "model: openai/dall-e-2" in part and "num_retries: 0" in part  # its exact config is in the page


@pytest.mark.slow
def test_budget_tracking_smoke(tmp_path):
    page = tmp_path / "BENCHMARKS.md"
    run_bench("bench.budget_tracking", "--coco", "500", "--parti", "300", "--diffusiondb", "500",
              "--calibration", "300", "--change-at", "1400", "--out", str(page))  # fmt: skip
    part = section(page.read_text(), "budget-tracking")
    assert "| live controller |" in part and "| fixed offline α |" in part
    assert "ΔP labelled" in part and "genai-bench" in part


def test_train_scaling_smoke(tmp_path):
    page = tmp_path / "BENCHMARKS.md"
    run_bench("bench.train_scaling", "--pairs", "genai", "--limit", "100", "--bootstrap", "0", "--legacy-epochs", "1",
              "--methods", "prompt_length", "routellm_bert", "routet2i", "--work", str(tmp_path), "--out", str(page),
              timeout=600)  # fmt: skip
    part = section(page.read_text(), "train-scaling")
    assert "### GenAI-Bench SD 2.1 → DALL·E 3" in part and "| routet2i |" in part and "| prompt_length |" in part
    assert "100 prompts" in part and "Before (the unscaled loop" in part and "python -m bench.train_scaling" in part
    assert (tmp_path / "runs" / "data" / "genai_sd21_dalle3.jsonl").exists()
