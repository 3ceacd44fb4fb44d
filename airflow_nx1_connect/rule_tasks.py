"""Which operator a DAG's task is in Airflow: the `core.control.RuleFinder` of the admin API,
the admin view and the command line, asked before a data API is bound to a rule task.

`find_rule_task(dag_id, task_id)` answers from what Airflow can load:

1. Airflow's serialized DAGs (its metadata database), as the dag-processor wrote them: the
   task's operator class (`task_type`, `_task_module`) and, for a rule operator, the `data_api`
   it serializes (see `_RuleOperator.get_serialized_fields`). A DAG that Airflow marks stale
   (gone from its DAG files) counts as not serialized.
2. When the DAG is not serialized (yet), or its task does not say enough (a rule task
   serialized by an older version, without `data_api`; a subclass of a rule operator): the DAG
   files of Airflow's DAG bundles (its DAG folder), parsed as Airflow's own CLI parses them
   (`BundleDagBag`), in a child process with a time limit, so that no DAG code runs in the
   process that asks (the api-server). One parse at a time per process; what it found is
   kept while no file of the (local) bundles changes, so a stream of requests naming
   unknown DAGs costs one parse, not one each.

Run as `python -m airflow_nx1_connect.rule_tasks`, it is that child process: it prints one
line, the JSON of every task of every DAG it parsed. With `find DAG_ID TASK_ID` it answers
`find_rule_task` in a process of its own: the command line asks it so (`find_in_child`), as
importing Airflow in the command's own process would let Airflow's logging write to the
command's stdout, which carries only the new key.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
from typing import Any

from airflow_nx1_connect.core.control import RuleTask
from airflow_nx1_connect.core.errors import RunsUnavailable, ValidationError

log = logging.getLogger(__name__)

#: Seconds the child process may take to parse the DAG files (it imports Airflow first).
PARSE_TIMEOUT_S = 120
#: The line of the child's output that carries its answer.
_ANSWER = "NX1_RULE_TASKS "

#: DAG id -> task id -> task, from the last parse of the DAG files, and the files' signature.
_parsed: tuple[object, dict[str, dict[str, RuleTask]]] | None = None
_parse_lock = threading.Lock()


def _rule_kinds() -> dict[tuple[str, str], str]:
    """(module, class name) of each rule operator -> its kind."""
    from airflow_nx1_connect.operators import AskRuleOperator, EngineerRuleOperator

    return {(c.__module__, c.__name__): c.kind for c in (AskRuleOperator, EngineerRuleOperator)}


def describe(task: Any) -> RuleTask:
    """What a parsed (SDK) task is: a rule operator (any subclass) or another operator."""
    from airflow_nx1_connect.operators.rules import _RuleOperator

    if isinstance(task, _RuleOperator):
        return RuleTask(type(task).__name__, task.kind, task.data_api)
    return RuleTask(getattr(task, "task_type", type(task).__name__))


def _from_serialized(dag_id: str, task_id: str) -> RuleTask | bool | None:
    """The task in Airflow's serialized DAG; None when the DAG has no such task; False when
    the DAG is not serialized (or stale), or the task says too little: read the DAG files."""
    from airflow.models.dag import DagModel
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        model = DagModel.get_current(dag_id, session=session)
        if model is None or model.is_stale:
            return False
        row = SerializedDagModel.get(dag_id, session=session)
        if row is None:
            return False
        task = row.dag.task_dict.get(task_id)
    if task is None:
        return None
    task_type = str(getattr(task, "task_type", "") or type(task).__name__)
    data_api = getattr(task, "data_api", None)
    kind = _rule_kinds().get((str(getattr(task, "_task_module", "")), task_type))
    if kind is not None and isinstance(data_api, str):
        return RuleTask(task_type, kind, data_api)
    if isinstance(data_api, str) or kind is not None:
        return False  # a rule operator's subclass, or serialized without data_api
    return RuleTask(task_type)


def _files_signature() -> object:
    """What the DAG files of the bundles are now (paths, sizes, times), or None when a bundle
    is not a local folder (then nothing is kept between parses)."""
    from airflow.dag_processing.bundles.local import LocalDagBundle
    from airflow.dag_processing.bundles.manager import DagBundlesManager

    files: list[tuple[str, int, int]] = []
    for bundle in DagBundlesManager().get_all_dag_bundles():
        if not isinstance(bundle, LocalDagBundle):
            return None
        for folder, _dirs, names in os.walk(bundle.path):
            for name in names:
                try:
                    stat = os.stat(os.path.join(folder, name))
                except OSError:
                    continue
                files.append((os.path.join(folder, name), stat.st_mtime_ns, stat.st_size))
    return tuple(sorted(files))


def _parse_in_child() -> dict[str, dict[str, RuleTask]]:
    """Every task of every DAG in the DAG files, parsed in a child process."""
    try:
        done = subprocess.run(  # noqa: S603 - this interpreter and module, no input
            [sys.executable, "-m", __name__],
            capture_output=True,
            text=True,
            timeout=PARSE_TIMEOUT_S,
            env=dict(os.environ),
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ValidationError(
            "The DAG is not serialized by Airflow yet, and Airflow's DAG files were not read "
            f"within {PARSE_TIMEOUT_S} s; try again once the DAG shows in the Airflow UI.",
            field="dag_id",
        ) from None
    answers = [line for line in done.stdout.splitlines() if line.startswith(_ANSWER)]
    if done.returncode != 0 or not answers:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        log.warning("Reading Airflow's DAG files failed: %s", tail[:300])
        raise ValidationError(
            "The DAG is not serialized by Airflow yet, and Airflow's DAG files could not be "
            f"read ({tail[:200]}); try again once the DAG shows in the Airflow UI.",
            field="dag_id",
        )
    dags = json.loads(answers[-1][len(_ANSWER) :])
    return {
        dag_id: {task_id: RuleTask(**task) for task_id, task in tasks.items()}
        for dag_id, tasks in dags.items()
    }


def _from_dag_files(dag_id: str, task_id: str) -> RuleTask | None:
    """The task as the DAG files define it (see the module docstring)."""
    global _parsed
    with _parse_lock:
        signature = _files_signature()
        if signature is None or _parsed is None or _parsed[0] != signature:
            _parsed = (signature, _parse_in_child())
        dags = _parsed[1]
    return dags.get(dag_id, {}).get(task_id)


def find_rule_task(dag_id: str, task_id: str) -> RuleTask | None:
    """Task `task_id` of DAG `dag_id` as Airflow can load it, or None when there is none.

    RunsUnavailable when Airflow's metadata database cannot be asked.
    """
    from sqlalchemy.exc import SQLAlchemyError

    try:
        found = _from_serialized(dag_id, task_id)
    except SQLAlchemyError as exc:
        raise RunsUnavailable(f"Airflow's metadata database: {type(exc).__name__}") from None
    if found is not False:
        assert not isinstance(found, bool)
        return found
    return _from_dag_files(dag_id, task_id)


def find_in_child(dag_id: str, task_id: str) -> RuleTask | None:
    """`find_rule_task`, answered by a child process (for the command line)."""
    done = subprocess.run(  # noqa: S603 - this interpreter and module; ids as arguments
        [sys.executable, "-m", __name__, "find", dag_id, task_id],
        capture_output=True,
        text=True,
        timeout=PARSE_TIMEOUT_S + 60,
        env=dict(os.environ),
        check=False,
    )
    answers = [line for line in done.stdout.splitlines() if line.startswith(_ANSWER)]
    if not answers:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RunsUnavailable(f"Airflow could not be asked about the rule task: {tail[:200]}")
    answer = json.loads(answers[-1][len(_ANSWER) :])
    if "error" in answer:
        error = ValidationError if answer["error"] == "invalid" else RunsUnavailable
        raise error(answer["detail"], **({"field": answer["field"]} if answer["field"] else {}))
    return None if answer["task"] is None else RuleTask(**answer["task"])


def _find_answer(dag_id: str, task_id: str) -> dict[str, Any]:
    try:
        task = find_rule_task(dag_id, task_id)
    except ValidationError as exc:
        return {"error": "invalid", "detail": str(exc), "field": exc.field}
    except RunsUnavailable as exc:
        return {"error": "unavailable", "detail": str(exc), "field": None}
    return {"task": None if task is None else dataclasses.asdict(task)}


def _parse() -> dict[str, dict[str, dict[str, Any]]]:
    """In the child process: every task of every DAG of every DAG bundle."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag

    dags: dict[str, dict[str, dict[str, Any]]] = {}
    for bundle in DagBundlesManager().get_all_dag_bundles():
        bundle.initialize()
        bag = BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)
        for dag_id, dag in bag.dags.items():
            tasks = {t: dataclasses.asdict(describe(task)) for t, task in dag.task_dict.items()}
            dags.setdefault(dag_id, tasks)  # the first bundle defining a DAG id wins
    return dags


def main(argv: list[str] | None = None) -> int:
    """The child process: print what `_parse` found (or, with `find DAG_ID TASK_ID`, what
    `find_rule_task` answers) as one JSON line."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["find"] and len(args) == 3:
        answer: Any = _find_answer(args[1], args[2])
    else:
        answer = _parse()
    print(_ANSWER + json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
