"""
Pub/sub channels kept on Redis (``FCALL fws_publish``, fws.storage_objects.redis):
two nodes in process sharing a private redis-server, real Autobahn clients,
the publisher a plain Redis client as the user's backend would be; and the
Redis-compatible glob matcher that decides which channels a node serves,
held to a real redis-server's PSUBSCRIBE.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, globalLogPublisher

from fws.storage_objects.redis import glob_match
from tests.helpers import write_module
from tests.redis_support import RedisProcess
from tests.test_history import BY_TOKEN, V1, resume_path
from tests.test_history_redis import all_ready, headed, nodes, stop
from tests.test_redis import ready, wait_for

PUBSUB = "fws.filters.broadcast_pubsub"


def fcall(redis: RedisProcess, channel: str, payload: str | bytes, *prefix: str) -> bytes:
    """What the user's backend runs: ``FCALL fws_publish 1 <channel> <payload> [prefix]``."""
    return redis.command("FCALL", "fws_publish", "1", channel, payload, *prefix)


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """The text of every warning logged while the test runs."""
    from twisted.logger import formatEvent

    lines: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_level") == LogLevel.warn:
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    try:
        yield lines
    finally:
        globalLogPublisher.removeObserver(observer)


async def until_conf(reactor: Any, redis: RedisProcess) -> None:
    """Until a node has told fws_publish what to keep (on its connect)."""
    await wait_for(reactor, lambda: redis.command("EXISTS", "fws:histconf") == b":1",
                   what="fws:histconf")


# --- the glob matcher ---------------------------------------------------------------------

GLOB_CASES = [
    ("news.*", "news.sport", True), ("news.*", "news.", True), ("news.*", "news", False),
    ("*", "", False), ("", "", True),  # (Redis: "*" does not match an empty name)
    ("a", "", False), ("*a", "bba", True),
    ("h?llo", "hello", True), ("h?llo", "hllo", False),
    ("h[ae]llo", "hallo", True), ("h[ae]llo", "hillo", False),
    ("h[^e]llo", "hallo", True), ("h[^e]llo", "hello", False),
    ("h[!e]llo", "h!llo", True), ("h[!e]llo", "hallo", False),  # "!" is no negation in Redis
    ("h[a-b]llo", "hbllo", True), ("h[b-a]llo", "hallo", True),  # reversed ranges too
    ("h[a-b]llo", "hcllo", False),
    (r"h\*llo", "h*llo", True), (r"h\*llo", "hello", False),
    (r"h[\]]llo", "h]llo", True), (r"h[\-]llo", "h-llo", True),
    ("a[bc", "ab", True), ("a[bc", "ac", True), ("a[bc", "abc", False),  # unterminated
    ("a[]b", "ab", False), ("a[]b", "a]b", False),
    ("a\\", "a\\", True), ("**b", "aab", True), ("a*b*c", "axxbyyc", True),
    ("a*b*c", "axxbyy", False), ("[a-c]*", "b-anything", True),
]


@pytest.mark.parametrize(("pattern", "name", "expected"), GLOB_CASES)
def test_glob_match_known_cases(pattern: str, name: str, expected: bool) -> None:
    assert glob_match(pattern.encode(), name.encode()) is expected


def test_glob_match_agrees_with_redis_psubscribe(redis: RedisProcess) -> None:
    """Every case above, and more names, as a real redis-server's PSUBSCRIBE decides them."""
    import fnmatch

    names = sorted({name for _, name, _ in GLOB_CASES if name} | {
        "news.sport", "h]llo", "h^llo", "a-b", "news.a.b", "\\", "abc", "hzllo", "h\\llo"})
    disagree_with_fnmatch = 0
    for pattern in sorted({pattern for pattern, _, _ in GLOB_CASES if pattern}):
        with socket.create_connection((redis.host, redis.port), timeout=2) as sub:
            p = pattern.encode()
            sub.sendall(b"*2\r\n$10\r\nPSUBSCRIBE\r\n$%d\r\n%b\r\n" % (len(p), p))
            confirmed = b""
            while not confirmed.endswith(b":1\r\n"):
                confirmed += sub.recv(4096)
            for name in names:
                delivered = redis.publish(name, "x") == 1
                assert glob_match(p, name.encode()) is delivered, (pattern, name)
                disagree_with_fnmatch += fnmatch.fnmatchcase(name, pattern) != delivered
    assert disagree_with_fnmatch  # (why fnmatch had to go)


# --- kept channels on two nodes -------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_two_nodes_get_fcall_messages_with_the_same_offsets_in_order(
        reactor: Any, redis: RedisProcess, warnings: list[str]) -> None:
    a, b = servers = nodes(reactor, redis, 2, "--history", "100", filters=(PUBSUB,))
    try:
        await all_ready(reactor, servers)
        await until_conf(reactor, redis)
        readers = [await a.connect(protocols=V1), await b.connect(protocols=V1)]
        plain = [await a.connect(), await b.connect()]
        payloads: list[str | bytes] = [f"m{i}" for i in range(1, 21)]
        payloads[4] = b"\xff\x00binary"
        for n, payload in enumerate(payloads, 1):
            assert fcall(redis, "global", payload) == b":%d" % n
        seen = []
        for reader in readers:
            got = [await headed(reader) for _ in payloads]
            assert [h["offset"] for h, _, _ in got] == list(range(1, 21))
            assert {h["group"] for h, _, _ in got} == {"global"}
            assert got[4][1:] == (b"\xff\x00binary", True)  # binary stays binary
            assert got[0][1:] == (b"m1", False)
            seen.append(got)
            await reader.silent(0)
        assert seen[0] == seen[1]  # one epoch, one order, on both nodes
        assert seen[0][0][0]["epoch"]
        for client in plain:  # plain clients: exactly today's frames
            got = [await client.recv() for _ in payloads]
            assert got == [(p.encode(), False) if isinstance(p, str) else (p, True)
                           for p in payloads]
            await client.silent(0)
        assert redis.command("XLEN", "fws:chist:global") == b":20"
        assert not [line for line in warnings if "PUBLISH" in line]
    finally:
        await stop(servers)


@pytest_twisted.ensureDeferred
async def test_resume_on_the_other_node_replays_missed_channel_messages(
        reactor: Any, redis: RedisProcess) -> None:
    a, b = servers = nodes(reactor, redis, 2, "--history", "100", filters=(PUBSUB,))
    try:
        await all_ready(reactor, servers)
        await until_conf(reactor, redis)
        reader = await a.connect(protocols=V1)
        fcall(redis, "global", "before")
        head, body, _ = await headed(reader)
        assert (head["offset"], body) == (1, b"before")
        reader.sendClose(1000)
        await reader.closed
        for text in ("lost-1", "lost-2", "lost-3"):
            fcall(redis, "global", text)
        await deferLater(reactor, 0.05, lambda: None)
        back = await b.connect(resume_path({"global": [head["epoch"], 1]}), protocols=V1)
        got = [await headed(back) for _ in range(3)]
        assert [(h["offset"], body) for h, body, _ in got] == [
            (2, b"lost-1"), (3, b"lost-2"), (4, b"lost-3")]
        assert json.loads((await back.recv())[0]) == {
            "group": "global", "recovered": True, "epoch": head["epoch"], "offset": 4}
        fcall(redis, "global", "live")
        head, body, _ = await headed(back)
        assert (head["offset"], body) == (5, b"live")
        await back.silent(0.1)
        assert b.factory.history.kept == 0  # kept by the publisher, not by a node's writes
    finally:
        await stop(servers)


@pytest_twisted.ensureDeferred
async def test_retention_exceeded_and_a_redis_restart_are_not_recovered(
        reactor: Any, redis: RedisProcess) -> None:
    a, b = servers = nodes(reactor, redis, 2, "--history", "3", filters=(PUBSUB,))
    try:
        await all_ready(reactor, servers)
        await until_conf(reactor, redis)
        probe = await a.connect(protocols=V1)
        for i in range(1, 9):
            fcall(redis, "global", f"m{i}")
        heads = [(await headed(probe))[0] for _ in range(8)]
        assert [h["offset"] for h in heads] == list(range(1, 9))
        epoch = heads[0]["epoch"]
        late = await b.connect(resume_path({"global": [epoch, 2]}), protocols=V1)
        assert json.loads((await late.recv())[0]) == {
            "group": "global", "recovered": False, "epoch": epoch, "offset": 8}
        inside = await b.connect(resume_path({"global": [epoch, 5]}), protocols=V1)
        assert [(await headed(inside))[0]["offset"] for _ in range(3)] == [6, 7, 8]
        assert json.loads((await inside.recv())[0])["recovered"] is True
        # Redis restarted without persistence: functions and history are gone; the
        # nodes load the library again on reconnect, and a new epoch begins.
        redis.kill()
        redis.start()
        await deferLater(reactor, 0.5, lambda: None)
        await all_ready(reactor, servers)
        await wait_for(reactor, lambda: fcall(redis, "global", "after") == b":1",
                       what="fws_publish loaded again")
        head, body, _ = await headed(probe)
        assert body == b"after" and head["epoch"] != epoch and head["offset"] == 1
        again = await a.connect(resume_path({"global": [epoch, 8]}), protocols=V1)
        assert json.loads((await again.recv())[0]) == {
            "group": "global", "recovered": False, "epoch": head["epoch"], "offset": 1}
    finally:
        await stop(servers)


@pytest_twisted.ensureDeferred
async def test_plain_publish_has_null_offsets_and_one_warning_per_channel(
        reactor: Any, redis: RedisProcess, warnings: list[str]) -> None:
    [server] = servers = nodes(reactor, redis, 1, "--history", "10", "--redis-channels",
                               "global", "news", filters=(PUBSUB,))
    try:
        await all_ready(reactor, servers)
        reader, plain = await server.connect(protocols=V1), await server.connect()
        for channel, text in (("global", "g1"), ("news", "n1"), ("global", "g2"),
                              ("news", "n2")):
            assert redis.publish(channel, text) == 1
            head, body, _ = await headed(reader)
            assert head == {"group": channel, "epoch": None, "offset": None}
            assert body == text.encode()
            assert await plain.recv() == (text.encode(), False)
        said = [line for line in warnings if "plain PUBLISH" in line]
        assert len(said) == 2
        assert "FCALL fws_publish 1 global <payload> fws" in said[0] and "news" in said[1]
    finally:
        await stop(servers)


@pytest_twisted.ensureDeferred
async def test_glob_pattern_channels_are_kept(reactor: Any, redis: RedisProcess) -> None:
    a, b = servers = nodes(reactor, redis, 2, "--history", "10", "--redis-channels", "news.*",
                           filters=(PUBSUB,))
    try:
        await all_ready(reactor, servers)
        await until_conf(reactor, redis)
        readers = [await a.connect(protocols=V1), await b.connect(protocols=V1)]
        assert fcall(redis, "news.sport", "goal") == b":1"
        assert fcall(redis, "weather", "rain") == b":1"  # kept, but no node serves it
        assert fcall(redis, "news.sport", "again") == b":2"
        for reader in readers:
            got = [await headed(reader) for _ in range(2)]
            assert [(h["group"], h["offset"], body) for h, body, _ in got] == [
                ("news.sport", 1, b"goal"), ("news.sport", 2, b"again")]
            await reader.silent(0.05)
        epoch = got[0][0]["epoch"]
        back = await a.connect(resume_path({"news.sport": [epoch, 1]}), protocols=V1)
        assert (await headed(back))[1] == b"again"
        assert json.loads((await back.recv())[0])["recovered"] is True
    finally:
        await stop(servers)


@pytest_twisted.ensureDeferred
async def test_fcall_without_a_node_with_history_just_publishes(
        reactor: Any, redis: RedisProcess) -> None:
    """The library stays in Redis; once no node with history refreshes K:histconf, a plain PUBLISH."""
    [kept] = nodes(reactor, redis, 1, "--history", "10", "--redis-node-ttl", "1",
                   filters=(PUBSUB,))
    await all_ready(reactor, [kept])
    await until_conf(reactor, redis)
    await stop([kept])
    await wait_for(reactor, lambda: redis.command("EXISTS", "fws:histconf") == b":0",
                   what="fws:histconf expired")
    [server] = servers = nodes(reactor, redis, 1, filters=(PUBSUB,))
    try:
        await all_ready(reactor, servers)
        client = await server.connect()
        assert fcall(redis, "global", "plain") == b"$-1"  # nil: not kept
        assert await client.recv() == (b"plain", False)
        assert redis.command("EXISTS", "fws:chist:global") == b":0"
    finally:
        await stop(servers)


@pytest_twisted.ensureDeferred
async def test_a_payload_over_the_max_message_size_is_refused(
        reactor: Any, redis: RedisProcess) -> None:
    [server] = servers = nodes(reactor, redis, 1, "--history", "10", "--max-message-size",
                               "100", filters=(PUBSUB,))
    try:
        await all_ready(reactor, servers)
        await until_conf(reactor, redis)
        reader = await server.connect(protocols=V1)
        assert fcall(redis, "global", "x" * 101) == (
            b"-ERR fws_publish: the payload is 101 bytes, more than the 100 of "
            b"--max-message-size")
        assert fcall(redis, "global", "x" * 100) == b":1"
        head, body, _ = await headed(reader)
        assert (head["offset"], len(body)) == (1, 100)
        await reader.silent(0.05)
    finally:
        await stop(servers)


@pytest_twisted.ensureDeferred
async def test_function_flush_is_healed_by_a_reconnect(reactor: Any, redis: RedisProcess) -> None:
    [server] = servers = nodes(reactor, redis, 1, "--history", "10", filters=(PUBSUB,))
    try:
        await all_ready(reactor, servers)
        await until_conf(reactor, redis)
        assert redis.command("FUNCTION", "FLUSH") == b"+OK"
        assert fcall(redis, "global", "lost") == b"-ERR Function not found"
        redis.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        await wait_for(reactor, lambda: fcall(redis, "global", "back") == b":1",
                       what="fws_publish loaded again")
        assert ready(server)
    finally:
        await stop(servers)


@pytest_twisted.ensureDeferred
async def test_publish_kept_from_python(reactor: Any, redis: RedisProcess) -> None:
    a, b = servers = nodes(reactor, redis, 2, "--history", "10", filters=(PUBSUB,))
    try:
        await all_ready(reactor, servers)
        reader = await b.connect(protocols=V1)
        assert await a.factory.storage_object.publish_kept("global", "from python") == 1
        assert await a.factory.storage_object.publish_kept("global", bytearray(b"\x80")) == 2
        assert [(h["offset"], body, binary) for h, body, binary in
                [await headed(reader) for _ in range(2)]] == [
            (1, b"from python", False), (2, b"\x80", True)]
        assert await a.factory.storage_object.publish("global", "plain") == 2
        assert (await headed(reader))[0]["offset"] is None
    finally:
        await stop(servers)


@pytest_twisted.ensureDeferred
async def test_a_token_group_and_a_channel_of_one_name_keep_two_histories(
        reactor: Any, redis: RedisProcess) -> None:
    from tests.test_history import joined
    from tests.test_history_redis import until_members

    a, b = servers = nodes(reactor, redis, 2, "--history", "10", "--redis-channels", "room",
                           filters=(BY_TOKEN, PUBSUB))
    try:
        await all_ready(reactor, servers)
        await until_conf(reactor, redis)
        sender, member = await a.connect(), await b.connect(protocols=V1)
        await joined(sender, "room")
        await joined(member, "room")
        await until_members(reactor, redis, "room", 2)
        sender.send("to the group")
        group_head, _, _ = await headed(member)
        fcall(redis, "room", "on the channel 1")
        fcall(redis, "room", "on the channel 2")
        channel_heads = [(await headed(member))[0] for _ in range(2)]
        assert group_head["offset"] == 1 and [h["offset"] for h in channel_heads] == [1, 2]
        assert redis.command("XLEN", "fws:hist:room") == b":1"
        assert redis.command("XLEN", "fws:chist:room") == b":2"
        # A name that is one of --redis_channels resumes as the channel.
        epoch = channel_heads[0]["epoch"]
        back = await a.connect(resume_path({"room": [epoch, 1]}), protocols=V1)
        assert (await headed(back))[1] == b"on the channel 2"
        assert json.loads((await back.recv())[0]) == {
            "group": "room", "recovered": True, "epoch": epoch, "offset": 2}
        sender.send("group again")  # the channel's resumer is no member: nothing held for it
        assert (await headed(member))[1] == b"group again"
        await back.silent(0.1)
    finally:
        await stop(servers)


# --- consumer filters -------------------------------------------------------------------------

SLOW_CONSUMER = """
from twisted.internet import reactor
from twisted.internet.task import deferLater
from fws.filters.base import WebSocketConsumerFilter

class Slow(WebSocketConsumerFilter):
    @staticmethod
    async def filter(server, data):
        await deferLater(reactor, 0.15, lambda: None)
        server.broadcast_channel(data["channel"], data["data"])
"""

CHANGING_CONSUMER = """
from fws.filters.base import WebSocketConsumerFilter

class Shout(WebSocketConsumerFilter):
    @staticmethod
    def filter(server, data):
        server.broadcast_channel(data["channel"], data["data"].upper())
"""


@pytest_twisted.ensureDeferred
async def test_an_async_consumer_keeps_the_replay_fence_behind_its_deliveries(
        reactor: Any, redis: RedisProcess, tmp_path: Path) -> None:
    """
    Kept messages still in an asynchronous consumer chain when a resume reads
    them: the read's fence waits behind them, so the replay does not end before
    they are delivered (and held): each once, then recovered:true.
    """
    slow = write_module(tmp_path, SLOW_CONSUMER)
    [a] = servers = nodes(reactor, redis, 1, "--history", "100", filters=(slow,))
    try:
        await all_ready(reactor, servers)
        await until_conf(reactor, redis)
        probe = await a.connect(protocols=V1)
        fcall(redis, "global", "m1")
        epoch = (await headed(probe))[0]["epoch"]
        for i in range(2, 6):
            fcall(redis, "global", f"m{i}")
        # Read at once: all four are kept, none has come out of a's slow consumer yet.
        back = await a.connect(resume_path({"global": [epoch, 1]}), protocols=V1)
        got = [await headed(back) for _ in range(4)]
        assert [(h["offset"], body) for h, body, _ in got] == [
            (i, f"m{i}".encode()) for i in range(2, 6)]
        assert json.loads((await back.recv(timeout=5))[0]) == {
            "group": "global", "recovered": True, "epoch": epoch, "offset": 5}
        await back.silent(0.4)  # none of m2..m5 again once the consumer lets them out
        assert [(await headed(probe))[0]["offset"] for _ in range(4)] == [2, 3, 4, 5]
    finally:
        await stop(servers)


@pytest_twisted.ensureDeferred
async def test_a_consumer_that_changes_the_payload_delivers_it_unkept(
        reactor: Any, redis: RedisProcess, tmp_path: Path, warnings: list[str]) -> None:
    shout = write_module(tmp_path, CHANGING_CONSUMER)
    [server] = servers = nodes(reactor, redis, 1, "--history", "10", filters=(shout,))
    try:
        await all_ready(reactor, servers)
        await until_conf(reactor, redis)
        reader = await server.connect(protocols=V1)
        for text in ("quiet", "again"):
            fcall(redis, "global", text)
            head, body, _ = await headed(reader)
            assert head == {"group": "global", "epoch": None, "offset": None}
            assert body == text.upper().encode()
        said = [line for line in warnings if "changed a kept message" in line]
        assert len(said) == 1 and "global" in said[0]
    finally:
        await stop(servers)


# --- what is read from Redis is bounded -------------------------------------------------------

HOSTILE_BUS = [
    b"[" * 100_000 + b"\nx",  # nested past the recursion limit (RecursionError)
    b'{"e":' + b"[" * 100_000 + b"\nx",  # the same in a kept header
    b'["n", "room", null, false, "e1", 1e400]\nx',  # Infinity as an offset (OverflowError)
    b'["n", ["room"], null, false]\nx',  # an unhashable group (TypeError)
    b'["n", "room", {"a": 1}, false]\nx',  # an unhashable sender
    b'["n", "room", null, false, "e1", -3]\nx',
    b'["n", "room", null, false, "' + b"e" * 65 + b'", 3]\nx',  # an epoch too long
    b'["fence", "n", ["f"]]\nx',
    b'"just a string"\nx', b"42\nx", b"[]\nx", b"\xff\xfe\nx",
    b'{"e":"e1","o":1,"n":-1}\nglobalx',
    b'{"e":"e1","o":1,"n":99}\nglobalx',  # longer than the data
    b'{"e":"e1","o":1,"n":"6"}\nglobalx',
    b'{"e":"e1","o":1.5,"n":6}\nglobalx',
    b'{"e":"e1","o":0,"n":6}\nglobalx',
    b'{"e":"e1","o":9007199254740993,"n":6}\nglobalx',
    b'{"e":"","o":1,"n":6}\nglobalx',
    b'{"e":"e1","o":true,"n":6}\nglobalx',
    b'{"e":"e1","o":1,"n":6,"pad":"' + b"x" * 10_000 + b'"}\nglobalx',  # a huge header
    b'{"e":"e1"}\nglobalx', b"{\nglobalx", b"{}",
]


@pytest_twisted.ensureDeferred
async def test_hostile_bus_messages_are_ignored_with_one_warning(
        reactor: Any, redis: RedisProcess, warnings: list[str]) -> None:
    """
    Whatever a stranger publishes on K:bus is ignored: nothing raises out of
    the subscriber's callback (its connection stays up, and what follows is
    delivered), nothing reaches a client, and one line says so, not one each.
    """
    from tests.test_history import joined

    [server] = servers = nodes(reactor, redis, 1, "--history", "10",
                               filters=(BY_TOKEN, PUBSUB))
    try:
        await all_ready(reactor, servers)
        await until_conf(reactor, redis)
        reader = await server.connect(protocols=V1)
        await joined(reader, "room")
        for message in HOSTILE_BUS:
            assert redis.publish("fws:bus", message) == 1
        assert fcall(redis, "global", "after") == b":1"
        head, body, _ = await headed(reader)
        assert (head["group"], head["offset"], body) == ("global", 1, b"after")
        await reader.silent(0.05)
        storage = server.factory.storage_object
        assert storage.malformed == len(HOSTILE_BUS)
        assert storage.redis.outages["subscriber"] == 0
        said = [line for line in warnings if "malformed" in line]
        assert len(said) == 1 and "1 so far" in said[0], said
    finally:
        await stop(servers)


# --- where a plain PUBLISH is worth a warning ----------------------------------------------

@pytest_twisted.ensureDeferred
async def test_plain_publish_is_warned_about_only_where_channels_are_delivered(
        reactor: Any, redis: RedisProcess, warnings: list[str]) -> None:
    """A node without broadcast_pubsub delivers no channel: nothing of its history is lost."""
    groups_only, pubsub = servers = [
        nodes(reactor, redis, 1, "--history", "10", filters=(BY_TOKEN,))[0],
        nodes(reactor, redis, 1, "--history", "10", filters=(PUBSUB,))[0]]
    try:
        await all_ready(reactor, servers)
        reader = await pubsub.connect(protocols=V1)
        assert redis.publish("global", "plain") == 2  # both nodes subscribe to it
        assert (await headed(reader))[1] == b"plain"
        await wait_for(reactor, lambda: groups_only.factory.stats.pubsub_received == 1,
                       what="the other node got it too")
        said = [line for line in warnings if "plain PUBLISH" in line]
        assert len(said) == 1, said
        assert not groups_only.factory.delivers_channels and pubsub.factory.delivers_channels
    finally:
        await stop(servers)


# --- kept channel messages are counted ---------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_kept_channel_messages_count_in_a_metric_on_every_serving_node(
        reactor: Any, redis: RedisProcess) -> None:
    from fws.metrics import FwsCollector

    a, b = servers = nodes(reactor, redis, 2, "--history", "10", filters=(PUBSUB,))
    try:
        await all_ready(reactor, servers)
        await until_conf(reactor, redis)
        readers = [await a.connect(protocols=V1), await b.connect(protocols=V1)]
        for text in ("one", "two", "three"):
            fcall(redis, "global", text)
        fcall(redis, "elsewhere", "served by no node")
        assert redis.publish("global", "plain") == 2  # not kept: not counted
        for reader in readers:
            assert [(await headed(reader))[1] for _ in range(4)] == [
                b"one", b"two", b"three", b"plain"]
        for server in servers:
            samples = {sample.name: sample.value
                       for family in FwsCollector(server.factory).collect()
                       for sample in family.samples}
            assert samples["fws_history_channel_messages_received_total"] == 3
            assert samples["fws_history_messages_kept_total"] == 0
    finally:
        await stop(servers)


# --- a consumer that broadcasts to another channel first ---------------------------------------

AUDITING_CONSUMER = """
from fws.filters.base import WebSocketConsumerFilter

class Audit(WebSocketConsumerFilter):
    @staticmethod
    def filter(server, data):
        server.broadcast_channel("audit", b"seen " + data["data"])
        server.broadcast_channel(data["channel"], data["data"])
"""


@pytest_twisted.ensureDeferred
async def test_a_broadcast_to_another_channel_leaves_the_kept_message_its_place(
        reactor: Any, redis: RedisProcess, tmp_path: Path, warnings: list[str]) -> None:
    audit = write_module(tmp_path, AUDITING_CONSUMER)
    [server] = servers = nodes(reactor, redis, 1, "--history", "10", filters=(audit,))
    try:
        await all_ready(reactor, servers)
        await until_conf(reactor, redis)
        reader = await server.connect(protocols=V1)
        for n in (1, 2):
            fcall(redis, "global", f"m{n}")
            head, body, _ = await headed(reader)
            assert (head["group"], head["offset"], body) == ("audit", None, b"seen m%d" % n)
            head, body, _ = await headed(reader)
            assert (head["group"], head["offset"], body) == ("global", n, b"m%d" % n)
        assert not [line for line in warnings if "changed a kept message" in line]
    finally:
        await stop(servers)


GATED_CONSUMER = """
from twisted.internet.defer import Deferred
from fws.filters.base import WebSocketConsumerFilter

#: The test fires it: until then the consumer chain waits on its first message.
GATE = Deferred()

class Gated(WebSocketConsumerFilter):
    @staticmethod
    async def filter(server, data):
        await GATE
        server.broadcast_channel(data["channel"], data["data"])
"""


@pytest_twisted.ensureDeferred
async def test_a_waiting_consumer_does_not_hold_back_a_token_groups_resume(
        reactor: Any, redis: RedisProcess, tmp_path: Path) -> None:
    """Only a channel's fence waits behind the consumer chain; a group's messages never pass it."""
    import sys

    from tests.test_history import joined
    from tests.test_history_redis import until_members

    gated = write_module(tmp_path, GATED_CONSUMER)
    [server] = servers = nodes(reactor, redis, 1, "--history", "10",
                               filters=(BY_TOKEN, gated))
    gate = sys.modules[gated].GATE
    try:
        await all_ready(reactor, servers)
        await until_conf(reactor, redis)
        watcher = await server.connect(protocols=V1)
        fcall(redis, "global", "stuck")  # the consumer chain waits on it from now on
        sender = await server.connect()
        await joined(sender, "room")
        await until_members(reactor, redis, "room", 1)
        sender.send("m1")
        await wait_for(reactor, lambda: redis.command("XLEN", "fws:hist:room") == b":1",
                       what="m1 kept")
        back = await server.connect(resume_path({"room": ["nope", 0]}), protocols=V1)
        answer = json.loads((await back.recv(timeout=2))[0])
        assert (answer["group"], answer["recovered"], answer["offset"]) == ("room", False, 1)
        gate.callback(None)
        head, body, _ = await headed(watcher)
        assert (head["group"], head["offset"], body) == ("global", 1, b"stuck")
    finally:
        if not gate.called:
            gate.callback(None)
        await stop(servers)


# --- the function itself, on a Redis no node writes to -------------------------------------------

def test_fws_publish_takes_only_whole_numbers_from_its_configuration(redis: RedisProcess) -> None:
    """
    K:histconf as something else wrote it: no size limit for a ``max`` of 0
    (0 is true in Lua: every payload was refused), and a size or TTL that is
    not a whole number from 1 up is no history (a plain PUBLISH), never an
    XADD or PEXPIRE error halfway through that leaves an offset taken and
    nothing kept under it.
    """
    from fws.storage_objects.redis import FUNCTIONS

    assert redis.command("FUNCTION", "LOAD", "REPLACE", FUNCTIONS) == b"$3\r\nfws"
    redis.command("HSET", "fws:histconf", "size", "10", "ttl", "60000", "max", "0")
    assert fcall(redis, "global", "no limit") == b":1"
    for size, ttl in (("1.5", "60000"), ("10", "0"), ("inf", "60000"), ("10", "nan"),
                      ("-3", "60000"), ("10", "1e30")):
        redis.command("HSET", "fws:histconf", "size", size, "ttl", ttl, "max", "100")
        assert fcall(redis, "global", "plain") == b"$-1", (size, ttl)
    assert redis.command("HGET", "fws:chistpos:global", "o") == b"$1\r\n1"  # none lost
    redis.command("HSET", "fws:histconf", "size", "10", "ttl", "60000", "max", "100")
    assert fcall(redis, "global", "kept") == b":2"
    assert redis.command("XLEN", "fws:chist:global") == b":2"
    assert int(redis.command("PTTL", "fws:chist:global")[1:]) > 50_000
    assert fcall(redis, "global", "x" * 101).startswith(b"-ERR fws_publish: the payload is 101")
    assert redis.command("FCALL", "fws_publish", "1", "global").startswith(
        b"-ERR usage: FCALL fws_publish")
    assert redis.command("FCALL", "fws_publish", "2", "a", "b", "c").startswith(b"-ERR usage")


@pytest_twisted.ensureDeferred
async def test_an_unkept_message_during_a_replay_reaches_the_resumer_after_it(
        reactor: Any, redis: RedisProcess) -> None:
    """
    A plain PUBLISH while a channel's replay runs: every other member gets it
    live, with null epoch and offset; the resumer, skipped by live delivery,
    gets it once the replay is over (no replay can give it, it was not kept).
    """
    [server] = servers = nodes(reactor, redis, 1, "--history", "100", filters=(PUBSUB,))
    try:
        await all_ready(reactor, servers)
        await until_conf(reactor, redis)
        probe = await server.connect(protocols=V1)
        for i in range(1, 4):
            fcall(redis, "global", f"m{i}")
        heads = [(await headed(probe))[0] for _ in range(3)]
        back = await server.connect(resume_path({"global": [heads[0]["epoch"], 1]}),
                                    protocols=V1)
        assert redis.publish("global", "unkept") == 1  # its replay is reading now
        head, body, _ = await headed(probe)
        assert (head["offset"], body) == (None, b"unkept")
        got = [await headed(back) for _ in range(2)]
        assert [(h["offset"], body) for h, body, _ in got] == [(2, b"m2"), (3, b"m3")]
        assert json.loads((await back.recv())[0])["recovered"] is True
        head, body, _ = await headed(back)
        assert (head["offset"], body) == (None, b"unkept")
        await back.silent(0.05)
    finally:
        await stop(servers)


TO_CHANNEL = """
from fws.filters.base import WebSocketMessageFilter

class ToChannel(WebSocketMessageFilter):
    @staticmethod
    def filter(conn, data):
        conn.factory.broadcast_channel("global", bytes(data))
"""


@pytest_twisted.ensureDeferred
async def test_another_broadcast_while_the_consumer_waits_leaves_the_kept_message_its_place(
        reactor: Any, redis: RedisProcess, tmp_path: Path, warnings: list[str]) -> None:
    """A client's message broadcast on the channel meanwhile is unkept; the kept one keeps its offset."""
    import sys

    gated, to_channel = write_module(tmp_path, GATED_CONSUMER), write_module(tmp_path, TO_CHANNEL)
    [server] = servers = nodes(reactor, redis, 1, "--history", "10",
                               filters=(to_channel, gated))
    gate = sys.modules[gated].GATE
    try:
        await all_ready(reactor, servers)
        await until_conf(reactor, redis)
        reader = await server.connect(protocols=V1)
        fcall(redis, "global", "kept")
        await wait_for(reactor, lambda: server.factory.stats.pubsub_received == 1,
                       what="the kept message in the consumer chain")
        (await server.connect()).send("from a client")
        head, body, _ = await headed(reader)
        assert (head["offset"], body) == (None, b"from a client")
        gate.callback(None)
        head, body, _ = await headed(reader)
        assert (head["group"], head["offset"], body) == ("global", 1, b"kept")
        assert not [line for line in warnings if "changed a kept message" in line]
    finally:
        if not gate.called:
            gate.callback(None)
        await stop(servers)


BOTH_CONSUMER = """
from fws.filters.base import WebSocketConsumerFilter

class Both(WebSocketConsumerFilter):
    @staticmethod
    def filter(server, data):
        server.broadcast_channel(data["channel"], data["data"].upper())
        server.broadcast_channel(data["channel"], data["data"])
"""


@pytest_twisted.ensureDeferred
async def test_a_consumer_that_sends_a_changed_copy_then_the_kept_message(
        reactor: Any, redis: RedisProcess, tmp_path: Path, warnings: list[str]) -> None:
    """The copy goes unkept, the kept message at its place; nothing to warn about."""
    both = write_module(tmp_path, BOTH_CONSUMER)
    [server] = servers = nodes(reactor, redis, 1, "--history", "10", filters=(both,))
    try:
        await all_ready(reactor, servers)
        await until_conf(reactor, redis)
        reader = await server.connect(protocols=V1)
        fcall(redis, "global", "quiet")
        got = [await headed(reader) for _ in range(2)]
        assert [(h["offset"], body) for h, body, _ in got] == [(None, b"QUIET"), (1, b"quiet")]
        fcall(redis, "global", "again")
        assert [(await headed(reader))[0]["offset"] for _ in range(2)] == [None, 2]
        assert not [line for line in warnings if "changed a kept message" in line]
    finally:
        await stop(servers)
