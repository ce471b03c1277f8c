"""
The 2014 storage read, ``storage_object[key]``, in a 2014-style filter module:
it works on the memory storage object (fws_server processes, real WebSocket
clients); on Redis storage, which cannot answer it without waiting, ``--check``
(and startup) refuse the module with one line saying what to write instead, a
read that gets past that fails with the same words, and what that line says to
write works, over Redis and in memory alike.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from websockets.sync.client import ClientConnection, connect

from fws.config import resolve
from fws.storage_objects import SUBSCRIPT_FIX, Members
from tests.helpers import Server, write_module
from tests.processes import BIN, FwsProcess
from tests.redis_support import RedisProcess
from tests.test_redis import ready, wait_for

#: The seed's broadcast_messages_by_token, as a 2014 user module would copy it
#: (in Python 3: the token decoded, the reply encoded), reading storage_object[key].
OLD_CHAT = r'''
import re

from filtered_websocket.filters.base import WebSocketDisconnectFilter, WebSocketMessageFilter


class TokenMessageFilter(WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance, msg):
        token = re.compile(b"token:([^\s]*)").search(msg)
        if token is not None:
            web_socket_instance.token = token.group(1).decode()
            web_socket_instance.storage_object.add(web_socket_instance.token, web_socket_instance.id)
            web_socket_instance.sendMessage(b"registered: " + token.group(1))
        elif web_socket_instance.token is not None:
            for _id, user in web_socket_instance.users.items():
                group = web_socket_instance.storage_object[web_socket_instance.token]
                if _id != web_socket_instance.id and _id in group:
                    user.sendMessage(msg)


class TokenDisconnectFilter(WebSocketDisconnectFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        if web_socket_instance.token:
            web_socket_instance.storage_object.remove(web_socket_instance.token, web_socket_instance.id)
'''

#: The same filter as the refusal says to write it: async def, awaiting get(); its own
#: attribute for the room, since ``token`` is None by the time the disconnect chain runs.
NEW_CHAT = r'''
import re

from fws import WebSocketDisconnectFilter, WebSocketMessageFilter


class TokenMessageFilter(WebSocketMessageFilter):
    @classmethod
    async def filter(cls, web_socket_instance, msg):
        token = re.compile(b"token:([^\s]*)").search(msg)
        room = getattr(web_socket_instance, "room", None)
        if token is not None:
            web_socket_instance.room = token.group(1).decode()
            await web_socket_instance.storage_object.add(web_socket_instance.room, web_socket_instance.id)
            web_socket_instance.sendMessage(b"registered: " + token.group(1))
        elif room is not None:
            members = await web_socket_instance.storage_object.get(room)
            for _id, user in web_socket_instance.users.items():
                if _id != web_socket_instance.id and _id in members:
                    user.sendMessage(bytes(msg))


class TokenDisconnectFilter(WebSocketDisconnectFilter):
    @classmethod
    async def filter(cls, web_socket_instance, data):
        # The server has left its token group by now (token is None): keep your own key.
        room = getattr(web_socket_instance, "room", None)
        if room is not None:
            await web_socket_instance.storage_object.remove(room, web_socket_instance.id)
'''

#: A read the load-time check cannot see (the storage object under another name).
HIDDEN_READ = '''
from fws import WebSocketMessageFilter


class Reads(WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance, msg):
        store = web_socket_instance.storage_object
        web_socket_instance.sendMessage(repr(sorted(store["room"])))
'''

LINE = OLD_CHAT.splitlines().index(next(
    line for line in OLD_CHAT.splitlines() if "storage_object[" in line)) + 1


def module_in(tmp_path: Path, name: str, source: str) -> Path:
    (tmp_path / f"{name}.py").write_text(source)
    return tmp_path


def chat_round(url: str) -> None:
    """Two users in group room, one in other: a message reaches the other room member only."""
    with connect(url) as a, connect(url) as b, connect(url) as c:
        for client, group in ((a, "room"), (b, "room"), (c, "other")):
            client.send(f"token:{group}")
            assert client.recv(timeout=5) == f"registered: {group}"
        a.send("hello room")
        assert b.recv(timeout=5) == "hello room"
        b.send("hello back")
        assert a.recv(timeout=5) == "hello back"
        for quiet in (a, c):
            assert_silent(quiet)


def assert_silent(client: ClientConnection) -> None:
    with pytest.raises(TimeoutError):
        client.recv(timeout=0.3)


def serve(tmp_path: Path, processes: list[FwsProcess], *args: str,
          env: dict[str, str] | None = None) -> FwsProcess:
    proc = FwsProcess([], cwd=tmp_path, env=env)
    proc.args = ["-p", str(proc.port), "-i", "127.0.0.1", *args]
    processes.append(proc)
    return proc.start()


def test_members_find_str_as_its_utf8_bytes() -> None:
    members = Members({b"node-1", "été".encode()})
    assert "node-1" in members and b"node-1" in members and bytearray(b"node-1") in members
    assert "été" in members and "node-2" not in members and 1 not in members
    assert members == {b"node-1", "été".encode()}


def test_a_2014_filter_reading_storage_object_by_key_works_in_memory(
    tmp_path: Path, processes: list[FwsProcess]
) -> None:
    module_in(tmp_path, "oldchat", OLD_CHAT)
    check = subprocess.run([str(BIN / "fws_server"), "--check", "-f", "oldchat"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    proc = serve(tmp_path, processes, "-f", "oldchat")
    chat_round(proc.url)
    assert not [line for line in proc.stderr if "Traceback" in line or "failed on" in line]


def test_the_2014_default_storage_name_selects_memory(tmp_path: Path,
                                                      processes: list[FwsProcess]) -> None:
    module_in(tmp_path, "oldchat", OLD_CHAT)
    proc = serve(tmp_path, processes, "-f", "oldchat",
                 env={"STORAGE_OBJECT_MODULE": "filtered_websocket.storage_objects.default"})
    chat_round(proc.url)


def test_check_refuses_the_2014_read_on_redis_with_what_to_write(tmp_path: Path) -> None:
    module_in(tmp_path, "oldchat", OLD_CHAT)
    for args, env in (
        (["--check", "-f", "oldchat", "--storage", "fws.storage_objects.redis"], {}),
        (["-p", "0", "-f", "oldchat"],
         {"STORAGE_OBJECT_MODULE": "filtered_websocket.storage_objects.redis"}),
    ):
        result = subprocess.run([str(BIN / "fws_server"), *args], cwd=tmp_path, text=True,
                                capture_output=True, timeout=60, env={**_env(), **env})
        assert result.returncode == 2, result.stderr
        assert result.stderr == (
            f"fws_server: error: filter module 'oldchat': oldchat.py, line {LINE} reads "
            "storage_object[...], which fws.storage_objects.redis cannot answer at once: "
            f"{SUBSCRIPT_FIX}\n")
    # The upgrade guide shows that very line.
    guide = (Path(__file__).resolve().parent.parent / "docs" / "upgrading.rst").read_text()
    assert result.stderr.strip() in [line.strip() for line in guide.splitlines()]


def test_what_the_refusal_says_to_write_works_on_redis(
    tmp_path: Path, redis: RedisProcess, processes: list[FwsProcess]
) -> None:
    module_in(tmp_path, "newchat", NEW_CHAT)
    node = serve(tmp_path, processes, "-f", "newchat", "--storage", "fws.storage_objects.redis",
                 "--redis-host", "127.0.0.1", "--redis-port", str(redis.port))
    node.wait_for_line("Redis ready at")
    chat_round(node.url)
    node.wait_for(lambda: redis.command("EXISTS", "fws:room") == b":0",
                  "the disconnect filter to empty the set")
    assert not [line for line in node.stderr if "Traceback" in line]


def test_what_the_refusal_says_to_write_works_in_memory(tmp_path: Path,
                                                         processes: list[FwsProcess]) -> None:
    module_in(tmp_path, "newchat", NEW_CHAT)
    chat_round(serve(tmp_path, processes, "-f", "newchat").url)


@pytest_twisted.ensureDeferred
async def test_a_read_the_check_cannot_see_says_what_to_write(
    reactor: Any, tmp_path: Path, redis: RedisProcess, logged_errors: list[dict[str, Any]]
) -> None:
    config = resolve(["--storage", "fws.storage_objects.redis", "--redis_port", str(redis.port),
                      "--redis-host", "127.0.0.1"], environ={})
    assert config is not None
    name = write_module(tmp_path, HIDDEN_READ)
    server = Server(reactor, [name], storage=config.storage,
                    storage_options=config.storage_options).start()
    try:
        await wait_for(reactor, lambda: ready(server), what="redis ready")
        client = await server.connect()
        client.send("hi")
        await wait_for(reactor, lambda: bool(logged_errors), what="the failure to be logged")
        await client.silent()
    finally:
        await server.stop()
    [event] = logged_errors
    assert event["log_failure"].check(TypeError)
    assert str(event["log_failure"].value) == (
        f"storage_object['room'] cannot be read from Redis without waiting: {SUBSCRIPT_FIX}")
    logged_errors.clear()


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("FWS_", "STORAGE_OBJECT"))}


#: Says who storage holds under "room" (the ids of its members, as the 2014 filter keeps them).
WHO = '''
from fws import WebSocketMessageFilter


class Who(WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance, msg):
        if bytes(msg) == b"who":
            members = web_socket_instance.storage_object["room"]
            web_socket_instance.sendMessage(repr(sorted(m.decode() for m in members)))
'''


def test_the_2014_disconnect_filter_still_finds_its_token_and_cleans_up(
    tmp_path: Path, processes: list[FwsProcess]
) -> None:
    """
    The server leaves the connection's group before the disconnect chain, but
    ``token`` still names it there: the 2014 filter removes the id it stored
    under it (before, token was None by then and closed ids piled up in storage).
    """
    module_in(tmp_path, "oldchat", OLD_CHAT)
    module_in(tmp_path, "who", WHO)
    proc = serve(tmp_path, processes, "-f", "oldchat", "who")
    chat_round(proc.url)
    with connect(proc.url) as probe:
        for _ in range(50):
            probe.send("who")
            if probe.recv(timeout=5) == "[]":
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the ids of closed connections stayed in storage")
