"""Helpers shared by test modules: the installed `nx1-connect` console script."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

KEY_LINE = re.compile(r"^nx1_[A-Za-z0-9_-]{54}\n$")
_BIN = Path(sys.executable).parent / "nx1-connect"
SCRIPT = str(_BIN) if _BIN.exists() else shutil.which("nx1-connect")


#: Every finished run of the script in this session (the leak check reads them).
RAN: list[subprocess.CompletedProcess[str]] = []


def nx1(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed console script with the test's environment (its store)."""
    assert SCRIPT, "the nx1-connect console script is not installed"
    full_env = {**os.environ, **(env or {})}
    res = subprocess.run(
        [SCRIPT, *args], capture_output=True, text=True, env=full_env, timeout=120, check=False
    )
    RAN.append(res)
    return res


def ok(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    res = nx1(*args, **kw)
    assert res.returncode == 0, (args, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    return res


def user_error(*args: str, expect: str, **kw) -> str:
    """Assert exit 1, nothing on stdout, and exactly one clear line on stderr."""
    res = nx1(*args, **kw)
    assert res.returncode == 1, (args, res.stdout, res.stderr)
    assert res.stdout == "", args
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), (args, res.stderr)
    assert expect in lines[0], (args, lines[0])
    assert "Traceback" not in res.stderr
    return lines[0]
