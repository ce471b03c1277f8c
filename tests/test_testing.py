"""
fws.testing: the in-memory harness filter authors test with. Each test writes
a small filter module (as a user would), runs it in a FakeServer and checks
that what the fake records is what fws's server does: the same chains, the
same ordering, the same send and close rules. The filters' Deferreds are
fired by the tests, or by the fake's clock.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from fws import Refuse
from fws.config import ConfigError
from fws.connection import CloseInfo, Connection, Server
from fws.pipeline import FilterLoadError
from fws.testing import Broadcast, FakeServer, FilterFailed, Relay

ROOT = Path(__file__).resolve().parent.parent
_names = itertools.count()

Make = Callable[[str], str]


@pytest.fixture
def make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Make:
    """Write a filter module from source; returns its (unique) name for FakeServer."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(source: str) -> str:
        name = f"harness_filters_{next(_names)}"
        header = ("from twisted.internet.defer import Deferred\n"
                  "from fws import *\n"
                  "from fws.filters.base import *\n")
        (tmp_path / f"{name}.py").write_text(header + textwrap.dedent(source))
        return name

    return make


def module(name: str) -> ModuleType:
    return sys.modules[name]


ECHO = """
class Echo(WebSocketMessageFilter):
    @staticmethod
    def filter(conn, data):
        conn.sendMessage(bytes(data))
"""


def test_the_fakes_are_what_filters_get(make: Make) -> None:
    server = FakeServer(make(ECHO))
    conn = server.connect()
    assert isinstance(conn, Connection) and isinstance(server, Server)
    for protocol, obj in ((Connection, conn), (Server, server)):
        members = {n for n in vars(protocol) if not n.startswith("_")} | set(protocol.__annotations__)
        for name in members:
            assert hasattr(obj, name), name
    assert conn.factory is server and conn.users is server.users
    assert conn.id == "test-1" and server.connect().id == "test-2"
    assert conn.storage_object is server.storage_object


def test_sends_are_recorded_as_the_server_frames_them(make: Make) -> None:
    name = make("""
    class Kinds(WebSocketMessageFilter):
        @staticmethod
        def filter(conn, data):
            conn.sendMessage(bytes(data))          # the kind of the message
            conn.sendMessage("text")               # str: text
            conn.sendMessage(b"forced", True)      # binary, said so
    """)
    server = FakeServer(name)
    conn = server.connect()
    conn.client_send("hi")
    conn.client_send(b"\x00\x01")
    conn.client_send(b"as text", binary=False)
    assert conn.sent == [
        (b"hi", False), (b"text", False), (b"forced", True),
        (b"\x00\x01", True), (b"text", False), (b"forced", True),
        (b"as text", False), (b"text", False), (b"forced", True),
    ]
    assert conn.texts == ["hi", "text", "text", "as text", "text"]
    assert conn.messages_in == 3 and conn.is_binary is False
    assert len(conn.take()) == 9 and conn.sent == []


def test_a_connect_filter_sees_the_request_and_refuses(make: Make) -> None:
    name = make("""
    seen = []
    class Key(WebSocketConnectFilter):
        @staticmethod
        def filter(conn, request):
            seen.append((request.path, request.params, request.headers.get("x-key"), conn.client_ip))
            if request.params.get("key") != ["open"]:
                raise Refuse(403, "no key", detail="key was " + repr(request.params.get("key")))
    """)
    server = FakeServer(name)
    with pytest.raises(Refuse) as refused:
        server.connect("/chat?key=wrong", headers={"X-Key": "k"}, client_ip="10.0.0.7")
    assert (refused.value.status, refused.value.reason) == (403, "no key")
    assert module(name).seen == [("/chat", {"key": ["wrong"]}, "k", "10.0.0.7")]
    assert not server.users
    conn = server.connect("/chat?key=open")
    assert conn.state == "open" and list(server.users) == [conn.id]


def test_an_asynchronous_connect_filter_opens_or_refuses_when_it_finishes(make: Make) -> None:
    name = make("""
    waiting = []
    class Later(WebSocketConnectFilter):
        @staticmethod
        def filter(conn, request):
            d = Deferred()
            waiting.append(d)
            return d
    """)
    server = FakeServer(name)
    first, second = server.connect(), server.connect()
    assert first.state == second.state == "connecting" and server.pending and not server.users
    yes, no = module(name).waiting
    yes.callback(None)
    no.errback(Refuse(429, "slow down"))
    assert first.state == "open" and list(server.users) == [first.id]
    assert second.state == "refused" and second.refusal is not None
    assert second.refusal.status == 429 and not server.pending


def test_a_failing_filter_fails_the_test_with_its_name(make: Make) -> None:
    name = make("""
    class Broken(WebSocketMessageFilter):
        @staticmethod
        def filter(conn, data):
            raise KeyError("oops")
    class After(WebSocketMessageFilter):
        @staticmethod
        def filter(conn, data):
            conn.sendMessage("never")
    """)
    server = FakeServer(name)
    conn = server.connect()
    with pytest.raises(FilterFailed, match=rf"filter {name}\.Broken failed on message: KeyError") as e:
        conn.client_send("x")
    assert isinstance(e.value.__cause__, KeyError) and e.value.event == "message"
    assert conn.sent == [] and server.errors == [e.value]  # the rest of the chain was skipped
    assert conn.state == "open"  # as on the server: the connection goes on


def test_a_failing_connect_filter_refuses_with_500(make: Make) -> None:
    name = make("""
    class Broken(WebSocketConnectFilter):
        @staticmethod
        def filter(conn, request):
            1 / 0
    """)
    server = FakeServer(name)
    with pytest.raises(FilterFailed, match="ZeroDivisionError"):
        server.connect()
    [conn] = server._every.values()
    assert conn.state == "refused" and conn.refusal is not None and conn.refusal.status == 500


def test_a_failed_deferred_fails_the_step_that_settles_it(make: Make) -> None:
    name = make("""
    waiting = []
    class Later(WebSocketMessageFilter):
        @staticmethod
        def filter(conn, data):
            d = Deferred()
            waiting.append(d)
            return d
    """)
    server = FakeServer(name)
    conn = server.connect()
    conn.client_send("a")
    module(name).waiting[0].errback(ValueError("late"))
    with pytest.raises(FilterFailed, match="ValueError: late"):
        server.settle()
    server.settle()  # reported once


def test_messages_keep_their_order_across_asynchronous_filters(make: Make) -> None:
    name = make("""
    waiting = []
    class Slow(WebSocketMessageFilter):
        @staticmethod
        def filter(conn, data):
            if data.startswith(b"slow"):
                d = Deferred()
                waiting.append(d)
                return d
    class Tag(WebSocketMessageFilter):
        @staticmethod
        def filter(conn, data):
            conn.sendMessage(b"got " + bytes(data))
    class Bye(WebSocketDisconnectFilter):
        @staticmethod
        def filter(conn, info):
            conn.factory.broadcast(f"{conn.id} left with {info.code}")
    """)
    server = FakeServer(name)
    conn, other = server.connect(), server.connect()
    conn.client_send("slow 1")
    conn.client_send(b"fast 2")
    conn.client_close(4001, "done")
    assert conn.sent == [] and server.pending and conn.state == "closed"
    assert other.sent == []  # the disconnect chain waits behind the messages
    module(name).waiting[0].callback(None)
    assert other.sent == [(b"test-1 left with 4001", False)] and not server.pending
    assert conn.sent == []  # closed before its messages were answered: nothing is sent
    assert conn.close_info == CloseInfo(4001, "done", True)


def test_the_kind_of_a_message_lasts_through_a_coroutine(make: Make) -> None:
    name = make("""
    waiting = []
    class Wait(WebSocketMessageFilter):
        @staticmethod
        async def filter(conn, data):
            d = Deferred()
            waiting.append(d)
            await d
            conn.sendMessage(bytes(data))
    """)
    server = FakeServer(name)
    conn = server.connect()
    conn.client_send(b"\x01")
    conn.client_send("text")
    module(name).waiting[0].callback(None)
    module(name).waiting[1].callback(None)
    assert conn.sent == [(b"\x01", True), (b"text", False)]


def test_timers_run_on_the_clock(make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    name = make("""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater
    class Delay(WebSocketMessageFilter):
        @staticmethod
        async def filter(conn, data):
            await deferLater(reactor, 2.0, lambda: None)
            conn.sendMessage(bytes(data))
    """)
    server = FakeServer(name)
    monkeypatch.setattr(module(name), "reactor", server.clock)
    conn = server.connect()
    conn.client_send("tick")
    server.advance(1.9)
    assert conn.sent == [] and server.pending
    server.advance(0.1)
    assert conn.sent == [(b"tick", False)]


def test_filter_timeout_skips_the_rest_of_the_chain(make: Make) -> None:
    name = make("""
    class Never(WebSocketMessageFilter):
        @staticmethod
        def filter(conn, data):
            return Deferred()
    class After(WebSocketMessageFilter):
        @staticmethod
        def filter(conn, data):
            conn.sendMessage("after")
    """)
    server = FakeServer(name, args=["--filter-timeout", "3"])
    conn = server.connect()
    conn.client_send("a")
    server.advance(3)
    assert conn.sent == [] and not server.pending and not server.errors


CLOSER = """
class Closer(WebSocketMessageFilter):
    @staticmethod
    def filter(conn, data):
        text = bytes(data).decode()
        if text.startswith("close "):
            code, _, reason = text[6:].partition(" ")
            conn.close(int(code), reason)
            conn.sendMessage("after the close")
        else:
            conn.sendMessage(text)
class Bye(WebSocketDisconnectFilter):
    @staticmethod
    def filter(conn, info):
        conn.factory.broadcast(repr((info.code, info.reason, info.was_clean)))
"""


def test_a_server_close_is_recorded_and_reaches_the_disconnect_chain(make: Make) -> None:
    server = FakeServer(make(CLOSER))
    conn, other = server.connect(), server.connect()
    conn.client_send("close 4000 kicked")
    assert conn.close_sent == (4000, "kicked") and conn.state == "closed"
    assert conn.sent == []  # nothing goes after the close frame
    assert conn.close_info == CloseInfo(4000, "kicked", True)
    assert other.texts == ["(4000, 'kicked', True)"] and conn.id not in server.users
    with pytest.raises(RuntimeError, match="closed"):
        conn.client_send("more")


def test_close_refuses_unsendable_codes_and_cuts_long_reasons(make: Make) -> None:
    server = FakeServer(make(CLOSER))
    conn = server.connect()
    with pytest.raises(FilterFailed, match="close code 1006 may not be sent"):
        conn.client_send("close 1006 x")
    assert conn.state == "open"
    conn.client_send("close 1000 " + "é" * 100)
    assert conn.close_sent is not None and conn.close_sent[1] == "é" * 61  # 122 of 123 bytes


def test_client_closes(make: Make) -> None:
    server = FakeServer(make(CLOSER))
    a, b, c, watcher = (server.connect() for _ in range(4))
    a.client_close()
    b.client_close(None)
    c.client_drop()
    assert watcher.texts == ["(1000, None, True)", "(1005, None, True)",
                             "(1006, 'connection was closed uncleanly', False)"]
    assert list(server.users) == [watcher.id]


def test_broadcasts_relays_and_groups_are_recorded(make: Make) -> None:
    name = make("""
    class Many(WebSocketMessageFilter):
        @staticmethod
        def filter(conn, data):
            server = conn.factory
            if data.startswith(b"join "):
                server.join_group(conn, bytes(data[5:]).decode())
            elif data == b"leave":
                server.leave_group(conn)
            elif data == b"all":
                server.broadcast_all(b"to all", exclude=conn)
            elif data == b"group":
                server.broadcast_group(conn.token, "to group")
            elif data == b"some":
                server.broadcast(b"\\xff", recipients=[conn])
    """)
    server = FakeServer(name)
    a, b, c = server.connect(), server.connect(), server.connect()
    a.client_send("join red")
    b.client_send("join red")
    b.client_send("join blue")
    a.client_send("group")
    a.client_send("all")
    c.send_full = True  # a slow client under --slow-consumer-action drop
    a.client_send("some")
    b.client_send("leave")
    assert server.joins == [("red", a.id), ("red", b.id), ("blue", b.id)]
    assert server.leaves == [("red", b.id), ("blue", b.id)]
    assert dict(server.groups) == {"red": {a.id: a}} and b.token is None
    assert server.broadcasts == [
        Broadcast("group", b"to group", False, (a.id,), "red"),
        Broadcast("all", b"to all", False, (b.id, c.id)),
        Broadcast("local", b"\xff", True, (a.id,)),
    ]
    assert server.relayed == [Relay("red", None, False, b"to group"), Relay(None, a.id, False, b"to all")]
    assert c.sent == [(b"to all", False)]
    c.send_full = False
    assert server.deliver_relayed(None, b.id, True, b"from another node") == 2
    assert c.sent[-1] == (b"from another node", True) and b.sent[-1:] == [(b"to all", False)]


def test_pub_sub_goes_through_the_storage_object_to_the_consumer_chain(make: Make) -> None:
    name = make("""
    waiting = []
    class Publish(WebSocketMessageFilter):
        @staticmethod
        def filter(conn, data):
            conn.storage_object.publish("news", bytes(data))
    class Forward(WebSocketConsumerFilter):
        @staticmethod
        def filter(server, message):
            if message["data"] == b"slow":
                d = Deferred()
                waiting.append(d)
                return d.addCallback(lambda _: server.broadcast(message["data"]))
            server.broadcast(message["data"])
            server.broadcast(message["channel"] + " " + repr(message["pattern"]))
    """)
    server = FakeServer(name)
    conn = server.connect()
    conn.client_send("slow")
    server.publish("weather", b"\xfe")
    conn.client_send("hello")
    assert server.published == [("news", b"slow"), ("weather", b"\xfe"), ("news", b"hello")]
    assert conn.sent == [] and server.pending  # behind the slow one, in order
    module(name).waiting[0].callback(None)
    assert conn.sent == [(b"slow", False), (b"\xfe", True), (b"weather None", False),
                         (b"hello", False), (b"news None", False)]
    server.deliver_pubsub("a.b", b"x", "a.*")
    assert conn.texts[-1] == "a.b 'a.*'"


def test_the_data_chain_sees_raw_reads(make: Make) -> None:
    name = make("""
    class Strip(WebSocketDataFilter):
        @staticmethod
        def filter(conn, data):
            data[:] = data.replace(b"x", b"")
    """)
    server = FakeServer(name)
    conn = server.connect()
    conn.client_send_raw(b"axb")
    conn.client_send_raw(b"xx")
    assert conn.raw == [b"ab"]


def test_options_reach_configure_and_the_filters(make: Make) -> None:
    name = make("""
    def configure(config):
        if not config.options.get("jwt_audience"):
            raise ValueError("needs --jwt-audience")
        return config.options["jwt_audience"].upper()
    class Say(WebSocketMessageFilter):
        @staticmethod
        def filter(conn, data):
            conn.sendMessage(conn.factory.configured(__name__) + " " + conn.factory.options["jwt_audience"])
    """)
    server = FakeServer(name, args=["--jwt-audience", "app"])
    conn = server.connect()
    conn.client_send("?")
    assert conn.texts == ["APP app"]
    with pytest.raises(FilterLoadError, match="needs --jwt-audience"):
        FakeServer(name)
    with pytest.raises(ConfigError):
        FakeServer(name, args=["--max-groups-per-connection", "many"])
    with pytest.raises(FilterLoadError, match="not found"):
        FakeServer("no_such_filter_module")
    with pytest.raises(ValueError, match="at least one"):
        FakeServer()


def test_endless_pub_sub_is_an_error_not_a_hang(make: Make) -> None:
    name = make("""
    class Again(WebSocketConsumerFilter):
        @staticmethod
        def filter(server, message):
            server.storage_object.publish(message["channel"], message["data"])
    """)
    server = FakeServer(name)
    with pytest.raises(RuntimeError, match="pub/sub messages without a pause"):
        server.publish("loop", b"x")


def test_importing_it_runs_no_reactor() -> None:
    code = "import sys, fws.testing; assert 'twisted.internet.reactor' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_the_documented_example_test_passes() -> None:
    """examples/tests/test_shout.py, shown in docs/filters.rst, runs as the docs say."""
    docs = (ROOT / "docs" / "filters.rst").read_text()
    assert ".. literalinclude:: ../examples/tests/test_shout.py" in docs
    assert "python -m pytest tests/test_shout.py" in docs
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "tests/test_shout.py"], cwd=ROOT / "examples", capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_a_shared_storage_object_gets_the_relays_and_group_changes(make: Make) -> None:
    from twisted.internet.task import Clock

    from fws.storage_objects.memory import MemoryStorage

    class Shared(MemoryStorage):
        """An in-memory storage that says it joins nodes, recording what fws hands it."""

        shared = True

        def __init__(self) -> None:
            super().__init__(Clock())
            self.calls: list[tuple[object, ...]] = []

        def relay(self, group: str | None, exclude_id: str | None, is_binary: bool,
                  payload: bytes) -> None:
            self.calls.append(("relay", group, exclude_id, is_binary, payload))

        def member_joined(self, group: str, member_id: str) -> None:
            self.calls.append(("joined", group, member_id))

        def member_left(self, group: str, member_id: str) -> None:
            self.calls.append(("left", group, member_id))

    storage = Shared()
    server = FakeServer("fws.filters.broadcast_messages_by_token", storage=storage)
    assert server.storage_object is storage
    conn = server.connect()
    conn.client_send("token:g")
    conn.client_send("hi")
    conn.client_close()
    assert storage.calls == [("joined", "g", conn.id), ("relay", "g", conn.id, False, b"hi"),
                             ("left", "g", conn.id)]
    assert storage.consumer == server.deliver_pubsub  # attached: its pub/sub feeds the fake


TOKEN_AT_DISCONNECT = """
class Join(WebSocketMessageFilter):
    @staticmethod
    def filter(conn, data):
        conn.factory.join_group(conn, bytes(data).decode())

class Bye(WebSocketDisconnectFilter):
    @staticmethod
    def filter(conn, info):
        conn.factory.broadcast(f"{conn.token} {conn.id in conn.factory.groups.get(conn.token, {})}")
"""


def test_the_disconnect_chain_reads_the_token_of_the_group_left(make: Make) -> None:
    """As on the server (tests/test_legacy_storage.py): the group is left, its name still readable."""
    server = FakeServer(make(TOKEN_AT_DISCONNECT))
    conn, other = server.connect(), server.connect()
    conn.client_send("room")
    conn.client_close()
    assert other.texts == ["room False"]
