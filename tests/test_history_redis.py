"""
Group history on Redis (fws.storage_objects.redis.RedisHistory): two and
three nodes in process sharing a private redis-server, real Autobahn
clients; resume on another node, one order for every member, retention and
a Redis restart (a new epoch) giving recovered:false.
"""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from twisted.internet.task import deferLater

from tests.helpers import Client, Server
from tests.redis_support import RedisProcess
from tests.test_history import BY_TOKEN, V1, joined, resume_path, split
from tests.test_redis import ready, wait_for


def nodes(reactor: Any, redis: RedisProcess, count: int, *argv: str,
          filters: tuple[str, ...] = (BY_TOKEN,)) -> list[Server]:
    return [Server.from_argv(reactor, "-f", *filters, "--max-message-rate", "0",
                             "--storage", "fws.storage_objects.redis", "--redis-host", "127.0.0.1",
                             "--redis-port", str(redis.port), *argv).start()
            for _ in range(count)]


async def all_ready(reactor: Any, servers: list[Server]) -> None:
    await wait_for(reactor, lambda: all(ready(s) for s in servers), what="redis ready")


async def stop(servers: list[Server]) -> None:
    for server in servers:
        await server.stop()


async def until_members(reactor: Any, redis: RedisProcess, group: str, count: int) -> None:
    """Until Redis lists ``count`` members of ``group`` (joins are mirrored asynchronously)."""
    await wait_for(reactor, lambda: redis.command("SCARD", f"fws:group:{group}") == b":%d" % count,
                   what=f"{count} members of {group}")


async def sender_and_reader(reactor: Any, redis: RedisProcess, a: Server,
                            b: Server) -> tuple[Client, Client]:
    """A plain client on ``a`` and a fws.v1 one on ``b``, both in "room" (Redis lists both)."""
    sender, reader = await a.connect(), await b.connect(protocols=V1)
    await joined(sender, "room")
    await joined(reader, "room")
    await until_members(reactor, redis, "room", 2)
    return sender, reader


async def headed(client: Client) -> tuple[dict[str, Any], bytes, bool]:
    payload, binary = await client.recv()
    head, body = split(payload)
    return head, body, binary


@pytest_twisted.ensureDeferred
async def test_resume_on_a_third_node_after_missing_messages_of_two_others(
        reactor: Any, redis: RedisProcess) -> None:
    a, b, c = servers = nodes(reactor, redis, 3, "--history", "100")
    try:
        await all_ready(reactor, servers)
        reader = await a.connect(protocols=V1)
        sender_b, plain_c = await b.connect(), await c.connect()
        self_v1 = await b.connect(protocols=V1)
        for client in (reader, sender_b, plain_c, self_v1):
            await joined(client, "room")
        sender_b.send("m1")
        head, body, _ = await headed(reader)
        assert (head["group"], head["offset"], body) == ("room", 1, b"m1")
        assert await plain_c.recv() == (b"m1", False)  # plain: byte for byte
        assert (await headed(self_v1))[0] == head  # the sender's node delivers from Redis too
        epoch = head["epoch"]
        reader.sendClose(1000)
        await reader.closed
        sender_b.send("m2")
        sender_b.send(b"\x00\xff")
        assert await plain_c.recv() == (b"m2", False)
        assert await plain_c.recv() == (b"\x00\xff", True)
        plain_c.send("m4")
        for offset in (2, 3, 4):
            assert (await headed(self_v1))[0]["offset"] == offset
        back = await c.connect(resume_path({"room": [epoch, 1]}), protocols=V1)
        got = [await headed(back) for _ in range(3)]
        assert [(h["offset"], body, binary) for h, body, binary in got] == [
            (2, b"m2", False), (3, b"\x00\xff", True), (4, b"m4", False)]
        assert json.loads((await back.recv())[0]) == {
            "group": "room", "recovered": True, "epoch": epoch, "offset": 4}
        await until_members(reactor, redis, "room", 4)
        sender_b.send("m5")
        head, body, _ = await headed(back)
        assert (head["offset"], body) == (5, b"m5")
        await back.silent(0.1)
    finally:
        await stop(servers)


@pytest_twisted.ensureDeferred
async def test_concurrent_senders_on_three_nodes_one_order_for_every_member(
        reactor: Any, redis: RedisProcess) -> None:
    servers = nodes(reactor, redis, 3, "--history", "1000")
    try:
        await all_ready(reactor, servers)
        members = [await server.connect(protocols=V1) for server in servers for _ in range(2)]
        senders = [await server.connect() for server in servers]
        for client in members + senders:
            await joined(client, "room")
        await until_members(reactor, redis, "room", 9)
        for i in range(30):
            for n, sender in enumerate(senders):
                sender.send(f"s{n}-{i}")
        orders = []
        for member in members:
            seen = [await headed(member) for _ in range(90)]
            assert [h["offset"] for h, _, _ in seen] == list(range(1, 91))
            orders.append([body for _, body, _ in seen])
            await member.silent(0)
        assert all(order == orders[0] for order in orders)
        for n in range(3):  # each sender's own messages in the order it sent them
            mine = [body for body in orders[0] if body.startswith(b"s%d-" % n)]
            assert mine == [b"s%d-%d" % (n, i) for i in range(30)]
    finally:
        await stop(servers)


@pytest_twisted.ensureDeferred
async def test_retention_exceeded_and_redis_restart_are_not_recovered(
        reactor: Any, redis: RedisProcess) -> None:
    a, b = servers = nodes(reactor, redis, 2, "--history", "3")
    try:
        await all_ready(reactor, servers)
        sender, reader = await sender_and_reader(reactor, redis, a, b)
        for i in range(1, 9):
            sender.send(f"m{i}")
        seen = [await headed(reader) for _ in range(8)]
        epoch = seen[0][0]["epoch"]
        # Only the last three are kept (MAXLEN ~ keeps more; fws replays no more than SIZE).
        late = await a.connect(resume_path({"room": [epoch, 2]}), protocols=V1)
        assert json.loads((await late.recv())[0]) == {
            "group": "room", "recovered": False, "epoch": epoch, "offset": 8}
        inside = await a.connect(resume_path({"room": [epoch, 5]}), protocols=V1)
        assert [(await headed(inside))[0]["offset"] for _ in range(3)] == [6, 7, 8]
        assert json.loads((await inside.recv())[0])["recovered"] is True
        # Redis restarted without persistence: the history is gone, a new epoch begins.
        redis.kill()
        redis.start()
        await deferLater(reactor, 0.5, lambda: None)
        await all_ready(reactor, servers)
        await until_members(reactor, redis, "room", 4)
        sender.send("after")
        head, body, _ = await headed(reader)
        assert body == b"after" and head["epoch"] != epoch and head["offset"] == 1
        again = await b.connect(resume_path({"room": [epoch, 8]}), protocols=V1)
        assert json.loads((await again.recv())[0]) == {
            "group": "room", "recovered": False, "epoch": head["epoch"], "offset": 1}
        assert sum(s.factory.stats.not_recovered for s in servers) == 2
    finally:
        await stop(servers)


@pytest_twisted.ensureDeferred
async def test_resume_storm_on_redis_loses_nothing(reactor: Any, redis: RedisProcess) -> None:
    """Many clients resume on two nodes while a third keeps sending: each gets 1..N once, in order."""
    a, b, c = servers = nodes(reactor, redis, 3, "--history", "1000",
                              filters=("fws.filters.broadcast_messages",))
    try:
        await all_ready(reactor, servers)
        sender = await c.connect()
        probe = await a.connect(protocols=V1)
        for i in range(1, 41):
            sender.send(f"m{i}")
        first = [await headed(probe) for _ in range(40)]
        epoch = first[0][0]["epoch"]
        assert first[0][0]["group"] == "*"
        clients = [await (a if n % 2 else b).connect(resume_path({"*": [epoch, 0]}), protocols=V1)
                   for n in range(30)]
        for i in range(41, 61):
            sender.send(f"m{i}")
        for client in clients:
            offsets = []
            answer = None
            while len(offsets) < 60 or answer is None:
                payload, _ = await client.recv()
                if b"\n" not in payload:
                    answer = json.loads(payload)
                    assert answer["recovered"] is True
                    assert answer["offset"] == offsets[-1]
                    continue
                head, body = split(payload)
                assert body == f"m{head['offset']}".encode()
                offsets.append(head["offset"])
            assert offsets == list(range(1, 61))
        await deferLater(reactor, 0.1, lambda: None)
        assert all(client.factory.messages.pending == [] for client in clients)
        assert sum(s.factory.stats.recovered for s in servers) == 30
    finally:
        await stop(servers)


@pytest_twisted.ensureDeferred
async def test_group_messages_go_on_locally_while_redis_is_down(
        reactor: Any, redis: RedisProcess) -> None:
    [server] = servers = nodes(reactor, redis, 1, "--history", "10")
    try:
        await all_ready(reactor, servers)
        sender, reader, plain = (await server.connect(), await server.connect(protocols=V1),
                                 await server.connect())
        for client in (sender, reader, plain):
            await joined(client, "room")
        redis.kill()
        await wait_for(reactor, lambda: not ready(server), what="redis down")
        sender.send("meanwhile")
        head, body, _ = await headed(reader)
        assert body == b"meanwhile" and head == {"group": "room", "epoch": None, "offset": None}
        assert await plain.recv() == (b"meanwhile", False)
        # A resume cannot read the history: not recovered, position unknown, and live from there.
        back = await server.connect(resume_path({"room": ["e", 1]}), protocols=V1)
        assert json.loads((await back.recv())[0]) == {
            "group": "room", "recovered": False, "epoch": None, "offset": None}
        sender.send("still")
        assert (await headed(back))[1] == b"still"
    finally:
        await stop(servers)
        redis.start()


@pytest_twisted.ensureDeferred
async def test_node_killed_client_resumes_on_another_process(
        reactor: Any, redis: RedisProcess, processes: list[Any]) -> None:
    """Real fws_server processes: the client's node dies (SIGKILL); it resumes on the other."""
    import signal

    from tests.helpers import connect
    from tests.processes import serve

    argv = ("-f", BY_TOKEN, "--history", "50", "--storage", "fws.storage_objects.redis",
            "--redis-host", "127.0.0.1", "--redis-port", str(redis.port))
    first, second = serve(*argv), serve(*argv)
    processes.extend([first, second])
    for proc in (first, second):
        proc.wait_for_line("Redis ready")
    reader = await connect(reactor, first.port, protocols=V1)
    sender = await connect(reactor, second.port)
    await joined(reader, "room")
    await joined(sender, "room")
    await until_members(reactor, redis, "room", 2)
    sender.send("before")
    head, body, _ = await headed(reader)
    assert (head["offset"], body) == (1, b"before")
    first.signal(signal.SIGKILL)
    first.wait()
    await reader.closed
    for text in ("lost-1", "lost-2"):
        sender.send(text)
    await deferLater(reactor, 0.2, lambda: None)
    back = await connect(reactor, second.port, resume_path({"room": [head["epoch"], 1]}),
                         protocols=V1)
    assert [(await headed(back))[1] for _ in range(2)] == [b"lost-1", b"lost-2"]
    assert json.loads((await back.recv())[0]) == {
        "group": "room", "recovered": True, "epoch": head["epoch"], "offset": 3}
    for client in (back, sender):
        client.sendClose(1000)
        await client.closed


@pytest_twisted.ensureDeferred
async def test_large_messages_replay_from_redis(reactor: Any, redis: RedisProcess) -> None:
    a, b = servers = nodes(reactor, redis, 2, "--history", "100")
    try:
        await all_ready(reactor, servers)
        sender, reader = await sender_and_reader(reactor, redis, a, b)
        sender.send("first")
        epoch = (await headed(reader))[0]["epoch"]
        big = [bytes([i]) * 500_000 for i in range(8)]
        for payload in big:
            sender.send(payload)
        for _ in big:
            await headed(reader)
        back = await a.connect(resume_path({"room": [epoch, 1]}), protocols=V1)
        for offset, payload in enumerate(big, 2):
            head, body, binary = await headed(back)
            assert head["offset"] == offset and body == payload and binary
        assert json.loads((await back.recv())[0])["recovered"] is True
    finally:
        await stop(servers)


@pytest_twisted.ensureDeferred
async def test_a_lost_fence_makes_the_replay_read_again(reactor: Any, redis: RedisProcess,
                                                        monkeypatch: Any) -> None:
    """
    A read's fence that never comes back (published while the subscriber
    connection was down) does not hang the replay: it reads again.
    """
    from fws import history

    monkeypatch.setattr(history, "FENCE_TIMEOUT", 0.3)
    a, b = servers = nodes(reactor, redis, 2, "--history", "100")
    try:
        await all_ready(reactor, servers)
        sender = await a.connect()
        await joined(sender, "room")
        probe = await b.connect(protocols=V1)
        await joined(probe, "room")
        await until_members(reactor, redis, "room", 2)
        sender.send("m1")
        epoch = (await headed(probe))[0]["epoch"]
        sender.send("m2")
        await headed(probe)
        factory = b.factory
        fenced = factory.history_fenced
        lost: list[str] = []

        def lose_the_first(fence: str) -> None:
            if not lost:
                lost.append(fence)  # as if the subscriber had been down when it came
                return
            fenced(fence)

        factory.history_fenced = lose_the_first
        back = await b.connect(resume_path({"room": [epoch, 0]}), protocols=V1)
        assert [(await headed(back))[1] for _ in range(2)] == [b"m1", b"m2"]
        assert json.loads((await back.recv())[0]) == {
            "group": "room", "recovered": True, "epoch": epoch, "offset": 2}
        assert lost
        await back.silent(0.1)
    finally:
        await stop(servers)


@pytest_twisted.ensureDeferred
async def test_scripts_flushed_from_redis_are_sent_again(reactor: Any, redis: RedisProcess) -> None:
    """EVALSHA once Redis knows the script; after SCRIPT FLUSH (NOSCRIPT), EVAL again."""
    a, b = servers = nodes(reactor, redis, 2, "--history", "100")
    try:
        await all_ready(reactor, servers)
        sender, reader = await sender_and_reader(reactor, redis, a, b)
        for i in range(1, 4):
            sender.send(f"m{i}")
            assert (await headed(reader))[0]["offset"] == i
        assert redis.command("SCRIPT", "FLUSH") == b"+OK"
        sender.send("m4")
        head, body, _ = await headed(reader)
        assert (head["offset"], body) == (4, b"m4")
        back = await b.connect(resume_path({"room": [head["epoch"], 2]}), protocols=V1)
        assert [(await headed(back))[1] for _ in range(2)] == [b"m3", b"m4"]
        assert json.loads((await back.recv())[0])["recovered"] is True
    finally:
        await stop(servers)
