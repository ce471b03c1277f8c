"""
The opening handshake against a hostile client (issue 14): ``--max-handshake-size``
and ``--max-handshake-headers`` cap what a request may hold before its end of
headers (HTTP 431 over them, 400 for what cannot be HTTP, the connection closed,
one log line), and ``--open-handshake-timeout`` closes a client that does not
finish its request in time, whether the port is a bare WebSocket server or also
speaks HTTP (``--static DIR``, ``--public-health``), where idle keep-alive
connections are bounded as well.

Real ``fws_server`` processes on free loopback ports, spoken to over raw
sockets, so that each request is exactly the bytes the test means.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import FwsProcess, serve
from tests.rawws import frame, handshake_request

MODES = ("plain", "static", "health")

#: What Chrome sends to open a WebSocket, cookies and all (about 1.5 KB, 14 headers).
BROWSER_HEADERS = (
    "Connection: Upgrade\r\n"
    "Pragma: no-cache\r\n"
    "Cache-Control: no-cache\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36\r\n"
    "Upgrade: websocket\r\n"
    "Origin: http://127.0.0.1\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "Accept-Encoding: gzip, deflate, br, zstd\r\n"
    "Accept-Language: en-GB,en-US;q=0.9,en;q=0.8,fr;q=0.7,de;q=0.6\r\n"
    "Cookie: " + "; ".join(f"c{i}={'v' * 40}" for i in range(24)) + "\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
)


def start(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> FwsProcess:
    return serve("-f", "echo", "--drain-period", "0", *args, env=env, cwd=cwd)


@pytest.fixture(scope="module", params=MODES)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[FwsProcess]:
    """One server per mode, with a 1 s open handshake timeout."""
    extra: list[str] = []
    if request.param == "static":
        root = tmp_path_factory.mktemp("static")
        (root / "index.html").write_text("<!doctype html><title>fws</title>")
        extra = ["--static", str(root)]
    elif request.param == "health":
        extra = ["--public-health"]
    proc = start("--open-handshake-timeout", "1", *extra)
    proc.mode = request.param  # type: ignore[attr-defined]
    yield proc
    proc.stop()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return sock


def send_until_answered(sock: socket.socket, data: bytes, chunk: int = 4096) -> None:
    """Send ``data`` in pieces, stopping early once the server has answered or closed."""
    for i in range(0, len(data), chunk):
        readable, _, _ = select.select([sock], [], [], 0)
        if readable:
            return
        try:
            sock.sendall(data[i:i + chunk])
        except OSError:  # the server closed: what it answered is still to be read
            return


def read_all(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, bool]:
    """``(what the server sent, whether it closed)`` within ``timeout`` seconds."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return data, False
    except OSError:  # reset: closed all the same
        pass
    return data, True


def status_of(data: bytes) -> int:
    if not data.startswith(b"HTTP/1."):
        return 0
    return int(data.split(b" ", 2)[1])


def refusal(port: int, request: bytes) -> tuple[int, bool]:
    """``(status, closed)`` for ``request``, sent as a hostile client would."""
    with connect(port) as sock:
        send_until_answered(sock, request)
        data, closed = read_all(sock)
    return status_of(data), closed


def upgrade(port: int, extra: str = "") -> tuple[int, socket.socket]:
    sock = connect(port)
    sock.sendall(handshake_request(port, extra=extra))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return status_of(data), sock


def headers(n: int) -> str:
    """``n`` headers in all, counting the five of an upgrade request."""
    return "".join(f"X-Header-{i}: {i}\r\n" for i in range(n - 5))


def wait_closed(sock: socket.socket, within: float) -> float:
    """Seconds until the server closed ``sock`` (fails after ``within``)."""
    began = time.monotonic()
    data, closed = read_all(sock, within)
    assert closed, f"still open after {within} s (got {data[:80]!r})"
    return time.monotonic() - began


def refusals(proc: FwsProcess, status: int) -> int:
    return sum(1 for line in proc.lines() if "refused" in line and f" {status} " in line)


# --- size and count -------------------------------------------------------------------------


def test_long_header_line_is_431_and_closed(server: FwsProcess) -> None:
    before = refusals(server, 431)
    request = handshake_request(server.port, extra=f"X-Big: {'a' * 100_000}\r\n")
    assert refusal(server.port, request) == (431, True)
    server.wait_for(lambda: refusals(server, 431) == before + 1, "one log line for the 431")
    time.sleep(0.2)
    assert refusals(server, 431) == before + 1, "\n".join(server.lines())


def test_header_line_that_never_ends_is_431(server: FwsProcess) -> None:
    """No end of line, no end of headers: refused once over the size, not buffered."""
    request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000
    assert refusal(server.port, request) == (431, True)


def test_101_headers_are_431(server: FwsProcess) -> None:
    status, sock = upgrade(server.port, headers(101))
    with sock:
        assert status == 431
        assert wait_closed(sock, 5) < 5


def test_100_headers_are_fine(server: FwsProcess) -> None:
    status, sock = upgrade(server.port, headers(100))
    with sock:
        assert status == 101


def test_request_over_the_size_in_small_headers_is_431(server: FwsProcess) -> None:
    """Under the count, every line short, but 17 KB in all (more than 16384 bytes)."""
    extra = "".join(f"X-H{i}: {'b' * 200}\r\n" for i in range(85))
    status, sock = upgrade(server.port, extra)
    with sock:
        assert status == 431


def test_request_line_that_is_not_http_is_400(server: FwsProcess) -> None:
    """Answered when the line ends, not after the timeout (nor as 431)."""
    with connect(server.port) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00 hello\r\n")
        data, closed = read_all(sock, 0.8)
    assert status_of(data) == 400 and closed


def test_browser_handshake_still_works(server: FwsProcess) -> None:
    with connect(server.port) as sock:
        sock.sendall(f"GET /chat?room=1 HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                     f"{BROWSER_HEADERS}\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        assert status_of(data) == 101
        sock.sendall(frame(b"hi"))
        sock.settimeout(5)
        rest = data.partition(b"\r\n\r\n")[2]
        while len(rest) < 4:
            rest += sock.recv(65536)
        assert rest[:4] == b"\x81\x02hi"


# --- the timeout ------------------------------------------------------------------------------


def test_silent_client_is_closed_after_the_timeout(server: FwsProcess) -> None:
    with connect(server.port) as sock:
        assert wait_closed(sock, 4) < 3


def test_partial_request_is_closed_after_the_timeout(server: FwsProcess) -> None:
    with connect(server.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert wait_closed(sock, 4) < 3


def test_dripping_request_is_closed_after_the_timeout(server: FwsProcess) -> None:
    """One byte every 50 ms: each read is new data, yet the whole request has 1 s."""
    with connect(server.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        began = time.monotonic()
        closed = False
        while time.monotonic() - began < 4:
            try:
                sock.sendall(b"a")
            except OSError:
                closed = True
                break
            readable, _, _ = select.select([sock], [], [], 0.05)
            if readable:
                _, closed = read_all(sock, 1)
                if closed:
                    break
        assert closed, "a dripping client was never closed"
        assert time.monotonic() - began < 3


def test_idle_keep_alive_is_closed(server: FwsProcess) -> None:
    if server.mode == "plain":  # type: ignore[attr-defined]
        pytest.skip("a bare WebSocket port answers no HTTP request to keep alive")
    path = "/healthz" if server.mode == "health" else "/"  # type: ignore[attr-defined]
    with connect(server.port) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        sock.settimeout(5)
        data = sock.recv(65536)
        assert status_of(data) == 200
        assert wait_closed(sock, 4) < 3


def test_websocket_outlives_the_handshake_timeout(server: FwsProcess) -> None:
    """Once open, the HTTP side's timers no longer touch the connection."""
    status, sock = upgrade(server.port)
    with sock:
        assert status == 101
        time.sleep(2.2)
        sock.sendall(frame(b"still here"))
        sock.settimeout(5)
        data = b""
        while len(data) < 12:
            chunk = sock.recv(65536)
            assert chunk, "closed"
            data += chunk
        assert data[2:12] == b"still here"


def test_size_cap_closes_a_dripping_request_before_the_timeout() -> None:
    proc = start("--max-handshake-size", "1024")
    try:
        with connect(proc.port) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 960)
            began = time.monotonic()
            data, closed = b"", False
            while time.monotonic() - began < 5:
                try:
                    sock.sendall(b"a")
                except OSError:
                    break
                readable, _, _ = select.select([sock], [], [], 0.05)
                if readable:
                    data, closed = read_all(sock, 1)
                    break
            assert status_of(data) == 431 and closed
            assert time.monotonic() - began < 4  # not the 10 s timeout
    finally:
        proc.stop()


# --- memory -----------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_unfinished_headers_do_not_grow_memory() -> None:
    """
    50 clients hold 15 KB of unfinished headers each (under the cap: kept), then
    push on to 256 KB each: refused at 16 KB, so the server holds no more.
    """
    proc = start()
    socks: list[socket.socket] = []
    try:
        assert proc.proc is not None
        pid = proc.proc.pid
        time.sleep(0.3)
        before = rss_kib(pid)
        head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
        for _ in range(50):
            sock = connect(proc.port)
            sock.sendall(head + b"a" * (15_000 - len(head)))
            socks.append(sock)
        time.sleep(0.5)
        held = rss_kib(pid) - before
        for sock in socks:
            send_until_answered(sock, b"a" * 256_000, chunk=16_384)
        time.sleep(0.5)
        grown = rss_kib(pid) - before
        assert held < 8_000, f"{held} KiB for 50 x 15 KB"
        assert grown < 8_000, f"RSS grew by {grown} KiB"
        assert proc.proc.poll() is None
    finally:
        for sock in socks:
            sock.close()
        proc.stop()


# --- spellings --------------------------------------------------------------------------------


def assert_2048_bytes_and_10_headers(proc: FwsProcess) -> None:
    """The limits set by the spelling under test are in force (and are not the defaults)."""
    try:
        for extra, expected in ((f"X-Big: {'a' * 2100}\r\n", 431), (headers(11), 431),
                                (headers(10), 101)):
            status, sock = upgrade(proc.port, extra)
            sock.close()
            assert status == expected, (extra[:20], status)
    finally:
        proc.stop()


def test_env_vars_set_the_limits() -> None:
    assert_2048_bytes_and_10_headers(
        start(env={"FWS_MAX_HANDSHAKE_SIZE": "2048", "FWS_MAX_HANDSHAKE_HEADERS": "10"}))


def test_config_file_sets_the_limits(tmp_path: Path) -> None:
    config = tmp_path / "fws.json"
    config.write_text(json.dumps({"max-handshake-size": 2048, "max_handshake_headers": 10}))
    assert_2048_bytes_and_10_headers(start("-c", str(config), "--public-health"))


def test_help_shows_the_options() -> None:
    import subprocess

    from tests.processes import BIN

    out = subprocess.run([str(BIN / "fws_server"), "-h"], capture_output=True, text=True,
                         timeout=30).stdout
    assert "--max-handshake-size" in out and "--max-handshake-headers" in out
