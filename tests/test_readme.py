"""Keep README.md honest: its runnable shell blocks run, the commands it names exist.

- Every fenced ```bash block preceded by `<!-- runnable -->` runs, as written, in a fresh
  AIRFLOW_HOME with a fresh snapshot store (SQLite and PostgreSQL), and exits 0.
- Every `nx1-connect ...` command the README mentions resolves to a real command of the
  console script, with every `--option` it shows, and its `--help` exits 0.
- The configuration table lists exactly the `[nx1_connect]` options, with their defaults.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from airflow_nx1_connect.cli import cli
from airflow_nx1_connect.core.settings import OPTIONS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUNNABLE = "<!-- runnable -->"
BIN = Path(sys.executable).parent


def readme() -> str:
    return README.read_text(encoding="utf-8")


def runnable_blocks(text: str) -> list[str]:
    """The ```bash blocks directly preceded by the runnable marker."""
    pattern = re.compile(re.escape(RUNNABLE) + r"\s*\n```(?:bash|sh)\n(.*?)\n```", re.DOTALL)
    return [m.group(1) for m in pattern.finditer(text)]


def test_readme_has_runnable_blocks() -> None:
    blocks = runnable_blocks(readme())
    assert blocks, f"README.md has no ```bash block marked {RUNNABLE}"
    # A marker must sit right before a bash block; a stray one would silently test nothing.
    assert readme().count(RUNNABLE) == len(blocks)


@pytest.mark.parametrize("index", range(len(runnable_blocks(readme()))))
def test_runnable_block_runs(index: int, store_env: str, tmp_path: Path) -> None:
    block = runnable_blocks(readme())[index]
    home = tmp_path / "airflow-home"
    home.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIRFLOW_", "AIRFLOW__"))
    }
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN=store_env,
    )
    # Line by line under `set -e -x`, so a failure names the README line that broke.
    result = subprocess.run(
        ["bash", "-e", "-u", "-o", "pipefail", "-x", "-c", block],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, (
        f"README runnable block {index} failed (exit {result.returncode}):\n{block}\n"
        f"--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}"
    )
    assert "Traceback" not in result.stderr


def mentioned_commands(text: str) -> list[list[str]]:
    """Token lists of every `nx1-connect ...` mention (up to a pipe, quote, or line end)."""
    found: list[list[str]] = []
    for match in re.finditer(r"\bnx1-connect((?:[ \t]+[^\s`|'\"$()]+)*)", text):
        tokens = match.group(1).split()
        found.append(tokens)
    return found


def resolve(tokens: list[str]) -> tuple[list[str], click.Command, list[str]]:
    """Walk the click tree: (command path, the command reached, the options shown after it)."""
    command: click.Command = cli
    path: list[str] = []
    rest = list(tokens)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        sub = command.get_command(click.Context(command), name)
        assert sub is not None, (
            f"README mentions `nx1-connect {' '.join([*path, name])}`, which does not exist"
        )
        command, path = sub, [*path, name]
    options = [t.strip("[]").split("=", 1)[0] for t in rest if t.strip("[]").startswith("--")]
    return path, command, options


def test_readme_nx1_connect_commands_exist() -> None:
    mentions = mentioned_commands(readme())
    assert len(mentions) >= 10, "expected the README to show the nx1-connect commands"
    checked: set[tuple[str, ...]] = set()
    runner = CliRunner()
    leaves: set[tuple[str, ...]] = set()
    for tokens in mentions:
        path, command, options = resolve(tokens)
        known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
        known |= {"--help", "-h"}  # click adds the help option to every command
        for option in options:
            assert option in known, (
                f"README shows `nx1-connect {' '.join(path)} {option}`, "
                f"but that command has only {sorted(known)}"
            )
        if not isinstance(command, click.Group):
            leaves.add(tuple(path))
        if tuple(path) in checked:
            continue
        checked.add(tuple(path))
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, f"`nx1-connect {' '.join(path)} --help`: {result.output}"
    # The CLI reference names every command the console script has.
    every = {
        (group, name)
        for group, sub in cli.commands.items()
        if isinstance(sub, click.Group)
        for name in sub.commands
    }
    assert every <= leaves, f"commands missing from the README: {sorted(every - leaves)}"


def test_console_script_help_runs() -> None:
    """The installed entry point itself (not only the click object) answers --help."""
    result = subprocess.run(
        [str(BIN / "nx1-connect"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for group in ("db", "apis", "keys", "snapshots"):
        assert group in result.stdout


def config_table(text: str) -> dict[str, str]:
    """option -> default cell of the README's configuration table."""
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| ([^|]*) \|", section, re.MULTILINE)
    return {name: default.strip() for name, default in rows}


def test_readme_configuration_table_matches_settings() -> None:
    table = config_table(readme())
    assert set(table) == set(OPTIONS), "the table must list exactly the [nx1_connect] options"
    for name, (default, _description) in OPTIONS.items():
        if default:
            assert table[name] == f"`{default}`", f"{name}: README says {table[name]}"
        elif name == "sql_alchemy_conn":
            assert "nx1_connect.db" in table[name], f"{name}: the embedded default is missing"
        else:
            assert table[name].startswith("empty"), f"{name}: README says {table[name]}"


def test_readme_images_exist() -> None:
    """Every image the README shows (the admin view's screenshots) is in the repository."""
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme())
    assert len(images) >= 3, "the README shows the admin view's screenshots"
    missing = [image for image in images if not (ROOT / image).is_file()]
    assert not missing, f"README.md shows images that are not in the repository: {missing}"
