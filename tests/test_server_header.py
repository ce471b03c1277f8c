"""
Every response fws sends says ``Server: fws/VERSION``, once: WebSocket
handshakes and their refusals, static files, health, readiness, metrics and
the admin endpoint, and the bounded HTTP channel's own 400/413/431, over real
sockets to real ``fws_server`` processes. No response names Autobahn or
TwistedWeb (a server's name and version should be one, and fws's is the one a
bug report needs).
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import fws
from fws.versions import SERVER
from tests.processes import BIN, FwsProcess, serve
from tests.rawws import handshake_request
from tests.redis_support import free_port

GOOD_ORIGIN = "https://good.example"


def exchange(port: int, request: bytes) -> tuple[int, list[tuple[str, str]]]:
    """Send ``request`` on a new connection; the response's status and headers (in order)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head = data.partition(b"\r\n\r\n")[0].decode("latin-1")
    assert head.startswith("HTTP/1."), repr(data)
    status_line, *lines = head.split("\r\n")
    headers = [(name.strip(), value.strip()) for name, _, value in
               (line.partition(":") for line in lines)]
    return int(status_line.split()[1]), headers


def get(path: str, extra: str = "", method: str = "GET") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"{extra}\r\n").encode()


def many_headers(n: int) -> str:
    return "".join(f"X-Filler-{i}: {i}\r\n" for i in range(n))


@pytest.fixture(scope="module")
def bare() -> Iterator[tuple[FwsProcess, int]]:
    """A WebSocket port without HTTP (Autobahn alone answers it), and an admin endpoint."""
    admin = free_port()
    proc = serve("-f", "echo", "--allowed-origins", GOOD_ORIGIN, "--max-handshake-headers", "20",
                 "--admin", f"tcp:{admin}:interface=127.0.0.1")
    try:
        proc.wait_for_port(admin)
        yield proc, admin
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def public(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FwsProcess]:
    """A WebSocket port that is also a twisted.web site: static files, health and metrics."""
    root: Path = tmp_path_factory.mktemp("static")
    (root / "index.html").write_text("<p>hello</p>\n")
    (root / "docs").mkdir()
    (root / "docs" / "index.html").write_text("<p>docs</p>\n")
    proc = serve("-f", "echo", "--static", str(root), "--public-health", "--public-metrics",
                 "--allowed-origins", GOOD_ORIGIN, "--max-handshake-headers", "20")
    try:
        yield proc
    finally:
        proc.stop()


def assert_fws_server(status: int, headers: list[tuple[str, str]], expected: int) -> None:
    assert status == expected, headers
    servers = [value for name, value in headers if name.lower() == "server"]
    assert servers == [f"fws/{fws.__version__}"], headers
    for name, value in headers:
        assert "autobahn" not in value.lower() and "twisted" not in value.lower(), (name, value)


#: What fws's wire writes itself, or through Autobahn's 101, on either kind of WebSocket port.
WEBSOCKET_CASES = {
    "handshake 101": (lambda port: handshake_request(port), 101),
    "allowed origin 101": (lambda port: handshake_request(port, extra=f"Origin: {GOOD_ORIGIN}\r\n"),
                           101),
    "too many headers 431": (lambda port: handshake_request(port, extra=many_headers(30)), 431),
    "not HTTP 400": (lambda port: b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
}

#: Refusals Autobahn writes from ``failHandshake`` (fws._wire.protocol passes it
#: ``fws._wire.handshake.refusal_headers``).
REFUSAL_CASES = {
    "origin refused 403": (lambda port: handshake_request(
        port, extra="Origin: https://evil.example\r\n"), 403),
    "no Sec-WebSocket-Key 400 (Autobahn's)": (lambda port: (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n").encode(), 400),
}


@pytest.mark.parametrize("case", sorted(WEBSOCKET_CASES))
def test_websocket_port(bare: tuple[FwsProcess, int], case: str) -> None:
    request, expected = WEBSOCKET_CASES[case]
    proc, _ = bare
    assert_fws_server(*exchange(proc.port, request(proc.port)), expected)


@pytest.mark.parametrize("case", sorted(WEBSOCKET_CASES))
def test_websocket_on_the_http_port(public: FwsProcess, case: str) -> None:
    """The 101 comes from Autobahn after twisted.web's handover, the 400 and 431 from the channel."""
    request, expected = WEBSOCKET_CASES[case]
    assert_fws_server(*exchange(public.port, request(public.port)), expected)


@pytest.mark.parametrize("case", sorted(REFUSAL_CASES))
def test_handshake_refusals(bare: tuple[FwsProcess, int], public: FwsProcess, case: str) -> None:
    request, expected = REFUSAL_CASES[case]
    for port in (bare[0].port, public.port):
        assert_fws_server(*exchange(port, request(port)), expected)


def test_plain_get_on_the_bare_websocket_port(bare: tuple[FwsProcess, int]) -> None:
    """Without ``--static`` a plain GET is Autobahn's refusal (426), never its status page."""
    assert_fws_server(*exchange(bare[0].port, get("/")), 426)


@pytest.mark.parametrize("request_bytes, expected", [
    (get("/"), 200),
    (get("/healthz"), 200),
    (get("/readyz"), 200),
    (get("/metrics"), 200),
    (get("/nothing-here"), 404),
    (get("/metrics", method="HEAD"), 200),
], ids=["root", "healthz", "readyz", "metrics", "404", "HEAD"])
def test_admin_endpoint(bare: tuple[FwsProcess, int], request_bytes: bytes, expected: int) -> None:
    _, admin = bare
    assert_fws_server(*exchange(admin, request_bytes), expected)


@pytest.mark.parametrize("request_bytes, expected", [
    (get("/"), 200),
    (get("/index.html", method="HEAD"), 200),
    (get("/docs"), 301),
    (get("/missing.txt"), 404),
    (get("/.env"), 404),
    (get("/a%00b"), 400),
    (get("/", method="DELETE"), 405),
    (get("/healthz"), 200),
    (get("/readyz"), 200),
    (get("/metrics"), 200),
    (get("/", extra="Content-Length: 5\r\n") + b"hello", 413),
    (get("/", extra=many_headers(30)), 431),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n", 400),
], ids=["index", "HEAD", "redirect", "404", "dotfile", "bad path", "method", "healthz", "readyz",
        "metrics", "body 413", "headers 431", "malformed 400"])
def test_http_on_the_websocket_port(public: FwsProcess, request_bytes: bytes,
                                    expected: int) -> None:
    assert_fws_server(*exchange(public.port, request_bytes), expected)


def test_not_modified(public: FwsProcess) -> None:
    _, headers = exchange(public.port, get("/"))
    etag = dict((name.lower(), value) for name, value in headers)["etag"]
    assert_fws_server(*exchange(public.port, get("/", extra=f"If-None-Match: {etag}\r\n")), 304)


def test_the_name_is_what_version_prints(bare: tuple[FwsProcess, int]) -> None:
    """One source of truth: ``fws_server --version``'s first line is what ``Server:`` says."""
    printed = subprocess.run([str(BIN / "fws_server"), "--version"], capture_output=True,
                             text=True, timeout=60, check=True).stdout.splitlines()[0]
    name, version = printed.split()
    _, headers = exchange(bare[1], get("/healthz"))
    assert [v for n, v in headers if n.lower() == "server"] == [f"{name}/{version}"] == [SERVER]
