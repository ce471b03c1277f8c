"""
Every accepted TCP connection counts towards the connection cap, open or
still in its opening handshake (issue 14).

The 503 of the handshake compares against open users only: before this, any
number of clients could sit mid-handshake, each holding a file descriptor
until ``--open-handshake-timeout``, and a flood of idle sockets ran a server
out of descriptors (1024 by default) and locked everyone out.
"""

from __future__ import annotations

import socket
import time

from fws.factory import FwsServerFactory
from fws.limits import Limits
from fws.pipeline import FilterPipeline
from fws.storage_objects.memory import MemoryStorage
from tests.processes import FwsProcess
from tests.rawws import RawClient

FLOOD = 50


def still_open(sock: socket.socket) -> bool:
    """Whether the server has not closed ``sock`` (nothing was sent on it, so nothing arrives)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:  # reset
        return False


def connects(port: int) -> bool:
    client = RawClient(port)
    try:
        return client.status == 101
    finally:
        client.close()


def test_idle_sockets_beyond_the_cap_are_closed_at_accept(processes: list[FwsProcess]) -> None:
    proc = FwsProcess([])
    proc.args = ["-p", str(proc.port), "-i", "127.0.0.1", "-f", "echo", "--max-connections", "5",
                 "--max-pending-handshakes", "5", "--open-handshake-timeout", "30"]
    processes.append(proc)
    proc.start()
    lines_before = len(proc.lines())
    flood = [socket.create_connection(("127.0.0.1", proc.port), timeout=5) for _ in range(FLOOD)]
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            kept = sum(still_open(s) for s in flood)
            if kept <= 10:
                break
            time.sleep(0.05)
        assert kept == 10, f"{kept} of {FLOOD} idle sockets still open (cap 5 + 5)"
        time.sleep(0.3)  # and they stay that way
        assert sum(still_open(s) for s in flood) == 10
        # While the idle sockets hold every place, a client gets no handshake either.
        blocked = RawClient(proc.port, handshake=False)
        proc.wait_for(lambda: not still_open(blocked.sock), "the extra socket to be closed")
        blocked.close()
    finally:
        for s in flood:
            s.close()
    # Once they are gone, clients connect; at 5 open users the 6th still gets its 503.
    proc.wait_for(lambda: connects(proc.port), "a client to connect again")
    users = [RawClient(proc.port) for _ in range(5)]
    try:
        assert [u.status for u in users] == [101] * 5
        proc.wait_for(lambda: sum(" open from " in line for line in proc.lines()) >= 6,
                      "the users to be open")
        refused = RawClient(proc.port)
        assert refused.status == 503
        refused.close()
    finally:
        for u in users:
            u.close()
    flood_lines = [line for line in proc.lines()[lines_before:] if "connection cap" in line]
    assert 1 <= len(flood_lines) <= 2, "\n".join(flood_lines)  # not one line per socket


def test_no_cap_at_accept_with_max_connections_0() -> None:
    from twisted.internet.task import Clock

    factory = FwsServerFactory(FilterPipeline(), MemoryStorage(Clock()), reactor=Clock(),
                               limits=Limits(max_connections=0, max_pending_handshakes=0))
    factory.connections.update(object() for _ in range(20000))  # type: ignore[misc]
    assert factory.buildProtocol(None) is not None
    capped = FwsServerFactory(FilterPipeline(), MemoryStorage(Clock()), reactor=Clock(),
                              limits=Limits(max_connections=3, max_pending_handshakes=2))
    capped.connections.update(object() for _ in range(5))  # type: ignore[misc]
    assert capped.buildProtocol(None) is None
    assert capped.stats.limit_hits == {"max_connections": 1}
    capped.connections.pop()
    assert capped.buildProtocol(None) is not None
