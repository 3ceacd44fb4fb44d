"""Keep docs/clients.md ("Use it from an app") honest: every code block runs as written.

A store with the page's data API `weekly_top_product` (written by the real write path) is
served by a real uvicorn server with both mounts (`tests.web.mounts`). The page's ```python
and ```bash blocks then run in order, in one fresh folder (a bash block's generated client
is imported by the next python block), with `NX1_BASE` and `NX1_KEY` set as the page says;
each must exit 0 without a traceback, and together they must print the rows.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.web.mounts import Mounts, serve_both_mounts

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "clients.md"
BIN = Path(sys.executable).parent
ROWS = [
    ("Espresso", 120, dt.date(2026, 1, 5)),
    ("Bagel", 98, dt.date(2026, 1, 5)),
    ("Croissant", 143, dt.date(2026, 1, 5)),
    ("Tea", 12, dt.date(2026, 1, 5)),
]


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every ```python and ```bash block, in page order."""
    pattern = re.compile(r"^```(python|bash)\n(.*?)\n```$", re.DOTALL | re.MULTILINE)
    return [(m.group(1), m.group(2)) for m in pattern.finditer(text)]


@pytest.fixture
def served(store_env: str, tmp_path: Path) -> Iterator[tuple[Mounts, str]]:
    """The page's data API on the test's store (SQLite, PostgreSQL), served; and its key."""
    from airflow_nx1_connect.core import engines, keys, store, writer
    from airflow_nx1_connect.core import snapshots as snaps

    engine = engines.get_engine(store_env)
    store.migrate(engine)
    snaps.register_data_api(
        engine,
        name="weekly_top_product",
        kind="ask",
        question="Which product sold most this week?",
        dag_id="retail",
        task_id="top_product",
    )
    columns = [
        snaps.Column("product", "TEXT"),
        snaps.Column("units", "INTEGER"),
        snaps.Column("week", "DATE"),
    ]
    writer.write_snapshot(engine, data_api="weekly_top_product", columns=columns, batches=[ROWS])
    key = keys.create_key(engine, data_api="weekly_top_product", days=1).secret
    with serve_both_mounts(store_env, tmp_path / "uvicorn.log") as mounts:
        yield mounts, key


def test_page_has_code_for_each_way() -> None:
    text = PAGE.read_text(encoding="utf-8")
    code = "\n".join(block for _, block in code_blocks(text))
    for needle in ("import requests", "import pandas", "import polars", "openapi-python-client"):
        assert needle in code, f"docs/clients.md has no code block with {needle!r}"


def test_every_code_block_runs(served: tuple[Mounts, str], tmp_path: Path) -> None:
    mounts, key = served
    work = tmp_path / "app"
    work.mkdir()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "NX1_BASE": mounts.bases["fastapi"],
        "NX1_KEY": key,
        "PYTHONPATH": str(work),
    }
    printed = []
    for index, (language, code) in enumerate(code_blocks(PAGE.read_text(encoding="utf-8"))):
        command = (
            [sys.executable, "-c", code]
            if language == "python"
            else ["bash", "-e", "-u", "-o", "pipefail", "-c", code]
        )
        result = subprocess.run(
            command, cwd=work, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0 and "Traceback" not in result.stderr, (
            f"docs/clients.md block {index} ({language}) failed (exit {result.returncode}):\n"
            f"{code}\n--- stdout ---\n{result.stdout[-3000:]}\n"
            f"--- stderr ---\n{result.stderr[-3000:]}"
        )
        printed.append(result.stdout)
    output = "\n".join(printed)
    for product, units, _ in ROWS:
        assert product in output and str(units) in output
    assert "200 304" in output  # the conditional request example
    assert "Croissant 143 2026-01-05" in output  # the typed client's rows
