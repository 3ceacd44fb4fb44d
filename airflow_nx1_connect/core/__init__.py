"""Domain core: settings, store schema, snapshots, keys, serving, errors.

Nothing in this package imports Airflow, Flask or FastAPI.
"""
