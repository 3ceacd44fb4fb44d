"""Ask and Engineer rule operators: run a rule's SQL on a source, publish one snapshot.

Both are thin adapters over `core.writer` built on common.sql's `BaseSQLOperator`
(its hook lookup from `conn_id`, `hook_params` and `database`): they read the source through
the Connection's `DbApiHook` with a `fetchmany` cursor (`operators.sources`: server-side on
PostgreSQL, an unbuffered streaming one on MySQL/MariaDB), hand the batches to `write_snapshot` as a
generator (memory stays flat whatever the row count), and return only the snapshot's
metadata to XCom.

With Airflow's OpenLineage provider installed and a transport configured, each run reports
its lineage: the inputs that the OpenLineage SQL parser finds in the rule's SQL through the
hook (as `SQLExecuteQueryOperator` reports them), and one output, the data API (namespace
`nx1`), with its schema and, on completion, its row count. OpenLineage is imported only
when the provider asks for the lineage.

Failures that rerunning will not fix (bad SQL, a name owned by another rule, a merge
key missing from the result) fail the task at once with `AirflowFailException`; a
store or source outage raises an ordinary error, so the task's retries apply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.common.sql.operators.sql import BaseSQLOperator
from airflow.sdk import Asset
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowNotFoundException,
)
from sqlalchemy.engine import Engine

from airflow_nx1_connect.core import checks as publish_checks
from airflow_nx1_connect.core import engines, store, writer
from airflow_nx1_connect.core import snapshots as snaps
from airflow_nx1_connect.core.clock import iso
from airflow_nx1_connect.core.errors import (
    RuleError,
    StoreNotMigrated,
    StoreUnavailable,
    ValidationError,
)
from airflow_nx1_connect.core.settings import get_settings
from airflow_nx1_connect.operators import sources
from airflow_nx1_connect.operators.sql_text import (
    check_ask_sql,
    read_only_problem,
    split_statements,
)

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook
    from airflow.providers.openlineage.extractors import OperatorLineage

#: OpenLineage namespace of the data APIs (the output dataset of every rule run).
LINEAGE_NAMESPACE = "nx1"

FETCH_SIZE = sources.FETCH_SIZE


class _RuleOperator(BaseSQLOperator):
    """Shared parts of the rule operators (not for direct use)."""

    kind: ClassVar[str] = ""
    template_fields: Sequence[str] = ("sql", "conn_id", "database", "hook_params")
    template_ext: Sequence[str] = (".sql",)
    template_fields_renderers: ClassVar[dict[str, str]] = {"sql": "sql"}

    def __init__(
        self,
        *,
        data_api: str,
        conn_id: str,
        sql: str,
        description: str | None = None,
        question: str | None = None,
        write_mode: str = "overwrite",
        merge_keys: Sequence[str] | str | None = None,
        key_columns: Sequence[str] | str | None = None,
        index_columns: Sequence[str] | str | None = None,
        checks: Mapping[str, Any] | None = None,
        database: str | None = None,
        hook_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            snaps.validate_name(data_api)
            publish_checks.parse(checks)
        except ValidationError as exc:
            raise ValueError(str(exc)) from None
        if not isinstance(conn_id, str) or not conn_id.strip():
            raise ValueError("conn_id must name an Airflow Connection, e.g. conn_id='retail'.")
        if not isinstance(sql, str) or not sql.strip():
            raise ValueError("sql must be a SQL query or the path of a .sql file.")
        if hook_params is not None and not isinstance(hook_params, dict):
            raise ValueError(
                "hook_params must be a dict of the hook's arguments, e.g. "
                "hook_params={'options': '-c statement_timeout=60000'}."
            )
        if write_mode not in writer.WRITE_MODES:
            raise ValueError(
                f"write_mode must be one of {', '.join(writer.WRITE_MODES)}, not {write_mode!r}."
            )
        keys = _column_list("merge_keys", merge_keys)
        key_cols = _column_list("key_columns", key_columns)
        index_cols = _column_list("index_columns", index_columns)
        if write_mode == "merge":
            if not keys:
                raise ValueError(
                    "write_mode='merge' needs merge_keys: the result columns that identify a "
                    "row, e.g. merge_keys=['account_id']."
                )
            if key_cols and key_cols != keys:
                raise ValueError(
                    "A merge rule's key columns are its merge_keys: leave key_columns out, "
                    f"or make it equal to merge_keys ({keys})."
                )
            key_cols = keys
        elif keys:
            raise ValueError(
                f"merge_keys only apply to write_mode='merge', not {write_mode!r}: "
                "remove merge_keys or set write_mode='merge'."
            )
        asset = Asset(f"nx1://{data_api}")
        outlets = kwargs.pop("outlets", None)
        if outlets is None:
            outlets = []
        elif not isinstance(outlets, list | tuple):
            outlets = [outlets]
        outlets = list(outlets)
        if not any(isinstance(o, Asset) and o.uri == asset.uri for o in outlets):
            outlets.append(asset)
        super().__init__(
            conn_id=conn_id, database=database, hook_params=hook_params, outlets=outlets, **kwargs
        )
        self.data_api = data_api
        self.sql = sql
        self.description = description
        self.question = question
        self.write_mode = write_mode
        self.merge_keys = keys or None
        self.key_columns = key_cols or None
        self.index_columns = index_cols or None
        self.checks = dict(checks) if checks is not None else None
        #: The snapshot this run published (for the OpenLineage COMPLETE event).
        self._published: snaps.Snapshot | None = None

    @classmethod
    def get_serialized_fields(cls) -> frozenset[str]:
        """Airflow's serialized fields plus `data_api`: the serialized DAG then says which data
        API each rule task publishes to (checked when a data API is bound to a rule task)."""
        return frozenset(super().get_serialized_fields() | {"data_api"})

    # -- hooks for the subclasses -------------------------------------------------------

    def _statements(self, sql: str) -> list[str]:
        raise NotImplementedError

    @property
    def _read_only(self) -> bool:
        return False

    # -- the run ------------------------------------------------------------------------

    def execute(self, context: Any) -> dict[str, Any]:
        """Run the rule and publish its snapshot; returns the snapshot's metadata."""
        self._published = None
        try:
            statements = self._statements(self.sql)
        except RuleError as exc:
            raise AirflowFailException(str(exc)) from None
        settings = get_settings()
        engine = engines.get_engine(settings.sql_alchemy_conn)
        ti = context["ti"]
        try:
            store.check_migrated(engine)
            snaps.register_data_api(
                engine,
                name=self.data_api,
                kind=self.kind,
                description=self.description,
                question=self.question,
                dag_id=ti.dag_id,
                task_id=ti.task_id,
                conn_id=self.conn_id,
                write_mode=self.write_mode,
                key_columns=self.key_columns,
                index_columns=self.index_columns,
            )
        except (RuleError, StoreNotMigrated) as exc:
            raise AirflowFailException(str(exc)) from None
        except Exception as exc:
            raise self._store_error(engine, exc) from exc

        try:
            snapshot = self._connect_and_run(
                engine, statements, context, settings.snapshot_retention
            )
        except BaseException as exc:
            self._record_failure(engine, context, exc)
            raise
        self._published = snapshot
        summary = {
            "snapshot_id": snapshot.id,
            "data_api": self.data_api,
            "row_count": snapshot.row_count,
            "columns": list(snapshot.columns),
            "column_types": list(snapshot.column_types),
            "published_at": iso(snapshot.published_at),
            "run_id": snapshot.run_id,
            "data_interval_end": iso(snapshot.data_interval_end),
        }
        self.log.info(
            "Published snapshot %s of data API %r: %s rows.",
            snapshot.id,
            self.data_api,
            snapshot.row_count,
        )
        return summary

    def _connect_and_run(
        self, engine: Engine, statements: list[str], context: Any, retention: int
    ) -> snaps.Snapshot:
        hook = self.get_db_hook()
        try:
            conn = hook.get_conn()
        except Exception as exc:
            message = (
                f"Cannot connect to the source database of Connection {self.conn_id!r}: "
                f"{sources.first_line(exc)}"
            )
            if not self.retry_on_failure:
                raise AirflowFailException(message + " (retry_on_failure=False)") from exc
            raise AirflowException(message) from exc
        try:
            return self._run(engine, hook, conn, statements, context, retention=retention)
        finally:
            with suppress(Exception):
                conn.close()

    def _record_failure(self, engine: Engine, context: Any, exc: BaseException) -> None:
        """Show the failed run on the data API (`last_failure`) until its next publish."""
        ti = context["ti"]
        run_id = context.get("run_id") or getattr(ti, "run_id", None)
        try:
            writer.record_failure(engine, self.data_api, run_id, sources.first_line(exc))
        except Exception:  # the store may be what failed; the task's own error says why
            self.log.warning("Could not record the failed run on data API %r.", self.data_api)

    @staticmethod
    def _store_error(engine: Engine, exc: Exception) -> Exception:
        import sqlalchemy as sa

        if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
            return StoreUnavailable(engines.describe_store_error(engine, exc))
        return exc

    def get_db_hook(self) -> DbApiHook:
        """The source's common.sql hook, as `BaseSQLOperator` makes it from `conn_id`,
        `hook_params` and `database` (once per task). A Connection that is not defined, whose
        hook is not a SQL database hook or does not take the arguments given, fails the task
        without retries."""
        try:
            return super().get_db_hook()
        except AirflowNotFoundException as exc:
            raise AirflowFailException(
                f"Connection {self.conn_id!r} is not defined: add it in Admin > Connections "
                f"or set AIRFLOW_CONN_{str(self.conn_id).upper()} ({sources.first_line(exc)})."
            ) from None
        except TypeError as exc:  # the hook's class takes no such argument
            raise AirflowFailException(
                f"Connection {self.conn_id!r}: its hook does not accept an argument that "
                f"hook_params or the Connection's extra fields give it: {sources.first_line(exc)}"
            ) from None
        except AirflowException as exc:
            if type(exc) is not AirflowException:  # e.g. a failure already classified
                raise
            # BaseSQLOperator's refusal of a hook that is not a DbApiHook, or a Connection
            # type without a hook: the Connection must change, retrying will not help.
            raise AirflowFailException(
                f"Connection {self.conn_id!r} cannot run a rule: {sources.first_line(exc)} Use a "
                "Connection of a SQL database (sqlite, postgres, mysql, trino, ...)."
            ) from None

    def _run(
        self,
        engine: Engine,
        hook: DbApiHook,
        conn: sources.DbApiConnection,
        statements: list[str],
        context: Any,
        *,
        retention: int,
    ) -> snaps.Snapshot:
        dialect = sources.dialect_of(hook)
        final = statements[-1]
        # A server-side (named) cursor needs a transaction and a plain query.
        server_side = (
            dialect == "postgresql"
            and not getattr(conn, "autocommit", False)
            and read_only_problem(final) is None
        )
        try:
            if self._read_only:
                sources.make_read_only(conn, dialect)
            for statement in statements[:-1]:
                sources.run_statement(conn, statement)
            cursor = sources.open_cursor(conn, server_side)
            cursor.execute(final)
            first = sources.fetch_first(cursor)
            description = cursor.description
        except Exception as exc:
            sources.rollback(conn)
            raise self._source_failure(exc) from exc
        if description is None:
            sources.rollback(conn)
            raise AirflowFailException(
                "The rule's last SQL statement returns no rows to publish; end it with a "
                "SELECT (or a statement with RETURNING)."
            )
        try:
            columns = writer.infer_columns(description, first, dialect)
            ti = context["ti"]
            snapshot = writer.write_snapshot(
                engine,
                data_api=self.data_api,
                columns=columns,
                batches=sources.batches(cursor, first),
                run_id=context.get("run_id") or getattr(ti, "run_id", None),
                data_interval_end=context.get("data_interval_end"),
                write_mode=self.write_mode,
                merge_keys=self.merge_keys,
                key_columns=self.key_columns,
                index_columns=self.index_columns,
                checks=publish_checks.parse(self.checks),
                retention=retention,
                logger=self.log,  # type: ignore[arg-type]
            )
        except sources.SourceError as exc:
            sources.rollback(conn)
            raise self._source_failure(exc.original) from exc.original
        except RuleError as exc:
            sources.rollback(conn)
            raise AirflowFailException(str(exc)) from None
        except AirflowException:
            sources.rollback(conn)
            raise
        except Exception as exc:
            sources.rollback(conn)
            raise self._store_error(engine, exc) from exc
        finally:
            with suppress(Exception):
                cursor.close()
        if self._read_only:
            sources.rollback(conn)
        else:
            # An Engineer rule's own statements (temp tables, audit rows) take effect
            # only once its snapshot is published.
            conn.commit()
        return snapshot

    def _source_failure(self, exc: BaseException) -> BaseException:
        message = (
            f"The source database of Connection {self.conn_id!r} rejected the rule's SQL: "
            f"{sources.first_line(exc)}"
        )
        if sources.is_rule_error(exc):
            return AirflowFailException(message)
        if not self.retry_on_failure:
            return AirflowFailException(message + " (retry_on_failure=False)")
        return AirflowException(message + " (retryable)")

    # -- OpenLineage (called by the OpenLineage provider only) -----------------------------

    def get_openlineage_facets_on_start(self) -> OperatorLineage | None:
        """Inputs as common.sql finds them through the hook; the data API as the output."""
        return self._lineage(lambda: super(_RuleOperator, self).get_openlineage_facets_on_start())

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage | None:
        """As on start, plus the published snapshot's schema and row count."""
        return self._lineage(
            lambda: super(_RuleOperator, self).get_openlineage_facets_on_complete(task_instance),
            self._published,
        )

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> OperatorLineage | None:
        """As on start: nothing was published."""
        return self._lineage(
            lambda: super(_RuleOperator, self).get_openlineage_facets_on_complete(task_instance)
        )

    def _lineage(
        self, sql_lineage: Any, published: snaps.Snapshot | None = None
    ) -> OperatorLineage | None:
        try:
            from airflow.providers.openlineage.extractors import OperatorLineage
        except ImportError:
            return None
        try:
            lineage = sql_lineage() or OperatorLineage()
        except Exception as exc:  # e.g. the Connection is missing: still name the output
            self.log.debug("OpenLineage found no inputs in the rule's SQL: %s", exc)
            lineage = OperatorLineage()
        lineage.outputs = [self._lineage_output(published)]
        return lineage

    def _lineage_output(self, published: snaps.Snapshot | None) -> Any:
        """The data API as an OpenLineage dataset: its schema (the published snapshot's, or
        before publishing the latest one's, when there is one) and the published row count."""
        from airflow.providers.common.compat.openlineage.facet import (
            DocumentationDatasetFacet,
            OutputDataset,
            OutputStatisticsOutputDatasetFacet,
            SchemaDatasetFacet,
            SchemaDatasetFacetFields,
        )

        snapshot = published or self._latest_snapshot()
        facets: dict[str, Any] = {}
        if snapshot is not None:
            facets["schema"] = SchemaDatasetFacet(
                fields=[
                    SchemaDatasetFacetFields(name=name, type=type_)
                    for name, type_ in zip(snapshot.columns, snapshot.column_types, strict=True)
                ]
            )
        if self.description:
            facets["documentation"] = DocumentationDatasetFacet(description=self.description)
        output_facets: dict[str, Any] = {}
        if published is not None:
            output_facets["outputStatistics"] = OutputStatisticsOutputDatasetFacet(
                rowCount=published.row_count
            )
        return OutputDataset(
            namespace=LINEAGE_NAMESPACE,
            name=self.data_api,
            facets=facets,
            outputFacets=output_facets,
        )

    def _latest_snapshot(self) -> snaps.Snapshot | None:
        try:
            engine = engines.get_engine(get_settings().sql_alchemy_conn)
            return snaps.latest_snapshot(engine, self.data_api)
        except Exception:  # no store or no snapshot yet: the output has no schema
            return None


def _column_list(argument: str, value: Sequence[str] | str | None) -> list[str]:
    """A list of column names from an operator argument (a name or a list of names)."""
    names = [value] if isinstance(value, str) else list(value or [])
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValueError(f"{argument} must be column names, got {bad[0]!r}.")
    if len(set(names)) != len(names):
        raise ValueError(f"{argument} names a column twice.")
    return names


class AskRuleOperator(_RuleOperator):
    """Publish the answer to a question: one read-only query, run on a schedule.

    :param data_api: the data API's name (`^[a-z][a-z0-9_]{0,62}$`); its Asset is
        `nx1://<data_api>`.
    :param conn_id: an Airflow Connection of a SQL database (its hook is a `DbApiHook`).
    :param sql: one SELECT (or WITH ... SELECT, VALUES) query, or a `.sql` file; Jinja.
    :param description: what the data API serves.
    :param question: the business question the query answers.
    :param key_columns: result columns that identify a row (change feed; indexed).
    :param index_columns: result columns to index, so filters on them are index lookups.
    :param checks: publish checks run on the staged snapshot before it is published, e.g.
        `{"min_rows": 1, "not_null": ["product"], "max_row_change": 0.5}` (keys `min_rows`,
        `max_rows`, `not_null`, `unique`, `max_row_change`); a failing one fails the task
        and nothing is published.

    Anything but a single read-only query fails the task before the source is touched.
    """

    kind = "ask"
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        data_api: str,
        conn_id: str,
        sql: str,
        description: str | None = None,
        question: str | None = None,
        **kwargs: Any,
    ) -> None:
        for name in ("write_mode", "merge_keys"):
            if name in kwargs:
                raise ValueError(
                    f"AskRuleOperator has no {name}: each run publishes the query's result. "
                    "Use EngineerRuleOperator for append or merge."
                )
        super().__init__(
            data_api=data_api,
            conn_id=conn_id,
            sql=sql,
            description=description,
            question=question,
            **kwargs,
        )

    def _statements(self, sql: str) -> list[str]:
        return [check_ask_sql(sql)]

    @property
    def _read_only(self) -> bool:
        return True


class EngineerRuleOperator(_RuleOperator):
    """Publish a transformation's result set, overwritten, appended or merged.

    :param data_api: the data API's name; its Asset is `nx1://<data_api>`.
    :param conn_id: an Airflow Connection of a SQL database (its hook is a `DbApiHook`).
    :param sql: the transformation, or a `.sql` file; Jinja. Several statements run in
        order on one connection; the last one's rows are published; the rule's own
        changes to the source are committed only after the snapshot is published.
    :param write_mode: `overwrite` (the result), `append` (previous snapshot + result) or
        `merge` (the result plus previous rows whose `merge_keys` are not in it).
    :param merge_keys: the result columns identifying a row; required for `merge` only
        (they are the data API's key columns).
    :param key_columns: result columns that identify a row (change feed; indexed); for
        `merge`, leave it out (the merge keys are the key columns).
    :param index_columns: result columns to index, so filters on them are index lookups.
    :param checks: publish checks run on the staged snapshot before it is published, e.g.
        `{"min_rows": 1, "unique": ["account_id"]}` (see AskRuleOperator).
    :param description: what the data API serves.
    :param question: the business question it answers, if any.
    """

    kind = "engineer"
    ui_color = "#fdf3e8"

    def __init__(
        self,
        *,
        data_api: str,
        conn_id: str,
        sql: str,
        write_mode: str = "overwrite",
        merge_keys: Sequence[str] | str | None = None,
        description: str | None = None,
        question: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            data_api=data_api,
            conn_id=conn_id,
            sql=sql,
            description=description,
            question=question,
            write_mode=write_mode,
            merge_keys=merge_keys,
            **kwargs,
        )

    def _statements(self, sql: str) -> list[str]:
        statements = split_statements(sql)
        if not statements:
            raise RuleError("The Engineer rule's SQL is empty: give at least one query.")
        return statements
