"""Rule DAGs for tests that bind data APIs to rule tasks ahead of their first run.

A data API is bound only to a real rule task (issue 27): a task of a DAG Airflow can load
whose operator is the data API's kind with `data_api` equal to its name. `write_rule_dags`
writes such a DAG file; `serialize` makes Airflow serialize it (`airflow dags reserialize`),
otherwise the binding reads it from the DAG folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: (dag_id, task_id) -> (kind, data_api) of the rule tasks the tests bind data APIs to. No DAG
#: here is called `d`: many tests register data APIs of a DAG `d` that Airflow must not have.
RULES: dict[tuple[str, str], tuple[str, str]] = {
    ("retail", "weekly"): ("ask", "weekly"),
    ("retail", "daily"): ("ask", "daily"),
    ("retail_daily", "sales"): ("ask", "daily_sales"),
    ("retail_daily", "daily_sales"): ("ask", "daily_sales"),
    ("bank", "metrics"): ("engineer", "weekly"),
    ("nx1t_misc", "e"): ("engineer", "eng_new"),
    ("nx1t_misc", "t"): ("ask", "new_api"),
}
OPERATORS = {"ask": "AskRuleOperator", "engineer": "EngineerRuleOperator"}


def dag_file(rules: dict[tuple[str, str], tuple[str, str]] = RULES) -> str:
    """The Python text of a DAG file defining `rules` (one DAG per dag_id)."""
    lines = [
        "import pendulum",
        "from airflow.sdk import DAG",
        "from airflow_nx1_connect.operators import AskRuleOperator, EngineerRuleOperator",
        'START = pendulum.datetime(2026, 1, 1, tz="UTC")',
    ]
    for dag_id in dict.fromkeys(dag for dag, _ in rules):
        lines.append(f"with DAG(dag_id={dag_id!r}, schedule=None, start_date=START):")
        for (dag, task), (kind, api) in rules.items():
            if dag == dag_id:
                lines.append(
                    f"    {OPERATORS[kind]}(task_id={task!r}, data_api={api!r}, "
                    "conn_id='src', sql='SELECT 1 AS n')"
                )
    return "\n".join(lines) + "\n"


def write_rule_dags(folder: Path, rules: dict[tuple[str, str], tuple[str, str]] = RULES) -> Path:
    """Write the DAG file of `rules` into `folder` (made if missing); returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "nx1_test_rules.py"
    path.write_text(dag_file(rules))
    return path


def serialize(env: dict[str, str] | None = None) -> None:
    """`airflow dags reserialize`: Airflow's serialized DAGs from its DAG folder."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "reserialize"],
        env={**os.environ, **(env or {})},
        check=True,
        capture_output=True,
        timeout=300,
    )
