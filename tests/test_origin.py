"""
``--allowed-origins`` and ``--require-origin`` end to end: a real ``fws_server``
on a free loopback port and raw sockets, so that each request carries exactly
the Origin header (or none) the test means.

What is checked is what docs/security.rst promises: a request without an
Origin header (a server, a bot, a health checker) is allowed unless
``--require-origin``; any Origin that is present, an empty one and ``null``
(sandboxed iframes, ``file://`` pages) included, is an origin that
``--allowed-origins`` must list, with HTTP 403 otherwise; fws, not Autobahn,
makes every one of these decisions (Autobahn alone used to answer 400 to an
empty Origin and to ``null``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import FwsProcess, serve
from tests.rawws import RawClient

#: The Origin headers sent: None sends no header at all.
MISSING = None
EMPTY = ""
NULL = "null"
RIGHT = "https://app.example.com"
WILDCARD_RIGHT = "https://chat.example.org"
WRONG = "https://evil.example.net"
WRONG_SCHEME = "http://app.example.com"
FILE = "file://"
MALFORMED = "not an origin"

ALLOWED = ["--allowed-origins", RIGHT, "https://*.example.org"]


def start(*args: str, env: dict[str, str] | None = None) -> FwsProcess:
    return serve("-f", "echo", "--drain-period", "0", *args, env=env)


def status_line(proc: FwsProcess, origin: str | None) -> str:
    """The server's status line for an upgrade request with this Origin header (or none)."""
    client = RawClient(proc.port, extra="" if origin is None else f"Origin: {origin}\r\n")
    try:
        return client.response.split(b"\r\n", 1)[0].decode()
    finally:
        client.close()


@pytest.fixture(scope="module")
def default() -> Iterator[FwsProcess]:
    """No Origin options: every client may connect."""
    proc = start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def allowed() -> Iterator[FwsProcess]:
    proc = start(*ALLOWED)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def allowed_null() -> Iterator[FwsProcess]:
    """``null`` listed explicitly: sandboxed and file:// pages may connect."""
    proc = start("--allowed-origins", RIGHT, "null")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def required() -> Iterator[FwsProcess]:
    proc = start("--require-origin")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def required_and_allowed() -> Iterator[FwsProcess]:
    proc = start("--require-origin", *ALLOWED)
    yield proc
    proc.stop()


OPEN = "HTTP/1.1 101 Switching Protocols"
NOT_ALLOWED = "HTTP/1.1 403 origin not allowed"
REQUIRED = "HTTP/1.1 403 origin required"


@pytest.mark.parametrize("origin", [MISSING, EMPTY, NULL, RIGHT, WRONG, FILE, MALFORMED])
def test_without_options_every_client_connects(default: FwsProcess, origin: str | None) -> None:
    # The old code refused an empty Origin, null, file:// and malformed ones with 400.
    assert status_line(default, origin) == OPEN


@pytest.mark.parametrize(("origin", "expected"), [
    (MISSING, OPEN),  # not a browser (the old code refused it: Autobahn 26 hands fws '')
    (RIGHT, OPEN),
    (WILDCARD_RIGHT, OPEN),
    (RIGHT.upper() + "/", OPEN),
    (WRONG, NOT_ALLOWED),
    (WRONG_SCHEME, NOT_ALLOWED),
    (EMPTY, NOT_ALLOWED),  # the old code: 400, from Autobahn
    (NULL, NOT_ALLOWED),  # the old code: 400, from Autobahn
    (FILE, NOT_ALLOWED),
    (MALFORMED, NOT_ALLOWED),
])
def test_allowed_origins(allowed: FwsProcess, origin: str | None, expected: str) -> None:
    assert status_line(allowed, origin) == expected


@pytest.mark.parametrize(("origin", "expected"), [
    (NULL, OPEN),
    ("NULL", OPEN),
    (RIGHT, OPEN),
    (MISSING, OPEN),
    (EMPTY, NOT_ALLOWED),
    (WRONG, NOT_ALLOWED),
])
def test_null_is_allowed_when_listed(allowed_null: FwsProcess, origin: str | None,
                                     expected: str) -> None:
    assert status_line(allowed_null, origin) == expected


@pytest.mark.parametrize(("origin", "expected"), [
    (MISSING, REQUIRED),
    (EMPTY, REQUIRED),  # browsers never send an empty Origin
    (NULL, OPEN),
    (RIGHT, OPEN),
    (WRONG, OPEN),
])
def test_require_origin(required: FwsProcess, origin: str | None, expected: str) -> None:
    assert status_line(required, origin) == expected


@pytest.mark.parametrize(("origin", "expected"), [
    (MISSING, REQUIRED),
    (EMPTY, REQUIRED),
    (NULL, NOT_ALLOWED),
    (WRONG, NOT_ALLOWED),
    (RIGHT, OPEN),
    (WILDCARD_RIGHT, OPEN),
])
def test_require_origin_with_allowed_origins(required_and_allowed: FwsProcess,
                                             origin: str | None, expected: str) -> None:
    assert status_line(required_and_allowed, origin) == expected


@pytest.mark.parametrize("where", ["environment", "config file"])
def test_require_origin_from_the_environment_and_the_config_file(
        tmp_path: Path, processes: list[FwsProcess], where: str) -> None:
    config = tmp_path / "fws.json"
    config.write_text(json.dumps({"flags": ["require-origin"]}))
    proc = FwsProcess([], env={"FWS_REQUIRE_ORIGIN": "1"} if where == "environment" else None)
    processes.append(proc)  # stopped after the test, pass or fail
    proc.args = ["-p", str(proc.port), "-i", "127.0.0.1", "-f", "echo"]
    if where == "config file":
        proc.args += ["-c", str(config)]
    proc.start()
    assert status_line(proc, MISSING) == REQUIRED
    assert status_line(proc, RIGHT) == OPEN

