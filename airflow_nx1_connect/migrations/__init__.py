"""Alembic migrations of the snapshot store, shipped inside the package."""
