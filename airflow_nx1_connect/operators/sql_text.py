"""SQL text checks for rules: split statements, tell a single read-only query apart.

Uses `sqlparse` (installed with the common.sql provider), so semicolons, keywords and
comments inside string literals, quoted identifiers and comments are never mistaken
for statements. The check is a guard at the door; the operator also opens the source
read-only where the database allows it (PostgreSQL, SQLite, MySQL/MariaDB).
"""

from __future__ import annotations

import sqlparse
from sqlparse import tokens as T
from sqlparse.sql import Statement

from airflow_nx1_connect.core.errors import RuleError

#: Keywords that are never part of a read-only query (besides DDL and DML other than SELECT).
_WRITE_KEYWORDS = frozenset(
    {
        "INTO",  # SELECT ... INTO new_table creates a table
        "GRANT",
        "REVOKE",
        "COPY",
        "PRAGMA",
        "ATTACH",
        "DETACH",
        "VACUUM",
        "REINDEX",
        "CALL",
        "EXEC",
        "EXECUTE",
        "LOCK",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT",
        "BEGIN",
    }
)
_QUERY_STARTS = frozenset({"SELECT", "WITH", "VALUES"})


def _meaningful(statement: Statement) -> list[sqlparse.sql.Token]:
    return [
        t
        for t in statement.flatten()
        if not t.is_whitespace
        and t.ttype not in T.Comment
        and not (t.ttype in T.Punctuation and t.value == ";")
    ]


def split_statements(sql: str) -> list[str]:
    """The statements of `sql`, without empty or comment-only ones, trailing `;` removed."""
    out = []
    for statement in sqlparse.parse(sql):
        if not _meaningful(statement):
            continue
        text = str(statement).strip()
        # Drop a trailing semicolon (and the comments or blanks after it).
        tokens = list(statement.flatten())
        while tokens and (tokens[-1].is_whitespace or tokens[-1].ttype in T.Comment):
            tokens.pop()
        if tokens and tokens[-1].ttype in T.Punctuation and tokens[-1].value == ";":
            tokens.pop()
            text = "".join(t.value for t in tokens).strip()
        out.append(text)
    return out


def read_only_problem(statement_sql: str) -> str | None:
    """Why one statement is not a read-only query, or None when it is one."""
    statements = [s for s in sqlparse.parse(statement_sql) if _meaningful(s)]
    if not statements:
        return "the SQL is empty"
    if len(statements) > 1:
        return "it has several statements"
    tokens = _meaningful(statements[0])
    first = next((t for t in tokens if not (t.ttype in T.Punctuation and t.value == "(")), None)
    if first is None or first.normalized.upper() not in _QUERY_STARTS:
        word = first.normalized.upper() if first is not None else "(nothing)"
        return f"it starts with {word}, not SELECT, WITH or VALUES"
    for token in tokens:
        word = token.normalized.upper()
        if token.ttype in T.Keyword.DDL:
            return f"it contains {word}, which changes the schema"
        if token.ttype in T.Keyword.DML and word != "SELECT":
            if word == "UPDATE":
                return "it contains UPDATE (data changes or FOR UPDATE row locks)"
            return f"it contains {word}, which changes data"
        if token.ttype in T.Keyword and word in _WRITE_KEYWORDS:
            return f"it contains {word}, which is not allowed in a read-only query"
    return None


def check_ask_sql(sql: str) -> str:
    """Return the single read-only query in `sql`, else raise RuleError saying why.

    Accepts one SELECT, WITH ... SELECT or VALUES statement (a trailing `;` and comments
    are fine). Refuses several statements, DDL, DML (also inside a WITH), SELECT INTO,
    row locks and session or transaction commands.
    """
    if not isinstance(sql, str) or not sql.strip():
        raise RuleError("An Ask rule needs SQL: give one SELECT query in sql=.")
    statements = split_statements(sql)
    if len(statements) != 1:
        raise RuleError(
            f"An Ask rule must be exactly one read-only query, but the SQL has "
            f"{len(statements)} statements. Keep one SELECT (or WITH ... SELECT), or use "
            "an EngineerRuleOperator for multi-step transformations."
        )
    problem = read_only_problem(statements[0])
    if problem is not None:
        raise RuleError(
            f"An Ask rule must be one read-only query (SELECT, WITH ... SELECT or VALUES), "
            f"but {problem}. Rewrite it as a SELECT, or use an EngineerRuleOperator."
        )
    return statements[0]
