"""Keep README.md and docs/*.md honest: runnable blocks run, commands exist, links resolve.

The pages are README.md and every docs/*.md; each check reads all of them.

- Every fenced ```bash block preceded by `<!-- runnable -->` runs, as written, in a fresh
  AIRFLOW_HOME with a fresh snapshot store (SQLite and PostgreSQL), and exits 0.
- Every `nx1-connect ...` command a page mentions resolves to a real command of the console
  script, with every `--option` it shows, and its `--help` exits 0; the command line reference
  (docs/cli.md) shows every option of every command.
- The configuration table (docs/production.md) lists exactly the `[nx1_connect]` options, with
  their defaults.
- Every image and every relative link (and its `#anchor`) points at something that exists.
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
DOCS = ROOT / "docs"
CLI_PAGE = DOCS / "cli.md"
CONFIG_PAGE = DOCS / "production.md"
RUNNABLE = "<!-- runnable -->"
BIN = Path(sys.executable).parent


def pages() -> list[Path]:
    """README.md, then every docs/*.md page, in a stable order."""
    return [README, *sorted(DOCS.glob("*.md"))]


def page_name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def text_of(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def all_docs() -> str:
    """Every page's text, one after the other (for checks over the whole documentation)."""
    return "\n\n".join(text_of(page) for page in pages())


def all_runnable_blocks() -> list[tuple[str, int, str]]:
    """(page, index in the page, block) of every runnable block of every page."""
    return [
        (page_name(page), index, block)
        for page in pages()
        for index, block in enumerate(runnable_blocks(text_of(page)))
    ]


def runnable_blocks(text: str) -> list[str]:
    """The ```bash blocks directly preceded by the runnable marker."""
    pattern = re.compile(re.escape(RUNNABLE) + r"\s*\n```(?:bash|sh)\n(.*?)\n```", re.DOTALL)
    return [m.group(1) for m in pattern.finditer(text)]


def test_readme_has_runnable_blocks() -> None:
    assert all_runnable_blocks(), f"no page has a ```bash block marked {RUNNABLE}"
    for page in pages():
        # A marker must sit right before a bash block; a stray one would silently test nothing.
        text = text_of(page)
        assert text.count(RUNNABLE) == len(runnable_blocks(text)), (
            f"{page_name(page)}: a {RUNNABLE} marker is not right before a ```bash block"
        )


@pytest.mark.parametrize(
    ("page", "index", "block"),
    all_runnable_blocks(),
    ids=[f"{page}-{index}" for page, index, _ in all_runnable_blocks()],
)
def test_runnable_block_runs(
    page: str, index: int, block: str, store_env: str, tmp_path: Path
) -> None:
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
    # Line by line under `set -e -x`, so a failure names the page's line that broke.
    result = subprocess.run(
        ["bash", "-e", "-u", "-o", "pipefail", "-x", "-c", block],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, (
        f"{page}: runnable block {index} failed (exit {result.returncode}):\n{block}\n"
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
            f"The docs mention `nx1-connect {' '.join([*path, name])}`, which does not exist"
        )
        command, path = sub, [*path, name]
    options = [t.strip("[]").split("=", 1)[0] for t in rest if t.strip("[]").startswith("--")]
    return path, command, options


def test_readme_nx1_connect_commands_exist() -> None:
    mentions = mentioned_commands(all_docs())
    assert len(mentions) >= 10, "expected the docs to show the nx1-connect commands"
    checked: set[tuple[str, ...]] = set()
    runner = CliRunner()
    leaves: set[tuple[str, ...]] = set()
    for tokens in mentions:
        path, command, options = resolve(tokens)
        known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
        known |= {"--help", "-h"}  # click adds the help option to every command
        for option in options:
            assert option in known, (
                f"The docs show `nx1-connect {' '.join(path)} {option}`, "
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
    assert every <= leaves, f"commands missing from the docs: {sorted(every - leaves)}"


def test_cli_reference_shows_every_option() -> None:
    """Each command's row in docs/cli.md shows every option its --help lists."""
    rows: dict[tuple[str, ...], set[str]] = {}
    for line in text_of(CLI_PAGE).splitlines():
        match = re.match(r"^\| `nx1-connect ([^`]*)` \|", line)
        if match:
            path, _command, options = resolve(match.group(1).replace("\\|", "|").split())
            rows.setdefault(tuple(path), set()).update(options)
    for group, sub in cli.commands.items():
        assert isinstance(sub, click.Group)
        for name, command in sub.commands.items():
            assert (group, name) in rows, f"docs/cli.md has no row for `nx1-connect {group} {name}`"
            shown = rows[(group, name)]
            for param in command.params:
                longs = [opt for opt in param.opts if opt.startswith("--")]
                if isinstance(param, click.Option) and longs and longs[0] != "--help":
                    assert set(longs) & shown, (
                        f"`nx1-connect {group} {name} --help` lists {longs[0]}, "
                        "which its row in docs/cli.md does not show"
                    )


def test_console_script_help_runs() -> None:
    """The installed entry point itself (not only the click object) answers --help."""
    result = subprocess.run(
        [str(BIN / "nx1-connect"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for group in ("db", "apis", "keys", "snapshots"):
        assert group in result.stdout


def config_table(text: str) -> dict[str, str]:
    """option -> default cell of the configuration table (docs/production.md)."""
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| ([^|]*) \|", section, re.MULTILINE)
    return {name: default.strip() for name, default in rows}


def test_readme_configuration_table_matches_settings() -> None:
    table = config_table(text_of(CONFIG_PAGE))
    assert set(table) == set(OPTIONS), "the table must list exactly the [nx1_connect] options"
    for name, (default, _description) in OPTIONS.items():
        if default:
            assert table[name] == f"`{default}`", f"{name}: docs/production.md says {table[name]}"
        else:
            assert table[name].startswith("empty"), f"{name}: docs/production.md says {table[name]}"


def test_readme_images_exist() -> None:
    """Every image a page shows (the admin view's screenshots) is in the repository."""
    shown = 0
    for page in pages():
        images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text_of(page))
        shown += len(images)
        missing = [image for image in images if not (page.parent / image).is_file()]
        assert not missing, f"{page_name(page)} shows images not in the repository: {missing}"
    assert shown >= 3, "the docs show the admin view's screenshots"


def anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings (outside code blocks)."""
    found: set[str] = set()
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def test_docs_links_resolve() -> None:
    """Every relative link of every page names a file that exists, and an anchor it has."""
    broken: list[str] = []
    for page in pages():
        for target in re.findall(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)", text_of(page)):
            if re.match(r"^[a-z]+:", target):
                continue  # https://..., mailto: ...
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page_name(page)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in anchors(text_of(file)):
                broken.append(f"{page_name(page)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)
