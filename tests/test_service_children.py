"""FwsService keeps MultiService's contract: every child is started, and stopped (issue 14, item 3)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from tests.helpers import Server, write_module


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


PRESENCE = """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater
    from fws import WebSocketDisconnectFilter

    writes = []

    class Presence(WebSocketDisconnectFilter):
        '''Writes "left" to storage a moment after each disconnect, as a presence filter would.'''

        @classmethod
        async def filter(cls, web_socket_instance, data):
            await deferLater(reactor, 0.05, lambda: None)
            await web_socket_instance.storage_object.add("left", web_socket_instance.id)
            writes.append(web_socket_instance.id)
"""


@pytest_twisted.ensureDeferred
async def test_storage_stops_after_every_disconnect_chain(reactor: Any, tmp_path: Path) -> None:
    """
    The drain waits for each connection's asynchronous disconnect filter, not
    just for Autobahn's is_closed (which fires before onClose): when storage
    stops no user is registered and every filter's write to storage is done,
    one of a client that closed by itself just before the stop included.
    """
    name = write_module(tmp_path, PRESENCE)
    server = Server.from_argv(reactor, "-f", name, "echo").start()
    service, factory = server.service, server.factory
    clients = [await server.connect() for _ in range(5)]
    ids = sorted(factory.users)
    at_storage_stop: list[tuple[int, set[bytes], list[str]]] = []
    stop = service.storage.stopService

    def recorded() -> Any:
        left = service.storage._sets.get("left", set())  # type: ignore[attr-defined]
        writes = sys.modules[name].writes
        at_storage_stop.append((len(factory.users), set(left), list(writes)))
        return stop()

    service.storage.stopService = recorded  # type: ignore[method-assign]
    clients[0].sendClose(1000)  # its disconnect filter is still running when the stop begins
    await clients[0].closed
    await service.stopService()
    for client in clients:
        await client.closed
    assert at_storage_stop == [(0, {i.encode() for i in ids}, at_storage_stop[0][2])]
    assert sorted(at_storage_stop[0][2]) == ids


@pytest_twisted.ensureDeferred
async def test_a_disconnect_filter_cannot_hold_the_stop_past_the_deadline(
        reactor: Any, tmp_path: Path) -> None:
    """A disconnect filter that never finishes is waited for until the stop deadline, no longer."""
    name = write_module(tmp_path, """
        from twisted.internet.defer import Deferred
        from fws import WebSocketDisconnectFilter

        class Hang(WebSocketDisconnectFilter):
            @classmethod
            def filter(cls, web_socket_instance, data):
                return Deferred()  # never fires
    """)
    server = Server.from_argv(reactor, "-f", name, "echo", "--stop-timeout", "0.3").start()
    warnings: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_level") == LogLevel.warn and "stop timeout" in event.get("log_format", ""):
            warnings.append(formatEvent(event))

    clients = [await server.connect() for _ in range(3)]
    globalLogPublisher.addObserver(observer)
    try:
        started = time.monotonic()
        await server.service.stopService()
        took = time.monotonic() - started
    finally:
        globalLogPublisher.removeObserver(observer)
    for client in clients:
        await client.closed
    assert 0.25 < took < 2.0
    assert len(warnings) == 1 and "3 disconnect chains still running" in warnings[0], warnings
    assert not server.factory.users
