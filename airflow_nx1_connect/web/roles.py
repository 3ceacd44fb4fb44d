"""FAB roles and permissions of the NX1 Connect admin view.

Two FAB resources, one per data API kind, each with the actions `can_read` (see the kind's
data APIs, keys and audit events) and `can_edit` (create data APIs ahead of their first run;
create, extend, rotate, revoke, delete keys; delete data APIs):

=====================  ======================================
role                   permissions
=====================  ======================================
``nx1_ask``            read + edit on "NX1 Connect: ask data APIs"
``nx1_engineer``       read + edit on "NX1 Connect: engineer data APIs"
``Admin``              read + edit on both
=====================  ======================================

The roles also get `can_read` on `Website` (to use the Airflow UI at all) and `menu_access`
on the "NX1 Connect" menu of the `/pluginsv2` app. Other roles may be granted these
permissions in Airflow's Security pages; the view checks permissions, never role names.

How the roles come into existence: `sync_roles` is idempotent and safe to run concurrently.
It runs when the api-server builds its `/pluginsv2` app (the admin view registers itself,
see `airflow_nx1_connect.web.admin`), and `ensure_roles()` runs it outside a server, e.g.
from `nx1-connect db migrate`. It only adds what is missing: permissions an operator added
or removed by hand on other roles are left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Literal

log = logging.getLogger(__name__)

ROLE_ASK = "nx1_ask"
ROLE_ENGINEER = "nx1_engineer"
ROLE_ADMIN = "Admin"

#: Data API kind -> FAB resource guarding it.
RESOURCES: dict[str, str] = {
    "ask": "NX1 Connect: ask data APIs",
    "engineer": "NX1 Connect: engineer data APIs",
}
#: FAB actions on those resources.
ACTION_READ = "can_read"
ACTION_EDIT = "can_edit"
#: The FAB menu of the view in the /pluginsv2 app (category and its items).
MENU_CATEGORY = "NX1 Connect"
MENU_ITEMS = ("Data APIs", "API Keys")
WEBSITE = "Website"

#: Role -> the kinds it manages.
ROLE_KINDS: dict[str, tuple[str, ...]] = {
    ROLE_ASK: ("ask",),
    ROLE_ENGINEER: ("engineer",),
    ROLE_ADMIN: ("ask", "engineer"),
}

#: auth manager method -> FAB action (the FAB auth manager maps GET/PUT the same way).
_METHODS: dict[str, Literal["GET", "PUT"]] = {ACTION_READ: "GET", ACTION_EDIT: "PUT"}


def role_permissions(role: str) -> list[tuple[str, str]]:
    """The (action, resource) pairs `sync_roles` gives `role`."""
    perms = [(a, RESOURCES[k]) for k in ROLE_KINDS[role] for a in (ACTION_READ, ACTION_EDIT)]
    perms += [("menu_access", MENU_CATEGORY), *(("menu_access", item) for item in MENU_ITEMS)]
    if role != ROLE_ADMIN:
        perms.append((ACTION_READ, WEBSITE))
    return perms


def sync_roles(security_manager: Any) -> None:
    """Create the `nx1_ask` / `nx1_engineer` roles and NX1 permissions, give Admin all of them.

    `security_manager` is the FAB security manager (`appbuilder.sm`). Idempotent; adds only
    what is missing, so it is cheap to call at every server start.
    """
    for role_name in (ROLE_ASK, ROLE_ENGINEER, ROLE_ADMIN):
        role = security_manager.find_role(role_name) or security_manager.add_role(role_name)
        for action, resource in role_permissions(role_name):
            perm = security_manager.get_permission(action, resource)
            if perm is None:
                perm = security_manager.create_permission(action, resource)
            if perm is not None and perm not in role.permissions:
                security_manager.add_permission_to_role(role, perm)


def ensure_roles() -> None:
    """Run `sync_roles` outside the api-server (e.g. from `nx1-connect db migrate`).

    Does nothing when Airflow's auth manager is not the FAB one (roles are a FAB concept).
    """
    from airflow.api_fastapi.app import get_auth_manager_cls
    from airflow.providers.fab.auth_manager.fab_auth_manager import FabAuthManager

    if not issubclass(get_auth_manager_cls(), FabAuthManager):
        log.info("The auth manager is not FabAuthManager: no NX1 Connect roles to create.")
        return
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    with get_application_builder() as appbuilder:
        sync_roles(appbuilder.sm)


def kinds_allowed(
    user: Any, action: str = ACTION_EDIT, kinds: Iterable[str] = RESOURCES
) -> set[str]:
    """The data API kinds on which `user` may perform `action` (`can_read` or `can_edit`).

    Asks Airflow's auth manager (`is_authorized_custom_view`), so it follows the roles and
    permissions edited in Airflow's Security pages: the one authorization question of the
    admin view and the admin API. An anonymous or unknown user gets none.
    """
    if user is None or getattr(user, "is_anonymous", False):
        return set()
    from airflow.api_fastapi.app import get_auth_manager

    manager = get_auth_manager()
    return {
        kind
        for kind in kinds
        if manager.is_authorized_custom_view(
            method=_METHODS[action], resource_name=RESOURCES[kind], user=user
        )
    }


def may_trigger_dag(user: Any, dag_id: str | None) -> bool:
    """Whether Airflow's auth manager lets `user` trigger a run of DAG `dag_id`.

    The question Airflow's own `POST /api/v2/dags/{dag_id}/dagRuns` asks
    (`is_authorized_dag`, POST on the DAG's runs, with the DAG's team). A key with the `run`
    scope lets an app trigger the rule's DAG, so only such a user may make or rotate one.
    """
    if user is None or getattr(user, "is_anonymous", False):
        return False
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import (
        DagAccessEntity,
        DagDetails,
    )

    team_name = None
    if dag_id:
        from airflow.models.dag import DagModel

        team_name = DagModel.get_team_name(dag_id)
    return bool(
        get_auth_manager().is_authorized_dag(
            method="POST",
            access_entity=DagAccessEntity.RUN,
            details=DagDetails(id=dag_id, team_name=team_name),
            user=user,
        )
    )
