"""airflow-nx1-connect: scheduled SQL rules in Airflow, served as read-only data APIs.

Importing this package loads no web framework and no Airflow module; the web parts
(`airflow_nx1_connect.web`) and operators load them only when used.
"""

__version__ = "0.1.0"
