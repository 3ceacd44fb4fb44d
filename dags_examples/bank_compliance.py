"""Bank Engineer rules: daily compliance metrics and fraud alerts over transactions.

- `compliance_metrics` (merge on `account_id`): per account, the last 30 days' volume,
  large-cash count, high-risk-country count and KYC flag. A run refreshes the accounts
  with activity; accounts without new activity keep their previous row.
- `fraud_alerts` (merge on `txn_id`): transactions tripping a rule (cash above 10,000,
  high-risk counterparty country, 3+ transfers within 10 minutes). Alerts accumulate
  run after run; a transaction flagged again replaces its alert.

Source: the Airflow Connection `bank` (a SQLite file made by
`python -m dags_examples.demo_data FOLDER`, e.g. AIRFLOW_CONN_BANK='sqlite://%2Fpath%2Fbank.db').
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from airflow_nx1_connect.operators import EngineerRuleOperator

HIGH_RISK = "('KY', 'PA')"

COMPLIANCE_SQL = f"""
SELECT a.account_id,
       a.customer,
       a.country,
       a.kyc_verified = 1 AS kyc_verified,
       COUNT(t.txn_id) AS txn_count,
       ROUND(COALESCE(SUM(t.amount), 0), 2) AS volume_eur,
       SUM(CASE WHEN t.channel = 'cash' AND t.amount > 10000 THEN 1 ELSE 0 END)
           AS large_cash_count,
       SUM(CASE WHEN t.counterparty_country IN {HIGH_RISK} THEN 1 ELSE 0 END)
           AS high_risk_count,
       MAX(t.booked_at) AS last_booked_at,
       '{{{{ ds }}}}' AS as_of
FROM accounts AS a
JOIN transactions AS t ON t.account_id = a.account_id
WHERE t.booked_at >= '{{{{ macros.ds_add(ds, -30) }}}}'
  AND t.booked_at < '{{{{ macros.ds_add(ds, 1) }}}}'
GROUP BY a.account_id, a.customer, a.country, a.kyc_verified
ORDER BY a.account_id
"""

FRAUD_SQL = f"""
WITH recent AS (
    SELECT * FROM transactions
    WHERE booked_at >= '{{{{ macros.ds_add(ds, -7) }}}}'
      AND booked_at < '{{{{ macros.ds_add(ds, 1) }}}}'
),
bursts AS (
    SELECT r.txn_id
    FROM recent AS r
    WHERE r.channel = 'transfer'
      AND (SELECT COUNT(*) FROM recent AS o
           WHERE o.account_id = r.account_id AND o.channel = 'transfer'
             AND o.booked_at BETWEEN datetime(r.booked_at, '-10 minutes') AND r.booked_at) >= 3
)
SELECT r.txn_id,
       r.account_id,
       r.booked_at,
       r.amount,
       CASE
           WHEN r.channel = 'cash' AND r.amount > 10000 THEN 'large_cash'
           WHEN r.counterparty_country IN {HIGH_RISK} THEN 'high_risk_country'
           ELSE 'transfer_burst'
       END AS rule,
       '{{{{ ds }}}}' AS flagged_on
FROM recent AS r
WHERE (r.channel = 'cash' AND r.amount > 10000)
   OR r.counterparty_country IN {HIGH_RISK}
   OR r.txn_id IN (SELECT txn_id FROM bursts)
ORDER BY r.txn_id
"""

with DAG(
    dag_id="bank_compliance",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["nx1", "engineer", "bank"],
    doc_md=__doc__,
) as dag:
    EngineerRuleOperator(
        task_id="compliance_metrics",
        data_api="compliance_metrics",
        conn_id="bank",
        sql=COMPLIANCE_SQL,
        write_mode="merge",
        merge_keys=["account_id"],
        # Never publish an empty or broken review list: fail the run instead.
        checks={"min_rows": 1, "not_null": ["account_id", "country"], "unique": ["account_id"]},
        description="Per-account 30-day volume, large cash and high-risk counts, KYC flag.",
        question="Which accounts need a compliance review?",
    )
    EngineerRuleOperator(
        task_id="fraud_alerts",
        data_api="fraud_alerts",
        conn_id="bank",
        sql=FRAUD_SQL,
        write_mode="merge",
        merge_keys=["txn_id"],
        description="Transactions flagged by the fraud rules, accumulated run after run.",
        question="Which transactions look fraudulent?",
    )
