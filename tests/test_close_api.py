"""
``web_socket_instance.close`` and what the disconnect chain is told
(``fws.connection.CloseInfo``), over real sockets with real Autobahn clients.

A close code no endpoint may send is refused where the filter can be told
(before: it went on the wire and the client failed the connection); a long
reason is cut at a character's end (before: inside one, and the client failed
the connection over the invalid UTF-8); and CloseInfo tells the same close as
the log line, the code and reason of the side that closed first.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.task import deferLater

from fws.connection import CloseInfo
from tests.helpers import Server, write_module

CLOSER = """
from fws.filters.base import WebSocketDisconnectFilter, WebSocketMessageFilter

LOG = []

class Closer(WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        _, code, reason = bytes(data).decode().split(" ", 2)
        try:
            web_socket_instance.close(int(code), reason)
        except ValueError as e:
            web_socket_instance.sendMessage(f"refused: {e}")

class Bye(WebSocketDisconnectFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        LOG.append(data)
"""


async def closes(reactor: Any, log: list[CloseInfo], count: int) -> None:
    for _ in range(200):
        if len(log) >= count:
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"{len(log)} disconnects, not {count}")


@pytest_twisted.ensureDeferred
async def test_a_code_that_may_not_be_sent_is_refused_and_the_connection_stays(
    reactor: Any, tmp_path: Path
) -> None:
    server = Server(reactor, [write_module(tmp_path, CLOSER)]).start()
    try:
        client = await server.connect()
        for code in (999, 1004, 1005, 1006, 1015, 2000, 5000):
            client.send(f"close {code} no")
            payload, is_binary = await client.recv()
            assert not is_binary
            assert payload.decode().startswith(f"refused: close code {code} may not be sent"), payload
        client.send("close 4001 fine")
        assert await client.closed == 4001
        assert client.factory.close_reason == "fine"
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_long_reason_is_cut_at_a_character_end(reactor: Any, tmp_path: Path) -> None:
    server = Server(reactor, [write_module(tmp_path, CLOSER)]).start()
    try:
        client = await server.connect()
        client.send("close 4000 " + "é" * 62)  # 124 bytes: one too many, cut inside the last é
        assert await client.closed == 4000  # not 1007 (invalid UTF-8) from the client
        assert client.factory.close_reason == "é" * 61
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_close_info_names_the_side_that_closed_first(reactor: Any, tmp_path: Path) -> None:
    name = write_module(tmp_path, CLOSER)
    server = Server(reactor, [name]).start()
    log: list[CloseInfo] = importlib.import_module(name).LOG
    try:
        by_server = await server.connect()
        by_server.send("close 4000 kicked")
        await by_server.closed
        await closes(reactor, log, 1)
        assert log[0] == CloseInfo(4000, "kicked", True)

        by_client = await server.connect()
        by_client.sendClose(3001, "leaving")
        await by_client.closed
        await closes(reactor, log, 2)
        assert log[1] == CloseInfo(3001, "leaving", True)

        no_code = await server.connect()
        no_code.sendClose()  # a close frame without a code
        await no_code.closed
        await closes(reactor, log, 3)
        assert log[2].code == 1005 and log[2].was_clean

        gone = await server.connect()
        gone.transport.abortConnection()  # no closing handshake at all
        await closes(reactor, log, 4)
        assert log[3].code == 1006 and not log[3].was_clean
    finally:
        await server.stop()
