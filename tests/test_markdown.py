"""The one markdown table renderer of the lab and the benchmarks."""

from __future__ import annotations

import math

import pytest

from router_model.lab.markdown import number, table


def test_table_default_alignment_labels_left_numbers_right():
    assert table(["method", "ΔP", "AUC"], [["oracle", 1.5, "2.00"], ["random", 0, "—"]]) == (
        "| method | ΔP | AUC |\n| --- | ---: | ---: |\n| oracle | 1.5 | 2.00 |\n| random | 0 | — |"
    )


def test_table_explicit_alignment_and_no_rows():
    assert table(["a", "b"], [], align="lr") == "| a | b |\n| --- | ---: |"
    assert table(["a", "b"], [[1, 2]], align="ll").splitlines()[1] == "| --- | --- |"


@pytest.mark.parametrize(
    ("headers", "rows", "align"),
    [(["a", "b"], [[1]], None), (["a", "b"], [[1, 2]], "l"), (["a", "b"], [[1, 2]], "lc")],
)
def test_table_rejects_misshapen_input(headers, rows, align):
    with pytest.raises(ValueError):
        table(headers, rows, align)


def test_number_cells():
    assert number(1.23456) == "1.23"
    assert number(1.23456, 4) == "1.2346"
    assert number(None) == "—" and number(math.nan) == "—"
