"""The shipped example DAGs: parsed as Airflow parses them, and each run once.

As astronomer-cosmos tests its examples: a DagBag over the whole `dags_examples/` folder
must have no import errors, and each DAG runs once with `dag.test()`, unchanged, on the
demo databases its own code builds (a SQLite snapshot store).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_nx1_connect.core import snapshots as snaps
from tests.operators.conftest import latest_rows, ti_states

EXAMPLES = Path(__file__).resolve().parents[1] / "dags_examples"
#: DAG id -> the data APIs it publishes.
EXAMPLE_DAGS = {
    "retail_weekly_top_product": ["weekly_top_product"],
    "bank_compliance": ["compliance_metrics", "fraud_alerts"],
}


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    """The examples folder parsed as Airflow's dags-folder bundle (as a deployment has it)."""
    from airflow import settings
    from airflow.dag_processing.dagbag import DagBag

    previous = settings.DAGS_FOLDER
    settings.DAGS_FOLDER = str(EXAMPLES)  # the dags-folder bundle's path
    try:
        yield DagBag(dag_folder=EXAMPLES, safe_mode=False)
    finally:
        settings.DAGS_FOLDER = previous


def test_dagbag_parses_every_example_without_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == set(EXAMPLE_DAGS)
    for dag_id in EXAMPLE_DAGS:
        tasks = dagbag.get_dag(dag_id).tasks
        assert tasks and all(t.outlets for t in tasks), dag_id


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("dag_id", sorted(EXAMPLE_DAGS))
def test_example_dag_runs_on_its_demo_sources(dag_id, dagbag, engine, tmp_path, monkeypatch):
    from dags_examples import demo_data

    paths = demo_data.create_demo_databases(tmp_path / "demo")
    for key, value in demo_data.connection_env(paths).items():
        monkeypatch.setenv(key, value)
    run = dagbag.get_dag(dag_id).test()
    assert set(ti_states(run).values()) == {"success"}
    for api in EXAMPLE_DAGS[dag_id]:
        assert snaps.latest_snapshot(engine, api).row_count > 0
    if dag_id == "retail_weekly_top_product":
        units = [r[2] for r in latest_rows(engine, "weekly_top_product")]
        assert units == sorted(units, reverse=True)
    else:
        rules = {r[4] for r in latest_rows(engine, "fraud_alerts")}
        assert rules == {"large_cash", "high_risk_country", "transfer_burst"}
