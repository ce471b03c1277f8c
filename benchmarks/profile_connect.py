#!/usr/bin/env python3
"""
Profile a server under the harness's ``connect`` scenario with py-spy.

    profile_connect.py HARNESS_DIR SERVER [ROUNDS]      (run.sh profile SERVER connect)

The shared harness's ``tools/profile.py`` profiles fan-out and echo; this does
the same for handshakes: it starts SERVER from the harness's servers.txt,
records it with py-spy while ``wsload -m connect`` opens 5000 connections
(100 in flight), ROUNDS times, and prints the top functions by self and
inclusive time. Stacks of connection teardown (the load generator resets its
connections when it exits, outside the measured interval) are left out, so
the percentages are of the handshake work the scenario measures.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time

TEARDOWN = ("connectionLost", "_disconnectSelectable", "readConnectionLost", "_closeSocket")


def main() -> None:
    harness, server = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    sys.path.insert(0, harness)
    import bench  # the harness's own module: servers.txt, pinning, wsload

    logs = os.path.join(harness, "results", "logs")
    os.makedirs(logs, exist_ok=True)
    out = os.path.join(harness, "results", f"profile-{server}-connect.folded")
    srv = bench.Server(server, bench.load_servers()[server], logs)
    try:
        spy = subprocess.Popen(py_spy(harness, bench, python_pid(srv), 400, 2 * rounds + 2, out),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1)
        for _ in range(rounds):
            p = bench.wsload(["-p", srv.port, "-m", "connect", "-n", 5000, "-c", 100,
                              "-S", ",".join(map(str, srv.pids))])
            res, _ = p.communicate(timeout=120)
            print(res.strip()[-400:])
            time.sleep(0.5)
        _, err = spy.communicate(timeout=60)
        if spy.returncode:
            print(err[-500:])
    finally:
        srv.stop()
    report(out)


def py_spy(harness: str, bench: object, pid: int, rate: int, seconds: int, out: str) -> list[str]:
    """py-spy recording ``pid`` as raw folded stacks, pinned off the server's core."""
    return ["taskset", "-c", bench.CLIENT_CPU,  # type: ignore[attr-defined]
            os.path.join(harness, "venv/bin/py-spy"), "record", "--nonblocking", "-r", str(rate),
            "-d", str(seconds), "--format", "raw", "-o", out, "--pid", str(pid)]


def python_pid(srv: object) -> int:
    """The fws process of a server's tree (not a wrapper script, not redis-server)."""
    pids: list[int] = srv.pids  # type: ignore[attr-defined]
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"fws.cli" in f.read():
                    return pid
        except OSError:
            pass
    return pids[-1]  # another Python server of the harness


def report(path: str) -> None:
    self_t: collections.Counter[str] = collections.Counter()
    incl_t: collections.Counter[str] = collections.Counter()
    total = skipped = 0
    for line in open(path):
        stack, _, count = line.rstrip().rpartition(" ")
        n = int(count)
        frames = [f.split(" (")[0] + " (" + os.path.basename(f.split(" (")[1]).split(":")[0] + ")"
                  if " (" in f else f for f in stack.split(";")]
        if any(name in f for f in frames for name in TEARDOWN):
            skipped += n
            continue
        total += n
        self_t[frames[-1]] += n
        for f in set(frames):
            incl_t[f] += n
    print(f"\n{total} samples ({skipped} of connection teardown left out).  Top self time:")
    for f, n in self_t.most_common(18):
        print(f"  {100 * n / total:5.1f}%  {f}")
    print("Top inclusive time:")
    for f, n in incl_t.most_common(34):
        print(f"  {100 * n / total:5.1f}%  {f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--report"]:
        report(sys.argv[2])
    else:
        main()
