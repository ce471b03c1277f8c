"""A private redis-server on a free loopback port that tests can kill and restart."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.system_tools import program


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisProcess:
    """
    redis-server with nothing on disk; ``kill()`` and ``start()`` keep the same port.

    :param host: The loopback address to listen on (any of 127.0.0.0/8: two
        servers on one port and two addresses stand for a Redis that moved).
    :param replicaof: Start as a replica of the Redis on this port.
    """

    def __init__(self, directory: Path, port: int | None = None, host: str = "127.0.0.1",
                 replicaof: RedisProcess | None = None) -> None:
        self.exe = program("redis-server", "redis-server")
        self.directory = directory
        self.host = host
        self.port = port or free_port()
        assert self.port != 6379
        self.replicaof = replicaof
        self.proc: subprocess.Popen[bytes] | None = None

    def arguments(self) -> list[str]:
        args = [self.exe, "--port", str(self.port), "--bind", self.host, "--save", "",
                "--appendonly", "no", "--dir", str(self.directory), "--protected-mode", "no",
                "--logfile", str(self.directory / f"redis-{self.host}-{self.port}.log")]
        if self.replicaof is not None:
            args += ["--replicaof", self.replicaof.host, str(self.replicaof.port)]
        return args

    def start(self, timeout: float = 10.0) -> RedisProcess:
        self.proc = subprocess.Popen(self.arguments(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                # (NOAUTH: up, with a password)
                if self.command("PING") in (b"+PONG", b"-NOAUTH Authentication required."):
                    return self
            except OSError:
                time.sleep(0.02)
        self.kill()  # never left running by a start that failed
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        self.kill()

    def pause(self) -> None:
        """SIGSTOP: the sockets stay open but nothing answers (a silent partition)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def command(self, *args: str | bytes) -> bytes:
        """Send one command with a raw socket and return the first reply line (for checks)."""
        parts = [a.encode() if isinstance(a, str) else a for a in args]
        wire = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        with socket.create_connection((self.host, self.port), timeout=2) as s:
            s.sendall(wire)
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data.rstrip(b"\r\n")

    def publish(self, channel: str, message: str | bytes) -> int:
        reply = self.command("PUBLISH", channel, message)
        return int(reply[1:])

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class SentinelProcess(RedisProcess):
    """
    ``redis-server sentinel.conf --sentinel`` monitoring ``master`` as ``name``,
    its configuration written in ``directory`` (Sentinel rewrites it as it learns);
    quick to decide: ``down-after-milliseconds`` 500 and a short failover timeout.

    :param template: A sentinel.conf to start from (the documented one): its
        port, master address, quorum and timeouts are replaced by the test's.
    :param extra: More lines for the configuration (``requirepass ...``).
    """

    def __init__(self, directory: Path, master: RedisProcess, name: str = "mymaster",
                 quorum: int = 1, down_after_ms: int = 500, failover_timeout_ms: int = 3000,
                 template: Path | None = None, extra: tuple[str, ...] = ()) -> None:
        super().__init__(directory)
        self.conf = directory / f"sentinel-{self.port}.conf"
        settings = [f"sentinel monitor {name} {master.host} {master.port} {quorum}",
                    f"sentinel down-after-milliseconds {name} {down_after_ms}",
                    f"sentinel failover-timeout {name} {failover_timeout_ms}",
                    f"sentinel parallel-syncs {name} 1"]
        if template is not None:
            replaced = {" ".join(line.split()[:2]): line for line in settings}
            settings = []
            for line in template.read_text().splitlines():
                words = line.split()
                if not words or words[0].startswith("#") or words[0] == "port":
                    continue
                key = " ".join(words[:2])
                assert words[0] != "sentinel" or key in replaced or words[2] == name, line
                settings.append(replaced.get(key, line))
        settings.extend(extra)
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\nprotected-mode no\ndir {directory}\n"
            f"logfile {directory / f'sentinel-{self.port}.log'}\n" + "\n".join(settings) + "\n"
        )

    def arguments(self) -> list[str]:
        return [self.exe, str(self.conf), "--sentinel"]


class FaultyProxy:
    """
    A TCP proxy in front of a private Redis that can fail the way networks do,
    in a thread of its own (so it works for in-process services and for fws
    processes alike):

    * :meth:`freeze` — every connection open now stops carrying bytes, both
      ways, and is never closed (a half-open connection: a NAT or a firewall
      forgot it, the peer rebooted); new connections work;
    * :meth:`drop_replies` — from now on Redis's answers are thrown away, on
      every connection, new ones included, while requests still reach Redis
      (a reply that never comes);
    * :meth:`heal` — new connections carry bytes both ways again (connections
      that lost bytes stay broken, as they would).
    """

    def __init__(self, target_port: int) -> None:
        import selectors
        import threading

        self.target_port = target_port
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._peer: dict[socket.socket, socket.socket] = {}
        self._to_client: set[socket.socket] = set()  # sockets whose peer is the client
        self._frozen: set[socket.socket] = set()
        self._replies_dropped = False
        self._lock = threading.Lock()
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def freeze(self) -> None:
        with self._lock:
            self._frozen.update(self._peer)

    def drop_replies(self) -> None:
        with self._lock:
            self._replies_dropped = True

    def heal(self) -> None:
        with self._lock:
            self._replies_dropped = False
            # connections that dropped replies are out of step: freeze them for good
            self._frozen.update(self._peer)

    def close(self) -> None:
        self._running = False
        self._thread.join(5)
        for sock in [*self._peer, self._listener]:
            sock.close()
        self._selector.close()

    def _run(self) -> None:
        while self._running:
            for key, _ in self._selector.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept()
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                with self._lock:
                    peer = self._peer.get(sock)
                    if peer is None:
                        continue
                    if not data:
                        if sock in self._frozen or peer in self._frozen:
                            self._selector.unregister(sock)  # the other side never hears of it
                        else:
                            self._close_pair(sock, peer)
                        continue
                    if sock in self._frozen:
                        continue  # swallowed: nothing arrives, nothing is closed
                    if self._replies_dropped and peer in self._to_client:
                        continue
                try:
                    peer.sendall(data)
                except OSError:
                    with self._lock:
                        self._close_pair(sock, peer)

    def _accept(self) -> None:
        import selectors

        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        try:
            server = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
        except OSError:
            client.close()
            return
        with self._lock:
            self._peer[client] = server
            self._peer[server] = client
            self._to_client.add(client)
        for sock in (client, server):
            sock.setblocking(True)
            self._selector.register(sock, selectors.EVENT_READ, None)

    def _close_pair(self, sock: socket.socket, peer: socket.socket) -> None:
        for s in (sock, peer):
            self._peer.pop(s, None)
            self._to_client.discard(s)
            try:
                self._selector.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()
