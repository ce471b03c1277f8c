#!/usr/bin/env python3
"""
Profile a server under a fan-out or echo scenario of the harness with py-spy.

    profile_server.py HARNESS_DIR SERVER SCENARIO [SECONDS]   (run.sh profile SERVER SCENARIO)

The shared harness's ``tools/profile.py`` records the last process of the
server's tree, which for ``fws-redis`` (a wrapper script starting redis-server
and fws) is redis-server: py-spy then finds no Python. This records the fws
process (``fws.cli`` on its command line), so Redis's own time is left out, and
prints the top functions as ``profile_connect.py`` does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from profile_connect import py_spy, python_pid, report


def main() -> None:
    harness, server, scenario = sys.argv[1], sys.argv[2], sys.argv[3]
    seconds = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    sys.path.insert(0, harness)
    import bench  # the harness's own module: servers.txt, scenarios, pinning, wsload

    sc = bench.SCENARIOS[scenario]
    logs = os.path.join(harness, "results", "logs")
    os.makedirs(logs, exist_ok=True)
    out = os.path.join(harness, "results", f"profile-{server}-{scenario}.folded")
    srv = bench.Server(server, bench.load_servers()[server], logs)
    try:
        pids = ",".join(map(str, srv.pids))
        if sc["kind"] == "fanout":
            args = ["-p", srv.port, "-m", "fanout", "-n", sc["n"], "-s", sc["size"], "-w",
                    sc["window"], "-d", seconds + 2, "-S", pids]
        else:
            args = ["-p", srv.port, "-m", "echo", "-n", sc["n"], "-s", sc["size"], "-d",
                    seconds + 2, "-W", 0.5, "-S", pids]
        load = bench.wsload(args)
        time.sleep(1.5 if sc.get("n", 0) < 5000 else 3)  # the connection phase
        spy = subprocess.run(py_spy(harness, bench, python_pid(srv), 200, seconds, out),
                             capture_output=True, text=True)
        res, _ = load.communicate(timeout=120)
        print(res.strip()[-400:])
        if spy.returncode:
            sys.exit(f"py-spy failed: {spy.stderr[-500:]}")
    finally:
        srv.stop()
    report(out)


if __name__ == "__main__":
    main()
