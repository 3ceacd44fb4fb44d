"""The `core.runs.RunLauncher` port implemented with Airflow, in the api-server process.

Triggering is what the Airflow UI's "Trigger" does: `airflow.api.common.trigger_dag`
(a MANUAL run of the latest serialized DAG, queued for the scheduler), here
`triggered_by=REST_API`, with `conf` naming the data API and the key id. Before that the
DAG must be known to Airflow, not stale, free of import errors and not paused (Airflow
would accept a run of a paused DAG and leave it queued forever): otherwise RunRefused
(409). Airflow's metadata database is reached through its own ORM session.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from airflow_nx1_connect.core.clock import utcnow
from airflow_nx1_connect.core.errors import RunRefused, RunsUnavailable
from airflow_nx1_connect.core.runs import LaunchedRun


class AirflowRunLauncher:
    """Start and follow DAG runs through Airflow's metadata database."""

    def trigger(self, dag_id: str, conf: Mapping[str, Any], *, requested_by: str) -> LaunchedRun:
        """Queue a manual run of `dag_id` (see the module docstring for the checks)."""
        from airflow.api.common.trigger_dag import trigger_dag
        from airflow.exceptions import DagNotFound
        from airflow.models.dag import DagModel
        from airflow.utils.session import create_session
        from airflow.utils.types import DagRunTriggeredByType

        try:
            with create_session() as session:
                model = DagModel.get_current(dag_id, session=session)
                if model is None or model.is_stale:
                    raise RunRefused(
                        f"The rule's DAG {dag_id!r} is not in Airflow (missing or removed from "
                        "the DAGs folder); deploy it, then try again."
                    )
                if model.has_import_errors:
                    raise RunRefused(
                        f"The rule's DAG {dag_id!r} has import errors in Airflow; fix them, "
                        "then try again."
                    )
                if model.is_paused:
                    raise RunRefused(
                        f"The rule's DAG {dag_id!r} is paused in Airflow; ask its owner to "
                        "unpause it, then try again."
                    )
                try:
                    run = trigger_dag(
                        dag_id,
                        triggered_by=DagRunTriggeredByType.REST_API,
                        triggering_user_name=requested_by,
                        conf=dict(conf),
                        logical_date=utcnow(),
                        replace_microseconds=False,
                        session=session,
                    )
                except DagNotFound:
                    raise RunRefused(
                        f"The rule's DAG {dag_id!r} is not parsed by Airflow yet; try again "
                        "once it shows in the Airflow UI."
                    ) from None
                except ValueError as exc:
                    raise RunRefused(f"Airflow refused a run of DAG {dag_id!r}: {exc}") from None
                if run is None:
                    raise RunRefused(f"Airflow did not create a run of DAG {dag_id!r}.")
                launched = LaunchedRun(run.run_id, str(getattr(run.state, "value", run.state)))
        except SQLAlchemyError as exc:
            raise RunsUnavailable(type(exc).__name__) from None
        return launched

    def state(self, dag_id: str, run_id: str) -> str | None:
        """The run's state, or None when Airflow has no run `run_id` of `dag_id`."""
        import sqlalchemy as sa
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session

        try:
            with create_session() as session:
                state = session.scalar(
                    sa.select(DagRun.state).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
                )
        except SQLAlchemyError as exc:
            raise RunsUnavailable(type(exc).__name__) from None
        if state is None:
            return None
        return str(getattr(state, "value", state))


#: The one launcher the adapters pass to `core.serving.router.handle`.
launcher = AirflowRunLauncher()
