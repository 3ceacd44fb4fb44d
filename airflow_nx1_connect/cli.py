"""`nx1-connect`: manage the snapshot store, data APIs and data API keys from the shell.

Built on click. User errors exit 1 with one line on stderr; never a traceback.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from airflow_nx1_connect.core.errors import Nx1Error


class _Group(click.Group):
    """A click group that turns domain errors into one clear line and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Nx1Error as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="airflow-nx1-connect")
def cli() -> None:
    """NX1 Connect: scheduled SQL rules served as read-only data APIs.

    The snapshot store is [nx1_connect] sql_alchemy_conn (environment variable
    AIRFLOW__NX1_CONNECT__SQL_ALCHEMY_CONN); by default a SQLite file in AIRFLOW_HOME.
    """


@cli.group(cls=_Group)
def db() -> None:
    """Create or upgrade the snapshot store."""


@db.command("migrate")
def db_migrate() -> None:
    """Create or upgrade the snapshot store to the newest schema; safe to run again."""
    from airflow_nx1_connect.core import store

    engine = store.get_engine()
    store.migrate(engine)
    where = engine.url.render_as_string(hide_password=True)
    click.echo(f"Snapshot store {where} is at revision {store.current_revision(engine)}.", err=True)


def main() -> None:
    """Console-script entry point."""
    sys.exit(cli(standalone_mode=True))


if __name__ == "__main__":  # pragma: no cover
    main()
