"""Tenant-scoped keys in the admin view: the create-key form's filter builder and column
checkboxes, its errors, and the keys list's policy column (both stores, FAB's real login)."""

from __future__ import annotations

import json
import re
from typing import Any

from airflow_nx1_connect.core import audit
from airflow_nx1_connect.core import keys as core_keys
from tests.web import test_admin_view as admin_view
from tests.web.test_admin_view import BASE, _post, _row

# The admin view's fixtures: a real api-server app with FAB logins, and the store content.
api_app = admin_view.api_app
clients = admin_view.clients
store = admin_view.store

DATA = "/nx1/api/v1/data-apis/weekly_top_product/latest"


def test_the_form_offers_the_data_apis_columns_and_ops(
    clients: dict[str, Any], store: dict[str, Any]
) -> None:
    form = clients["asker"].get(f"{BASE}/keys/new?data_api=weekly_top_product").text
    assert 'id="nx1-policy"' in form and 'id="limit_columns"' in form
    # The chosen data API's columns in the builder and as checkboxes; every op of where.
    assert len(re.findall(r'<option value="product" ?>product \(TEXT\)</option>', form)) == 3
    assert 'name="columns" value="units"' in form
    for op in ("eq", "ne", "gt", "gte", "lt", "lte", "like", "in", "is"):
        assert f'<option value="{op}"' in form
    by_api = json.loads(
        re.search(r'id="nx1-columns-by-api"[^>]*>(.*?)</script>', form, re.S).group(1)
    )
    assert by_api["weekly_top_product"] == [
        {"name": "product", "type": "TEXT"},
        {"name": "units", "type": "INTEGER"},
    ]
    assert "compliance_metrics" not in by_api  # not the asker's kind


def test_create_a_key_with_a_policy_and_see_it_listed(
    clients: dict[str, Any], store: dict[str, Any]
) -> None:
    asker, engine = clients["asker"], store["engine"]
    response = _post(
        asker,
        f"{BASE}/keys/new",
        {
            "data_api": "weekly_top_product",
            "days": "5",
            "description": "tenant EU",
            "where_column": ["units", "product", ""],
            "where_op": ["gte", "in", "eq"],
            "where_value": ["90", "Espresso,Bagel,Croissant", ""],
            "limit_columns": "1",
            "columns": ["product"],
        },
        page=f"{BASE}/keys/new",
    )
    assert response.status_code == 201, response.text
    secret = re.search(r'id="nx1-key" value="(nx1_[A-Za-z0-9_-]+)"', response.text).group(1)
    key = core_keys.verify_key(engine, secret, "weekly_top_product")
    assert key.row_filter == ("units=gte.90", "product=in.(Espresso,Bagel,Croissant)")
    assert key.columns == ("product",)
    rows = asker.get(DATA, headers={"X-API-Key": secret}).json()["data"]
    assert rows["columns"] == ["product"] and rows["data"] == [["Espresso"], ["Bagel"]]
    row = _row(asker.get(f"{BASE}/keys").text, key.id)
    assert "<code>units=gte.90</code> and <code>product=in.(Espresso,Bagel,Croissant)</code>" in row
    assert "columns</span> product" in row
    [event] = audit.list_events(engine, key_id=key.id)
    assert event.detail["row_filter"] == list(key.row_filter)
    assert event.detail["columns"] == ["product"]
    # A key without a policy says so.
    plain = _row(asker.get(f"{BASE}/keys").text, store["ask_key"].key.id)
    assert "all rows and columns" in plain


def test_a_bad_policy_is_shown_next_to_its_field(
    clients: dict[str, Any], store: dict[str, Any]
) -> None:
    before = len(core_keys.list_keys(store["engine"]))
    for data, field, message in [
        ({"where_column": "units", "where_op": "gt", "where_value": "many"}, "row_filter",
         "is not a INTEGER value"),
        ({"where_column": "nosuch", "where_op": "eq", "where_value": "1"}, "row_filter",
         "Unknown column 'nosuch'"),
        ({"limit_columns": "1"}, "columns", "names one or more columns"),
    ]:  # fmt: skip
        response = _post(
            clients["admin"],
            f"{BASE}/keys/new",
            {"data_api": "weekly_top_product", "days": "5", **data},
            page=f"{BASE}/keys/new",
        )
        assert response.status_code == 400, response.text
        error = re.search(rf'<span class="help-block" id="{field}-error">([^<]*)<', response.text)
        assert error and message in error.group(1).replace("&#39;", "'"), response.text[-3000:]
        assert 'id="nx1-key"' not in response.text
    assert len(core_keys.list_keys(store["engine"])) == before
