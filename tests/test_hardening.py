"""
Limits and policies end to end over real sockets: sizes, connection caps,
rates, origins, JWT, group lockdown, keepalive, slow consumers, drain, and a
fuzzer that throws random bytes at the server.
"""

from __future__ import annotations

import os
import signal
import struct
import time
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import pytest
import pytest_twisted
from twisted.internet.task import deferLater
from websockets.sync.client import connect as ws_connect

from fws.config import resolve
from fws.pipeline import FilterLoadError, load_pipeline
from tests.helpers import Server, write_module
from tests.processes import FwsProcess
from tests.rawws import RawClient, frame
from tests.redis_support import free_port


async def refused(server: Server, path: str = "/", **kw: Any) -> str:
    with pytest.raises(ConnectionError) as info:
        await server.connect(path, **kw)
    return str(info.value)


# --- sizes ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_oversized_message_and_frame_close_with_1009(reactor: Any) -> None:
    server = Server.from_argv(reactor, "-f", "echo", "--max-message-size", "1000",
                                                           "--max-frame-size", "600").start()
    try:
        ok = await server.connect()
        ok.send(b"x" * 500)
        assert await ok.recv() == (b"x" * 500, True)
        big_frame = await server.connect()
        big_frame.send(b"y" * 700)
        assert await big_frame.closed == 1009
        fragmented = await server.connect()
        fragmented.beginMessage(isBinary=True)
        for _ in range(3):
            fragmented.sendMessageFrame(b"z" * 500)
        fragmented.endMessage()
        assert await fragmented.closed == 1009
        ok.send("still fine")
        assert await ok.recv() == (b"still fine", False)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_compression_bomb_is_bounded(reactor: Any) -> None:
    from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateResponseAccept

    server = Server.from_argv(reactor, "-f", "echo", "--compression", "--max-message-size",
                                                           "65536").start()
    try:
        client = await server.connect(perMessageCompressionOffers=[PerMessageDeflateOffer()],
                                      perMessageCompressionAccept=PerMessageDeflateResponseAccept,
                                      maxMessagePayloadSize=0)
        assert client._perMessageCompress is not None  # negotiated
        client.send(b"small")
        assert await client.recv() == (b"small", True)
        client.send(b"\0" * (8 * 1024 * 1024))  # ~8 KiB on the wire, 8 MiB decompressed
        assert await client.closed == 1009
    finally:
        await server.stop()


# --- connection caps -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_connection_caps_global_and_per_address(reactor: Any) -> None:
    server = Server.from_argv(reactor, "-f", "echo", "--max-connections", "3",
                                                           "--max-connections-per-ip", "2").start()
    try:
        await server.connect()
        await server.connect()
        assert "429" in await refused(server)
    finally:
        await server.stop()
    server = Server.from_argv(reactor, "-f", "echo", "--max-connections", "2").start()
    try:
        first = await server.connect()
        await server.connect()
        assert "503" in await refused(server)
        first.sendClose(1000)
        await first.closed
        await deferLater(reactor, 0.05, lambda: None)
        await server.connect()  # a slot is free again
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_forwarded_for_is_believed_only_from_trusted_proxies(reactor: Any) -> None:
    server = Server.from_argv(reactor, "-f", "echo",
        "--max-connections-per-ip", "1", "--trusted-proxies", "127.0.0.0/8").start()
    try:
        await server.connect(headers={"X-Forwarded-For": "203.0.113.7"})
        await server.connect(headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.8"})
        assert "429" in await refused(server, headers={"X-Forwarded-For": "203.0.113.7"})
        # a forged left-most hop does not help: the right-most untrusted hop counts
        assert "429" in await refused(server, headers={"X-Forwarded-For": "1.2.3.4, 203.0.113.7"})
        ips = sorted(c.client_ip for c in server.factory.users.values())
        assert ips == ["203.0.113.7", "203.0.113.8"]
    finally:
        await server.stop()
    untrusting = Server.from_argv(reactor, "-f", "echo", "--max-connections-per-ip", "1").start()
    try:
        await untrusting.connect(headers={"X-Forwarded-For": "203.0.113.7"})
        assert "429" in await refused(untrusting, headers={"X-Forwarded-For": "203.0.113.9"})
    finally:
        await untrusting.stop()


# --- rates -------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_message_rate_close_and_drop(reactor: Any) -> None:
    server = Server.from_argv(reactor, "-f", "echo", "--max-message-rate", "20",
                                                           "--message-burst", "5").start()
    try:
        fast = await server.connect()
        for i in range(30):
            fast.send(f"{i}")
        assert await fast.closed == 1008
        assert server.factory.stats.closed[(1008, "server")] == 1
        assert server.factory.stats.limit_hits["max_message_rate"] == 1  # one close, not 25
        polite = await server.connect()
        for i in range(5):
            polite.send(f"{i}")
            await deferLater(reactor, 0.06, lambda: None)
        assert [await polite.recv() for _ in range(5)] == [(f"{i}".encode(), False) for i in range(5)]
    finally:
        await server.stop()
    dropping = Server.from_argv(reactor, "-f", "echo",
        "--max-message-rate", "20", "--message-burst", "5", "--rate-limit-action", "drop").start()
    try:
        client = await dropping.connect()
        for i in range(30):
            client.send(f"{i}")
        got = [await client.recv() for _ in range(5)]
        assert got == [(f"{i}".encode(), False) for i in range(5)]
        await client.silent(0.1)
        await deferLater(reactor, 0.2, lambda: None)  # the bucket refills
        client.send("later")
        assert await client.recv() == (b"later", False)
    finally:
        await dropping.stop()


# --- origins -----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_allowed_origins(reactor: Any) -> None:
    server = Server.from_argv(reactor, "-f", "echo",
        "--allowed-origins", "https://app.example.com", "https://*.example.org").start()
    try:
        await server.connect(headers={"Origin": "https://app.example.com"})
        await server.connect(headers={"Origin": "https://chat.example.org"})
        await server.connect()  # no Origin header (Autobahn's client sends none): not a browser
        # "Origin: null", as sandboxed pages send: refused (tests/test_origin.py has the rest)
        assert "403" in await refused(server, headers={"Origin": "null"})
        assert "403" in await refused(server, headers={"Origin": "https://evil.example.net"})
        assert "403" in await refused(server, headers={"Origin": "http://app.example.com"})
    finally:
        await server.stop()


def test_origin_matching() -> None:
    from fws.limits import origin_allowed

    allowed = ("https://app.example.com", "https://*.example.org")
    assert origin_allowed(None, allowed)  # not a browser: any client can forge Origin anyway
    assert origin_allowed("https://APP.example.com/", allowed)
    assert origin_allowed("https://a.b.example.org", allowed)
    assert not origin_allowed("https://example.org", allowed)
    assert not origin_allowed("null", allowed)
    assert not origin_allowed("https://app.example.com.evil.net", allowed)
    assert origin_allowed("https://anything", ())  # default: all


# --- JWT and group lockdown --------------------------------------------------------------------


SECRET = "correct horse battery staple, long enough for HS256"


def token(claims: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode({"exp": int(time.time()) + 300, **claims}, key, algorithm=algorithm)


@pytest_twisted.ensureDeferred
async def test_auth_jwt_hs256_and_group_claim(reactor: Any) -> None:
    server = Server.from_argv(
        reactor, "-f", "fws.filters.auth_jwt", "broadcast_messages_by_token", "--jwt-secret", SECRET,
        "--group-claim", "groups", "--max-groups-per-connection", "2", "--jwt-audience", "chat",
    ).start()
    try:
        good = token({"sub": "alice", "aud": "chat", "groups": ["red", "blue", "green"]})
        a = await server.connect(f"/?token={good}")
        [conn] = server.factory.users.values()
        assert conn.claims["sub"] == "alice"
        b = await server.connect(headers={"Authorization": f"Bearer {good}"})
        c = await server.connect(headers={"Cookie": f"other=1; token={good}"})
        for client in (a, b, c):
            client.send("token:red")
            assert (await client.recv())[0] == b"Successfully registered with broadcast group: red"
        a.send("token:admins")
        assert await a.recv() == (b"Error: Not allowed to join broadcast group: admins", False)
        a.send("token:blue")
        await a.recv()
        a.send("token:green")
        assert await a.recv() == (b"Error: Too many broadcast groups for this connection", False)
        a.send("token:red")  # back to a group it has joined before: allowed
        assert await a.recv() == (b"Successfully registered with broadcast group: red", False)
        for bad in ("", "?token=garbage", f"?token={token({'aud': 'chat'}, key='wrong' * 8)}",
                    f"?token={token({'aud': 'other'})}",
                    f"?token={token({'aud': 'chat', 'exp': int(time.time()) - 60})}",
                    f"?token={jwt.encode({'aud': 'chat'}, None, algorithm='none')}"):
            assert "401" in await refused(server, f"/{bad}")
    finally:
        await server.stop()


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the forged token
@pytest_twisted.ensureDeferred
async def test_auth_jwt_rs256_public_key(reactor: Any, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = tmp_path / "jwt.pub"
    public.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    server = Server.from_argv(reactor, "-f", "fws.filters.auth_jwt", "echo",
                              "--jwt-public-key", str(public)).start()
    try:
        await server.connect(f"/?token={token({'sub': 'bob'}, private, 'RS256')}")
        # the public key used as an HMAC secret (algorithm confusion) is refused
        forged = jwt.encode({"sub": "eve"}, "x", algorithm="HS256")
        assert "401" in await refused(server, f"/?token={forged}")
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "needs exactly one of --jwt-secret"),
        (["--jwt-secret", "s", "--jwt-public-key", "k.pem"], "needs exactly one"),
        (["--jwt-secret", "s", "--jwt-algorithms", "RS256"], "cannot be used with a secret"),
        (["--jwt-public-key", "/nonexistent.pem"], "cannot read --jwt-public-key"),
    ],
)
def test_auth_jwt_configuration_errors(argv: list[str], message: str) -> None:
    config = resolve(argv, environ={})
    with pytest.raises(FilterLoadError) as info:
        load_pipeline(["fws.filters.auth_jwt"], config)
    assert message in str(info.value) and "\n" not in str(info.value)


# --- filters that hang -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_filter_timeout(reactor: Any, tmp_path: Path, logged_errors: list[Any]) -> None:
    name = write_module(tmp_path, """
        from twisted.internet.defer import Deferred
        from fws import WebSocketMessageFilter

        class Hang(WebSocketMessageFilter):
            @classmethod
            def filter(cls, web_socket_instance, data):
                if data == b"hang":
                    return Deferred()  # never fires
    """)
    server = Server.from_argv(reactor, "-f", name, "echo", "--filter-timeout", "0.2").start()
    try:
        a, b = await server.connect(), await server.connect()
        a.send("hang")
        a.send("after")
        b.send("other connection")
        assert await b.recv() == (b"other connection", False)
        assert await a.recv() == (b"after", False)
        assert [e.get("filter", "").rsplit(".", 1)[-1] for e in logged_errors] == ["Hang"]
        assert "timed out" in logged_errors[0]["log_format"]
        logged_errors.clear()
    finally:
        await server.stop()


# --- keepalive ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_idle_timeout(reactor: Any) -> None:
    server = Server.from_argv(reactor, "-f", "echo", "--idle-timeout", "0.3").start()
    try:
        chatty, quiet = await server.connect(), await server.connect()
        for _ in range(6):
            chatty.send("here")
            await chatty.recv()
            await deferLater(reactor, 0.1, lambda: None)
        assert await quiet.closed == 4000
        assert chatty.state == chatty.STATE_OPEN
        assert server.factory.stats.limit_hits == {"idle_timeout": 1}
        assert server.factory.stats.closed == {(4000, "server"): 1}
    finally:
        await server.stop()


# --- raw sockets against a real process --------------------------------------------------------


def start(processes: list[FwsProcess], *args: str) -> FwsProcess:
    proc = FwsProcess([])
    proc.args = ["-p", str(proc.port), "-i", "127.0.0.1", *args]
    processes.append(proc)
    return proc.start()


def test_dead_peer_is_dropped_by_ping_timeout(processes: list[FwsProcess]) -> None:
    proc = start(processes, "-f", "echo", "--ping-interval", "0.3", "--ping-timeout", "0.3")
    client = RawClient(proc.port)  # completes the handshake, then never answers a ping
    assert client.status == 101
    assert client.closed_by_server(timeout=5)


def test_handshake_timeout(processes: list[FwsProcess]) -> None:
    proc = start(processes, "-f", "echo", "--open-handshake-timeout", "0.3")
    silent = RawClient(proc.port, handshake=False)
    assert silent.closed_by_server(timeout=5)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(b"\xff\xfe not utf-8", opcode=1), 1007),
        (frame(b"unmasked", mask=False), 1002),
        (frame(b"x", opcode=3), 1002),  # reserved opcode
        (frame(b"x", rsv=4), 1002),  # RSV bit without an extension
        (frame(b"p" * 200, opcode=9), 1002),  # control frame too long
        (frame(b"x", opcode=9, fin=False), 1002),  # fragmented control frame
        (frame(b"x", opcode=0), 1002),  # continuation without a start
    ],
)
def test_protocol_violations_get_the_rfc_close(processes: list[FwsProcess], data: bytes,
                                               code: int) -> None:
    proc = start(processes, "-f", "echo")
    client = RawClient(proc.port)
    client.send(data)
    assert client.close_code() == code
    with ws_connect(proc.url) as ws:  # and the server keeps serving
        ws.send("fine")
        assert ws.recv(timeout=5) == "fine"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 426),  # a browser's plain GET: no status page
        (b"POST / HTTP/1.1\r\n\r\n", None),
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", None),  # TLS on a plain port
        (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Version: 13\r\n\r\n", None),  # no Host, no key
    ],
)
def test_bad_opening_handshakes_get_http_errors(processes: list[FwsProcess], request_bytes: bytes,
                                                status: int | None) -> None:
    proc = start(processes, "-f", "echo")
    client = RawClient(proc.port, handshake=False)
    client.send(request_bytes)
    client.response = client._read_response()
    if status is not None:
        assert client.status == status
    else:  # an HTTP client error, or the connection closed at once
        assert 400 <= client.status < 500 or client.response == b""
    assert client.closed_by_server()
    with ws_connect(proc.url) as ws:
        ws.send("fine")
        assert ws.recv(timeout=5) == "fine"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("action", ["close", "drop"])
def test_slow_consumer_memory_stays_bounded(processes: list[FwsProcess], action: str) -> None:
    admin = free_port()
    proc = start(processes, "-f", "broadcast_messages", "--max-send-buffer", str(1024 * 1024),
                 "--slow-consumer-action", action, "--max-message-rate", "0",
                 "--admin", f"tcp:{admin}:interface=127.0.0.1")
    assert proc.proc is not None
    slow = RawClient(proc.port, rcvbuf=4096)  # handshakes, then never reads
    message = os.urandom(60 * 1024)
    total = 800  # 48 MiB through the server, far more than any buffer may hold
    with ws_connect(proc.url, max_size=None) as sender, ws_connect(proc.url, max_size=None) as fast:
        baseline = rss_kib(proc.proc.pid)
        peak = baseline
        for i in range(total):
            sender.send(struct.pack("!I", i) + message)
            got = fast.recv(timeout=10)
            assert struct.unpack("!I", got[:4])[0] == i  # the fast reader gets everything, in order
            if i % 50 == 0:
                peak = max(peak, rss_kib(proc.proc.pid))
        peak = max(peak, rss_kib(proc.proc.pid))
    assert peak - baseline < 32 * 1024, f"RSS grew by {(peak - baseline) // 1024} MiB"
    if action == "close":
        proc.wait_for_line("closing slow consumer")
        assert slow.closed_by_server(timeout=10)
    else:
        proc.wait_for_line("dropping messages to it")
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10).read()
    name = "fws_slow_consumer_disconnects_total" if action == "close" else \
        "fws_slow_consumer_drops_total"
    assert f"{name} 1.0".encode() in metrics.splitlines()
    slow.close()


def test_drain_spreads_closes(processes: list[FwsProcess]) -> None:
    import select

    proc = start(processes, "-f", "echo", "--drain-period", "1.0")
    clients = [RawClient(proc.port) for _ in range(20)]
    assert all(c.status == 101 for c in clients)
    proc.signal(signal.SIGTERM)
    arrived: dict[int, float] = {}
    deadline = time.monotonic() + 10
    while len(arrived) < len(clients) and time.monotonic() < deadline:
        waiting = [c.sock for i, c in enumerate(clients) if i not in arrived]
        ready, _, _ = select.select(waiting, [], [], 0.5)
        now = time.monotonic()
        for sock in ready:
            arrived[next(i for i, c in enumerate(clients) if c.sock is sock)] = now
    assert len(arrived) == len(clients)
    assert max(arrived.values()) - min(arrived.values()) >= 0.5  # spread, not one storm
    assert all(c.close_code() == 1001 for c in clients)
    assert proc.wait(10) == 0


def test_fuzzed_frames_leave_the_server_serving(processes: list[FwsProcess]) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    proc = start(processes, "-f", "broadcast_messages", "--max-message-rate", "0")
    with ws_connect(proc.url) as watcher, ws_connect(proc.url) as sender:

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.one_of(
            st.binary(max_size=300),
            st.builds(lambda p, op, fin, mask, rsv: frame(p, op, fin, mask, rsv),
                      st.binary(max_size=200), st.integers(0, 15), st.booleans(), st.booleans(),
                      st.integers(0, 7)),
            st.builds(lambda p, cut: frame(p)[:cut], st.binary(max_size=200), st.integers(0, 50)),
        ))
        def attack(data: bytes) -> None:
            client = RawClient(proc.port)
            try:
                client.send(data)
                client.sock.settimeout(0.05)
                try:
                    client.sock.recv(65536)
                except (TimeoutError, OSError):
                    pass
            finally:
                client.close()

        attack()
        sender.send("the server still serves")
        for _ in range(1000):  # valid fuzz frames were broadcast to the watcher as well
            if watcher.recv(timeout=5) == "the server still serves":
                break
        else:
            raise AssertionError("the watcher never got the last message")
    assert proc.proc is not None and proc.proc.poll() is None
    assert not any("Traceback" in line for line in proc.lines())
