"""The `where.` grammar: one `<column>=<op>.<value>` term, as a request parameter
(`where.<column>=<op>.<value>`) or a key's row filter, read into a `core.reads.Filter`."""

from __future__ import annotations

import csv

from airflow_nx1_connect.core.errors import ValidationError
from airflow_nx1_connect.core.reads import OPS, Filter

#: Most values one `in.(...)` filter may list.
MAX_IN_VALUES = 1000


def parse_filter(column: str, text: str) -> Filter:
    """One `where.<column>=<op>.<value>` (ValidationError saying what to send instead)."""
    example = "e.g. where.units=gte.100, where.product=like.Esp*, where.id=in.(1,2,3)"
    if not column:
        raise ValidationError(f"Name a column after 'where.', {example}.", field="where")
    if "\x00" in text:
        raise ValidationError(
            f"where.{column} holds a NUL character, which no column value can; remove it.",
            field="where",
        )
    op, dot, value = text.partition(".")
    if not dot or op not in OPS:
        raise ValidationError(
            f"where.{column} must be <op>.<value> with <op> one of {', '.join(OPS)}; {example}.",
            field="where",
        )
    if op == "is":
        if value not in ("null", "not_null"):
            raise ValidationError(
                f"where.{column}=is.<value> takes is.null or is.not_null.", field="where"
            )
        return Filter(column, op, (value,))
    if op == "in":
        if not (value.startswith("(") and value.endswith(")")):
            raise ValidationError(
                f"where.{column}=in.(a,b,c) lists values in parentheses, comma-separated "
                '(quote a value that holds a comma: in.("a,b",c)).',
                field="where",
            )
        try:
            items = next(csv.reader([value[1:-1]], skipinitialspace=False, strict=True), [])
        except csv.Error:
            raise ValidationError(
                f"where.{column}=in.(...) could not be read: quote values with double quotes "
                'and double any quote inside, e.g. in.("a,b","say ""hi""").',
                field="where",
            ) from None
        if not items or len(items) > MAX_IN_VALUES:
            raise ValidationError(
                f"where.{column}=in.(...) takes 1 to {MAX_IN_VALUES} values.", field="where"
            )
        return Filter(column, op, tuple(items))
    return Filter(column, op, (value,))
