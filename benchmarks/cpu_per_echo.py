#!/usr/bin/env python3
"""
Server CPU per echo round trip, split into user and system time.

    cpu_per_echo.py HARNESS_DIR SERVERS [CLIENTS] [ROUNDS] [REPS]
    (run.sh cpu-echo SERVERS [CLIENTS] [ROUNDS] [REPS]; defaults 100 2000 5)

The harness's ``echo`` scenario counts round trips per second of a server
whose core is saturated, and its rate moves by up to 1.9x between
repetitions with the neighbours' load (``docs/performance.rst``). What the
server's process spends per round trip does not move that much: this opens
CLIENTS WebSocket clients on ``/echo``, sends one 64-byte message on each,
waits for every answer, ROUNDS times, and prints the server's user and
system microseconds per round trip (``/proc/PID/stat``), the reps
interleaved. Every round reaches the server as one read per client in one
or a few reactor turns, as under the harness's load; system time is the
``recv`` and ``send`` of each message (one of each, see the strace in
``docs/performance.rst``), user time is everything fws does in Python.
"""

from __future__ import annotations

import os
import select
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu_per_delivery import connect, cpu_of, masked_text, measure, read_all


def run(bench: object, name: str, cmd: str, logs: str, clients: int, rounds: int) -> tuple[float, float]:
    srv = bench.Server(name, cmd, logs)  # type: ignore[attr-defined]
    try:
        socks = [connect(srv.port, "/echo") for _ in range(clients)]
        poller = select.epoll()
        for s in socks:
            poller.register(s.fileno(), select.EPOLLIN)
        by_fd = {s.fileno(): s for s in socks}
        frames = [masked_text(b"%064d" % i) for i in range(clients)]
        answer = 2 + 64
        time.sleep(1.0)  # let the handshakes' work settle before the measurement
        before = cpu_of(srv.pids)
        for i in range(rounds):
            for s, f in zip(socks, frames):
                s.send(f)
            read_all(poller, by_fd, clients * answer, f"{name}: round {i} was not answered in full")
        after = cpu_of(srv.pids)
        trips = clients * rounds
        for s in socks:
            s.close()
        return ((after[0] - before[0]) / trips * 1e6, (after[1] - before[1]) / trips * 1e6)
    finally:
        srv.stop()


def main() -> None:
    harness, servers = sys.argv[1], sys.argv[2].split(",")
    clients = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 2000
    reps = int(sys.argv[5]) if len(sys.argv) > 5 else 5
    measure(harness, servers, reps,
            lambda bench, name, command, logs: run(bench, name, command, logs, clients, rounds),
            "round trip", f"{clients} clients, {rounds} rounds of one 64 B message each")


if __name__ == "__main__":
    main()
