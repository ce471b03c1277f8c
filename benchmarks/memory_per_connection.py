#!/usr/bin/env python3
"""
What an idle connection costs fws, allocation by allocation.

    benchmarks/memory_per_connection.py [--connections N] [--top K] [TREE]

The harness's ``idle`` scenario gives one number (RSS per connection at
10,000); this says where it goes. It starts ``fws_server`` from TREE (a
checkout of fws; default: the one this file is in) under ``tracemalloc``,
opens one connection that marks a snapshot, then N more that stay open and
idle, and has the server compare a second snapshot with the first, grouped
by the line that allocated: bytes and blocks per connection, largest first.
Python's own allocations only (the kernel's socket buffers and the
allocator's slack are what RSS adds on top). Issue 16 starts here.
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The filter the server runs: "mark" takes the first snapshot, "dump PATH" the second.
PROBE = '''
import gc
import tracemalloc

from fws.filters.base import WebSocketMessageFilter

STATE = {}


class Probe(WebSocketMessageFilter):
    @classmethod
    def filter(cls, conn, data):
        command = bytes(data).decode()
        gc.collect()
        if command == "mark":
            STATE["base"], STATE["users"] = tracemalloc.take_snapshot(), len(conn.users)
            conn.sendMessage("marked")
            return
        path, top = command.split(" ")[1:]
        n = len(conn.users) - STATE["users"]
        stats = tracemalloc.take_snapshot().compare_to(STATE["base"], "lineno")
        total = sum(s.size_diff for s in stats)
        with open(path, "w") as out:
            out.write(f"{n} idle connections: {total / n:.0f} bytes per connection "
                      "(Python allocations)\\n\\n| bytes | blocks | allocated at |\\n|---|---|---|\\n")
            for s in [s for s in stats if s.size_diff > 0][:int(top)]:
                where = s.traceback[0]
                name = where.filename.split("site-packages/")[-1]
                out.write(f"| {s.size_diff / n:.0f} | {s.count_diff / n:.2f} | {name}:{where.lineno} |\\n")
        conn.sendMessage("dumped")
'''


class Client:
    """A minimal WebSocket client over a blocking socket: handshake, masked text frames out."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                          "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            response += chunk
        if not response.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(response.split(b"\r\n", 1)[0].decode())
        self.rest = response.split(b"\r\n\r\n", 1)[1]

    def send(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        assert len(payload) < 126
        self.sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask
                          + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def receive(self) -> bytes:
        data = self.rest
        while len(data) < 2 or len(data) < 2 + (data[1] & 0x7F):
            data += self.sock.recv(4096)
        n = data[1] & 0x7F
        self.rest = data[2 + n:]
        return data[2:2 + n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tree", nargs="?", default=str(ROOT))
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        Path(work, "fws_memory_probe.py").write_text(PROBE)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=f"{args.tree}:{work}", PYTHONTRACEMALLOC="1")
        server = subprocess.Popen(
            [sys.executable, "-m", "fws.cli", "-p", str(port), "-i", "127.0.0.1", "--log-level",
             "warn", "--max-connections", "0", "--max-message-rate", "0", "--max-pending-per-ip",
             "0", "-f", "fws_memory_probe"], env=env, cwd=work,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(300):
                try:
                    socket.create_connection(("127.0.0.1", port)).close()
                    break
                except OSError:
                    time.sleep(0.1)
            first = Client(port)
            first.send("mark")
            assert first.receive() == b"marked"
            idle = [Client(port) for _ in range(args.connections)]
            time.sleep(1)
            report = Path(work, "report.md")
            first.send(f"dump {report} {args.top}")
            assert first.receive() == b"dumped"
            print(f"tree: {args.tree}\n")
            print(report.read_text(), end="")
            del idle
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
