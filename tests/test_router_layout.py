"""router_model's layout: the run-time modules never load the lab, no module over 400 lines, and the
one `routet2i` console gets its lab commands from the lab and serve/worker from the gateway."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from gateway.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ["router_model.model", "router_model.encoder", "router_model.prs", "router_model.quality",
           "router_model.complexity", "router_model.features", "router_model.model_ids",
           "router_model.multi_router", "router_model.scorers", "router_model.onnx_runtime",
           "router_model.prior", "router_model.prior_scorer", "router_model.moe"]  # fmt: skip
COMMANDS = ["dataset", "train", "evaluate", "calibrate", "score", "frontier", "serve", "worker"]


def _env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def test_runtime_modules_load_nothing_from_the_lab():
    code = (
        "import sys\n"
        f"for name in {RUNTIME!r}: __import__(name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('router_model.lab')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_runtime_modules_are_the_listed_ones():
    """A new module at the top of router_model/ is run time by definition: add it to RUNTIME (or put it in lab/)."""
    top = sorted(f"router_model.{p.stem}" for p in (ROOT / "router_model").glob("*.py") if p.stem != "__init__")
    assert set(RUNTIME) <= set(top)
    assert not set(top) - set(RUNTIME), f"new run-time module(s) {set(top) - set(RUNTIME)}: list them in RUNTIME"


def test_no_router_module_over_400_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "router_model").rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400
    }
    assert not long


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_one_console_two_packages():
    commands = _commands()
    assert list(commands) == COMMANDS
    owner = {name: p.get_default("func").__module__ for name, p in commands.items() if name != "dataset"}
    dataset = next(a for a in commands["dataset"]._actions if isinstance(a, argparse._SubParsersAction))
    owner |= {f"dataset {n}": p.get_default("func").__module__ for n, p in dataset.choices.items()}
    assert owner == {
        "train": "router_model.lab.cli",
        "evaluate": "router_model.lab.cli",
        "calibrate": "router_model.lab.cli",
        "score": "router_model.lab.cli",
        "frontier": "router_model.lab.frontier_cli",
        "serve": "gateway.cli",
        "worker": "gateway.cli",
        "dataset import": "router_model.lab.cli",
        "dataset build": "router_model.lab.cli",
        "dataset stats": "router_model.lab.cli_dataset",
        "dataset analyze": "router_model.lab.cli_dataset",
    }


def test_console_help_lists_every_command():
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--help"], env=_env(), capture_output=True, text=True, check=True
    ).stdout
    assert "{" + ",".join(COMMANDS) + "}" in out
