"""Benchmarks of airflow-nx1-connect: `python -m benchmarks.run --quick | --full`."""
