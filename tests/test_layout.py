"""The layout rules of docs/ARCHITECTURE.md, checked on the source: small modules, imports pointing one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gateway", "router_model", "backends", "demo", "bench")
PROJECT = {"gateway", "router_model", "backends", "demo", "bench", "tests"}
# package (or sub-package) → project packages it may import besides itself
ALLOWED = {
    "backends": set(),
    "demo": {"backends"},
    "gateway.budget": set(),
    "router_model": set(),  # the run-time modules; the lab is checked separately
    "router_model.lab": {"router_model", "backends"},  # dataset build runs the pipelines
    "gateway": {"router_model", "backends", "demo"},
}
DENIED = {"router_model": {"router_model.lab"}}  # a parent may import its sub-packages, except these


def sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name for name in names if name.split(".")[0] in PROJECT}


def owner(module: str) -> str | None:
    """The most specific entry of ALLOWED that contains `module`."""
    matches = [key for key in ALLOWED if module == key or module.startswith(key + ".")]
    return max(matches, key=len) if matches else None


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_source_module_over_400_lines(path):
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 400


def allowed(rule: str, name: str) -> bool:
    if any(name == d or name.startswith(d + ".") for d in DENIED.get(rule, ())):
        return False
    if name == rule or name.startswith(rule + "."):
        return True
    return any(name == a or name.startswith(a + ".") for a in ALLOWED[rule])


def test_imports_point_one_way():
    wrong = []
    for path in sources():
        module = module_name(path)
        rule = owner(module)
        if rule is None:
            continue
        wrong += [f"{module} imports {name}" for name in imported(path) if not allowed(rule, name)]
    assert not wrong, "\n".join(wrong)


def test_the_rules_catch_a_wrong_import():
    assert not allowed("router_model", "router_model.lab.data")
    assert not allowed("backends", "gateway.settings")
    assert not allowed("gateway.budget", "gateway.schemas")
    assert allowed("gateway", "gateway.budget.store") and allowed("router_model.lab", "router_model.model")
