"""Tenant-scoped keys in the admin REST API (`/nx1/api/v1/admin`): `row_filter` and `columns`
on create, in every key object, kept by rotation, refused with 400 when they do not fit the
data API; the audit event carries the policy. Real api-server app, real Airflow tokens."""

from __future__ import annotations

from typing import Any

import pytest

from tests.web import test_admin_api as admin_api
from tests.web.test_admin_api import ADMIN, DATA, _problem, auth

# The admin API's fixtures: Airflow's api-server app with FAB users, tokens, the store.
api_app = admin_api.api_app
tokens = admin_api.tokens
client = admin_api.client
store = admin_api.store


def test_create_list_rotate_a_scoped_key(
    client: Any, store: dict[str, Any], tokens: dict[str, str]
) -> None:
    admin = auth(tokens["asker"])
    r = client.post(
        f"{ADMIN}/keys",
        json={"data_api": "sales", "days": 5, "row_filter": ["id=gt.1"], "columns": ["id"]},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["row_filter"] == ["id=gt.1"] and created["columns"] == ["id"]
    secret, key_id = created["key"], created["key_id"]
    rows = client.get(f"{DATA}/data-apis/sales/latest", headers=auth(secret)).json()
    assert rows["data"]["data"] == [[2]] and rows["snapshot"]["row_count"] is None
    one = client.get(f"{ADMIN}/keys/{key_id}", headers=admin).json()
    assert one["row_filter"] == ["id=gt.1"] and one["columns"] == ["id"]
    listed = client.get(f"{ADMIN}/keys", params={"data_api": "sales"}, headers=admin).json()
    plain = next(k for k in listed if k["key_id"] == store["key_id"])
    assert plain["row_filter"] == [] and plain["columns"] is None
    events = client.get(f"{ADMIN}/audit", params={"key_id": key_id}, headers=admin).json()
    created_event = next(e for e in events if e["action"] == "create_key")
    assert created_event["detail"]["row_filter"] == ["id=gt.1"]
    assert created_event["detail"]["columns"] == ["id"]
    # Rotation keeps the policy; the old key stops after the overlap, revocation at once.
    rotated = client.post(
        f"{ADMIN}/keys/{key_id}/rotate", json={"overlap_hours": 0}, headers=admin
    ).json()
    assert rotated["row_filter"] == ["id=gt.1"] and rotated["columns"] == ["id"]
    again = client.get(f"{DATA}/data-apis/sales/latest", headers=auth(rotated["key"])).json()
    assert again["data"]["data"] == [[2]]
    assert client.get(f"{DATA}/data-apis/sales/latest", headers=auth(secret)).status_code == 401
    client.post(f"{ADMIN}/keys/{rotated['key_id']}/revoke", headers=admin)
    refused = client.get(f"{DATA}/data-apis/sales/latest", headers=auth(rotated["key"]))
    assert refused.status_code == 401


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"row_filter": ["nosuch=eq.1"]}, "Unknown column 'nosuch'"),
        ({"row_filter": ["id=gt.x"]}, "INTEGER"),
        ({"row_filter": ["id"]}, "<column>=<op>.<value>"),
        ({"columns": ["id", "hidden"]}, "Unknown column 'hidden'"),
        ({"columns": []}, "one or more columns"),
    ],
)
def test_a_policy_that_does_not_fit_is_400(
    client: Any, store: dict[str, Any], tokens: dict[str, str], body: dict[str, Any], message: str
) -> None:
    admin = auth(tokens["admin"])
    before = client.get(f"{ADMIN}/keys", headers=admin).json()
    r = client.post(f"{ADMIN}/keys", json={"data_api": "sales", "days": 5, **body}, headers=admin)
    problem = _problem(r, 400)
    assert message in problem["detail"] and "\n" not in problem["detail"]
    assert client.get(f"{ADMIN}/keys", headers=admin).json() == before
