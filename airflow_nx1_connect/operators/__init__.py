"""Rule operators: `AskRuleOperator` (one read-only query) and `EngineerRuleOperator`.

from airflow_nx1_connect.operators import AskRuleOperator, EngineerRuleOperator
"""

from airflow_nx1_connect.operators.rules import AskRuleOperator, EngineerRuleOperator

__all__ = ["AskRuleOperator", "EngineerRuleOperator"]
