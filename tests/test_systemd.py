"""
Socket activation exactly as systemd does it, with real processes and sockets.

The test process plays systemd: it opens the listening socket, keeps it, and
starts ``fws_server --listen systemd:domain=INET:index=0`` with that socket as
file descriptor 3 and ``LISTEN_FDS=1``, ``LISTEN_FDNAMES`` and ``LISTEN_PID``
(the child's own pid, set after the fork) in its environment.  Because the
socket outlives every fws process, a restart loses no connection attempt:
what arrives while no fws is running waits in the kernel's backlog for the
next one.
"""

from __future__ import annotations

import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.processes import BIN, FwsProcess
from tests.rawws import handshake_request
from tests.redis_support import free_port
from tests.system_tools import program

ENDPOINT = "systemd:domain=INET:index=0"
#: Safety net only: nothing here should take more than a second or two.
TIMEOUT = 20.0

# What systemd does between fork() and exec(): move the socket to fd 3 and set
# LISTEN_PID to the pid that will exec the service (which is this process's).
SYSTEMD_EXEC = """\
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_FDS="1", LISTEN_FDNAMES="fws.socket", LISTEN_PID=str(os.getpid()))
os.execv(sys.argv[2], sys.argv[2:])
"""

# A message filter that prefixes the payload with the serving process's pid; the
# bundled echo filter after it sends the result back.  It tells A from B.
PID_TAG = """\
import os
from fws.filters.base import WebSocketMessageFilter

class PidTag(WebSocketMessageFilter):
    @staticmethod
    def filter(web_socket_instance, data):
        data[:0] = f"{os.getpid()} ".encode()
"""


class SocketActivatedFws(FwsProcess):
    """``fws_server`` started the way systemd starts a socket-activated service."""

    def __init__(self, listener: socket.socket, args: list[str], cwd: Path | None = None) -> None:
        port = listener.getsockname()[1]
        super().__init__(["--listen", ENDPOINT, *args], cwd=cwd, port=port,
                         command=[sys.executable, "-c", SYSTEMD_EXEC, str(listener.fileno()),
                                  str(BIN / "fws_server")])
        self.listener = listener
        for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            self.env.pop(name, None)

    def start(self, wait: bool = True) -> SocketActivatedFws:
        self.proc = subprocess.Popen(
            [*self.command, *self.args], cwd=self.cwd, env=self.env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(self.listener.fileno(),),
        )
        for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()
        if wait:
            self.wait_for_line("fws listening on", TIMEOUT)
        return self


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """The socket systemd would hold (fws.socket): bound, listening, never closed by fws."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    try:
        yield sock
    finally:
        sock.close()


def test_serves_clients_on_the_inherited_socket(listener: socket.socket,
                                                processes: list[FwsProcess]) -> None:
    proc = SocketActivatedFws(listener, ["-f", "fws.filters.echo"])
    processes.append(proc)
    proc.start()
    # It adopted the socket: the port is the inherited one (and is in use by the
    # test, so fws could not have bound it itself).
    proc.wait_for_line(f"fws listening on 127.0.0.1:{proc.port} ({ENDPOINT})", TIMEOUT)
    with connect(proc.url, open_timeout=TIMEOUT) as ws:
        ws.send("hello through fd 3")
        assert ws.recv(timeout=TIMEOUT) == "hello through fd 3"
        ws.send(b"\x00binary")
        assert ws.recv(timeout=TIMEOUT) == b"\x00binary"
    proc.signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0
    # Stopping fws closed its copy only: the socket the test (systemd) holds still
    # listens, so a connection attempt now waits in the backlog for the next fws.
    with socket.create_connection(("127.0.0.1", proc.port), timeout=TIMEOUT):
        pass


@pytest.mark.parametrize("front_end", ["fws_server", "twistd"])
def test_systemd_socket_activate_starts_it(front_end: str, processes: list[FwsProcess],
                                           tmp_path: Path) -> None:
    """systemd's own launcher (what fws.socket does, on the command line) and the unit's twistd."""
    tool = program("systemd-socket-activate", "systemd")
    port = free_port()
    server = ([str(BIN / "fws_server")] if front_end == "fws_server"
              else [str(BIN / "twistd"), "--nodaemon", "--pidfile=", "fws"])
    proc = FwsProcess(["--listen", ENDPOINT, "--filters", "fws.filters.echo"], cwd=tmp_path,
                      port=port, command=[tool, "--listen", f"127.0.0.1:{port}",
                                          "--fdname", "fws.socket", *server])
    processes.append(proc)
    proc.start(wait=False)
    proc.wait_for_line(f"Listening on 127.0.0.1:{port}", TIMEOUT)
    # systemd-socket-activate runs fws on the first connection (exec: same pid).
    with connect(proc.url, open_timeout=TIMEOUT) as ws:
        ws.send("activated")
        assert ws.recv(timeout=TIMEOUT) == "activated"
    # fws logs this before it serves, but the line may still be on its way through the pipe.
    proc.wait_for_line(f"fws listening on 127.0.0.1:{port} ({ENDPOINT})", TIMEOUT)
    proc.signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0


@dataclass
class Attempt:
    """One connection attempt of a client thread: connect, handshake, echo, close."""

    started: float
    ended: float
    local_port: int | None
    outcome: str  # "ok", "going away" (closed with 1001 by a stopping fws) or "error"
    detail: str  # the pid that answered, or what went wrong


def attempt(port: int, message: str) -> Attempt:
    started = time.monotonic()
    local_port = None
    sock = None

    def result(outcome: str, detail: str) -> Attempt:
        return Attempt(started, time.monotonic(), local_port, outcome, detail)

    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        local_port = sock.getsockname()[1]
        with connect(f"ws://127.0.0.1:{port}/", sock=sock, open_timeout=TIMEOUT,
                     close_timeout=TIMEOUT) as ws:
            ws.send(message)
            reply = ws.recv(timeout=TIMEOUT)
    except ConnectionClosed as e:
        if e.rcvd is not None and e.rcvd.code == 1001:
            return result("going away", repr(e))
        return result("error", repr(e))
    except Exception as e:  # refused, reset, handshake failure, timeout ...
        return result("error", repr(e))
    finally:
        if sock is not None:
            sock.close()  # a no-op if the client closed it
    pid, _, echoed = str(reply).partition(" ")
    if echoed != message or not pid.isdigit():
        return result("error", f"wrong reply {reply!r} to {message!r}")
    return result("ok", pid)


def test_restart_with_the_socket_held_loses_no_connection_attempt(
        listener: socket.socket, processes: list[FwsProcess], tmp_path: Path) -> None:
    (tmp_path / "pid_tag.py").write_text(PID_TAG)
    args = ["-f", "pid_tag", "fws.filters.echo"]
    a = SocketActivatedFws(listener, args, cwd=tmp_path)
    processes.append(a)
    a.start()
    assert a.proc is not None
    pid_a = str(a.proc.pid)

    clients = 4
    attempts: list[list[Attempt]] = [[] for _ in range(clients)]
    stop = threading.Event()

    def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            attempts[n].append(attempt(a.port, f"c{n}-{i}"))
            i += 1

    def served_by(pid: str) -> list[Attempt]:
        return [x for log in attempts for x in list(log) if x.outcome == "ok" and x.detail == pid]

    def report() -> str:
        lines = [f"client {n}: {len(log)} attempts, last {log[-1:]}"
                 for n, log in enumerate(attempts)]
        for proc in processes:
            lines.append(f"--- fws pid {proc.proc.pid if proc.proc else None}:")
            lines.extend(proc.lines())
        return "\n".join(lines)

    def wait_until(predicate: object, what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not predicate():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{report()}"
            time.sleep(0.02)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    # A client that stays connected to A: the restart closes it with 1001.
    with connect(a.url, open_timeout=TIMEOUT) as held:
        held.send("held")
        assert held.recv(timeout=TIMEOUT) == f"{pid_a} held"
        try:
            for t in threads:
                t.start()
            wait_until(lambda: len(served_by(pid_a)) >= 20, "attempts served by A")

            # systemctl restart fws.service: stop A (SIGTERM, wait for it to exit), start B.
            sigterm = time.monotonic()
            a.signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                held.recv(timeout=TIMEOUT)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            assert a.wait(TIMEOUT) == 0

            b = SocketActivatedFws(listener, args, cwd=tmp_path)
            processes.append(b)
            b.start()
            b_listening = time.monotonic()
            assert b.proc is not None
            pid_b = str(b.proc.pid)
            wait_until(lambda: len(served_by(pid_b)) >= 20, "attempts served by B")
        finally:
            stop.set()
            for t in threads:
                t.join(TIMEOUT + 5)
    assert not any(t.is_alive() for t in threads)

    everything = [x for log in attempts for x in log]
    # Nothing was refused, reset or failed. (A connection A accepted just before
    # SIGTERM completes its handshake and gets 1001, like any open one.)
    errors = [x for x in everything if x.outcome == "error"]
    assert not errors, f"{len(errors)} of {len(everything)} attempts failed: " \
        f"{errors[:10]}\n{report()}"
    # Only a connection A had already opened may be closed with 1001: at most one
    # per client (A stops listening before it closes anything).
    going_away = [x for x in everything if x.outcome == "going away"]
    assert len(going_away) <= clients, going_away
    assert {x.detail for x in everything if x.outcome == "ok"} == {pid_a, pid_b}
    # Attempts made while no fws was accepting waited in the backlog and B served them.
    waited = [x for x in served_by(pid_b) if sigterm < x.started < b_listening]
    assert waited, "no attempt was made while no fws was accepting"
    assert "\n".join(a.lines()).count("fws listening on") == 1
    b.wait_for_line(f"fws listening on 127.0.0.1:{b.port} ({ENDPOINT})", TIMEOUT)


def accept_queue(listener: socket.socket) -> int:
    """Connections waiting in the listening socket's accept queue (Linux: tcpi_unacked)."""
    info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("I", info, 24)[0])


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="reads the accept queue with TCP_INFO, which is Linux's")
def test_stopping_does_not_reset_a_connection_accepted_before_sigterm(
        listener: socket.socket, processes: list[FwsProcess]) -> None:
    """The race the restart test can hit, made deterministic."""
    proc = SocketActivatedFws(listener, ["-f", "fws.filters.echo"])
    processes.append(proc)
    proc.start()
    with connect(proc.url, open_timeout=TIMEOUT) as held:
        # A connection fws has accept()ed, whose upgrade request is yet to come.
        pending = socket.create_connection(("127.0.0.1", proc.port), timeout=TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while accept_queue(listener):
            assert time.monotonic() < deadline, "fws did not accept the connection"
            time.sleep(0.01)
        proc.signal(signal.SIGTERM)
        # The 1001 on the open connection comes from close_all, which has by then
        # dealt with the connection in its handshake.
        with pytest.raises(ConnectionClosed) as closed:
            held.recv(timeout=TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    with pending:
        pending.sendall(handshake_request(proc.port))
        response = b""
        close = b"\x88\x16\x03\xe9server shutting down"
        while close not in response:
            chunk = pending.recv(65536)  # a ConnectionResetError here was the bug
            assert chunk, f"fws closed the connection without a close frame:\n{response!r}"
            response += chunk
    # The handshake completed (101), then the same close as every other client got.
    assert response.startswith(b"HTTP/1.1 101"), response
    assert proc.wait(TIMEOUT) == 0


# --- the units in docs/deploy, as written --------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs"
UNITS = ("fws.socket", "fws.service")
#: The directories systemd creates for these settings (for a system unit), by name.
UNIT_DIRECTORIES = {"RuntimeDirectory": "/run", "StateDirectory": "/var/lib",
                    "CacheDirectory": "/var/cache", "LogsDirectory": "/var/log",
                    "ConfigurationDirectory": "/etc"}


def unit_settings(name: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of a unit file in docs/deploy, continuation lines joined."""
    settings = []
    section = ""
    pending = ""
    for line in (DOCS / "deploy" / name).read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith(("#", ";"))):
            continue
        line = pending + line.strip()
        if line.endswith("\\"):
            pending = line[:-1].strip() + " "
            continue
        pending = ""
        if line.startswith("["):
            section = line.strip("[]")
        else:
            key, _, value = line.partition("=")
            settings.append((section, key.strip(), value.strip()))
    return settings


def exec_start() -> list[str]:
    (command,) = [v for s, k, v in unit_settings("fws.service") if k == "ExecStart"]
    return shlex.split(command)


def install_commands(section: str = "") -> list[list[str]]:
    """
    The shell commands of deployment.rst's code blocks (from the heading
    ``section`` on, if given), as argument lists.
    """
    text = (DOCS / "deployment.rst").read_text()
    if section:
        text = text[text.index(f"\n{section}\n{'-' * len(section)}\n"):]
    commands = []
    in_block = False
    pending = ""
    for line in text.splitlines():
        if line.startswith(".. code-block:: sh"):
            in_block = True
        elif in_block and line and not line.startswith(" "):
            in_block = False
        elif in_block and line.strip():
            text = pending + line.strip().split(" #", 1)[0]
            if text.endswith("\\"):
                pending = text[:-1]
                continue
            pending = ""
            if not text.startswith("#"):
                commands.extend(shlex.split(part) for part in text.split(" && "))
    return commands


def created_by_commands(section: str = "") -> set[str]:
    """Directories deployment.rst's commands create: install -d DIR..., python3 -m venv DIR."""
    created = set()
    for argv in install_commands(section):
        if argv[:2] == ["install", "-d"]:
            args = iter(argv[2:])
            for arg in args:
                if arg in ("-o", "-g", "-m"):
                    next(args)
                elif not arg.startswith("-"):
                    created.add(arg)
        elif argv[1:3] == ["-m", "venv"]:
            created.add(argv[3])
    return created


def test_every_path_the_service_uses_is_created() -> None:
    """What ``fws.service`` names exists once the documented commands ran and systemd set up."""
    settings = unit_settings("fws.service")
    by_unit = {f"{UNIT_DIRECTORIES[k]}/{name}" for _, k, v in settings if k in UNIT_DIRECTORIES
               for name in v.split()}
    # The install steps of the systemd section; and none of /run, which is emptied at boot.
    by_commands = {d for d in created_by_commands("systemd") if not d.startswith("/run/")}
    assert "/opt/fws" in by_commands, "the install steps create the virtualenv"
    paths = [(k, path) for _, k, v in settings
             for path in re.findall(r"(?<![\w:/.])/[\w./-]+", v)]
    assert ("WorkingDirectory", "/etc/fws") in paths and ("ExecStart", "/opt/fws/bin/twistd") in paths
    for key, path in paths:
        assert any(path == d or path.startswith(d + "/") for d in by_unit | by_commands), \
            f"{key}={path} in fws.service: neither the unit nor docs/deployment.rst creates it"
    # The working directory in particular does not depend on a step being followed.
    assert "/etc/fws" in by_unit, "ConfigurationDirectory=fws creates the WorkingDirectory="


def test_the_daemon_example_creates_its_directories() -> None:
    """deployment.rst's ``twistd --pidfile ... --logfile ...``: their directories come first."""
    created: set[str] = set()
    daemons = 0
    for argv in install_commands():
        if argv[:2] == ["install", "-d"]:
            created |= created_by_commands() & set(argv)
        if argv[0] != "twistd":
            continue
        for option in ("--pidfile", "--logfile"):
            if option in argv and argv[argv.index(option) + 1]:
                daemons += option == "--pidfile"
                directory = str(Path(argv[argv.index(option) + 1]).parent)
                assert directory in created, f"{' '.join(argv)}: nothing creates {directory}"
    assert daemons >= 1


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own check: every key known, the socket and service consistent, ExecStart found."""
    tool = program("systemd-analyze", "systemd")
    for name in UNITS:  # ExecStart= pointing at this virtualenv instead of /opt/fws
        text = (DOCS / "deploy" / name).read_text().replace("/opt/fws/bin/", f"{BIN}/")
        (tmp_path / name).write_text(text)
    result = subprocess.run([tool, "verify", "--man=no", *(f"./{n}" for n in UNITS)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert not [line for line in report.splitlines() if "fws." in line], report


def test_the_service_command_line_resolves(tmp_path: Path) -> None:
    """fws.service's ExecStart, with --check: its options, endpoints and storage all parse."""
    argv = exec_start()
    assert argv[0] == "/opt/fws/bin/twistd"
    at = argv.index("fws")
    argv = [str(BIN / "twistd"), *argv[1:at + 1], "--check", *argv[at + 1:]]
    with socket.socket() as held:  # what fws.socket passes as fd 3
        held.bind(("127.0.0.1", 0))
        held.listen()
        result = subprocess.run([sys.executable, "-c", SYSTEMD_EXEC, str(held.fileno()), *argv],
                                cwd=tmp_path, capture_output=True, text=True, timeout=60,
                                pass_fds=(held.fileno(),))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("configuration OK\n")
    assert f"listen:  {ENDPOINT}" in result.stdout
    assert "admin:   tcp:9101:interface=127.0.0.1" in result.stdout
    assert "storage: fws.storage_objects.redis" in result.stdout
