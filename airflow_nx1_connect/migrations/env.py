"""Alembic environment: runs against the engine handed over by `core.store.migrate`."""

from __future__ import annotations

from alembic import context

from airflow_nx1_connect.core.store import VERSION_TABLE, metadata

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # pragma: no cover - alembic CLI use
    from airflow_nx1_connect.core.engines import get_engine

    engine = get_engine()

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        include_name=lambda name, type_, _parent: type_ != "table" or str(name).startswith("nx1_"),
    )
    context.run_migrations()
