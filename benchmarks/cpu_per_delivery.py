#!/usr/bin/env python3
"""
Server CPU per delivery of an unloaded broadcast, split into user and system time.

    cpu_per_delivery.py HARNESS_DIR SERVERS [RECEIVERS] [MESSAGES] [REPS]
    (run.sh cpu SERVERS [RECEIVERS] [MESSAGES] [REPS])

``fanlat-5000-64`` times one message to 5000 clients, and its p99 is what the
server's core spends on those 5000 sends: on this machine the kernel's share
(a loopback ``send`` runs the receiving TCP stack too) is most of it. Latency
varies by a fifth from run to run with the neighbours' load, which hides a 5 %
change in what the server does itself; the server's own user time per delivery
(``/proc/PID/stat``) does not. So this opens RECEIVERS plain WebSocket clients
on the broadcast room, sends MESSAGES 64-byte messages one at a time (the next
once every receiver has the last: one broadcast per reactor turn, as in
``fanlat``), and prints user and system microseconds per delivery for each
server, the reps interleaved like the harness's.
"""

from __future__ import annotations

import base64
import os
import select
import socket
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pids: list[int]) -> tuple[float, float]:
    """User and system seconds of a server's process tree."""
    user = system = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11]) / TICK
        system += int(fields[12]) / TICK
    return user, system


def connect(port: int, path: str = "/broadcast") -> socket.socket:
    """One client through the opening handshake, left non-blocking."""
    s = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("the server closed a connection during its handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"handshake refused: {head[:80]!r}")
    s.setblocking(False)
    return s


def masked_text(payload: bytes) -> bytes:
    """A client frame (masked with a zero key, which the protocol allows)."""
    return bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


def read_all(poller: select.epoll, by_fd: dict[int, socket.socket], waiting: int,
             failure: str) -> None:
    """Read ``waiting`` bytes from the polled sockets, within 30 s (else ``failure``)."""
    deadline = time.monotonic() + 30
    while waiting > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(failure)
        for fd, _ in poller.poll(1.0):
            try:
                waiting -= len(by_fd[fd].recv(65536))
            except BlockingIOError:
                pass


def run(bench: object, name: str, cmd: str, logs: str, receivers: int, messages: int) -> tuple[float, float]:
    srv = bench.Server(name, cmd, logs)  # type: ignore[attr-defined]
    try:
        clients = [connect(srv.port) for _ in range(receivers)]
        sender = connect(srv.port)
        poller = select.epoll()
        for s in clients:
            poller.register(s.fileno(), select.EPOLLIN)
        by_fd = {s.fileno(): s for s in clients}
        frame_len = 2 + 64
        time.sleep(1.0)  # let the handshakes' work settle before the measurement
        before = cpu_of(srv.pids)
        for i in range(messages):
            sender.sendall(masked_text(b"%064d" % i))
            read_all(poller, by_fd, receivers * frame_len,
                     f"{name}: message {i} did not reach every receiver")
        after = cpu_of(srv.pids)
        deliveries = receivers * messages
        for s in clients + [sender]:
            s.close()
        return ((after[0] - before[0]) / deliveries * 1e6, (after[1] - before[1]) / deliveries * 1e6)
    finally:
        srv.stop()


def measure(harness: str, servers: list[str], reps: int,
            run_one: Callable[[Any, str, str, str], tuple[float, float]],
            unit: str, title: str) -> None:
    """
    Run ``run_one(bench, name, command, logs)`` -> (user, system) us per
    ``unit`` for every server, ``reps`` times interleaved, and print each
    rep and the medians: the loop cpu_per_echo.py shares.
    """
    sys.path.insert(0, harness)
    os.chdir(harness)
    import bench  # the harness's own module: servers.txt, pinning, process trees

    bench.raise_nofile()
    os.sched_setaffinity(0, {int(bench.CLIENT_CPU)})
    logs = os.path.join(harness, "results", "logs")
    os.makedirs(logs, exist_ok=True)
    table = bench.load_servers()
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
    for rep in range(1, reps + 1):
        for name in servers:
            user, system = run_one(bench, name, table[name], logs)
            results[name].append((user, system))
            print(f"[rep {rep}] {name:20} user {user:5.2f} us  system {system:5.2f} us per {unit}",
                  flush=True)
    print(f"\n{title}, {reps} reps; server CPU per {unit}, median (min-max), microseconds\n")
    print("| server | user | system | total |\n|---|---|---|---|")
    for name, rows in results.items():
        cols = []
        for values in ([u for u, _ in rows], [s for _, s in rows], [u + s for u, s in rows]):
            cols.append(f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")
        print(f"| {name} | " + " | ".join(cols) + " |")


def main() -> None:
    harness, servers = sys.argv[1], sys.argv[2].split(",")
    receivers = int(sys.argv[3]) if len(sys.argv) > 3 else 5000
    messages = int(sys.argv[4]) if len(sys.argv) > 4 else 200  # run.sh cpu's default too
    reps = int(sys.argv[5]) if len(sys.argv) > 5 else 3
    measure(harness, servers, reps,
            lambda bench, name, command, logs: run(bench, name, command, logs, receivers,
                                                   messages),
            "delivery", f"{receivers} receivers, {messages} messages of 64 B one at a time")


if __name__ == "__main__":
    main()
