"""
In-process server tests: a real fws service tree on a loopback port, real
Autobahn clients, one reactor (pytest-twisted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from fws.protocol import CloseInfo, normalize_payload
from tests.helpers import Server, close, write_module


@pytest_twisted.ensureDeferred
async def test_broadcast_reaches_every_other_user_text_and_binary(reactor: Any) -> None:
    server = Server(reactor, ["fws.filters.broadcast_messages"]).start()
    try:
        a, b, c = [await server.connect() for _ in range(3)]
        a.send("héllo")
        assert await b.recv() == ("héllo".encode(), False)
        assert await c.recv() == ("héllo".encode(), False)
        a.send(b"text-looking binary")
        assert await b.recv() == (b"text-looking binary", True)
        await c.recv()
        await a.silent()
        assert len(server.factory.users) == 3
        assert len({conn.id for conn in server.factory.users.values()}) == 3
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_broadcast_frames_once(reactor: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server = Server(reactor, ["fws.filters.broadcast_messages"]).start()
    try:
        clients = [await server.connect() for _ in range(5)]
        calls: list[Any] = []
        original = server.factory.prepareMessage
        monkeypatch.setattr(server.factory, "prepareMessage",
                            lambda *a, **k: calls.append(a) or original(*a, **k))
        clients[0].send("once")
        for other in clients[1:]:
            assert await other.recv() == (b"once", False)
        assert len(calls) == 1
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_seed_style_module_forwards_text_as_text(reactor: Any, tmp_path: Path) -> None:
    name = write_module(tmp_path, """
        from fws.filters.base import WebSocketMessageFilter

        class Broadcast(WebSocketMessageFilter):
            @classmethod
            def filter(cls, web_socket_instance, data):
                for user_id, user_instance in web_socket_instance.users.items():
                    user_instance.sendMessage(bytes(data))
    """)
    server = Server(reactor, [name]).start()
    try:
        a, b = await server.connect(), await server.connect()
        a.send("plain")
        assert await a.recv() == (b"plain", False)
        assert await b.recv() == (b"plain", False)
        a.send(b"\x00\x01")
        assert await b.recv() == (b"\x00\x01", True)
        await a.recv()
    finally:
        await server.stop()


ASYNC_ORDER = """
import random
from twisted.internet import reactor
from twisted.internet.task import deferLater
from fws.filters.base import WebSocketMessageFilter

class Jitter(WebSocketMessageFilter):
    @classmethod
    async def filter(cls, web_socket_instance, data):
        await deferLater(reactor, random.random() / 200, lambda: None)
        data.extend(b"!")

class Forward(WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        if random.random() < 0.5:
            # later, outside the chain: the kind must be passed explicitly
            return deferLater(reactor, random.random() / 200, web_socket_instance.factory.broadcast,
                              bytes(data), web_socket_instance.is_binary, exclude=web_socket_instance)
        # inside the chain: the kind is inferred from the message being filtered
        web_socket_instance.factory.broadcast(bytes(data), exclude=web_socket_instance)
"""


@pytest_twisted.ensureDeferred
async def test_async_filters_keep_per_connection_order(reactor: Any, tmp_path: Path) -> None:
    server = Server(reactor, [write_module(tmp_path, ASYNC_ORDER)]).start()
    try:
        a, b, c = await server.connect(), await server.connect(), await server.connect()
        for i in range(60):
            a.send(f"a{i}")
            b.send(f"b{i}".encode())
        got = [await c.recv() for _ in range(120)]
        from_a = [p for p, binary in got if p.startswith(b"a")]
        from_b = [(p, binary) for p, binary in got if p.startswith(b"b")]
        assert from_a == [f"a{i}!".encode() for i in range(60)]
        assert from_b == [(f"b{i}!".encode(), True) for i in range(60)]
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_token_groups(reactor: Any) -> None:
    server = Server(reactor, ["fws.filters.broadcast_messages_by_token"]).start()
    try:
        a, b, c = [await server.connect() for _ in range(3)]
        a.send("hello")
        assert await a.recv() == (b"Error: No token has been set", False)
        for client, group in ((a, "red"), (b, "red"), (c, "blue")):
            client.send(f"token:{group}")
            assert await client.recv() == (
                f"Successfully registered with broadcast group: {group}".encode(), False)
        a.send("to red")
        assert await b.recv() == (b"to red", False)
        await c.silent()
        await a.silent(0)
        b.send("token:blue")
        await b.recv()
        a.send("anyone?")
        await b.silent()
        c.send(b"\x01binary")
        assert await b.recv() == (b"\x01binary", True)
        assert set(server.factory.groups) == {"red", "blue"}
        await close(c)
        await deferLater(reactor, 0.05, lambda: None)
        blue = next(i for i, u in server.factory.users.items() if u.token == "blue")
        assert list(server.factory.groups["blue"]) == [server.factory.users and blue]
        await close(b)
        await deferLater(reactor, 0.05, lambda: None)
        assert "blue" not in server.factory.groups
    finally:
        await server.stop()


CONNECT_FILTERS = """
from fws import Refuse, WebSocketConnectFilter

class Gate(WebSocketConnectFilter):
    @classmethod
    def filter(cls, web_socket_instance, request):
        if request.path == "/private":
            raise Refuse(401, "token required")
        if request.path == "/broken":
            raise KeyError("oops")
        web_socket_instance.seen_path = request.path
"""


@pytest_twisted.ensureDeferred
async def test_connect_filter_refuses_and_fails_closed(
    reactor: Any, tmp_path: Path, logged_errors: list[dict[str, Any]]
) -> None:
    server = Server(reactor, [write_module(tmp_path, CONNECT_FILTERS), "fws.filters.echo"]).start()
    try:
        ok = await server.connect("/public?x=1")
        [conn] = server.factory.users.values()
        assert conn.seen_path == "/public" and conn.request.params == {"x": ["1"]}
        with pytest.raises(ConnectionError):
            await server.connect("/private")
        assert logged_errors == []
        with pytest.raises(ConnectionError):
            await server.connect("/broken")
        assert [e["filter"].rsplit(".", 1)[1] for e in logged_errors] == ["Gate"]
        logged_errors.clear()
        assert len(server.factory.users) == 1
        ok.send("still here")
        assert await ok.recv() == (b"still here", False)
    finally:
        await server.stop()


LIFECYCLE = """
from fws.filters.base import WebSocketMessageFilter, WebSocketDisconnectFilter, WebSocketDataFilter

LOG = []

class Raw(WebSocketDataFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        LOG.append(("raw", len(data)))

class Msg(WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        if data == b"boom":
            raise RuntimeError("filter bug")
        LOG.append(("msg", bytes(data)))
        from twisted.internet import reactor
        from twisted.internet.task import deferLater
        return deferLater(reactor, 0.05, lambda: None)

class Bye(WebSocketDisconnectFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        LOG.append(("bye", data, web_socket_instance.id in web_socket_instance.users))
"""


@pytest_twisted.ensureDeferred
async def test_disconnect_runs_after_pending_messages_and_errors_are_contained(
    reactor: Any, tmp_path: Path, logged_errors: list[dict[str, Any]]
) -> None:
    import importlib

    name = write_module(tmp_path, LIFECYCLE)
    server = Server(reactor, [name]).start()
    log = importlib.import_module(name).LOG
    try:
        a = await server.connect()
        conn_id = next(iter(server.factory.users))
        a.send("one")
        a.send("boom")
        a.send("two")
        await close(a)
        for _ in range(100):
            if log and log[-1][0] == "bye":
                break
            await deferLater(reactor, 0.02, lambda: None)
        events = [e for e in log if e[0] != "raw"]
        assert events[:2] == [("msg", b"one"), ("msg", b"two")]
        kind, info, still_user = events[2]
        assert kind == "bye" and isinstance(info, CloseInfo) and info.code == 1000
        assert still_user is False
        assert any(e[0] == "raw" and e[1] > 0 for e in log)
        assert [(e["filter"].rsplit(".", 1)[1], e["conn_id"]) for e in logged_errors] == [("Msg", conn_id)]
        logged_errors.clear()
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_async_data_filter_can_rewrite_bytes_in_order(reactor: Any, tmp_path: Path) -> None:
    name = write_module(tmp_path, """
        from twisted.internet import reactor
        from twisted.internet.task import deferLater
        from fws.filters.base import WebSocketDataFilter

        class Slow(WebSocketDataFilter):
            @classmethod
            def filter(cls, web_socket_instance, data):
                return deferLater(reactor, 0.01, lambda: None)
    """)
    server = Server(reactor, [name, "fws.filters.echo"]).start()
    try:
        a = await server.connect()
        for i in range(20):
            a.send(f"m{i}")
        assert [await a.recv() for _ in range(20)] == [(f"m{i}".encode(), False) for i in range(20)]
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_pubsub_feeds_consumer_chain(reactor: Any) -> None:
    server = Server(reactor, ["fws.filters.broadcast_pubsub"]).start()
    try:
        a, b = await server.connect(), await server.connect()
        receivers = await server.factory.storage_object.publish("global", "from the server")
        assert receivers == 1
        assert await a.recv() == (b"from the server", False)
        assert await b.recv() == (b"from the server", False)
        await server.factory.storage_object.publish("other", b"\xff\x00")
        assert await a.recv() == (b"\xff\x00", True)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_storage_object_set_semantics(reactor: Any) -> None:
    server = Server(reactor, ["fws.filters.echo"]).start()
    try:
        store = server.factory.storage_object
        assert await store.add("k", "a") is True
        assert await store.add("k", "a") is False
        await store.add("k", "b")
        assert await store.get("k") == {b"a", b"b"}
        assert await store.remove("k", "a") is True
        assert await store.remove("k", "zzz") is False
        assert await store.get("missing") == set()
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_two_servers_in_one_process_do_not_share_anything(reactor: Any) -> None:
    echo = Server(reactor, ["fws.filters.echo"]).start()
    bcast = Server(reactor, ["fws.filters.broadcast_messages"]).start()
    try:
        e1, b1, b2 = await echo.connect(), await bcast.connect(), await bcast.connect()
        b1.send("x")
        assert await b2.recv() == (b"x", False)
        await b1.silent()
        e1.send("y")
        assert await e1.recv() == (b"y", False)
        assert len(echo.factory.users) == 1 and len(bcast.factory.users) == 2
    finally:
        await echo.stop()
        await bcast.stop()


@pytest_twisted.ensureDeferred
async def test_stop_closes_clients_with_going_away(reactor: Any) -> None:
    server = Server(reactor, ["fws.filters.echo"]).start()
    a, b = await server.connect(), await server.connect()
    await server.service.stopService()
    assert await a.closed == 1001 and await b.closed == 1001
    assert server.service.listener.ports == []


@pytest_twisted.ensureDeferred
async def test_sending_to_closed_connection_is_harmless(reactor: Any) -> None:
    server = Server(reactor, ["fws.filters.echo"]).start()
    try:
        a = await server.connect()
        [conn] = server.factory.users.values()
        await close(a)
        conn.sendMessage("nobody listens")  # must not raise
        assert server.factory.broadcast("nobody", recipients=[conn]) == 0
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("payload", "binary", "context", "expected"),
    [
        ("text", None, None, (b"text", False)),
        ("text", True, None, (b"text", True)),
        (b"valid utf8", None, None, (b"valid utf8", False)),
        (b"\xff", None, None, (b"\xff", True)),
        (bytearray(b"x"), None, True, (b"x", True)),
        (memoryview(b"x"), None, False, (b"x", False)),
        (b"\xe2\x82", None, False, (b"\xe2\x82", True)),  # text cut mid-character goes as binary
        (b"x", False, True, (b"x", False)),
    ],
)
def test_normalize_payload(payload: Any, binary: Any, context: Any, expected: Any) -> None:
    from fws.pipeline import current_message_binary

    token = current_message_binary.set(context)
    try:
        assert normalize_payload(payload, binary) == expected
    finally:
        current_message_binary.reset(token)


def test_normalize_payload_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        normalize_payload(b"\xff", False)
    with pytest.raises(TypeError):
        normalize_payload(42, None)


def test_wiring_opens_nothing_until_started() -> None:
    from twisted.internet.testing import MemoryReactorClock

    from fws.config import Config
    from fws.service import make_service

    reactor = MemoryReactorClock()
    service = make_service(Config(filters=("echo",), listen=("tcp:9123:interface=127.0.0.1",)),
                           reactor)
    assert reactor.tcpServers == []
    service.privilegedStartService()
    service.startService()
    [(port, factory, _backlog, interface)] = reactor.tcpServers
    assert (port, interface) == (9123, "127.0.0.1") and factory is service.factory
    # stopped in reverse: listener, drain, storage
    assert [s.name for s in service] == ["storage", "drain", "websocket"]
    d: Deferred[None] = service.stopService()
    assert d.called


@pytest_twisted.ensureDeferred
async def test_empty_chains_cost_nothing(reactor: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """No data, message or disconnect filters: no pipeline code runs per read or message."""
    import fws.protocol

    calls: list[str] = []
    real = fws.protocol.run_chain
    monkeypatch.setattr(fws.protocol, "run_chain",
                        lambda *a, **k: calls.append(k["event"]) or real(*a, **k))
    server = Server(reactor, ["fws.filters.broadcast_pubsub"]).start()
    try:
        assert server.factory.protocol.__mro__[1] is fws.protocol.FwsServerProtocol
        # the data chain lives in a subclass that only servers with data filters use
        assert server.factory.protocol.dataReceived is not fws.protocol.FwsRawDataProtocol.dataReceived
        a = await server.connect()
        for i in range(10):
            a.send(f"m{i}")
        a.send("ping")
        await close(a)
        assert calls == []
    finally:
        await server.stop()


def test_public_api() -> None:
    import fws
    import fws.filters.base as base

    assert set(fws.__all__) == {
        "STOP", "Refuse", "StopChain", "WebSocketConnectFilter", "WebSocketConsumerFilter",
        "WebSocketDataFilter", "WebSocketDisconnectFilter", "WebSocketFilter",
        "WebSocketMessageFilter", "__version__",
    }
    for name in fws.__all__:
        if name != "__version__":
            assert getattr(fws, name) is getattr(base, name)
