"""
The filter-facing API (:mod:`fws.connection`) is what live objects offer, what
the docs describe, and importable without Autobahn or a reactor.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest_twisted

from fws.connection import Connection, Server
from tests.helpers import Server as TestServer

ROOT = Path(__file__).resolve().parent.parent


def members(protocol: type) -> set[str]:
    names = {name for name in vars(protocol) if not name.startswith("_")}
    return names | set(protocol.__annotations__)


@pytest_twisted.ensureDeferred
async def test_live_objects_keep_the_promise(reactor: Any) -> None:
    server = TestServer(reactor, ["fws.filters.echo"]).start()
    try:
        await server.connect()
        [conn] = server.factory.users.values()
        assert isinstance(conn, Connection)
        assert isinstance(server.factory, Server)
        assert isinstance(conn.factory, Server) and conn.users is server.factory.users
        for name in members(Connection):
            assert hasattr(conn, name), name
        for name in members(Server):
            assert hasattr(server.factory, name), name
    finally:
        await server.stop()


def test_the_docs_describe_every_member() -> None:
    """docs/filters.rst, "What a connection offers", names each member of Connection."""
    text = (ROOT / "docs" / "filters.rst").read_text()
    section = text.split("What a connection offers", 1)[1].split("\nSending to many", 1)[0]
    documented = set(re.findall(r"^``([a-z_A-Z]+)", section, re.M))
    assert members(Connection) - {"Payload"} <= documented, members(Connection) - documented


def test_importing_it_imports_neither_autobahn_nor_a_reactor() -> None:
    code = ("import sys, fws.connection; "
            "assert 'autobahn' not in sys.modules, 'autobahn'; "
            "assert 'twisted.internet.reactor' not in sys.modules, 'reactor'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
