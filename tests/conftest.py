"""Shared fixtures: the reactor, error-log capture, a private Redis, real fws processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import LogLevel, globalLogPublisher

from tests.processes import FwsProcess
from tests.redis_support import RedisProcess


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


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A private redis-server on a free port, killed after the test."""
    server = RedisProcess(tmp_path).start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def processes() -> Iterator[list[FwsProcess]]:
    """Append every process a test starts; each is stopped after the test, pass or fail."""
    started: list[FwsProcess] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.stop()
