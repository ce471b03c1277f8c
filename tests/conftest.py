"""Shared fixtures: the reactor pytest-twisted installed, and error-log capture."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.logger import LogLevel, globalLogPublisher


@pytest.fixture(scope="session")
def reactor() -> Any:
    from twisted.internet import reactor as _reactor  # installed by pytest-twisted

    return _reactor


@pytest.fixture
def logged_errors() -> Iterator[list[dict[str, Any]]]:
    """Collect error-level log events; a test that expects some asserts on them and clears the list."""
    events: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_level") in (LogLevel.error, LogLevel.critical) or event.get("isError"):
            events.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)
    assert not events, f"unexpected error log events: {events!r}"
