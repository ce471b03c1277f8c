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
from ipaddress import ip_network
from typing import Any

import pytest

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


def serve(processes: list[FwsProcess], tmp_path: Any, *args: str, static: bool = True) -> FwsProcess:
    proc = FwsProcess([])
    extra = ["--static", str(tmp_path)] if static else []
    proc.args = ["-p", str(proc.port), "-i", "127.0.0.1", "-f", "echo",
                 "--open-handshake-timeout", "30", *extra, *args]
    processes.append(proc)
    (tmp_path / "index.html").write_text("hello\n")
    return proc.start()


def settle(flood: list[socket.socket], expected: int) -> int:
    """How many of ``flood`` the server keeps, once it has closed what it closes."""
    deadline = time.monotonic() + 5
    kept = len(flood)
    while time.monotonic() < deadline:
        kept = sum(still_open(s) for s in flood)
        if kept <= expected:
            break
        time.sleep(0.05)
    time.sleep(0.3)  # and they stay that way
    return sum(still_open(s) for s in flood)


def get(port: int, source: str = "127.0.0.1") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5,
                                  source_address=(source, 0)) as sock:
        sock.sendall(b"GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def test_the_cap_applies_on_the_http_port(processes: list[FwsProcess], tmp_path: Any) -> None:
    """With --static the port's factory is twisted.web's: its HTTP channels count too."""
    proc = serve(processes, tmp_path, "--max-connections", "5", "--max-pending-handshakes", "5")
    flood = [socket.create_connection(("127.0.0.1", proc.port), timeout=5) for _ in range(FLOOD)]
    try:
        kept = settle(flood, 10)
        assert kept == 10, f"{kept} of {FLOOD} idle sockets still open (cap 5 + 5)"
        blocked = RawClient(proc.port, handshake=False)
        proc.wait_for(lambda: not still_open(blocked.sock), "the extra socket to be closed")
        blocked.close()
    finally:
        for s in flood:
            s.close()
    proc.wait_for(lambda: get(proc.port).startswith(b"HTTP/1.1 200"), "a file to be served again")
    # WebSockets handed over by twisted.web and HTTP channels make one count.
    users = [RawClient(proc.port) for _ in range(5)]
    try:
        assert [u.status for u in users] == [101] * 5
        flood = [socket.create_connection(("127.0.0.1", proc.port), timeout=5)
                 for _ in range(FLOOD)]
        try:
            kept = settle(flood, 5)
            assert kept == 5, f"{kept} of {FLOOD} idle sockets open next to 5 users (cap 5 + 5)"
        finally:
            for s in flood:
                s.close()
        assert all(still_open(u.sock) for u in users)
    finally:
        for u in users:
            u.close()
    assert any("connection cap reached" in line for line in proc.lines())


@pytest.mark.parametrize("static", [True, False], ids=["http-port", "websocket-port"])
def test_pending_connections_per_address(processes: list[FwsProcess], tmp_path: Any,
                                         static: bool) -> None:
    """One address cannot take all the pending headroom: --max-pending-per-ip at accept."""
    proc = serve(processes, tmp_path, "--max-pending-per-ip", "4", static=static)
    flood = [socket.create_connection(("127.0.0.1", proc.port), timeout=5) for _ in range(FLOOD)]
    try:
        kept = settle(flood, 4)
        assert kept == 4, f"{kept} of {FLOOD} idle sockets from one address still open (cap 4)"
        # Another address is not held back by this one's.
        other = socket.create_connection(("127.0.0.1", proc.port), timeout=5,
                                         source_address=("127.0.0.2", 0))
        try:
            time.sleep(0.3)
            assert still_open(other)
        finally:
            other.close()
        if static:
            assert get(proc.port, "127.0.0.3").startswith(b"HTTP/1.1 200")
    finally:
        for s in flood:
            s.close()
    # Open users do not count as pending: more than 4 from one address.
    proc.wait_for(lambda: connects(proc.port), "a client to connect again")
    users = [RawClient(proc.port) for _ in range(8)]
    try:
        assert [u.status for u in users] == [101] * 8
    finally:
        for u in users:
            u.close()
    assert any("--max-pending-per-ip 4" in line for line in proc.lines()), proc.lines()


def test_pending_per_address_counts_until_open() -> None:
    from twisted.internet.address import IPv4Address
    from twisted.internet.task import Clock

    factory = FwsServerFactory(FilterPipeline(), MemoryStorage(Clock()), reactor=Clock(),
                               limits=Limits(max_pending_per_ip=2,
                                             trusted_proxies=(ip_network("10.0.0.0/8"),)))
    addr = IPv4Address("TCP", "192.0.2.1", 1234)
    factory.pending_started("192.0.2.1")
    assert factory.admit(addr)
    factory.pending_started("192.0.2.1")
    assert not factory.admit(addr)
    assert factory.admit(IPv4Address("TCP", "192.0.2.2", 1234))
    factory.pending_started("10.1.2.3")
    factory.pending_started("10.1.2.3")
    assert factory.admit(IPv4Address("TCP", "10.1.2.3", 1234))  # a trusted proxy
    factory.pending_ended("192.0.2.1")
    assert factory.admit(addr)
    assert factory.stats.limit_hits == {"max_pending_per_ip": 1}
    unlimited = FwsServerFactory(FilterPipeline(), MemoryStorage(Clock()), reactor=Clock(),
                                 limits=Limits(max_pending_per_ip=0))
    for _ in range(500):
        unlimited.pending_started("192.0.2.1")
    assert unlimited.admit(addr)
