"""What every `nx1-connect` command shares: the group that turns errors into one line on
stderr, the store's engine (with log lines kept off stdout), tables and JSON on stdout,
messages on stderr, and the audit actor."""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Sequence
from typing import Any

import click

from airflow_nx1_connect.core import engines
from airflow_nx1_connect.core.errors import Nx1Error

#: Set to 1 to let unexpected errors show their traceback (for bug reports).
DEBUG_ENV = "NX1_CONNECT_DEBUG"
#: Longest text shown in one table cell (JSON output is never shortened).
CELL_WIDTH = 40


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _store_problem(exc: BaseException) -> str:
    """One line for a database error: unreachable, not migrated, or something else."""
    from airflow_nx1_connect.core import engines, store

    try:
        engine = engines.get_engine()
        try:
            engines.check_reachable(engine)
        except Nx1Error as unreachable:
            return str(unreachable)
        try:
            store.check_migrated(engine)
        except Nx1Error as behind:
            return str(behind)
    except Exception:  # noqa: S110 - fall back to the generic line below
        pass
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[:1]
    return f"The snapshot store failed: {detail[0] if detail else type(exc).__name__}."


class _Group(click.Group):
    """A click group that turns errors into one clear line on stderr and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Nx1Error as exc:
            message = str(exc)
        except Exception as exc:
            if ctx.parent is not None:  # let the outermost group report it, once
                raise
            if os.environ.get(DEBUG_ENV) == "1":
                raise
            import sqlalchemy as sa

            if isinstance(exc, sa.exc.SQLAlchemyError):
                message = _store_problem(exc)
            elif isinstance(exc, OSError):
                message = f"Cannot open the snapshot store: {exc}."
            else:
                message = (
                    f"Unexpected error {type(exc).__name__}: {exc}. "
                    f"Run again with {DEBUG_ENV}=1 to see the details."
                )
        click.echo(f"Error: {_one_line(message)}", err=True)
        ctx.exit(1)


def _engine() -> Any:

    return engines.get_engine()


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    """Text for a table cell: no control characters, one line, at most CELL_WIDTH."""
    if value is None:
        return "-"
    text = "".join(
        " " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in str(value)
    )
    text = " ".join(text.split())
    return text if len(text) <= CELL_WIDTH else text[: CELL_WIDTH - 3] + "..."


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    for line in [list(headers), *cells]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def _print_json(items: list[dict[str, Any]]) -> None:
    click.echo(json.dumps(items, indent=2, ensure_ascii=False))


def _note(message: str) -> None:
    click.echo(message, err=True)


def _actor() -> Any:
    """The audit actor of this command: `cli:<os user>`, the machine's operator (who may, for
    instance, make keys with the run scope for any data API)."""
    from airflow_nx1_connect.core import audit, control

    return control.Actor.operator(audit.cli_actor())


#: `--json` on every listing command.
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON array of objects instead of a table."
)
