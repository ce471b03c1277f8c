"""
A graceful stop (SIGTERM) delivers what was already queued, then closes with 1001.

Each test runs a real ``fws_server`` and a raw-socket client with a small
receive buffer, so that megabytes of echoes wait on the server side: in the
kernel's send queue and in Twisted's transport buffer. Before the fix, every
connection was aborted (TCP reset) a fixed 2 s (the close handshake timeout)
after its close frame had been queued, whatever ``--stop-timeout`` said, and
whatever was still waiting was lost.
"""

from __future__ import annotations

import signal
import struct
import time
import urllib.request

from tests.processes import FwsProcess
from tests.rawws import RawClient
from tests.redis_support import free_port

#: Messages the client has echoed to it before the stop: 4 MB, more than the
#: kernel holds for a client that reads slowly (about 3 MB on Linux loopback)
#: and less than ``--max-send-buffer`` (4 MiB) lets fws buffer on top.
COUNT = 2000
SIZE = 2000


def start(processes: list[FwsProcess], *args: str) -> tuple[FwsProcess, int]:
    admin = free_port()
    proc = FwsProcess([])
    proc.args = ["-p", str(proc.port), "-i", "127.0.0.1", "-f", "echo", "--max-message-rate", "0",
                 "--admin", f"tcp:{admin}:interface=127.0.0.1", *args]
    processes.append(proc)
    return proc.start(), admin


def binary_frame(payload: bytes) -> bytes:
    """A masked binary frame whose masking key is zero (valid, and no Python XOR loop)."""
    n = len(payload)
    head = b"\x82" + (bytes([0x80 | n]) if n < 126 else b"\xfe" + struct.pack("!H", n))
    return head + b"\0\0\0\0" + payload


def messages_sent(admin: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith("fws_messages_sent_total "):
            return float(line.split()[1])
    raise AssertionError("no fws_messages_sent_total in /metrics")


def queue_echoes(proc: FwsProcess, admin: int) -> RawClient:
    """A client that has COUNT echoes waiting for it on the server, none of them read yet."""
    client = RawClient(proc.port, rcvbuf=4096)
    assert client.status == 101
    filler = b"m" * (SIZE - 4)
    client.send(b"".join(binary_frame(struct.pack("!I", i) + filler) for i in range(COUNT)))
    proc.wait_for(lambda: messages_sent(admin) >= COUNT, "every echo to be queued")
    return client


def read_slowly(client: RawClient, rate: float) -> tuple[list[int], int | None, float]:
    """
    Read at about ``rate`` bytes per second until the close frame (or the end
    of the connection): the sequence numbers received, the close code (None
    if none came) and when the close frame arrived.
    """
    client.sock.settimeout(10)
    started = time.monotonic()
    got = 0
    seen: list[int] = []
    try:
        while True:
            opcode, payload = client.read_frame()
            got += len(payload) + 4
            if opcode == 8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                return seen, code, time.monotonic()
            assert opcode == 2 and len(payload) == SIZE
            seen.append(struct.unpack("!I", payload[:4])[0])
            ahead = got / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    except (ConnectionError, OSError):  # reset (or closed) before the close frame
        return seen, None, time.monotonic()


def test_slow_reader_gets_everything_then_1001(processes: list[FwsProcess]) -> None:
    proc, admin = start(processes, "--stop-timeout", "30")
    client = queue_echoes(proc, admin)
    proc.signal(signal.SIGTERM)
    # About 5 s to read it all: longer than the close handshake timeout (2 s)
    # that used to cut the connection, well within --stop-timeout.
    began = time.monotonic()
    seen, code, _ = read_slowly(client, rate=COUNT * SIZE / 5.0)
    assert len(seen) == COUNT and seen == list(range(COUNT)), (
        f"{len(seen)} of {COUNT} messages after {time.monotonic() - began:.1f} s")
    assert code == 1001
    assert time.monotonic() - began > 3.0  # the drain did outlast the old 2 s cut
    client.send(b"\x88\x82\0\0\0\0" + struct.pack("!H", 1001))  # answer the close
    assert proc.wait(10) == 0
    assert not any("abort" in line for line in proc.lines()), "\n".join(proc.lines())
    client.close()


def test_silent_client_is_cut_after_the_close_handshake_timeout(
        processes: list[FwsProcess]) -> None:
    # The client reads everything and the close frame, but never answers it:
    # fws cuts it the close handshake timeout (2 s) after the close frame has
    # left the server, not only at the --stop-timeout deadline (30 s).
    proc, admin = start(processes, "--stop-timeout", "30")
    client = queue_echoes(proc, admin)
    proc.signal(signal.SIGTERM)
    seen, code, closed_at = read_slowly(client, rate=COUNT * SIZE / 4.0)
    assert len(seen) == COUNT and code == 1001, f"{len(seen)} of {COUNT} messages, close {code}"
    assert proc.wait(10) == 0
    waited = time.monotonic() - closed_at
    assert 1.0 < waited < 6.0, f"cut {waited:.1f} s after the close frame arrived"
    # One event, one line: fws's close line says why, Autobahn's warning is not repeated.
    lines = proc.lines()
    assert not [line for line in lines if "dropping connection" in line], "\n".join(lines)
    closes = [line for line in lines if "closed by the server" in line]
    assert len(closes) == 1 and "closing handshake timeout" in closes[0], "\n".join(lines)
    client.close()


def test_client_that_never_reads_is_aborted_at_the_stop_timeout(
        processes: list[FwsProcess]) -> None:
    proc, admin = start(processes, "--stop-timeout", "3", "--drain-period", "0")
    client = queue_echoes(proc, admin)
    stopped = time.monotonic()
    proc.signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    took = time.monotonic() - stopped
    # Held until the deadline (drain period 0 + stop timeout 3 s), not cut at 2 s.
    assert 2.7 < took < 8.0, f"exited {took:.1f} s after SIGTERM"
    aborted = [line for line in proc.lines() if "aborting" in line]
    assert len(aborted) == 1 and "stop timeout" in aborted[0], "\n".join(proc.lines())
    client.sock.settimeout(5)
    received = b""
    try:
        while chunk := client.sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass  # the reset: what the kernel still held for it is gone
    except TimeoutError:
        raise AssertionError("the server did not close the connection") from None
    assert len(received) < COUNT * SIZE
    client.close()
