"""
After fws has answered a client's close frame the TCP connection goes within
a bounded time, even when the output queued for the client has not drained.

Autobahn then closes with ``loseConnection``, which waits for Twisted's buffer
to empty, and its ``serverConnectionDropTimeout`` applies to clients only: a
client that let megabytes queue up (messages sent to it while it did not
read), then sent a close and stopped reading, kept its connection and file
descriptor for ever.
"""

from __future__ import annotations

import struct
import time

from tests.processes import FwsProcess
from tests.rawws import RawClient


def masked(payload: bytes, opcode: int = 1) -> bytes:
    """A client frame with an all-zero mask key (the payload goes as it is: no masking cost)."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + b"\0\0\0\0" + payload


def closed_line(proc: FwsProcess) -> bool:
    return any(" closed by the client" in line for line in proc.lines())


def test_a_client_that_closes_and_stops_reading_is_aborted(processes: list[FwsProcess]) -> None:
    proc = FwsProcess([])
    proc.args = ["-p", str(proc.port), "-i", "127.0.0.1", "-f", "echo",
                 "--max-send-buffer", str(64 << 20)]
    processes.append(proc)
    proc.start()
    client = RawClient(proc.port, rcvbuf=4096)
    try:
        assert client.status == 101
        message = masked(b"x" * (128 << 10))
        client.sock.settimeout(1)
        sent = 0
        deadline = time.monotonic() + 20
        while sent < 16 << 20 and time.monotonic() < deadline:  # echoed, never read
            try:
                client.sock.sendall(message)
            except TimeoutError:
                break
            sent += len(message)
        assert sent >= 8 << 20, f"only {sent} bytes sent"
        time.sleep(0.5)
        client.sock.sendall(masked(struct.pack("!H", 1000), opcode=8))
        started = time.monotonic()
        # The close handshake timeout (2 s), and some slack for a loaded host.
        proc.wait_for(lambda: closed_line(proc), "the connection to be closed", timeout=8)
        assert time.monotonic() - started >= 1.5  # not at once: the output had its time
        # Aborted: the client gets a reset, not the megabytes that were queued.
        client.sock.settimeout(5)
        received = 0
        try:
            while chunk := client.sock.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
        assert received < sent
    finally:
        client.close()


def test_a_client_that_closes_and_reads_gets_everything(processes: list[FwsProcess]) -> None:
    proc = FwsProcess([])
    proc.args = ["-p", str(proc.port), "-i", "127.0.0.1", "-f", "echo"]
    processes.append(proc)
    proc.start()
    client = RawClient(proc.port)
    try:
        for _ in range(10):
            client.send(masked(b"y" * 1000))
        client.send(masked(struct.pack("!H", 1000), opcode=8))
        frames = []
        while True:
            opcode, _payload = client.read_frame()
            frames.append(opcode)
            if opcode == 8:
                break
        assert frames == [1] * 10 + [8]
        assert client.closed_by_server()
    finally:
        client.close()
