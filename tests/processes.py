"""Real fws processes for end-to-end tests: start, wait until listening, stop, read output."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.redis_support import free_port

BIN = Path(sys.executable).parent


class FwsProcess:
    """
    ``fws_server`` (or any command) as a child process whose stdout and stderr
    are collected line by line in the background.
    """

    def __init__(self, args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None,
                 port: int | None = None, command: list[str] | None = None) -> None:
        self.port = port if port is not None else free_port()
        self.args = args
        self.command = command or [str(BIN / "fws_server")]
        self.cwd = cwd
        self.env = {k: v for k, v in os.environ.items() if k not in ("STORAGE_OBJECT_MODULE",)}
        self.env.update(env or {})
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def start(self, wait: bool = True) -> FwsProcess:
        self.proc = subprocess.Popen(
            [*self.command, *self.args], cwd=self.cwd, env=self.env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()
        if wait:
            try:
                self.wait_for(lambda: any("fws listening on" in line for line in self.lines()),
                              "the server to listen")
            except BaseException:
                self.kill()  # never left running by a test that did not get to register it
                raise
        return self

    @staticmethod
    def _pump(stream: object, sink: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            sink.append(line.rstrip("\n"))

    def lines(self) -> list[str]:
        return self.stdout + self.stderr

    def wait_for(self, predicate: object, what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():  # type: ignore[operator]
                return
            if self.proc is not None and self.proc.poll() is not None:
                time.sleep(0.1)  # let the pumps catch up
                raise AssertionError(f"process exited ({self.proc.returncode}) while waiting for "
                                     f"{what}:\n" + "\n".join(self.lines()))
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}:\n" + "\n".join(self.lines()))

    def wait_for_line(self, text: str, timeout: float = 10.0) -> None:
        self.wait_for(lambda: any(text in line for line in self.lines()), repr(text), timeout)

    def wait_for_port(self, port: int | None = None, timeout: float = 15.0) -> None:
        """Until something accepts TCP connections on ``port`` (default: this process's)."""
        port = self.port if port is None else port

        def accepts() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return False
            return True

        self.wait_for(accepts, f"something to listen on {port}", timeout)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Make sure the process is gone (teardown; tests that check exit codes use signal+wait)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def serve(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> FwsProcess:
    """``fws_server -p PORT -i 127.0.0.1 ARGS`` on a free loopback port, started and listening."""
    proc = FwsProcess([], env=env, cwd=cwd)
    proc.args = ["-p", str(proc.port), "-i", "127.0.0.1", *args]
    return proc.start()  # killed by start() if it never says it listens
