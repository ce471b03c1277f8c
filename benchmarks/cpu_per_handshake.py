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

``--browser`` opens them with a browser's request instead (Chromium's
headers: Origin, User-Agent, a permessage-deflate offer and the rest), 50
at a time from this process: what a page's connection costs the server,
offer answered included. That client is slower than ``wsload``; the
server's CPU per connection is what is compared.
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


BROWSER = ("GET /chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\n"
           "Pragma: no-cache\r\nCache-Control: no-cache\r\nUser-Agent: Mozilla/5.0 (X11; Linux "
           "x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36\r\n"
           "Upgrade: websocket\r\nOrigin: http://127.0.0.1:{port}\r\nSec-WebSocket-Version: 13"
           "\r\nAccept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-US,en;q=0.9\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n")


def browser_round(port: int) -> int:
    """
    PER_ROUND connections opened with a browser's request, 50 at a time
    (half of ``--max-pending-per-ip``), then closed; how many opened. The
    kernel resets the odd one when the runs before have left the loopback's
    ports in TIME_WAIT: those are left out of the count, not retried.
    """
    request = BROWSER.format(port=port).encode()
    opened = 0
    for _ in range(PER_ROUND // 50):
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
        for s in socks:
            try:
                s.sendall(request)
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    head += chunk
            except ConnectionResetError:
                continue
            if not head.startswith(b"HTTP/1.1 101 "):
                raise RuntimeError(f"not opened: {head[:60]!r}")
            opened += 1
        for s in socks:
            s.close()
    return opened


def one_run(tree: str, wsload: str, browser: bool = False) -> float:
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

        def one_round() -> int:
            if browser:
                return browser_round(port)
            subprocess.run(load, capture_output=True, check=True)
            return PER_ROUND

        one_round()  # warm-up
        time.sleep(1)
        before = cpu_seconds(server.pid)
        opened = sum(one_round() for _ in range(ROUNDS))
        time.sleep(1.5)  # the last round's closes
        return (cpu_seconds(server.pid) - before) / opened * 1e6
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wsload", default="/tmp/fws-bench/wsload")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--browser", action="store_true",
                        help="open connections with a browser's request (see above)")
    parser.add_argument("trees", nargs="+")
    args = parser.parse_args()
    if args.browser:
        os.sched_setaffinity(0, {1})  # this process is the load generator: wsload's core
    results: dict[str, list[float]] = {tree: [] for tree in args.trees}
    for _ in range(args.reps):
        for tree in args.trees:
            results[tree].append(one_run(tree, args.wsload, args.browser))
    print("| tree | server CPU per connection, us (each rep) | median |")
    print("|---|---|---|")
    for tree, values in results.items():
        median = sorted(values)[len(values) // 2]
        print(f"| {tree} | {' '.join(f'{v:.1f}' for v in values)} | {median:.1f} |")


if __name__ == "__main__":
    main()
