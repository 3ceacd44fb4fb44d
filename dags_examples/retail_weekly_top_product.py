"""Retail Ask rule: every Friday, "Which product sold most this week?".

Publishes the data API `weekly_top_product` (products ranked by units sold in the 7 days
ending on the run's date). Source: the Airflow Connection `retail` (a SQLite file made by
`python -m dags_examples.demo_data FOLDER`, e.g. AIRFLOW_CONN_RETAIL='sqlite://%2Fpath%2Fretail.db').
"""

from __future__ import annotations

from pathlib import Path

import pendulum
from airflow.sdk import DAG

from airflow_nx1_connect.operators import AskRuleOperator

with DAG(
    dag_id="retail_weekly_top_product",
    schedule="0 18 * * 5",  # every Friday at 18:00
    start_date=pendulum.datetime(2026, 1, 2, tz="UTC"),
    catchup=False,
    template_searchpath=[str(Path(__file__).parent / "sql")],
    tags=["nx1", "ask", "retail"],
    doc_md=__doc__,
) as dag:
    AskRuleOperator(
        task_id="weekly_top_product",
        data_api="weekly_top_product",
        conn_id="retail",
        sql="top_product.sql",
        description="Products ranked by units sold in the last 7 days, with revenue.",
        question="Which product sold most this week?",
    )
