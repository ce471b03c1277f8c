"""
``twistd fws`` as a real daemon (no ``-n``), the way docs/deployment.rst runs
it: ``twistd --pidfile P --logfile L fws ...`` from a scratch directory.

A daemon is not the test's child: twistd forks twice and the parent exits once
the grandchild reports how startup went.  So "no process left behind" is
checked in ``/proc`` (a zombie counts as gone: in a container whose init does
not reap, the daemon's exited processes stay zombies), and the ``daemons``
fixture kills, by pid, whatever process still carries the test's scratch
directory in its command line.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.processes import BIN
from tests.redis_support import free_port

#: How long the documented command may take to come back, success or failure.
RETURN_WITHIN = 15.0


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def started_from(directory: Path) -> list[int]:
    """Live processes whose command line mentions ``directory`` (the daemons of one test)."""
    marker = str(directory).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline and alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def eventually(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Daemon:
    """The documented daemon command, with its pidfile and log file in one scratch directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.pidfile = directory / "fws.pid"
        self.logfile = directory / "fws.log"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``twistd --pidfile P --logfile L fws ARGS``; fails the test unless it returns in time."""
        env = {k: v for k, v in os.environ.items() if k != "STORAGE_OBJECT_MODULE"}
        command = [str(BIN / "twistd"), "--pidfile", str(self.pidfile),
                   "--logfile", str(self.logfile), "fws", *args]
        try:
            return subprocess.run(command, cwd=self.directory, env=env, capture_output=True,
                                  text=True, timeout=RETURN_WITHIN)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"twistd did not return within {RETURN_WITHIN} s: "
                                 f"stderr {e.stderr!r}, log {self.log()!r}") from None

    def log(self) -> str:
        return self.logfile.read_text() if self.logfile.exists() else ""

    def kill_leftovers(self) -> None:
        for pid in started_from(self.directory):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    runner = Daemon(tmp_path)
    try:
        yield runner
    finally:
        runner.kill_leftovers()


def assert_failed_cleanly(daemon: Daemon, result: subprocess.CompletedProcess[str], status: int,
                          line: str) -> None:
    """Exit ``status``, ``line`` on stderr and in the log, no traceback, nothing left running."""
    assert result.returncode == status, (result.stderr, daemon.log())
    assert line in result.stderr.splitlines(), result.stderr
    assert line in daemon.log(), daemon.log()
    for text in (result.stdout, result.stderr, daemon.log()):
        assert "Traceback" not in text, text
    # The daemon removes its pidfile and exits right after telling the parent.
    eventually(lambda: not daemon.pidfile.exists(), "the pidfile to go", 5)
    eventually(lambda: not started_from(daemon.directory), "the daemon to exit", 5)


def test_port_in_use(daemon: Daemon) -> None:
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = daemon.run("-p", str(port), "-i", "127.0.0.1", "-f", "echo")
        assert_failed_cleanly(daemon, result, 1, f"twistd fws: error: cannot listen on the "
                              f"WebSocket endpoint tcp:{port}:interface=127.0.0.1: "
                              "address already in use")


def test_admin_port_in_use_closes_the_websocket_port(daemon: Daemon) -> None:
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        result = daemon.run("--listen", f"tcp:{port}:interface=127.0.0.1", "-f", "echo",
                            "--admin", f"tcp:{busy}:interface=127.0.0.1")
        assert_failed_cleanly(daemon, result, 1, f"twistd fws: error: cannot listen on the "
                              f"admin endpoint tcp:{busy}:interface=127.0.0.1: "
                              "address already in use")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


#: Failures found before twistd forks: exit status 2, as with ``-n`` and fws_server.
BEFORE_FORK = {
    "unreadable config": (["-c", "nope.json"],
                          "cannot read config file nope.json: No such file or directory"),
    "bad filter module": (["-f", "no_such_filter_mod"],
                          "filter module 'no_such_filter_mod' not found"),
    "filter module raises": (["-f", "raises"], "RuntimeError: kaput"),
    "bad redis url": (["--storage", "fws.storage_objects.redis", "--redis_url", "ftp://x"],
                      "invalid Redis URL 'ftp://x': the scheme must be redis, rediss, unix or "
                      "redis+sentinel"),
    "missing key file": (["-p", "{port}", "-key", "missing.pem", "-cert", "missing.pem"],
                         "TLS key file missing.pem does not exist"),
    "bad certificate": (["-p", "{port}", "-key", "notpem.txt", "-cert", "notpem.txt"],
                        "notpem.txt holds no private key"),
}


def prepare(directory: Path, args: list[str]) -> list[str]:
    (directory / "notpem.txt").write_text("this is not a PEM file\n")
    (directory / "raises.py").write_text("raise RuntimeError('kaput')\n")
    port = str(free_port())
    return [a.replace("{port}", port) for a in args]


@pytest.mark.parametrize("case", sorted(BEFORE_FORK))
def test_startup_failure_before_the_fork(daemon: Daemon, case: str) -> None:
    args, message = BEFORE_FORK[case]
    result = daemon.run(*prepare(daemon.directory, args))
    assert result.returncode == 2, (result.stderr, daemon.log())
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("twistd fws: error: ")
    assert message in result.stderr
    logged = [line for line in daemon.log().splitlines() if "twistd fws: error: " in line]
    assert len(logged) == 1 and message in logged[0], daemon.log()
    assert_failed_cleanly(daemon, result, 2, result.stderr.rstrip("\n"))


@pytest.mark.parametrize("case", sorted(BEFORE_FORK))
def test_fws_server_reports_the_same_failures_in_one_line(tmp_path: Path, case: str) -> None:
    args, message = BEFORE_FORK[case]
    result = subprocess.run([str(BIN / "fws_server"), *prepare(tmp_path, args)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=RETURN_WITHIN)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("fws_server: error: ")
    assert message in result.stderr and "Traceback" not in result.stderr


def test_starts_serves_and_stops_on_sigterm(daemon: Daemon) -> None:
    port = free_port()
    result = daemon.run("--listen", f"tcp:{port}:interface=127.0.0.1", "-f", "echo")
    assert result.returncode == 0, (result.stderr, daemon.log())
    assert result.stdout == "" and result.stderr == ""
    pid = int(daemon.pidfile.read_text())
    assert alive(pid)
    assert f"fws listening on 127.0.0.1:{port}" in daemon.log()
    with connect(f"ws://127.0.0.1:{port}/") as ws:
        ws.send("daemonised")
        assert ws.recv(timeout=5) == "daemonised"
    os.kill(pid, signal.SIGTERM)
    eventually(lambda: not alive(pid), "the daemon to exit", 15)
    eventually(lambda: not daemon.pidfile.exists(), "the pidfile to go", 5)
    log = daemon.log()
    assert "received SIGTERM, stopping" in log and "Server Shut Down." in log, log
    assert "Traceback" not in log


def test_fws_reactor_option_under_twistd_says_to_give_twistds_own(daemon: Daemon) -> None:
    """twistd has installed its reactor before it reads fws's options: one line, not another reactor."""
    result = daemon.run("-p", str(free_port()), "-i", "127.0.0.1", "-f", "echo",
                        "--reactor", "asyncio")
    assert result.returncode == 2, (result.stderr, daemon.log())
    assert result.stderr == ("twistd fws: error: --reactor asyncio is fws_server's; under twistd "
                             "give twistd's own option, before fws: twistd --reactor asyncio "
                             "fws ...\n")
