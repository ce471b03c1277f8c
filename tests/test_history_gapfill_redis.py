"""
A node fills the gaps its own Redis subscriber outages leave
(fws.storage_objects.redis.RedisHistory): a real redis-server, real fws
nodes and clients. The outage is made deterministic: one raw connection
sends, in one write, ``CLIENT KILL ID`` of the node's subscriber connection
and then the messages, so Redis runs them all before the node can
subscribe again; the node never hears them live.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import pytest_twisted

from fws.storage_objects.redis import APPEND
from tests.helpers import Client, Server
from tests.redis_support import RedisProcess
from tests.test_history import V1, joined
from tests.test_history_channels_redis import PUBSUB, until_conf, warnings  # noqa: F401
from tests.test_history_redis import all_ready, headed, nodes, stop, until_members
from tests.test_redis import wait_for


def _wire(*args: str | bytes | int) -> bytes:
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def subscriber_id(redis: RedisProcess) -> bytes:
    """The id of the one subscriber connection (the node's: the test has none)."""
    with socket.create_connection((redis.host, redis.port), timeout=2) as s:
        s.sendall(_wire("CLIENT", "LIST"))
        data = b""
        while not data.endswith(b"\r\n") or data.count(b"\n") < 2:
            data += s.recv(65536)
    ids = []
    for line in data.split(b"\n")[1:]:
        fields = dict(f.split(b"=", 1) for f in line.split() if b"=" in f)
        if fields.get(b"sub", b"0") != b"0" or fields.get(b"psub", b"0") != b"0":
            ids.append(fields[b"id"])
    assert len(ids) == 1, data
    return ids[0]


def kill_subscriber_then(redis: RedisProcess, commands: list[bytes]) -> None:
    """CLIENT KILL the node's subscriber and run ``commands``, all in one write."""
    wire = _wire("CLIENT", "KILL", "ID", subscriber_id(redis)) + b"".join(commands)
    with socket.create_connection((redis.host, redis.port), timeout=5) as s:
        s.sendall(wire)
        data = b""
        while data.count(b"\r\n") < len(commands) + 1:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    replies = data.split(b"\r\n")[:len(commands) + 1]
    assert replies[0] == b":1" and all(r.startswith(b":") for r in replies), replies


def fcall(channel: str, payload: str) -> bytes:
    return _wire("FCALL", "fws_publish", 1, channel, payload, "fws")


def append(group: str, payload: str, size: int = 100) -> bytes:
    """What RedisHistory.record runs for a text message of ``group`` (sent by no one here)."""
    start = json.dumps(["elsewhere", group, None, False], separators=(",", ":"))[:-1] + ","
    return _wire("EVAL", APPEND, 3, f"fws:hist:{group}", f"fws:histpos:{group}", "fws:bus",
                 size, 300_000, "e0000000", start, "0", payload)


def metrics(server: Server) -> dict[str, float]:
    from fws.metrics import FwsCollector

    return {sample.name: sample.value for family in FwsCollector(server.factory).collect()
            for sample in family.samples}


async def back(reactor: Any, server: Server) -> None:
    """Until the node has subscribed again."""
    redis = server.factory.storage_object.redis
    await wait_for(reactor, lambda: redis.reconnects["subscriber"] >= 1 and redis.ready,
                   what="the subscriber back")


async def offsets_and_bodies(client: Client, count: int) -> list[tuple[int, bytes]]:
    return [(h["offset"], body) for h, body, _ in [await headed(client) for _ in range(count)]]


@pytest_twisted.ensureDeferred
async def test_a_token_groups_messages_missed_while_the_subscriber_was_down_are_filled(
        reactor: Any, redis: RedisProcess) -> None:
    (a,) = servers = nodes(reactor, redis, 1, "--history", "100")
    try:
        await all_ready(reactor, servers)
        sender, plain, v1 = await a.connect(), await a.connect(), await a.connect(protocols=V1)
        for client in (sender, plain, v1):
            await joined(client, "room")
        await until_members(reactor, redis, "room", 3)
        sender.send("m1")
        assert await plain.recv() == (b"m1", False)
        head, _, _ = await headed(v1)
        assert head["offset"] == 1
        kill_subscriber_then(redis, [append("room", f"m{i}") for i in range(2, 7)])
        # No message follows: the check once the subscriber is back finds them.
        await back(reactor, a)
        assert await offsets_and_bodies(v1, 5) == [(i, b"m%d" % i) for i in range(2, 7)]
        assert [await plain.recv() for _ in range(5)] == [(b"m%d" % i, False)
                                                          for i in range(2, 7)]
        # Stored entries name no sender: the sender gets the filled ones too.
        assert [await sender.recv() for _ in range(5)] == [(b"m%d" % i, False)
                                                           for i in range(2, 7)]
        sender.send("m7")
        assert (await headed(v1))[:2] == ({"group": "room", "epoch": head["epoch"],
                                           "offset": 7}, b"m7")
        assert await plain.recv() == (b"m7", False)
        for client in (v1, plain, sender):
            await client.silent(0.1)
        found = metrics(a)
        assert found["fws_history_messages_filled_total"] == 5
        assert found["fws_history_messages_lost_in_gaps_total"] == 0
    finally:
        await stop(servers)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("live_after", [True, False], ids=["a-live-one-after", "none-after"])
async def test_channel_messages_missed_are_filled_exactly_once_in_order(
        reactor: Any, redis: RedisProcess, live_after: bool) -> None:
    """
    With a live one right after the subscriber is back, its gap or the check
    fills what came before it; with none, the check does. Either way each
    once, in order, to fws.v1 and plain clients alike.
    """
    (a,) = servers = nodes(reactor, redis, 1, "--history", "100", filters=(PUBSUB,))
    try:
        await all_ready(reactor, servers)
        await until_conf(reactor, redis)
        plain, v1 = await a.connect(), await a.connect(protocols=V1)
        redis.command("FCALL", "fws_publish", "1", "global", "c1", "fws")
        assert await plain.recv() == (b"c1", False)
        head, _, _ = await headed(v1)
        assert (head["group"], head["offset"]) == ("global", 1)
        kill_subscriber_then(redis, [fcall("global", f"c{i}") for i in range(2, 9)])
        last = 8
        if live_after:
            await back(reactor, a)
            redis.command("FCALL", "fws_publish", "1", "global", "c9", "fws")
            last = 9
        assert await offsets_and_bodies(v1, last - 1) == [(i, b"c%d" % i)
                                                          for i in range(2, last + 1)]
        assert [await plain.recv() for _ in range(last - 1)] == [
            (b"c%d" % i, False) for i in range(2, last + 1)]
        await v1.silent(0.2)
        await plain.silent(0)
        found = metrics(a)
        assert found["fws_history_messages_filled_total"] == 7
        assert found["fws_history_messages_lost_in_gaps_total"] == 0
    finally:
        await stop(servers)


@pytest_twisted.ensureDeferred
async def test_a_gap_larger_than_the_history_delivers_what_is_kept_and_says_what_was_lost(
        reactor: Any, redis: RedisProcess, warnings: list[str]) -> None:  # noqa: F811
    (a,) = servers = nodes(reactor, redis, 1, "--history", "3", filters=(PUBSUB,))
    try:
        await all_ready(reactor, servers)
        await until_conf(reactor, redis)
        plain, v1 = await a.connect(), await a.connect(protocols=V1)
        redis.command("FCALL", "fws_publish", "1", "global", "c1", "fws")
        assert await plain.recv() == (b"c1", False)
        assert (await headed(v1))[0]["offset"] == 1
        kill_subscriber_then(redis, [fcall("global", f"c{i}") for i in range(2, 11)])
        # 2 to 10 missed, 3 kept: the last three, as a resume would give them.
        assert await offsets_and_bodies(v1, 3) == [(8, b"c8"), (9, b"c9"), (10, b"c10")]
        assert [await plain.recv() for _ in range(3)] == [(b"c8", False), (b"c9", False),
                                                          (b"c10", False)]
        redis.command("FCALL", "fws_publish", "1", "global", "c11", "fws")
        assert (await headed(v1))[:2][1] == b"c11"
        assert await plain.recv() == (b"c11", False)
        await v1.silent(0.1)
        said = [line for line in warnings if "no longer kept" in line]
        assert len(said) == 1 and "6 messages of global" in said[0], said
        found = metrics(a)
        assert found["fws_history_messages_filled_total"] == 3
        assert found["fws_history_messages_lost_in_gaps_total"] == 6
    finally:
        await stop(servers)
