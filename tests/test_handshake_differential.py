"""
fws's own opening handshake against Autobahn's, request by request.

fws opens the common request itself (``WireProtocol._open_lean`` and
``_succeed_lean``) and leaves every other one to Autobahn's
``processHandshake`` and ``succeedHandshake``. Whichever path a request
takes, the client must get the same bytes and the connection must end in the
same state. Each request here (a corpus of the valid and the malformed, and
many more put together by hypothesis from header variants: names in any
case, duplicates, whitespace, obs-text, bad keys, versions, targets, Origin,
subprotocols, extensions, a connect filter that refuses, waits or fails)
goes to two connections of the same fws server on in-memory transports, one
on fws's path and one made to take Autobahn's (``_lean_handshake = False``):
both must write the same response, byte for byte, close or keep the TCP
connection alike, hand the connect filter the same request, keep the same
attributes, and echo a frame sent after the handshake alike. The status of
each response is also held to plain Autobahn's (a ``WebSocketServerFactory``
with fws's protocol options) where fws adds no policy of its own.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from fws._wire.handshake import accept_key, parse_head
from tests.helpers import Server, write_module
from tests.test_wire_differential import _autobahn as plain_autobahn
from tests.test_wire_differential import _Transport

#: A connect filter whose answer the request chooses (header X-Test), and what it saw.
FILTER = '''
from twisted.internet.defer import Deferred
from fws.filters.base import Refuse, WebSocketConnectFilter

SEEN = []


class Choose(WebSocketConnectFilter):
    @classmethod
    def filter(cls, conn, request):
        details = conn.transport_details  # made when read on fws's path
        SEEN.append((details.peer, details.is_secure, details.channel_type,
                     details.channel_framing, request.peer, dict(request.headers), request.host, request.path,
                     request.params, request.version, request.origin, list(request.protocols),
                     list(request.extensions)))
        test = request.headers.get("x-test", "")
        if test == "refuse":
            raise Refuse(451, "not here", detail="asked to")
        if test == "boom":
            raise RuntimeError("boom")
        if test.startswith("later"):
            d = Deferred()
            if test == "later-refuse":
                conn.factory.reactor.callLater(1, d.errback, Refuse(429, "later"))
            else:
                conn.factory.reactor.callLater(1, d.callback, None)
            return d
        return None
'''

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
#: A masked text frame "hi" (the echo after the handshake).
FRAME = bytes([0x81, 0x82, 1, 2, 3, 4]) + bytes(b ^ m for b, m in zip(b"hi", b"\x01\x02"))


def request(*headers: str, line: str = "GET /chat HTTP/1.1") -> bytes:
    return ("\r\n".join([line, *headers]) + "\r\n\r\n").encode("iso-8859-1")


BASE = ("Host: 127.0.0.1:9000", "Upgrade: websocket", "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}", "Sec-WebSocket-Version: 13")


def without(name: str) -> tuple[str, ...]:
    return tuple(h for h in BASE if not h.lower().startswith(name.lower() + ":"))


#: name -> request: each must be answered alike by both paths.
CORPUS: dict[str, bytes] = {
    "plain": request(*BASE),
    "browser": request(*BASE, "Origin: http://example.com", "User-Agent: Mozilla/5.0 (X11)",
                       "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
                       "Accept-Language: en", "Cache-Control: no-cache", "Pragma: no-cache"),
    "query": request(*BASE, line="GET /room?a=1&b=2&a=3 HTTP/1.1"),
    "semicolon path": request(*BASE, line="GET /a;b=1 HTTP/1.1"),
    "fragment": request(*BASE, line="GET /a#top HTTP/1.1"),
    "double slash": request(*BASE, line="GET //evil.example/x HTTP/1.1"),
    "absolute target": request(*BASE, line="GET http://127.0.0.1:9000/x HTTP/1.1"),
    "asterisk": request(*BASE, line="GET * HTTP/1.1"),
    "post": request(*BASE, line="POST / HTTP/1.1"),
    "lower get": request(*BASE, line="get / HTTP/1.1"),
    "http/1.0": request(*BASE, line="GET / HTTP/1.0"),
    "two spaces": request(*BASE, line="GET  / HTTP/1.1"),
    "obs-text target": request(*BASE, line="GET /caf\xe9 HTTP/1.1"),
    "no host": request(*without("Host")),
    "two hosts": request(*BASE, "Host: other"),
    "host without port": request(*without("Host"), "Host: example.com"),
    "host bad port": request(*without("Host"), "Host: example.com:http"),
    "host empty port": request(*without("Host"), "Host: example.com:"),
    "host plus port": request(*without("Host"), "Host: example.com:+80"),
    "host ipv6": request(*without("Host"), "Host: [::1]"),
    "host ipv6 port": request(*without("Host"), "Host: [::1]:9000"),
    "host nbsp": request(*without("Host"), "Host: example.com\xa0"),
    "no upgrade": request(*without("Upgrade")),
    "upgrade list": request(*without("Upgrade"), "Upgrade: h2c, WebSocket"),
    "upgrade other": request(*without("Upgrade"), "Upgrade: h2c"),
    "no connection": request(*without("Connection")),
    "connection list": request(*without("Connection"), "Connection: keep-alive, upgrade"),
    "connection close": request(*without("Connection"), "Connection: close"),
    "no key": request(*without("Sec-WebSocket-Key")),
    "short key": request(*without("Sec-WebSocket-Key"), "Sec-WebSocket-Key: abc=="),
    "key bad char": request(*without("Sec-WebSocket-Key"),
                            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ-="),
    "key no padding": request(*without("Sec-WebSocket-Key"),
                              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQAA"),
    "key nbsp": request(*without("Sec-WebSocket-Key"), f"Sec-WebSocket-Key: {KEY}\xa0"),
    "two keys": request(*BASE, f"Sec-WebSocket-Key: {KEY}"),
    "no version": request(*without("Sec-WebSocket-Version")),
    "version 8": request(*without("Sec-WebSocket-Version"), "Sec-WebSocket-Version: 8"),
    "version 12": request(*without("Sec-WebSocket-Version"), "Sec-WebSocket-Version: 12"),
    "version x": request(*without("Sec-WebSocket-Version"), "Sec-WebSocket-Version: x"),
    "version padded": request(*without("Sec-WebSocket-Version"), "Sec-WebSocket-Version:\t13 "),
    "protocols": request(*BASE, "Sec-WebSocket-Protocol: chat, superchat"),
    "fws.v1": request(*BASE, "Sec-WebSocket-Protocol: chat, fws.v1"),
    "duplicate protocol": request(*BASE, "Sec-WebSocket-Protocol: chat, chat"),
    "empty protocol": request(*BASE, "Sec-WebSocket-Protocol: "),
    "origin": request(*BASE, "Origin: https://app.example"),
    "origin null": request(*BASE, "Origin: null"),
    "origin empty": request(*BASE, "Origin:"),
    "two origins": request(*BASE, "Origin: http://a", "Origin: http://b"),
    "extension unknown": request(*BASE, "Sec-WebSocket-Extensions: x-webkit-deflate-frame"),
    "extension bad": request(*BASE, "Sec-WebSocket-Extensions: permessage-deflate; foo=1"),
    "extensions twice": request(*BASE, "Sec-WebSocket-Extensions: a", "Sec-WebSocket-Extensions: b"),
    "forwarded": request(*BASE, "X-Forwarded-For: 10.0.0.1, 10.0.0.2"),
    "mixed case names": request("hOsT: h", "UPGRADE: websocket", "connection: upgrade",
                                f"sec-websocket-key: {KEY}", "SEC-WEBSOCKET-VERSION: 13"),
    "whitespace values": request("Host:h", "Upgrade:\t websocket \t", "Connection: Upgrade",
                                 f"Sec-WebSocket-Key:   {KEY}", "Sec-WebSocket-Version: 13"),
    "obs-text value": request(*BASE, "X-Name: Jos\xe9"),
    "empty value": request(*BASE, "X-Empty:"),
    "no colon": request(*BASE, "Broken header"),
    "space before colon": request(*BASE, "X-Bad : 1"),
    "obs-fold": request(*BASE, "X-Long: a", " continued"),
    "control character": request(*BASE, "X-Bad: a\x01b"),
    "bare lf": request(*BASE, "X-Bad: a\nb"),
    "refused by the filter": request(*BASE, "X-Test: refuse"),
    "filter fails": request(*BASE, "X-Test: boom"),
    "admitted later": request(*BASE, "X-Test: later"),
    "refused later": request(*BASE, "X-Test: later-refuse"),
    "frames in the same read": request(*BASE) + FRAME,
}


@dataclass
class Outcome:
    written: bytes
    disconnecting: bool
    state: int
    seen: list[Any]
    instance: dict[str, Any]


#: Per connection by nature, or the switch itself: not compared.
_OWN = {"transport", "_lane", "id", "_pending_host", "_lean_handshake",
        "openHandshakeTimeoutCall", "autoPingPendingCall", "_linger_call", "_frames",
        "_messages", "_idle_since"}


def _instance(proto: Any) -> dict[str, Any]:
    """The connection's instance state, comparable: timers by whether they are pending."""
    state: dict[str, Any] = {}
    for name, value in vars(proto).items():
        if name == "_transport_details":
            continue  # made on fws's path when read: the connect filter reads it (FILTER)
        if name in _OWN:
            state[name] = None if value is None else type(value).__name__
        elif isinstance(value, Deferred):
            state[name] = ("Deferred", value.called)
        elif name == "request":
            state[name] = None if value is None else [getattr(value, field) for field in (
                "peer", "headers", "host", "path", "params", "version", "origin", "protocols",
                "extensions")]
        elif name == "websocket_extensions_in_use":
            state[name] = [repr(one) for one in value]  # compressors: their parameters
        elif value is None or isinstance(value, (str, bytes, int, float, list, dict, tuple)):
            state[name] = value
        else:  # an object of the connection's own (a masker, a validator): its kind
            state[name] = type(value).__name__
    return state


class Servers:
    """One fws server (history on, so that fws.v1 is chosen when offered) and its filter's log."""

    def __init__(self, directory: Path, *args: str) -> None:
        self.clock = Clock()
        name = write_module(directory, FILTER, prefix="hsdiff")
        self.module = __import__(name)
        self.server = Server.from_argv(self.clock, "-f", name, "-f", "echo", "--history", "10",
                                       "--max-connections", "0", *args)

    def run(self, data: bytes, lean: bool, cut: int | None = None) -> Outcome:
        """Open one connection, feed it ``data`` (in two reads at ``cut``), then a frame."""
        seen = self.module.SEEN
        del seen[:]
        factory = self.server.factory
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        proto = factory.buildProtocol(peer)
        proto._lean_handshake = lean
        transport = _Transport(peerAddress=peer)
        proto.makeConnection(transport)
        try:
            for chunk in ([data] if cut is None else [data[:cut], data[cut:]]):
                if not transport.disconnecting:
                    proto.dataReceived(chunk)
            self.clock.advance(2)  # a filter that answers later has answered
            if proto.state == proto.STATE_OPEN and not transport.disconnecting:
                proto.dataReceived(FRAME)
            self.clock.advance(0)  # echoes are written at the end of the reactor turn
            return Outcome(transport.value(), bool(transport.disconnecting), proto.state,
                           list(seen), _instance(proto))
        finally:
            if proto.state != proto.STATE_CLOSED or transport.connected:
                proto.connectionLost(Failure(ConnectionDone()))
            self.clock.advance(100)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Servers:
    return Servers(tmp_path_factory.mktemp("hsdiff"))


@pytest.fixture(scope="module")
def compressing(tmp_path_factory: pytest.TempPathFactory) -> Servers:
    """The same server accepting permessage-deflate (``--compression``)."""
    return Servers(tmp_path_factory.mktemp("hsdiffz"), "--compression")


def plain_autobahn_status(data: bytes) -> int:
    """The status plain Autobahn answers ``data`` with (the wire differential's echo server)."""
    clock = Clock()
    proto, _ = plain_autobahn(clock)
    transport = _Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    proto.makeConnection(transport)
    proto.dataReceived(data)
    written = transport.value()
    proto.connectionLost(Failure(ConnectionDone()))
    clock.advance(100)
    return int(written.split(b" ", 2)[1]) if written.startswith(b"HTTP/1.1 ") else 0


def status(outcome: Outcome) -> int:
    return int(outcome.written.split(b" ", 2)[1]) if outcome.written.startswith(b"HTTP/") else 0


def check(servers: Servers, data: bytes) -> Outcome:
    """fws's path and Autobahn's give ``data`` the same outcome, whole and cut in two."""
    ours = servers.run(data, lean=True)
    theirs = servers.run(data, lean=False)
    assert ours.written == theirs.written
    assert ours == theirs
    for cut in (1, len(data) // 2, len(data) - 1):
        assert servers.run(data, lean=True, cut=cut) == servers.run(data, lean=False, cut=cut)
    lower = data.lower()
    if b"x-test" not in lower and b"origin" not in lower and b"fws.v1" not in lower:
        assert status(ours) == plain_autobahn_status(data), data
    return ours


@pytest.mark.parametrize("name", list(CORPUS))
def test_every_request_of_the_corpus(servers: Servers, name: str) -> None:
    outcome = check(servers, CORPUS[name])
    opened = outcome.written.startswith(b"HTTP/1.1 101 ")
    # The corpus holds both kinds, as its names say: a test of nothing would pass here too.
    refused = {"fragment", "post", "lower get", "http/1.0", "no host",
                       "two hosts", "host bad port", "host empty port", "no upgrade",
                       "upgrade other", "no connection", "connection close", "no key",
                       "short key", "key bad char", "key no padding", "two keys", "no version",
                       "version 12", "version x", "duplicate protocol", "two origins",
                       "extensions twice", "extension bad", "no colon", "space before colon",
                       "obs-fold", "control character", "bare lf", "refused by the filter",
                       "filter fails", "refused later"}
    assert opened != (name in refused), outcome.written
    if opened:
        assert outcome.written.endswith(b"\x81\x02hi")  # the frame after it was echoed


#: permessage-deflate offers as clients make them (RFC 7692, section 7), and malformed ones.
OFFERS = {
    "deflate": "permessage-deflate",
    "deflate, browser": "permessage-deflate; client_max_window_bits",
    "deflate, firefox": "permessage-deflate",
    "deflate, no context takeover": "permessage-deflate; server_no_context_takeover; "
                                    "client_no_context_takeover",
    "deflate, window bits": "permessage-deflate; server_max_window_bits=10; "
                            "client_max_window_bits=12",
    "deflate, two offers": "permessage-deflate; server_max_window_bits=9, permessage-deflate",
    "deflate after an unknown one": "x-webkit-deflate-frame, permessage-deflate",
    "unknown only": "x-webkit-deflate-frame",
    "deflate, unknown parameter": "permessage-deflate; foo=1",
    "deflate, bad window bits": "permessage-deflate; server_max_window_bits=99",
    "deflate, window bits twice": "permessage-deflate; client_max_window_bits=9; "
                                  "client_max_window_bits=10",
    "deflate, quoted": 'permessage-deflate; client_max_window_bits="10"',
    "empty": "",
}


@pytest.mark.parametrize("compression", [False, True], ids=["plain", "compression"])
@pytest.mark.parametrize("name", list(OFFERS))
def test_extension_offers(servers: Servers, compressing: Servers, compression: bool,
                          name: str) -> None:
    """
    What a client offers in Sec-WebSocket-Extensions is answered alike, with
    compression off (the offers declined) and on (one accepted: the same
    agreed parameters in the response, and the frame after the handshake
    compressed alike by both), and the lean path is the one that answered.
    """
    from tests.helpers import count_calls

    chosen = compressing if compression else servers
    data = request(*BASE, "Origin: http://example.com",
                   f"Sec-WebSocket-Extensions: {OFFERS[name]}")
    outcome = check(chosen, data)
    calls = count_calls(lambda: chosen.run(data, lean=True))
    assert "autobahn:succeedHandshake" not in calls
    head = outcome.written.split(b"\r\n\r\n", 1)[0]
    if "bad" in name or "unknown parameter" in name or "twice" in name:
        assert outcome.written.startswith(b"HTTP/1.1 400 "), outcome.written
    elif compression and name not in ("unknown only", "empty"):
        assert b"\r\nSec-WebSocket-Extensions: permessage-deflate" in head, head
        assert outcome.instance["_perMessageCompress"] == "PerMessageDeflate"
    else:
        assert outcome.written.startswith(b"HTTP/1.1 101 "), outcome.written
        assert b"Sec-WebSocket-Extensions" not in head


def test_the_accept_key_is_rfc_6455s() -> None:
    """RFC 6455, section 1.3: the sample key and its accept value."""
    assert accept_key(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_the_common_requests_take_fws_path(servers: Servers) -> None:
    """What fws opens itself, it opens without Autobahn's processHandshake (else nothing is tested)."""
    from tests.helpers import count_calls

    for name in ("plain", "browser", "query", "fws.v1", "admitted later", "mixed case names"):
        calls = count_calls(lambda: servers.run(CORPUS[name], lean=True))  # noqa: B023
        assert "autobahn:processHandshake" not in calls, name
        assert "autobahn:succeedHandshake" not in calls, name
        theirs = count_calls(lambda: servers.run(CORPUS[name], lean=False))  # noqa: B023
        assert theirs["autobahn:processHandshake"] == 1, name
    assert parse_head(CORPUS["two hosts"], CORPUS["two hosts"].find(b"\r\n\r\n")) is None


# --- requests put together by hypothesis ----------------------------------------------------

_NAMES = {"host": "Host", "upgrade": "Upgrade", "connection": "Connection",
          "key": "Sec-WebSocket-Key", "version": "Sec-WebSocket-Version"}
_VALUES: dict[str, list[str]] = {
    "host": ["127.0.0.1:9000", "example.com", "[::1]:80", "h:x", "h:", " h ", "caf\xe9"],
    "upgrade": ["websocket", "WebSocket", "h2c, websocket", "h2c", ""],
    "connection": ["Upgrade", "keep-alive, Upgrade", "close", "upgrade "],
    "key": [KEY, base64.b64encode(b"0123456789abcdef").decode(), "abc==", KEY[:-1] + "A",
            " " + KEY + "\t"],
    "version": ["13", "8", "7", "x", "13 ", ""],
}
_EXTRA = ["Origin: http://example.com", "Origin: null", "Sec-WebSocket-Protocol: a, b",
          "Sec-WebSocket-Protocol: fws.v1", "Sec-WebSocket-Protocol: a, a",
          "Sec-WebSocket-Extensions: permessage-deflate",
          "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
          "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=99",
          "Sec-WebSocket-Extensions: x-webkit-deflate-frame", "X-Forwarded-For: 10.1.1.1",
          "User-Agent: test/1.0", "X-Obs: \xe9t\xe9", "X-Tab:\tv\t", "Cookie: a=b",
          "X-Test: later", "X-Test: refuse", "Bad Header: 1", "NoColon"]
_TARGETS = ["/", "/chat", "/a?b=1&b=2", "/a#f", "/a;b", "//x", "/%41%zz", "/caf\xe9", "*"]


def _case(name: str, draw: Any) -> str:
    return "".join(c.upper() if draw(st.booleans()) else c.lower() for c in name)


@st.composite
def handshakes(draw: Any) -> bytes:
    lines = []
    for what, name in _NAMES.items():
        for _ in range(draw(st.sampled_from([1, 1, 1, 1, 0, 2]))):  # mostly once
            lines.append(f"{_case(name, draw)}:{draw(st.sampled_from(['', ' ', '  ']))}"
                         f"{draw(st.sampled_from(_VALUES[what][:2] * 3 + _VALUES[what]))}")
    lines += draw(st.lists(st.sampled_from(_EXTRA), max_size=3))
    lines = draw(st.permutations(lines))
    method = draw(st.sampled_from(["GET"] * 5 + ["POST", "get"]))
    version = draw(st.sampled_from(["HTTP/1.1"] * 5 + ["HTTP/1.0"]))
    target = draw(st.sampled_from(_TARGETS[:2] * 3 + _TARGETS))
    return request(*lines, line=f"{method} {target} {version}")


@given(data=handshakes())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
def test_requests_put_together_by_hypothesis(servers: Servers, data: bytes) -> None:
    check(servers, data)


@given(data=handshakes())
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
def test_requests_put_together_by_hypothesis_with_compression(compressing: Servers,
                                                               data: bytes) -> None:
    check(compressing, data)
