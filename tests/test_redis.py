"""
Redis storage, pub/sub and multi-node delivery, in process: real fws servers
on loopback ports, real Autobahn clients, and a private redis-server that the
tests kill and restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import deferLater

from fws.config import resolve
from tests.helpers import Server
from tests.redis_support import RedisProcess
from tests.system_tools import module


def redis_config(redis: RedisProcess, *extra: str) -> dict[str, Any]:
    config = resolve(["--storage", "fws.storage_objects.redis", "--redis_port", str(redis.port),
                      "--redis-host", "127.0.0.1", *extra], environ={})
    assert config is not None
    return {"storage": config.storage, "storage_options": config.storage_options}


async def wait_for(reactor: Any, predicate: Any, timeout: float = 10.0, what: str = "") -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"timed out waiting for {what or predicate}")




def ready(server: Server) -> bool:
    return bool(server.factory.storage_object.ready)


@pytest_twisted.ensureDeferred
async def test_pubsub_reaches_every_client_binary_intact(reactor: Any, redis: RedisProcess) -> None:
    server = Server(reactor, ["fws.filters.broadcast_pubsub"], **redis_config(redis)).start()
    try:
        await wait_for(reactor, lambda: ready(server), what="redis ready")
        a, b = await server.connect(), await server.connect()
        assert redis.publish("global", "hello from the server!") == 1
        assert await a.recv() == (b"hello from the server!", False)
        assert await b.recv() == (b"hello from the server!", False)
        redis.publish("global", b"\xff\x00\r\n$3\r\n007")
        assert await a.recv() == (b"\xff\x00\r\n$3\r\n007", True)
        assert await b.recv() == (b"\xff\x00\r\n$3\r\n007", True)
        redis.publish("elsewhere", "not subscribed")
        await a.silent()
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_custom_channels_and_patterns(reactor: Any, redis: RedisProcess) -> None:
    config = redis_config(redis, "--redis_channels", "news", "alerts.*")
    server = Server(reactor, ["fws.filters.broadcast_pubsub"], **config).start()
    try:
        await wait_for(reactor, lambda: ready(server), what="redis ready")
        a = await server.connect()
        redis.publish("global", "default channel not subscribed")
        redis.publish("news", "n1")
        redis.publish("alerts.fire", "a1")
        assert await a.recv() == (b"n1", False)
        assert await a.recv() == (b"a1", False)
        await a.silent()
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_storage_object_is_binary_safe_and_prefixed(reactor: Any, redis: RedisProcess) -> None:
    server = Server(reactor, ["fws.filters.echo"], **redis_config(redis, "--redis_key", "app")).start()
    try:
        await wait_for(reactor, lambda: ready(server), what="redis ready")
        store = server.factory.storage_object
        assert await store.add("k", b"007") is True
        assert await store.add("k", b"007") is False
        assert await store.add("k", "\xe9t\xe9") is True
        assert await store.add("k", b"\xff\x00") is True
        assert await store.get("k") == {b"007", "été".encode(), b"\xff\x00"}
        assert await store.remove("k", b"007") is True
        assert await store.remove("k", b"007") is False
        assert redis.command("SCARD", "app:k") == b":2"
        assert await store.publish("global", "x") == 1  # the node's own subscriber
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_nodes_act_as_one_server(reactor: Any, redis: RedisProcess) -> None:
    filters = ["fws.filters.broadcast_messages"]
    nodes = [Server(reactor, filters, **redis_config(redis)).start() for _ in range(3)]
    try:
        await wait_for(reactor, lambda: all(ready(n) for n in nodes), what="redis ready")
        ids = {n.factory.node_id for n in nodes}
        assert len(ids) == 3
        clients = [[await n.connect() for _ in range(2)] for n in nodes]
        sender = clients[0][0]
        for i in range(50):
            sender.send(f"m{i}")
        everyone_else = [c for group in clients for c in group if c is not sender]
        for client in everyone_else:
            got = [await client.recv() for _ in range(50)]
            assert got == [(f"m{i}".encode(), False) for i in range(50)]
        for client in [sender, *everyone_else]:
            await client.silent(0.1)
        clients[2][1].send(b"\x00binary")
        for client in [c for group in clients for c in group if c is not clients[2][1]]:
            assert await client.recv() == (b"\x00binary", True)
    finally:
        for n in nodes:
            await n.stop()


@pytest_twisted.ensureDeferred
async def test_token_groups_span_nodes(reactor: Any, redis: RedisProcess) -> None:
    filters = ["fws.filters.broadcast_messages_by_token"]
    one = Server(reactor, filters, **redis_config(redis)).start()
    two = Server(reactor, filters, **redis_config(redis)).start()
    try:
        await wait_for(reactor, lambda: ready(one) and ready(two), what="redis ready")
        a, b = await one.connect(), await one.connect()
        c, d = await two.connect(), await two.connect()
        for client, group in ((a, "red"), (b, "blue"), (c, "red"), (d, "blue")):
            client.send(f"token:{group}")
            assert (await client.recv())[0].endswith(group.encode())
        a.send("for red")
        assert await c.recv() == (b"for red", False)
        d.send("for blue")
        assert await b.recv() == (b"for blue", False)
        for client in (a, b, c, d):
            await client.silent(0.1)
        await wait_for(reactor, lambda: redis.command("SCARD", "fws:group:red") == b":2",
                       what="red has two members in Redis")
        c.send("token:blue")  # moves
        await c.recv()
        a.send("red again")
        d.send("blue again")
        assert await b.recv() == (b"blue again", False)
        assert await c.recv() == (b"blue again", False)
        await c.silent(0.1)
        await wait_for(reactor, lambda: redis.command("SCARD", "fws:group:blue") == b":3",
                       what="blue has three members")
    finally:
        await one.stop()
        await two.stop()
    # graceful stops took every member and node key with them
    assert redis.command("SCARD", "fws:group:blue") == b":0"
    assert redis.command("SCARD", "fws:nodes") == b":0"


@pytest_twisted.ensureDeferred
async def test_redis_restart_restores_subscriptions_commands_and_groups(
    reactor: Any, redis: RedisProcess
) -> None:
    filters = ["fws.filters.broadcast_messages_by_token", "fws.filters.broadcast_pubsub"]
    one = Server(reactor, filters, **redis_config(redis)).start()
    two = Server(reactor, filters, **redis_config(redis)).start()
    try:
        await wait_for(reactor, lambda: ready(one) and ready(two), what="redis ready")
        a, b = await one.connect(), await two.connect()
        for client in (a, b):
            client.send("token:room")
            await client.recv()
        await wait_for(reactor, lambda: redis.command("SCARD", "fws:group:room") == b":2",
                       what="members stored")
        redis.kill()
        await wait_for(reactor, lambda: not ready(one) and not ready(two), what="outage noticed")
        a.send("during the outage")  # local delivery only: b is on the other node
        await b.silent(0.2)
        store = one.factory.storage_object
        with pytest.raises(Exception, match="not connected"):
            await store.get("anything")  # fails fast instead of queueing
        redis.start()
        await wait_for(reactor, lambda: ready(one) and ready(two), timeout=5, what="reconnect")
        await wait_for(reactor, lambda: redis.command("SCARD", "fws:group:room") == b":2",
                       what="membership restored")
        a.send("after")
        assert await b.recv() == (b"after", False)
        redis.publish("global", "pubsub back")
        assert await a.recv() == (b"pubsub back", False)
        assert await b.recv() == (b"pubsub back", False)
    finally:
        await one.stop()
        await two.stop()


@pytest_twisted.ensureDeferred
async def test_starts_without_redis_and_connects_when_it_appears(
    reactor: Any, tmp_path: Path
) -> None:
    redis = RedisProcess(tmp_path)  # not started yet
    server = Server(reactor, ["fws.filters.broadcast_messages", "fws.filters.broadcast_pubsub"],
                    **redis_config(redis)).start()
    try:
        a, b = await server.connect(), await server.connect()
        a.send("local delivery works")
        assert await b.recv() == (b"local delivery works", False)
        redis.start()
        await wait_for(reactor, lambda: ready(server), timeout=5, what="connected")
        redis.publish("global", "now with redis")
        assert await a.recv() == (b"now with redis", False)
    finally:
        await server.stop()
        redis.kill()


@pytest_twisted.ensureDeferred
async def test_a_dead_nodes_members_expire(reactor: Any, redis: RedisProcess) -> None:
    filters = ["fws.filters.broadcast_messages_by_token"]
    config = redis_config(redis, "--redis_node_ttl", "1")
    dying = Server(reactor, filters, **config).start()
    survivor = Server(reactor, filters, **config).start()
    try:
        await wait_for(reactor, lambda: ready(dying) and ready(survivor), what="redis ready")
        a = await dying.connect()
        a.send("token:room")
        await a.recv()
        await wait_for(reactor, lambda: redis.command("SCARD", "fws:group:room") == b":1",
                       what="member stored")
        # Die without saying goodbye: stop heartbeats and drop the Redis connections.
        storage = dying.factory.storage_object
        storage._heartbeat.stop()
        await storage.redis.stopService()
        await wait_for(reactor, lambda: redis.command("SCARD", "fws:group:room") == b":0",
                       timeout=5, what="the dead node's member removed")
        # the sweep then forgets the node itself
        await wait_for(reactor, lambda: redis.command("SISMEMBER", "fws:nodes",
                                                      dying.factory.node_id) == b":0",
                       timeout=2, what="the dead node forgotten")
        assert redis.command("EXISTS", f"fws:node:{dying.factory.node_id}:groups") == b":0"
    finally:
        await survivor.stop()
        await dying.stop()


# --- options and URLs (pure) ---------------------------------------------------------------

from fws.config import ConfigError  # noqa: E402
from fws.redis_service import RedisAddress, parse_redis_url  # noqa: E402


def test_redis_options_appear_only_with_redis_storage() -> None:
    shown: list[str] = []
    resolve(["-h"], environ={}, print_help=shown.append)
    assert "redis" not in shown[0]
    resolve(["-h"], environ={"STORAGE_OBJECT_MODULE": "filtered_websocket.storage_objects.redis"},
            print_help=shown.append)
    for text in ("--redis_host", "--redis_port", "--redis_channels", "(default: global)",
                 "--redis_key", "(default: fws)", "--redis_password", "--redis_db", "--redis_url",
                 "--redis-host"):
        assert text in shown[1]


def test_redis_options_from_file_env_and_command_line(tmp_path: Path) -> None:
    path = tmp_path / "fws.json"
    path.write_text('{"storage": "fws.storage_objects.redis", "redis_host": "cache", '
                    '"redis-channels": ["a", "b"], "redis_key": "app"}')
    config = resolve(["-c", str(path), "--redis_port", "7000"],
                     environ={"FWS_REDIS_PASSWORD": "s3cret"})
    assert config is not None and config.storage == "fws.storage_objects.redis"
    opts = config.storage_options
    assert (opts["redis_host"], opts["redis_port"], opts["redis_channels"], opts["redis_key"],
            opts["redis_password"]) == ("cache", 7000, ("a", "b"), "app", "s3cret")
    defaults = resolve(["--storage", "fws.storage_objects.redis"], environ={})
    assert defaults is not None
    assert defaults.storage_options["redis_channels"] == ("global",)
    assert defaults.storage_options["redis_key"] == "fws"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost", RedisAddress()),
        ("redis://:pw@cache:6380/2", RedisAddress(host="cache", port=6380, db=2, password="pw")),
        ("redis://user:p%40ss@[::1]:7000/0",
         RedisAddress(host="::1", port=7000, username="user", password="p@ss")),
        ("rediss://cache/1", RedisAddress(host="cache", db=1, tls=True)),
        ("unix:///run/redis.sock?db=3", RedisAddress(path="/run/redis.sock", db=3)),
    ],
)
def test_parse_redis_url(url: str, expected: RedisAddress) -> None:
    assert parse_redis_url(url) == expected
    if expected.password:
        assert expected.password not in parse_redis_url(url).describe()  # logs never show it


@pytest.mark.parametrize("url", ["http://x", "redis://", "redis://h/notanumber", "unix://",
                                 "redis://h:99999"])
def test_bad_redis_urls_are_config_errors(url: str, reactor: Any) -> None:
    from twisted.internet.testing import MemoryReactorClock

    from fws.service import make_service

    config = resolve(["--storage", "fws.storage_objects.redis", "--redis_url", url], environ={})
    assert config is not None
    with pytest.raises(ConfigError) as info:
        make_service(config, MemoryReactorClock())
    assert "Redis URL" in str(info.value) and "\n" not in str(info.value)


def test_subscriber_uses_hiredis_when_installed() -> None:
    import txredisapi

    from fws._wire.redis import SubscriberProtocol

    hiredis = module("hiredis")
    assert hiredis is not None
    assert issubclass(SubscriberProtocol, txredisapi.HiredisProtocol)


@pytest_twisted.ensureDeferred
async def test_ping_detects_a_silently_dead_subscriber(
    reactor: Any, redis: RedisProcess, logged_errors: list[dict[str, Any]]
) -> None:
    from twisted.logger import formatEvent, globalLogPublisher

    from fws.redis_service import RedisAddress, RedisService

    received: list[bytes] = []
    warnings: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if "PING" in formatEvent(event):
            warnings.append(formatEvent(event))

    service = RedisService(
        reactor, RedisAddress(host="127.0.0.1", port=redis.port), channels=[b"global"],
        on_message=lambda channel, data, pattern: received.append(data),
        ping_interval=0.2, ping_timeout=0.3,
    )
    globalLogPublisher.addObserver(observe)
    service.startService()
    try:
        await wait_for(reactor, lambda: service.ready, what="subscribed")
        redis.pause()  # the TCP connection stays up; only a PING can tell
        await wait_for(reactor, lambda: not service.subscribed, timeout=5, what="dead subscriber noticed")
        assert warnings and "did not answer PING" in warnings[0]
        assert " unavailable (" in warnings[0] and len(warnings) == 1  # the outage: one line
        redis.resume()
        await wait_for(reactor, lambda: service.ready, timeout=5, what="resubscribed")
        redis.publish("global", "alive again")
        await wait_for(reactor, lambda: received == [b"alive again"], what="message after resume")
    finally:
        redis.resume()
        globalLogPublisher.removeObserver(observe)
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_commands_skip_the_pool_machinery(reactor: Any, redis: RedisProcess) -> None:
    """
    PUBLISH (every relayed broadcast, every storage publish) goes straight to
    the one command connection, not through txredisapi's per-command
    @inlineCallbacks getConnection(): the regression guard of that fast path.
    Commands that would hold that one shared connection (BLPOP, MULTI) are
    refused with a clear error, and the connection carries on.
    """
    from tests.helpers import count_calls

    server = Server(reactor, ["fws.filters.broadcast_pubsub"], **redis_config(redis)).start()
    try:
        await wait_for(reactor, lambda: ready(server), what="redis ready")
        client = await server.connect()
        service = server.factory.storage_object.redis
        results: list[Any] = []
        calls = count_calls(lambda: results.append(service.execute("publish", "global", b"fast")))
        assert not [name for name in calls if "getConnection" in name or "inlineCallbacks" in name]
        assert await results[0] == 1  # this node's subscriber received it
        assert await client.recv() == (b"fast", False)
        await service.execute("rpush", "fws-test-list", b"item")
        for refused in (("blpop", ["fws-test-list"], 1), ("multi",), ("select", 1),
                        ("execute_command", "SELECT", 3), ("connectionLost", None),
                        ("_tx_started",), ("no_such_command",)):
            with pytest.raises(ValueError, match="not available on fws's shared Redis"):
                await service.execute(*refused)
        assert await service.execute("lpop", "fws-test-list") == b"item"
        assert await service.execute("publish", "global", b"after") == 1
        assert await client.recv() == (b"after", False)
    finally:
        await server.stop()


async def _started_service(reactor: Any, redis: RedisProcess, **options: Any) -> Any:
    """A RedisService on ``redis`` subscribed to ``global``; its messages land in ``.received``."""
    from fws.redis_service import RedisAddress, RedisService

    received: list[bytes] = []
    service = RedisService(
        reactor, RedisAddress(host="127.0.0.1", port=redis.port), channels=[b"global"],
        on_message=lambda channel, data, pattern: received.append(data), **options,
    )
    service.received = received  # type: ignore[attr-defined]
    service.startService()
    await wait_for(reactor, lambda: service.ready, what="subscribed")
    return service


@pytest_twisted.ensureDeferred
async def test_fast_publish_pairs_every_reply_with_its_command(
    reactor: Any, redis: RedisProcess
) -> None:
    """
    Fast PUBLISHes and txredisapi's own commands share one connection and one
    reply stream: interleaved, with error replies and a cancelled PUBLISH among
    them, every Deferred gets its own command's reply.
    """
    from twisted.internet.defer import DeferredList

    from tests.helpers import count_calls

    service = await _started_service(reactor, redis)
    try:
        redis.command("SET", "not-a-number", "abc")
        expected: list[Any] = []
        results: list[Any] = []
        for i in range(300):
            results.append(service.publish("global", b"m%d" % i))
            expected.append(1)  # this service's subscriber
            results.append(service.publish(b"nobody-listens", bytearray(b"x")))
            expected.append(0)
            results.append(service.execute("incr", "counter"))
            expected.append(i + 1)
            if i % 50 == 0:
                results.append(service.execute("incr", "not-a-number"))  # an error reply
                expected.append("ResponseError")
            if i == 100:
                cancelled = service.publish("global", "cancelled, but still published")
                cancelled.cancel()
        outcomes = await DeferredList(results, consumeErrors=True)
        got = [value if ok else type(value.value).__name__ for ok, value in outcomes]
        assert got == expected  # the cancelled one's reply did not shift the others
        await wait_for(reactor, lambda: len(service.received) == 301, what="every message")
        assert service.received[:3] == [b"m0", b"m1", b"m2"] and service.received[-1] == b"m299"
        assert b"cancelled, but still published" in service.received
        # str and memoryview data are sent as UTF-8 and as their bytes
        assert await service.publish("global", "é") == 1
        assert await service.publish("global", memoryview(b"view")) == 1
        await wait_for(reactor, lambda: service.received[-2:] == ["é".encode(), b"view"],
                       what="str and memoryview")
        # the regression guard: no reply-timeout timer, no command builder, no reply queue
        calls = count_calls(lambda: results.append(service.publish("global", b"guard")))
        assert not [name for name in calls if name.rpartition(":")[2] in (
            "callLater", "execute_command", "_build_command", "get", "getConnection")], calls
        assert await results[-1] == 1
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_publish_times_out_when_redis_stops_answering(
    reactor: Any, redis: RedisProcess
) -> None:
    """One watchdog per connection replaces txredisapi's timer per command."""
    import txredisapi
    from twisted.logger import formatEvent, globalLogPublisher

    warnings: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if "did not answer within" in formatEvent(event):
            warnings.append(formatEvent(event))

    service = await _started_service(reactor, redis, ping_interval=0, reply_timeout=0.3)
    globalLogPublisher.addObserver(observe)
    try:
        assert await service.publish("global", b"before") == 1
        redis.pause()  # the connection stays up; Redis answers nothing
        started = reactor.seconds()
        with pytest.raises(txredisapi.TimeoutError):  # not twisted's, from addTimeout
            await service.publish("global", b"unanswered").addTimeout(10, reactor)
        waited = reactor.seconds() - started
        assert waited >= 0.3  # never before a whole reply_timeout of silence
        assert warnings, "the timeout was not logged"
        await wait_for(reactor, lambda: not service.commands_connected, what="connection dropped")
        redis.resume()
        await wait_for(reactor, lambda: service.commands_connected, what="reconnected")
        assert await service.publish("global", b"after") == 1
    finally:
        redis.resume()
        globalLogPublisher.removeObserver(observe)
        await service.stopService()


BUSY_100_MS = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > 100000
return 1
"""


@pytest_twisted.ensureDeferred
async def test_a_slow_but_answering_redis_is_not_timed_out(
    reactor: Any, redis: RedisProcess
) -> None:
    """
    For 1.5 s (five reply timeouts) a PUBLISH is always owed, queued behind a
    script that keeps Redis busy for 0.1 s: answers keep coming, so the
    watchdog must not take the connection down.
    """
    service = await _started_service(reactor, redis, ping_interval=0, reply_timeout=0.3)
    try:
        published = []
        end = reactor.seconds() + 1.5
        while reactor.seconds() < end:
            busy = service.execute("eval", BUSY_100_MS)
            published.append(service.publish("global", b"behind a busy script"))
            assert await busy == 1
        assert [await d for d in published] == [1] * len(published)
        assert len(published) >= 10
        assert service.outages["command"] == 0 and service.commands_connected
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_outstanding_publishes_fail_when_redis_dies(
    reactor: Any, redis: RedisProcess
) -> None:
    """Killed with replies owed: every PUBLISH fires (sent or ConnectionError), none hangs."""
    import txredisapi

    service = await _started_service(reactor, redis)
    try:
        results = [service.publish("global", b"x" * 1000) for _ in range(2000)]
        redis.kill()
        await wait_for(reactor, lambda: all(d.called for d in results), what="every Deferred fired")
        outcomes: list[Any] = []
        for d in results:
            d.addCallbacks(outcomes.append, lambda f: outcomes.append(f.trap(txredisapi.ConnectionError)))
        assert len(outcomes) == 2000 and txredisapi.ConnectionError in outcomes
        assert all(o in (0, 1, txredisapi.ConnectionError) for o in outcomes)
        await wait_for(reactor, lambda: not service.commands_connected, what="outage noticed")
        with pytest.raises(txredisapi.ConnectionError):  # RedisUnavailable: not even sent
            await service.publish("global", b"while down")
        redis.start()
        await wait_for(reactor, lambda: service.ready, timeout=5, what="reconnected")
        assert await service.publish("global", b"back") == 1
    finally:
        await service.stopService()
