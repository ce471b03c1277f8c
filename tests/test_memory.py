"""
Closed connections give their memory back at once (issue 14, item 2).

A connection and what it owns (its lane, its transport, Autobahn's state) must
be freed by reference counting alone when it closes: objects in a reference
cycle wait for the cycle collector, which with fws's raised thresholds
(``fws.service.GC_THRESHOLDS``) seldom looks at old objects, so RSS stayed up
long after the connections had gone.
"""

from __future__ import annotations

import gc
import time
import weakref
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import deferLater

from fws._wire.outbound import Lane
from tests.helpers import Server, write_module
from tests.processes import FwsProcess
from tests.rawws import RawClient, frame


def _lanes() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is Lane)


#: Asynchronous data, message and disconnect filters: each connection gets its
#: ordered runners (fws.ordered), which hold the connection while it holds them.
ASYNC_FILTERS = """
from twisted.internet import reactor
from twisted.internet.task import deferLater
from fws.filters.base import WebSocketDataFilter, WebSocketDisconnectFilter, WebSocketMessageFilter

class SlowData(WebSocketDataFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        return deferLater(reactor, 0, lambda: None)

class SlowEcho(WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        payload = bytes(data)
        return deferLater(reactor, 0, web_socket_instance.sendMessage, payload)

class SlowBye(WebSocketDisconnectFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        return deferLater(reactor, 0, lambda: None)
"""


@pytest.mark.parametrize("filters", ["echo", "asynchronous"])
@pytest_twisted.ensureDeferred
async def test_closed_connections_are_freed_without_the_cycle_collector(
    reactor: Any, filters: str, tmp_path: Path
) -> None:
    module = "echo" if filters == "echo" else write_module(tmp_path, ASYNC_FILTERS)
    server = Server.from_argv(reactor, "-f", module, "--log-level", "warn").start()
    gc.collect()
    lanes_before = _lanes()
    gc.disable()
    try:
        for _ in range(20):
            client = await server.connect()
            client.send("hello")
            assert await client.recv() == (b"hello", False)
        factory = server.factory
        factory.broadcast("to all")  # the lanes go ok: the fast path's state too
        conns = list(factory.users.values())
        conns[0].sendMessage("sync", sync=True)  # Autobahn's send_queue
        conns[1].close(1000, "server closes this one")
        refs = [weakref.ref(conn) for conn in conns] + [weakref.ref(c.transport) for c in conns]
        del conns
        for client in server.clients:
            if client.state == client.STATE_OPEN:
                client.sendClose(1000)
            await client.closed
        for _ in range(100):
            if not factory.connections:
                break
            await deferLater(reactor, 0.01, lambda: None)
        await deferLater(reactor, 0.01, lambda: None)
        assert not factory.connections
        alive = [type(ref()).__name__ for ref in refs if ref() is not None]
        assert alive == [], "held by a reference cycle (or leaked): " + ", ".join(alive)
        assert _lanes() <= lanes_before  # (another test's may have gone meanwhile)
    finally:
        gc.enable()
        await server.stop()


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _churn(port: int, count: int) -> None:
    """``count`` connections open at once, each echoes one message, then all close."""
    clients = [RawClient(port) for _ in range(count)]
    for client in clients:
        client.send(frame(b"x" * 100))
    for client in clients:
        assert client.read_frame() == (1, b"x" * 100)
    for i, client in enumerate(clients):
        if i % 2:
            client.send(frame(b"\x03\xe8", opcode=8))  # a close handshake; the others just go
        client.sock.close()


def test_rss_comes_back_after_connection_churn(processes: list[FwsProcess]) -> None:
    proc = FwsProcess([])
    proc.args = ["-p", str(proc.port), "-i", "127.0.0.1", "-f", "echo",
                 "--max-message-rate", "0", "--max-connections", "0",
                 "--max-connections-per-ip", "0"]
    processes.append(proc)
    proc.start()
    assert proc.proc is not None
    pid = proc.proc.pid

    def settled() -> int:
        # The server has seen every close once a new connection is its only one.
        probe = RawClient(proc.port)
        probe.send(frame(b"probe"))
        assert probe.read_frame() == (1, b"probe")
        probe.sock.close()
        time.sleep(0.3)
        return _rss(pid)

    _churn(proc.port, 3000)  # warm-up: the allocator's arenas, Python's free lists
    baseline = settled()
    after = []
    for _ in range(3):
        _churn(proc.port, 3000)
        after.append(settled())
    grown = max(after) - baseline
    assert grown < 4 << 20, f"RSS {baseline >> 20} MiB after the first 3000, then " \
        f"{[a >> 20 for a in after]} MiB"
