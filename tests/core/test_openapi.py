"""`core.openapi.data_api_document`: built from the columns handed in, nothing else.

A tenant-scoped key that may see only some columns gets a document built from those alone;
the HTTP side (both mounts, generated clients) is in tests/web/test_clients.py.
"""

from __future__ import annotations

from airflow_nx1_connect.core.openapi import data_api_document
from airflow_nx1_connect.core.types import FAMILIES, JSON_SCHEMAS, Column

ALL = [Column(f"c_{family.lower()}", family) for family in FAMILIES]


def document(columns: list[Column]) -> dict:
    return data_api_document(
        name="sales",
        description="Weekly sales",
        question="What sold?",
        columns=columns,
        server_url="https://airflow.example.com/nx1/api/v1",
        max_page_size=500,
        default_page_size=50,
    )


def parameters(doc: dict, path: str) -> dict[str, dict]:
    return {p["name"]: p for p in doc["paths"][path]["get"]["parameters"]}


def test_one_nullable_property_per_column_from_the_type_table() -> None:
    doc = document(ALL)
    row = doc["components"]["schemas"]["Row"]
    assert list(row["properties"]) == row["required"] == [c.name for c in ALL]
    for column in ALL:
        prop = row["properties"][column.name]
        base = JSON_SCHEMAS[column.type]
        if column.type == "JSON":
            assert prop == {}
        else:
            assert prop == {**base, "type": [base["type"], "null"]}
    assert doc["servers"] == [{"url": "https://airflow.example.com/nx1/api/v1"}]
    assert doc["info"]["title"] == "sales data API" and "What sold?" in doc["info"]["description"]
    latest = parameters(doc, "/data-apis/sales/latest")
    assert latest["limit"]["schema"]["maximum"] == 500 and "50" in latest["limit"]["description"]


def test_only_the_columns_handed_in() -> None:
    """What a key restricted to two columns would get: those two, in that order, nowhere
    another one (row and change properties, where. filters, sort's description)."""
    subset = [ALL[4], ALL[0]]
    doc = document(subset)
    names = [c.name for c in subset]
    schemas = doc["components"]["schemas"]
    assert list(schemas["Row"]["properties"]) == names
    assert list(schemas["Change"]["properties"]) == ["_op", *names]
    assert schemas["Change"]["required"] == ["_op", *names]
    for path in ("/data-apis/sales/latest", "/data-apis/sales/snapshots/{snapshot_id}"):
        params = parameters(doc, path)
        assert {p for p in params if p.startswith("where.")} == {f"where.{n}" for n in names}
        hidden = {c.name for c in ALL} - set(names)
        assert not any(h in params["sort"]["description"] for h in hidden)
    text = str(doc)
    assert not any(f"'{c.name}'" in text for c in ALL if c not in subset)


def test_no_columns_still_a_document() -> None:
    doc = document([])
    assert doc["components"]["schemas"]["Row"]["properties"] == {}
    assert "shape" in parameters(doc, "/data-apis/sales/latest")
