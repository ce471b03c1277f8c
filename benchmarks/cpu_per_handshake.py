#!/usr/bin/env python3
"""
Server CPU time per connection (handshake and close) for fws checkouts, interleaved.

    benchmarks/cpu_per_handshake.py [--wsload PATH] [--reps N] TREE [TREE ...]

The harness's ``connect`` scenario measures handshakes per second, which
moves by a tenth between runs on a shared host (the client's and the
kernel's share of the two cores, and how the accept queue happens to
fill). This counts what the server itself spends: its user and system time
(``/proc/PID/stat``) over 4 rounds of 5000 connections opened with
``wsload -m connect`` (100 in flight) and closed, after a warm-up round,
server pinned to cpu0 and load generator to cpu1; each TREE (a checkout of
fws with ``fws._speedups`` built in place) runs ``fws -f bench_filters`` as in
``servers.txt``, the trees taking turns, ``--reps`` times.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

ROUNDS, PER_ROUND = 4, 5000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(tree: str, wsload: str) -> float:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=f"{tree}/benchmarks:{tree}")
    server = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, "-m", "fws.cli", "-p", str(port), "-i",
         "127.0.0.1", "--log-level", "warn", "--max-message-rate", "0", "--max-connections", "0",
         "-f", "bench_filters"], cwd=tree, env=env)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        load = ["taskset", "-c", "1", wsload, "-p", str(port), "-m", "connect", "-n",
                str(PER_ROUND), "-c", "100"]
        subprocess.run(load, capture_output=True, check=True)  # warm-up
        time.sleep(1)
        before = cpu_seconds(server.pid)
        for _ in range(ROUNDS):
            subprocess.run(load, capture_output=True, check=True)
        time.sleep(1.5)  # the last round's closes
        return (cpu_seconds(server.pid) - before) / (ROUNDS * PER_ROUND) * 1e6
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wsload", default="/tmp/fws-bench/wsload")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("trees", nargs="+")
    args = parser.parse_args()
    results: dict[str, list[float]] = {tree: [] for tree in args.trees}
    for _ in range(args.reps):
        for tree in args.trees:
            results[tree].append(one_run(tree, args.wsload))
    print("| tree | server CPU per connection, us (each rep) | median |")
    print("|---|---|---|")
    for tree, values in results.items():
        median = sorted(values)[len(values) // 2]
        print(f"| {tree} | {' '.join(f'{v:.1f}' for v in values)} | {median:.1f} |")


if __name__ == "__main__":
    main()
