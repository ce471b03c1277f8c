"""
Operating fws: the admin endpoint (/healthz, /readyz, /metrics), plain HTTP on
the WebSocket port (--static, --public-health, --public-metrics), connection
logs, JSON logs, --check and the listen backlog. Real servers, real HTTP and
WebSocket clients over loopback.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from fws._wire import framing
from tests.helpers import Server, write_module
from tests.processes import BIN, FwsProcess
from tests.redis_support import RedisProcess, free_port
from tests.test_redis import redis_config, wait_for


async def http_get(reactor: Any, url: str, headers: dict[str, str] | None = None,
                   method: bytes = b"GET") -> tuple[int, dict[str, str], bytes]:
    """One real HTTP request (GET unless told): status, lower-cased headers (first values), body."""
    agent = Agent(reactor)
    h = Headers({k.encode(): [v.encode()] for k, v in (headers or {}).items()})
    response = await agent.request(method, url.encode(), h)
    body = await readBody(response)
    found = {k.decode().lower(): v[0].decode() for k, v in response.headers.getAllRawHeaders()}
    return response.code, found, body


def admin_url(server: Server, path: str) -> str:
    assert server.service.admin is not None
    port = server.service.admin.ports[0].getHost().port
    return f"http://127.0.0.1:{port}{path}"


def public_url(server: Server, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus exposition, or None if absent."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:][\w:]*)(\{([^}]*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        got = ",".join(sorted(p for p in (match.group(3) or "").split(",") if p))
        if got == want:
            return float(match.group(4))
    return None


ADMIN = ("--admin", "tcp:0:interface=127.0.0.1")
OPERATIONS = Path(__file__).resolve().parent.parent / "docs" / "operations.rst"


def exported(text: str) -> set[str]:
    """Metric names in an exposition, as documented (histograms without their suffixes)."""
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = re.split(r"[{ ]", line, maxsplit=1)[0]
            if name.endswith("_created"):
                continue  # prometheus_client's creation timestamps of counters and histograms
            names.add(re.sub(r"_(bucket|count|sum)$", "", name))
    return names


def documented() -> set[str]:
    return set(re.findall(r"^   \* - ``((?:fws|process|python)_\w+)``$", OPERATIONS.read_text(), re.M))


# --- health and readiness --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_healthz_and_readyz_on_the_admin_endpoint(reactor: Any) -> None:
    server = Server.from_argv(reactor, "-f", "echo", *ADMIN).start()
    try:
        code, headers, body = await http_get(reactor, admin_url(server, "/healthz"))
        assert code == 200 and headers["content-type"] == "application/json"
        health = json.loads(body)
        assert health["status"] == "ok" and health["reactor_lag_seconds"] >= 0
        code, _, body = await http_get(reactor, admin_url(server, "/readyz"))
        assert code == 200
        assert json.loads(body) == {"status": "ready", "checks": {"listening": "ok"}}
        code, _, body = await http_get(reactor, admin_url(server, "/"))
        assert code == 200 and b"/healthz" in body and b"/metrics" in body
        for path, content_type in (("/healthz", "application/json"),
                                   ("/readyz", "application/json"), ("/metrics", "text/plain")):
            # Probes that send HEAD get GET's status and headers, and no body.
            code, headers, body = await http_get(reactor, admin_url(server, path), method=b"HEAD")
            assert code == 200 and headers["content-type"].startswith(content_type), path
            assert body == b""
        code, _, _ = await http_get(reactor, admin_url(server, "/nothing"))
        assert code == 404
        # The admin endpoint is not the WebSocket port: no WebSocket there.
        code, _, _ = await http_get(reactor, admin_url(server, "/"), {"Upgrade": "websocket"})
        assert code == 200
    finally:
        await server.stop()


class _Mute(Protocol):
    """A WebSocket client that completes the handshake and then never answers."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received = b""

    def connectionMade(self) -> None:
        from tests.rawws import handshake_request

        self.transport.write(handshake_request(self.port))

    def dataReceived(self, data: bytes) -> None:
        self.received += data


@pytest_twisted.ensureDeferred
async def test_readyz_says_draining_while_clients_are_closed(reactor: Any) -> None:
    server = Server.from_argv(reactor, "-f", "echo", *ADMIN, "--drain-period", "0",
                              "--stop-timeout", "10")
    server.start()
    url = admin_url(server, "/readyz")
    mute = _Mute(server.port)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), mute)
    await wait_for(reactor, lambda: b" 101 " in mute.received, what="the handshake")
    # The client does not answer the close frame: the drain lasts until it goes.
    stopping = server.service.stopService()
    code, _, body = await http_get(reactor, url)
    assert code == 503
    checks = json.loads(body)["checks"]
    assert checks["draining"] == "shutting down" and checks["listening"] == "not listening"
    assert b"\x88\x16\x03\xe9server shutting down" in mute.received  # 1001, ignored
    mute.transport.loseConnection()
    await stopping
    # Everything, the admin endpoint included, is closed once the service has stopped.
    assert server.service.admin is not None and not server.service.admin.ports


@pytest_twisted.ensureDeferred
async def test_readyz_follows_redis(reactor: Any, redis: RedisProcess) -> None:
    server = Server(reactor, ["fws.filters.broadcast_pubsub"], **redis_config(redis),
                    admin=("tcp:0:interface=127.0.0.1",)).start()
    try:
        url = admin_url(server, "/readyz")
        await wait_for(reactor, lambda: server.factory.storage_object.ready, what="redis")
        code, _, body = await http_get(reactor, url)
        assert code == 200 and json.loads(body)["checks"]["storage"] == "ok"
        redis.kill()
        await wait_for(reactor, lambda: not server.factory.storage_object.ready, what="outage")
        code, _, body = await http_get(reactor, url)
        assert code == 503
        assert json.loads(body)["checks"]["storage"].startswith("not ")
        _, _, metrics = await http_get(reactor, admin_url(server, "/metrics"))
        text = metrics.decode()
        assert sample(text, "fws_redis_connected", connection="subscriber") == 0
        assert sample(text, "fws_ready") == 0
        redis.start()
        await wait_for(reactor, lambda: server.factory.storage_object.ready, what="reconnect")
        code, _, _ = await http_get(reactor, url)
        assert code == 200
        _, _, metrics = await http_get(reactor, admin_url(server, "/metrics"))
        text = metrics.decode()
        assert sample(text, "fws_redis_connected", connection="subscriber") == 1
        assert sample(text, "fws_redis_outages_total", connection="subscriber") == 1
        assert sample(text, "fws_redis_reconnects_total", connection="subscriber") == 1
        assert sample(text, "fws_ready") == 1
        assert exported(text) <= documented(), "docs/operations.rst lists every metric"
        redis.publish("global", "after the outage")
        await wait_for(reactor, lambda: server.factory.stats.pubsub_received == 1, what="pubsub")
        _, _, metrics = await http_get(reactor, admin_url(server, "/metrics"))
        assert sample(metrics.decode(), "fws_pubsub_messages_received_total") == 1
    finally:
        await server.stop()


# --- metrics ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_metrics_count_what_happened(reactor: Any, tmp_path: Path,
                                           logged_errors: list[Any]) -> None:
    module = write_module(tmp_path, (
        "from fws.filters.base import WebSocketMessageFilter\n"
        "class Boom(WebSocketMessageFilter):\n"
        "    @staticmethod\n"
        "    def filter(conn, data):\n"
        "        if data == b'boom':\n"
        "            raise RuntimeError('boom')\n"
    ))
    server = Server.from_argv(reactor, "-f", module, "fws.filters.broadcast_messages", *ADMIN,
                              "--max-connections", "3", "--max-message-size", "100")
    server.start()
    try:
        a, b, c = await server.connect(), await server.connect(), await server.connect()
        with pytest.raises(Exception):  # noqa: B017 (whatever the client library raises for a 503)
            await server.connect()  # the 4th: HTTP 503
        a.send("hello")  # broadcast to b and c (not back to a)
        assert await b.recv() == (b"hello", False)
        assert await c.recv() == (b"hello", False)
        a.send("boom")
        await wait_for(reactor, lambda: logged_errors, what="the filter error")
        logged_errors.clear()
        b.send("x" * 200)  # over --max-message-size: closed with 1009
        assert await b.closed == 1009
        a.sendClose(1000)
        await a.closed
        await wait_for(reactor, lambda: len(server.factory.users) == 1, what="closes")

        code, headers, body = await http_get(reactor, admin_url(server, "/metrics"))
        assert code == 200 and headers["content-type"].startswith("text/plain; version=")
        text = body.decode()
        assert sample(text, "fws_connections_open") == 1
        assert sample(text, "fws_connections_opened_total") == 3
        assert sample(text, "fws_connections_closed_total", code="1000", by="client") == 1
        assert sample(text, "fws_connections_closed_total", code="1009", by="server") == 1
        assert sample(text, "fws_connections_closed_total", code="1000", by="server") is None
        assert sample(text, "fws_handshakes_refused_total", status="503") == 1
        assert sample(text, "fws_limit_hits_total", limit="max_connections") == 1
        assert sample(text, "fws_limit_hits_total", limit="max_message_size") == 1
        assert sample(text, "fws_messages_received_total") == 2  # hello, boom (x*200 never arrived)
        assert sample(text, "fws_received_bytes_total") == 9
        assert sample(text, "fws_broadcasts_total") == 1
        assert sample(text, "fws_broadcast_deliveries_total") == 2
        assert sample(text, "fws_messages_sent_total") == 2
        assert sample(text, "fws_sent_bytes_total") == 2 * (2 + 5)
        boom = {"filter": f"{module}.Boom", "event": "message"}
        broadcast = {"filter": "fws.filters.broadcast_messages.BroadcastMessages",
                     "event": "message"}
        assert sample(text, "fws_filter_seconds_count", **boom) == 2
        assert sample(text, "fws_filter_errors_total", **boom) == 1
        assert sample(text, "fws_filter_seconds_count", **broadcast) == 1  # not after the error
        assert sample(text, "fws_filter_errors_total", **broadcast) == 0
        assert sample(text, "fws_filter_seconds_bucket", le="+Inf", **boom) == 2
        # Everything the docs list is exported (the Redis ones only with Redis, the
        # history ones only with --history: tests/test_history.py), no more.
        assert exported(text) <= documented()
        assert {n for n in documented() - exported(text)} == {
            n for n in documented() if n.startswith(("fws_redis_", "fws_history_"))}
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_async_filters_are_timed_until_they_finish(reactor: Any, tmp_path: Path) -> None:
    module = write_module(tmp_path, (
        "from twisted.internet import reactor\n"
        "from twisted.internet.task import deferLater\n"
        "from fws.filters.base import WebSocketMessageFilter\n"
        "class Slow(WebSocketMessageFilter):\n"
        "    @staticmethod\n"
        "    async def filter(conn, data):\n"
        "        await deferLater(reactor, 0.06, lambda: None)\n"
        "        conn.sendMessage(bytes(data))\n"
    ))
    server = Server.from_argv(reactor, "-f", module, *ADMIN).start()
    try:
        client = await server.connect()
        client.send("one")
        assert await client.recv() == (b"one", False)
        _, _, body = await http_get(reactor, admin_url(server, "/metrics"))
        text = body.decode()
        labels = {"filter": f"{module}.Slow", "event": "message"}
        assert sample(text, "fws_filter_seconds_count", **labels) == 1
        # It took at least the 60 ms it waited: nothing under the 0.05 s bucket.
        assert sample(text, "fws_filter_seconds_bucket", le="0.05", **labels) == 0
        assert sample(text, "fws_filter_seconds_sum", **labels) >= 0.05
    finally:
        await server.stop()


def test_without_metrics_filters_run_unwrapped(reactor: Any) -> None:
    server = Server.from_argv(reactor, "-f", "echo")
    assert server.service.metrics is None and server.service.admin is None
    from fws.filters.echo import Echo

    assert server.factory.pipeline.message[0].func == Echo.filter
    # ... and the WebSocket port is Autobahn's factory itself, no twisted.web in between.
    assert server.service.listener.factory is server.factory


# --- plain HTTP on the WebSocket port ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_static_files_and_websocket_on_one_port(reactor: Any, tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "js").mkdir(parents=True)
    (site / "index.html").write_text("<!doctype html><title>fws</title>")
    (site / "js" / "app.js").write_text("console.log('hi')")
    (tmp_path / "secret.txt").write_text("not served")
    server = Server.from_argv(reactor, "-f", "echo", "--static", str(site)).start()
    try:
        code, headers, body = await http_get(reactor, public_url(server, "/"))
        assert code == 200 and body == b"<!doctype html><title>fws</title>"
        assert headers["content-type"].startswith("text/html")
        code, headers, body = await http_get(reactor, public_url(server, "/js/app.js"))
        assert code == 200 and body == b"console.log('hi')"
        assert "javascript" in headers["content-type"]
        code, _, body = await http_get(reactor, public_url(server, "/../secret.txt"))
        assert code == 404 and b"not served" not in body
        code, _, _ = await http_get(reactor, public_url(server, "/healthz"))
        assert code == 404  # not asked for
        code, _, _ = await http_get(reactor, public_url(server, "/metrics"))
        assert code == 404  # never, unless asked for
        # WebSocket upgrades work on every path, the static ones included, and stay fast.
        for path in ("/", "/js/app.js", "/chat/room?x=1"):
            client = await server.connect(path)
            client.send("hello " + path)
            assert await client.recv() == (f"hello {path}".encode(), False)
            conn = next(iter(server.factory.users.values()))
            assert conn.request.path == path.split("?")[0]
            assert conn._direct, "a connection taken over from twisted.web keeps the direct write"
            client.sendClose(1000)
            await client.closed
            await wait_for(reactor, lambda: not server.factory.users, what="close")
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_public_health_and_metrics_only_when_asked(reactor: Any) -> None:
    server = Server.from_argv(reactor, "-f", "echo", "--public-health", "--public-metrics").start()
    try:
        code, _, body = await http_get(reactor, public_url(server, "/healthz"))
        assert code == 200 and json.loads(body)["status"] == "ok"
        code, _, body = await http_get(reactor, public_url(server, "/readyz"))
        assert code == 200 and json.loads(body)["status"] == "ready"
        client = await server.connect("/healthz")  # a WebSocket may still use that path
        client.send("hi")
        assert await client.recv() == (b"hi", False)
        code, _, body = await http_get(reactor, public_url(server, "/metrics"))
        assert code == 200 and sample(body.decode(), "fws_messages_received_total") == 1
        code, _, _ = await http_get(reactor, public_url(server, "/index.html"))
        assert code == 404  # no --static
    finally:
        await server.stop()


def test_static_directory_must_exist(tmp_path: Path) -> None:
    result = subprocess.run([str(BIN / "fws_server"), "--static", str(tmp_path / "nope")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"fws_server: error: static directory {tmp_path / 'nope'} does not exist\n"


# --- logs ------------------------------------------------------------------------------------


def test_one_info_line_per_connection_open_and_close(processes: list[FwsProcess]) -> None:
    proc = fws(processes, "-f", "echo")
    ws_round_trip(proc.port, "/room/1")
    proc.wait_for_line(" closed by the client: 1000")
    opened = [line for line in proc.stderr if " open from 127.0.0.1 to /room/1" in line]
    closed = [line for line in proc.stderr if " closed by the client: 1000" in line]
    assert len(opened) == 1 and len(closed) == 1
    conn_id = re.search(r"connection (\S+) open", opened[0]).group(1)  # type: ignore[union-attr]
    assert f"connection {conn_id} from 127.0.0.1 closed by the client: 1000, after 1 message " \
        "in" in closed[0]
    assert not any("hello" in line for line in proc.stderr), "messages are never logged"



def test_a_refused_handshake_is_one_line(processes: list[FwsProcess]) -> None:
    """fws's line with the peer, status and reason; none of Autobahn's (it logged two more)."""
    import struct

    from tests.rawws import RawClient, frame

    good, bad = "Origin: https://app.example.com\r\n", "Origin: https://evil.example.net\r\n"
    proc = fws(processes, "-f", "echo", "--allowed-origins", "https://app.example.com",
               "--max-connections", "1")
    held = RawClient(proc.port, extra=good)
    assert held.status == 101
    proc.wait_for_line(" open from 127.0.0.1")
    before = len(proc.stderr)
    for extra, status in ((bad, 403), (good, 503)):
        refused = RawClient(proc.port, extra=extra)
        assert refused.status == status
        assert refused.closed_by_server()
        refused.close()
    # The held connection's close line comes after every line about the refusals.
    held.send(frame(struct.pack("!H", 1000), opcode=8))
    assert held.close_code() == 1000
    held.close()
    proc.wait_for_line(" closed by the client: 1000")
    new = [line for line in proc.stderr[before:] if " closed by the client: 1000" not in line]
    assert len(new) == 2, new
    assert re.search(r"refused connection \S+ from 127\.0\.0\.1: 403 origin not allowed$", new[0])
    assert re.search(r"refused connection \S+ from 127\.0\.0\.1: 503 too many connections$",
                     new[1])


def test_a_refused_token_is_one_line_that_says_why(processes: list[FwsProcess]) -> None:
    """auth_jwt logged its own line and fws another; now fws's one line carries the why."""
    import time

    import jwt

    from tests.rawws import RawClient

    proc = fws(processes, "-f", "auth_jwt", "echo", "--jwt-secret", "s3cret-s3cret-s3cret-s3cret-32by")
    expired = jwt.encode({"sub": "u1", "exp": int(time.time()) - 3600},
                         "s3cret-s3cret-s3cret-s3cret-32by", algorithm="HS256")
    before = len(proc.stderr)
    refused = RawClient(proc.port, extra=f"Authorization: Bearer {expired}\r\n")
    assert refused.status == 401
    refused.close()
    proc.wait_for_line(": 401 invalid token")
    lines = [line for line in proc.stderr[before:] if "refused" in line or "token" in line]
    assert len(lines) == 1, lines
    assert re.search(r"refused connection \S+ from 127\.0\.0\.1: 401 invalid token "
                     r"\(Signature has expired\)$", lines[0]), lines[0]


def test_close_reasons_are_logged_as_text(processes: list[FwsProcess]) -> None:
    import signal
    import struct

    from tests.rawws import RawClient, frame

    proc = fws(processes, "-f", "echo", "--drain-period", "0")
    client = RawClient(proc.port)
    assert client.status == 101
    proc.wait_for_line(" open from 127.0.0.1")
    proc.signal(signal.SIGTERM)
    assert client.close_code() == 1001
    client.send(frame(struct.pack("!H", 1001), opcode=8))
    client.close()
    proc.wait_for_line(" closed by the server: 1001")
    assert proc.wait() == 0
    [line] = [line for line in proc.stderr if " closed by the server: 1001" in line]
    assert line.endswith(" closed by the server: 1001 server shutting down, after 0 messages in")


def test_message_counts_are_singular_for_one(processes: list[FwsProcess]) -> None:
    import struct

    from tests.rawws import RawClient, frame

    proc = fws(processes, "-f", "echo")
    for n in (0, 1, 2):
        client = RawClient(proc.port, f"/{n}")
        assert client.status == 101
        for _ in range(n):
            client.send(frame(b"hi"))
            assert client.read_frame() == (1, b"hi")
        client.send(frame(struct.pack("!H", 1000), opcode=8))
        assert client.close_code() == 1000
        client.close()
    proc.wait_for(lambda: sum(" closed by the client: 1000" in line for line in proc.stderr) == 3,
                  "three close lines")
    endings = sorted(line.rsplit(", ", 1)[1] for line in proc.stderr
                     if " closed by the client: 1000" in line)
    assert endings == ["after 0 messages in", "after 1 message in", "after 2 messages in"]

def test_connection_lines_are_off_below_info(processes: list[FwsProcess]) -> None:
    proc = fws(processes, "-f", "echo", "--log-level", "warn", "--admin",
               f"tcp:{free_port()}:interface=127.0.0.1", wait=False)
    proc.wait_for_port(timeout=10)
    ws_round_trip(proc.port, "/")
    proc.signal(15)
    assert proc.wait() == 0
    assert not any("open from" in line or "closed by" in line for line in proc.lines())


def test_json_logs_carry_fields(processes: list[FwsProcess]) -> None:
    proc = fws(processes, "-f", "echo", "--log-format", "json")
    ws_round_trip(proc.port, "/json")
    proc.wait_for_line('"code": 1000')
    records = [json.loads(line) for line in proc.stderr if line.strip()]
    assert all({"time", "level", "namespace", "message"} <= set(r) for r in records)
    listening = [r for r in records if r["message"].startswith("fws listening on")]
    assert listening and listening[0]["endpoint"] == f"tcp:{proc.port}:interface=127.0.0.1"
    opened = [r for r in records if r.get("path") == "/json"]
    closed = [r for r in records if r.get("code") == 1000]
    assert len(opened) == 1 and opened[0]["level"] == "info" and opened[0]["peer"] == "127.0.0.1"
    assert closed[0]["conn_id"] == opened[0]["conn_id"] and closed[0]["messages_in"] == 1
    assert closed[0]["by"] == "client" and closed[0]["clean"] is True


def test_twistd_logger_writes_json(tmp_path: Path, processes: list[FwsProcess]) -> None:
    port = free_port()
    proc = FwsProcess(["--logger", "fws.logs.json_logger", "--nodaemon", "--pidfile=", "fws",
                       "-p", str(port), "-f", "echo"], cwd=tmp_path, port=port,
                      command=[str(BIN / "twistd")])
    processes.append(proc)
    proc.start()
    records = [json.loads(line) for line in proc.stdout if line.startswith("{")]
    assert any(r["message"].startswith("fws listening on") and r["level"] == "info"
               for r in records)


def test_twistd_refuses_log_format(tmp_path: Path) -> None:
    result = subprocess.run([str(BIN / "twistd"), "--nodaemon", "--pidfile=", "fws",
                             "--log-format", "json"], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    assert "twistd --logger fws.logs.json_logger" in result.stderr
    assert "Traceback" not in result.stderr


# --- --check ---------------------------------------------------------------------------------


def test_check_prints_the_pipeline_and_does_not_listen() -> None:
    port = free_port()
    result = subprocess.run(
        [str(BIN / "fws_server"), "--check", "-p", str(port), "-f",
         "filtered_websocket.filters.stdout_rawdata", "fws.filters.broadcast_messages_by_token",
         "--admin", "tcp:9100:interface=127.0.0.1"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "configuration OK",
        f"listen:  tcp:{port}",
        "admin:   tcp:9100:interface=127.0.0.1",
        "storage: fws.storage_objects.memory",
        f"framing: {framing.DESCRIPTION}",  # compiled (fws._speedups), unless FWS_PURE_PYTHON
        "filters: filtered_websocket.filters.stdout_rawdata "
        "fws.filters.broadcast_messages_by_token",
        "pipeline:",
        "  connect     (nothing)",
        "  data        fws.filters.stdout_rawdata.StdoutRawData",
        "  message     fws.filters.broadcast_messages_by_token.BroadcastMessagesByToken",
        "  disconnect  (nothing)",
        "  consumer    (nothing)",
    ]
    with socket.socket() as s:  # nothing was left listening, nothing is
        s.bind(("0.0.0.0", port))


@pytest.mark.parametrize("argv, error", [
    (["-f", "no_such_filter"], "filter module 'no_such_filter' not found"),
    (["--listen", "tcp:notaport"], "bad endpoint 'tcp:notaport'"),
    (["--admin", "bogus:1"], "bad endpoint 'bogus:1'"),
    (["--max-connections", "x"], "max_connections (command line) must be an integer"),
])
def test_check_fails_with_status_2(argv: list[str], error: str) -> None:
    result = subprocess.run([str(BIN / "fws_server"), "--check", *argv], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("fws_server: error: ") and error in result.stderr
    assert "Traceback" not in result.stderr


def test_twistd_check(tmp_path: Path) -> None:
    result = subprocess.run([str(BIN / "twistd"), "fws", "--check", "-f", "echo"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "  message     fws.filters.echo.Echo" in result.stdout


# --- listening -------------------------------------------------------------------------------


def test_stream_endpoints_get_a_deep_backlog(reactor: Any) -> None:
    from fws.service import DEFAULT_BACKLOG, with_backlog

    assert DEFAULT_BACKLOG == 1024
    assert with_backlog("tcp:9000") == "tcp:9000:backlog=1024"
    assert with_backlog("tcp:9000:backlog=10") == "tcp:9000:backlog=10"
    assert with_backlog("unix:/run/fws.sock") == "unix:/run/fws.sock:backlog=1024"
    assert with_backlog("systemd:domain=INET:index=0") == "systemd:domain=INET:index=0"
    server = Server.from_argv(reactor, "-f", "echo").start()
    try:
        assert server.service.listener.ports[0].backlog == 1024
    finally:
        server.service.stopService()


# --- helpers ---------------------------------------------------------------------------------


def fws(processes: list[FwsProcess], *args: str, wait: bool = True) -> FwsProcess:
    """``fws_server ARGS`` on a free loopback port."""
    proc = FwsProcess([])
    proc.args = ["-p", str(proc.port), "-i", "127.0.0.1", *args]
    processes.append(proc)
    return proc.start(wait=wait)


def ws_round_trip(port: int, path: str) -> None:
    """A blocking raw WebSocket client: one echo round trip, then a clean close (1000)."""
    import struct

    from tests.rawws import RawClient, frame

    client = RawClient(port, path)
    assert client.status == 101
    client.send(frame(b"hello"))
    assert client.read_frame() == (1, b"hello")
    client.send(frame(struct.pack("!H", 1000), opcode=8))
    assert client.close_code() == 1000
    client.close()


