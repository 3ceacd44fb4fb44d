"""benchmarks/run.py: one Markdown table; a missing or failing module shows as ERROR rows."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from benchmarks import run as harness

ROOT = Path(__file__).resolve().parents[1]


def _module(rows=None, error: Exception | None = None) -> types.ModuleType:
    module = types.ModuleType("fake_bench")

    def run(quick: bool) -> list[dict]:
        if error is not None:
            raise error
        return rows or []

    module.run = run  # type: ignore[attr-defined]
    return module


def test_rows_of_a_module_that_runs() -> None:
    rows = [
        {
            "id": "W1",
            "figure": "a",
            "ours": 10,
            "peer": 5,
            "ratio": 2.0,
            "target": ">= 1x",
            "met": True,
        },
        {
            "id": "W2",
            "figure": "b",
            "ours": 1,
            "peer": 5,
            "ratio": 0.2,
            "target": ">= 1x",
            "met": False,
        },
    ]
    got, ok = harness.run_module("x", ["W1", "W2"], True, importer=lambda _: _module(rows))
    assert ok and got == rows
    table = harness.render(got).splitlines()
    assert table[0] == "| id | figure | ours | peer/limit | ratio | target |"
    assert table[2].startswith("| W1 | a | 10 | 5 | 2 | >= 1x (met) |")
    assert table[3].endswith("| >= 1x (NOT met) |")


def test_a_raising_module_gives_error_rows() -> None:
    got, ok = harness.run_module(
        "x", ["R1", "R2"], True, importer=lambda _: _module(error=RuntimeError("port | busy"))
    )
    assert not ok
    assert [r["id"] for r in got] == ["R1", "R2"]
    assert all("RuntimeError: port | busy" in r["ours"] for r in got)
    assert "port \\| busy" in harness.render(got)  # a pipe cannot break the table


def test_a_module_missing_a_figure_is_reported() -> None:
    rows = [{"id": "W1", "figure": "a", "ours": 1, "peer": 1, "ratio": 1, "target": ""}]
    got, ok = harness.run_module("x", ["W1", "W3"], True, importer=lambda _: _module(rows))
    assert not ok
    assert [r["id"] for r in got] == ["W1", "W3"] and "no row" in got[1]["ours"]


@pytest.mark.slow  # spawns processes
def test_missing_module_exits_nonzero_with_error_row() -> None:
    code = (
        "import sys; from benchmarks import run as h;"
        "h.MODULES = (('benchmarks.no_such_bench', ('Z1',)),);"
        "sys.exit(h.main(['--quick']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "| Z1 | not measured | ERROR: cannot import benchmarks.no_such_bench" in result.stdout
