"""
The tutorial (docs/tutorial.rst), command by command: every shell command on
the page is run here as written, with only the ports swapped for free ones
(and Redis and HAProxy started by the test, since they must not outlive it).
A command this test does not know fails it, so the page cannot gain an
untested step.
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from websockets.sync.client import connect as ws_connect

from tests.processes import BIN, FwsProcess
from tests.redis_support import RedisProcess, free_port
from tests.system_tools import program

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "tutorial.rst"
INSTALL = "python3 -m venv .venv && . .venv/bin/activate && pip install -e ."


def commands() -> list[str]:
    """The shell commands of the tutorial's ``code-block:: sh`` blocks, in order."""
    lines = TUTORIAL.read_text().splitlines()
    out: list[str] = []
    in_sh = False
    for line in lines:
        if line.startswith(".. code-block::"):
            in_sh = line.split("::")[1].strip() == "sh"
            continue
        if in_sh:
            if line.strip() and not line.startswith("   "):
                in_sh = False
            elif line.strip():
                out.append(line.strip())
    return out


def test_the_tutorial_commands_are_the_ones_tested() -> None:
    """The page has exactly the commands the test below runs (the install: .ci/run)."""
    assert commands()[0] == INSTALL
    readme = (ROOT / "README.md").read_text()
    assert "pip install -e '.[test]'" in readme  # .ci/run installs the same way, with test extras


def test_tutorial(tmp_path: Path, redis: RedisProcess, processes: list[FwsProcess]) -> None:
    haproxy = program("haproxy", "haproxy")
    ports = {"9000": free_port(), "9001": free_port(), "9002": free_port(),
             "9101": free_port(), "9102": free_port(), "8080": free_port(),
             "6380": redis.port}

    def swap(text: str) -> str:
        return re.sub(r"\b(9000|9001|9002|9101|9102|8080|6380)\b",
                      lambda m: str(ports[m.group(1)]), text)

    cwd = ROOT
    nodes: list[FwsProcess] = []
    steps = commands()
    for command in steps:
        if command == INSTALL:
            continue  # .ci/run installs fws exactly so before running the tests
        if command == "cd examples":
            cwd = ROOT / "examples"
            continue
        if command.startswith("redis-server "):
            # The fixture's private server stands in (it must not outlive the test).
            assert command == "redis-server --port 6380 --save '' --daemonize yes"
            continue
        background = command.endswith(" &")
        argv = shlex.split(swap(command.removesuffix(" &")))
        if argv[0] == "fws_server" and "--check" in argv:
            result = subprocess.run([str(BIN / "fws_server"), *argv[1:]], cwd=cwd,
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            assert result.stdout.startswith("configuration OK\n")
            assert "BroadcastMessagesByToken" in result.stdout
            continue
        if argv[0] == "fws_server" and not background:
            # A foreground server of steps 2 and 3: use it, then Ctrl-C it.
            proc = FwsProcess(argv[1:] + ["-p", str(ports["9000"]), "-i", "127.0.0.1"], cwd=cwd,
                              port=ports["9000"])
            processes.append(proc)
            proc.start()
            page = urllib.request.urlopen(f"http://127.0.0.1:{ports['9000']}/", timeout=10)
            assert page.status == 200 and b"<html" in page.read().lower()
            with ExitStack() as stack:
                a, b = (stack.enter_context(ws_connect(f"ws://127.0.0.1:{ports['9000']}/"))
                        for _ in range(2))
                for ws in (a, b):
                    ws.send("token:tutorial")
                    assert ws.recv(timeout=10).startswith("Successfully registered")
                a.send("well, heck")
                expected = "well, ****" if "polite" in argv else "well, heck"
                assert b.recv(timeout=10) == expected
            proc.signal(signal.SIGINT)
            assert proc.wait(15) == 0
            continue
        if argv[0] == "fws_server":
            proc = FwsProcess(argv[1:], cwd=cwd, port=int(argv[argv.index("-p") + 1]))
            processes.append(proc)
            proc.start()
            nodes.append(proc)
            continue
        if argv[:2] == ["curl", "-s"] and argv[2].endswith("/readyz"):
            port = int(argv[2].split(":")[1].split("/")[0])
            for node in nodes:
                node.wait_for_line("Redis ready at")
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10).read()
            assert body == swap('{"checks": {"listening": "ok", "storage": "ok"}, "status": "ready", '
                                '"storage": {"redis_master": "127.0.0.1:6380"}}\n').encode()
            # Same room, different nodes: the messages cross.
            with ExitStack() as stack:
                a = stack.enter_context(ws_connect(f"ws://127.0.0.1:{ports['9001']}/"))
                b = stack.enter_context(ws_connect(f"ws://127.0.0.1:{ports['9002']}/"))
                for ws in (a, b):
                    ws.send("token:tutorial")
                    assert ws.recv(timeout=10).startswith("Successfully registered")
                a.send("darn, it crosses")
                assert b.recv(timeout=10) == "****, it crosses"
            continue
        if argv[0] == "haproxy":
            assert argv == ["haproxy", "-f", "../docs/deploy/haproxy.cfg"] and background
            config = tmp_path / "haproxy.cfg"
            config.write_text(swap((cwd / argv[2]).read_text()).replace("inter 2s", "inter 200ms"))
            proxy = FwsProcess(["-db", "-f", str(config)], command=[haproxy], port=ports["8080"])
            processes.append(proxy)
            proxy.start(wait=False)
            proxy.wait_for_port(ports["8080"])
            page = urllib.request.urlopen(f"http://127.0.0.1:{ports['8080']}/", timeout=10)
            assert page.status == 200
            stack = ExitStack()
            clients = [stack.enter_context(ws_connect(f"ws://127.0.0.1:{ports['8080']}/"))
                       for _ in range(4)]
            continue
        if argv[:2] == ["curl", "-s"] and argv[2].endswith("/metrics"):
            assert argv[3:] == ["|", "grep", "^fws_connections_open "]
            port = int(argv[2].split(":")[1].split("/")[0])
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                          timeout=10).read().decode()
            lines = [line for line in text.splitlines() if line.startswith(argv[5][1:])]
            assert len(lines) == 1 and float(lines[0].split()[1]) >= 1  # leastconn: 2 of 4
            continue
        if command == "kill %1":
            nodes[0].signal(signal.SIGTERM)
            # Its clients get 1001; they reconnect through HAProxy and all land on node 2.
            codes = []
            for ws in clients:
                try:
                    ws.recv(timeout=0.5)
                except Exception as e:  # closed (1001) or simply nothing to read
                    codes.append(getattr(getattr(e, "rcvd", None), "code", None))
            assert codes.count(1001) >= 1
            assert nodes[0].wait(15) == 0
            stack.close()
            with ExitStack() as again:
                for _ in range(4):
                    ws = again.enter_context(ws_connect(f"ws://127.0.0.1:{ports['8080']}/"))
                    ws.send("token:tutorial")
                    assert ws.recv(timeout=10).startswith("Successfully registered")
                text = urllib.request.urlopen(f"http://127.0.0.1:{ports['9102']}/metrics",
                                              timeout=10).read().decode()
                assert "fws_connections_open 4.0" in text.splitlines()
            continue
        raise AssertionError(f"the tutorial has a command this test does not run: {command!r}")
    assert len(nodes) == 2
