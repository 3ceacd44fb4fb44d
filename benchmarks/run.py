"""Run every benchmark and print one Markdown table, a row per figure.

Usage: `python -m benchmarks.run --quick` (under 5 minutes) or `--full`
(`make bench-quick`, `make bench`). Each benchmark module exposes
`run(quick: bool) -> list[dict]` whose rows have the keys of `COLUMNS`.
A module that is missing or raises gets a row with the error text, and the run
exits 1 at the end, so a broken benchmark is never hidden.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

#: (module, the ids of the figures it reports) in the order they are run and printed.
MODULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("benchmarks.write_bench", ("W1", "W2", "W3", "W3m")),
    ("benchmarks.serve_bench", ("R1", "R2", "R3", "R4", "R5", "R6", "R7", "R9")),
    ("benchmarks.tenants_bench", ("R8",)),
    ("benchmarks.changes_bench", ("C1",)),
    ("benchmarks.mount_bench", ("M1",)),
    ("benchmarks.webhooks_bench", ("H1", "H2")),
    ("benchmarks.large_bench", ("W4", "W5")),
)
#: Table columns: (row key, header).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "id"),
    ("figure", "figure"),
    ("ours", "ours"),
    ("peer", "peer/limit"),
    ("ratio", "ratio"),
    ("target", "target"),
)


def _cell(value: Any) -> str:
    """One table cell: floats rounded, pipes and newlines escaped."""
    if value is None:
        text = ""
    elif isinstance(value, int) and not isinstance(value, bool):
        text = f"{value:,}"
    elif isinstance(value, float):
        text = f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    else:
        text = str(value)
    return " ".join(text.replace("|", "\\|").split())


def _error_rows(ids: Sequence[str], message: str) -> list[dict[str, Any]]:
    return [
        {
            "id": fig,
            "figure": "not measured",
            "ours": f"ERROR: {message}",
            "peer": "",
            "ratio": "",
            "target": "",
        }
        for fig in ids
    ]


def run_module(
    name: str, ids: Sequence[str], quick: bool, *, importer: Callable[[str], Any] | None = None
) -> tuple[list[dict[str, Any]], bool]:
    """Rows from one benchmark module and whether it ran cleanly."""
    importer = importer or importlib.import_module
    try:
        module = importer(name)
    except Exception as exc:  # a missing or broken module must show in the table
        return _error_rows(ids, f"cannot import {name}: {type(exc).__name__}: {exc}"), False
    try:
        rows = list(module.run(quick))
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        return _error_rows(ids, f"{name}.run raised {type(exc).__name__}: {exc}"), False
    ok = True
    seen = {str(row.get("id")) for row in rows if isinstance(row, dict)}
    bad = [row for row in rows if not isinstance(row, dict) or "id" not in row]
    if bad:
        rows = [row for row in rows if isinstance(row, dict) and "id" in row]
        rows += _error_rows(["?"], f"{name} returned {len(bad)} row(s) without an id")
        ok = False
    missing = [fig for fig in ids if fig not in seen]
    if missing:
        rows += _error_rows(missing, f"{name} returned no row for this figure")
        ok = False
    return rows, ok


def render(rows: Sequence[dict[str, Any]]) -> str:
    """The Markdown table of `rows`."""
    lines = [
        "| " + " | ".join(header for _, header in COLUMNS) + " |",
        "| " + " | ".join("---" for _ in COLUMNS) + " |",
    ]
    for row in rows:
        cells = {key: _cell(row.get(key)) for key, _ in COLUMNS}
        if isinstance(row.get("met"), bool):  # a module may say whether its target is met
            cells["target"] = f"{cells['target']} ({'met' if row['met'] else 'NOT met'})".strip()
        lines.append("| " + " | ".join(cells[key] for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks, print the table; 0 when every module ran, else 1."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="short run, under 5 minutes")
    mode.add_argument("--full", action="store_true", help="full sizes (default)")
    parser.add_argument(
        "--only",
        action="append",
        metavar="MODULE",
        help="run only this module (write_bench, serve_bench or large_bench); may repeat",
    )
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    rows: list[dict[str, Any]] = []
    all_ok = True
    started = time.monotonic()
    for name, ids in MODULES:
        if args.only and name.rsplit(".", 1)[-1] not in args.only and name not in args.only:
            continue
        t0 = time.monotonic()
        print(f"[bench] {name} ({'quick' if quick else 'full'}) ...", file=sys.stderr, flush=True)
        module_rows, ok = run_module(name, ids, quick)
        print(
            f"[bench] {name}: {'ok' if ok else 'FAILED'} in {time.monotonic() - t0:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        rows += module_rows
        all_ok = all_ok and ok
    print(
        f"\nairflow-nx1-connect benchmarks, {'quick' if quick else 'full'} run, "
        f"{platform.python_implementation()} {platform.python_version()} on "
        f"{platform.machine()}, {time.monotonic() - started:.0f} s\n"
    )
    print(render(rows))
    unmet = [str(row.get("id")) for row in rows if row.get("met") is False]
    if unmet:
        print(f"\nTargets not met: {', '.join(unmet)}.")
    if not all_ok:
        print("\nSome benchmarks did not run: see the ERROR rows above.", file=sys.stderr)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
