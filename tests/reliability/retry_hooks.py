"""Hooks a test DAG's callbacks call, so a test can act between two tries of a task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ON_RETRY: list[Callable[[], None]] = []
SEEN: list[str] = []


def on_retry(context: Any) -> None:
    """on_retry_callback: remember why the try failed, then run the test's actions."""
    SEEN.append(str(context.get("exception")))
    for action in ON_RETRY:
        action()
