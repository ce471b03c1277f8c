"""FwsService keeps MultiService's contract: every child is started, and stopped (issue 14, item 3)."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from tests.helpers import Server


class Recording(Service):
    """A child that records when it starts and stops, and takes a moment to stop."""

    def __init__(self, name: str, log: list[str], reactor: Any) -> None:
        self.name, self.log, self.reactor = name, log, reactor

    def startService(self) -> None:
        super().startService()
        self.log.append(f"start {self.name}")

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.log.append(f"stop {self.name}")
        return deferLater(self.reactor, 0.01, self.log.append, f"stopped {self.name}")


@pytest_twisted.ensureDeferred
async def test_a_child_service_is_stopped_first_and_the_drain_order_holds(reactor: Any) -> None:
    server = Server.from_argv(reactor, "-f", "echo", "--admin", "tcp:0:interface=127.0.0.1")
    service = server.service
    log: list[str] = []
    extra = Recording("extra", log, reactor)
    extra.setServiceParent(service)
    server.start()
    assert extra.running and log == ["start extra"]
    client = await server.connect()
    storage, listener, admin = service.storage, service.listener, service.admin
    assert admin is not None
    seen: list[str] = []
    for child, what in ((storage, "storage"), (listener, "listener"), (admin, "admin")):
        stop = child.stopService

        def recorded(stop: Any = stop, what: str = what) -> Any:
            closing = server.factory.closing is not None
            seen.append(f"{what} ({len(server.factory.users)} users, closing={closing})")
            return stop()

        child.stopService = recorded  # type: ignore[method-assign]
    await service.stopService()
    await client.closed
    assert not extra.running and log == ["start extra", "stop extra", "stopped extra"]
    # The listener before the drain (its client still there), storage and admin after it.
    assert seen[0] == "listener (1 users, closing=False)"
    assert [entry.split(" ")[0] for entry in seen] == ["listener", "storage", "admin"]
    assert all(entry.endswith("closing=True)") for entry in seen[1:])
    assert not any(child.running for child in service)
    assert client.factory.close_code == 1001  # the drain closed it, after the listener stopped
