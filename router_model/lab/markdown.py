"""Markdown tables: the one renderer behind every table the lab and the benchmarks write."""

from __future__ import annotations

import math
from collections.abc import Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """A GitHub markdown table (no trailing newline).

    `align` has one letter per column: l (left, the default rule `---`) or r (right, `---:`).
    Default: the first column left, the others right (labels then numbers).
    """
    align = align or "l" + "r" * (len(headers) - 1)
    if len(align) != len(headers):
        raise ValueError(f"align {align!r} has {len(align)} letters for {len(headers)} columns")
    if set(align) - {"l", "r"}:
        raise ValueError(f"align letters are l or r, got {align!r}")
    bad = [row for row in rows if len(row) != len(headers)]
    if bad:
        raise ValueError(f"a row has {len(bad[0])} cells for {len(headers)} columns: {bad[0]!r}")
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def number(value: float | None, digits: int = 2) -> str:
    """A table cell for a number: fixed digits, or an em dash for a missing or NaN value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"
