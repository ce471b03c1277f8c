"""Helpers for in-process tests: throwaway filter modules, a loopback server, a WebSocket client."""

from __future__ import annotations

import os
import socket
import sys
import textwrap
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater

from fws.config import Config
from fws.limits import Limits
from fws.service import FwsService, make_service


def write_module(directory: Path, source: str, prefix: str = "userfilters") -> str:
    """Write ``source`` as a uniquely named module in ``directory`` (on sys.path); return its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    return name


class Client(WebSocketClientProtocol):
    """A real Autobahn client that queues what it receives."""

    factory: ClientFactory

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.events.append(("message", payload))
        self.factory.messages.put((payload, isBinary))

    def onPing(self, payload: bytes) -> None:
        self.factory.events.append(("ping", payload))
        super().onPing(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.close_code = code
        self.factory.close_reason = reason
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"handshake failed: {reason}"))
        self.factory.closed.callback(code)

    @property
    def closed(self) -> Deferred[int | None]:
        """Fires with the close code once onClose ran (Autobahn's is_closed fires before it)."""
        return self.factory.closed

    def send(self, payload: str | bytes) -> None:
        if isinstance(payload, str):
            self.sendMessage(payload.encode(), isBinary=False)
        else:
            self.sendMessage(payload, isBinary=True)

    async def recv(self, timeout: float = 5.0) -> tuple[bytes, bool]:
        """The next message as ``(payload, is_binary)``; fails after ``timeout`` seconds."""
        d = self.factory.messages.get()
        d.addTimeout(timeout, self.factory.reactor)
        result: tuple[bytes, bool] = await d
        return result

    async def silent(self, wait: float = 0.2) -> None:
        """Assert that nothing arrives within ``wait`` seconds."""
        await deferLater(self.factory.reactor, wait, lambda: None)
        assert self.factory.messages.pending == []


class ClientFactory(WebSocketClientFactory):
    protocol = Client

    def __init__(self, url: str, reactor: Any, headers: dict[str, str] | None = None,
                 protocols: list[str] | None = None) -> None:
        super().__init__(url, reactor=reactor, headers=headers, protocols=protocols)
        self.opened: Deferred[Client] = Deferred()
        self.messages: DeferredQueue[tuple[bytes, bool]] = DeferredQueue()
        #: Messages and pings in the order they arrived: ("message" or "ping", payload).
        self.events: list[tuple[str, bytes]] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed: Deferred[int | None] = Deferred()
        self.noisy = False


async def connect(reactor: Any, port: int, path: str = "/", headers: dict[str, str] | None = None,
                  protocols: list[str] | None = None, **options: Any) -> Client:
    """
    Open a real Autobahn client connection offering ``protocols`` (subprotocols);
    ``options`` are Autobahn protocol options.
    """
    factory = ClientFactory(f"ws://127.0.0.1:{port}{path}", reactor, headers, protocols)
    if options:
        factory.setProtocolOptions(**options)
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    client: Client = await factory.opened
    return client


async def close(client: Client) -> None:
    if client.state != client.STATE_CLOSED:
        client.sendClose(1000)
    await client.closed


class Server:
    """An fws service tree listening on a free loopback port, in this process."""

    def __init__(self, reactor: Any, filters: list[str], **config: Any) -> None:
        self.reactor = reactor
        config.setdefault("limits", Limits(drain_period=0.0))  # tests need no gentle drain
        self.service: FwsService = make_service(
            Config(filters=tuple(filters), listen=("tcp:0:interface=127.0.0.1",), **config), reactor
        )
        self.clients: list[Client] = []

    @classmethod
    def from_argv(cls, reactor: Any, *argv: str) -> Server:
        """A server configured exactly as ``fws_server ARGV`` would be (on a free port, no drain)."""
        from fws.config import resolve

        config = resolve([*argv, "--listen", "tcp:0:interface=127.0.0.1", "--drain-period", "0"],
                         environ={})
        assert config is not None
        server = cls.__new__(cls)
        server.reactor, server.clients = reactor, []
        server.service = make_service(config, reactor)
        return server

    def start(self) -> Server:
        self.service.privilegedStartService()
        self.service.startService()
        return self

    @property
    def factory(self) -> Any:
        return self.service.factory

    @property
    def port(self) -> int:
        port: int = self.service.listener.ports[0].getHost().port
        return port

    async def connect(self, path: str = "/", headers: dict[str, str] | None = None,
                      protocols: list[str] | None = None, **options: Any) -> Client:
        client = await connect(self.reactor, self.port, path, headers, protocols, **options)
        self.clients.append(client)
        return client

    async def stop(self) -> None:
        for client in self.clients:
            if client.state == client.STATE_OPEN:
                client.sendClose(1000)
        await self.service.stopService()
        for client in self.clients:
            await client.closed


def _package_dirs() -> tuple[tuple[str, str], ...]:
    """Each counted package's own directory (a ``/fws/`` in a path also matches a checkout named fws)."""
    import autobahn

    import fws
    import twisted

    return tuple((module.__name__, os.path.dirname(module.__file__ or "") + os.sep)
                 for module in (fws, autobahn, twisted))


def count_calls(function: Any) -> Counter[str]:
    """Python-level calls made while ``function`` runs, by ``package:function``."""
    calls: Counter[str] = Counter()
    packages = _package_dirs()

    def profiler(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            path = frame.f_code.co_filename
            package = next((name for name, where in packages if path.startswith(where)), "other")
            calls[f"{package}:{frame.f_code.co_name}"] += 1
        elif event == "c_call":
            if (getattr(arg, "__module__", None) or "").startswith("fws."):
                calls[f"fws:{arg.__name__}"] += 1  # fws._speedups: counted like its Python twin
            elif isinstance(getattr(arg, "__self__", None), socket.socket):
                calls[f"socket:{arg.__name__}"] += 1  # the system calls that carry the data

    sys.setprofile(profiler)
    try:
        function()
    finally:
        sys.setprofile(None)
    return calls
