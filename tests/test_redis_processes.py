"""
Redis end to end: fws_server processes sharing a private redis-server, driven
by the ``websockets`` client and published to with redis-py (the seed's own
example), with Redis and nodes killed mid-test.
"""

from __future__ import annotations

import signal
from contextlib import ExitStack
from pathlib import Path

import pytest
from websockets.sync.client import ClientConnection, connect

from tests.processes import BIN, FwsProcess
from tests.redis_support import RedisProcess
from tests.system_tools import module

redis_py = module("redis")

LEGACY = {"STORAGE_OBJECT_MODULE": "filtered_websocket.storage_objects.redis"}




def node(processes: list[FwsProcess], redis: RedisProcess, *filters: str, env: dict[str, str] | None = None,
         extra: tuple[str, ...] = ()) -> FwsProcess:
    proc = FwsProcess(["-i", "127.0.0.1", "-f", *filters, "--redis_port", str(redis.port),
                       "--redis_host", "127.0.0.1", *extra], env=env or LEGACY)
    proc.args = ["-p", str(proc.port), *proc.args]
    processes.append(proc)
    proc.start()
    proc.wait_for_line("subscribed to")
    proc.wait_for_line("Redis ready at")
    return proc


def node_id(proc: FwsProcess) -> str:
    """The node id a server logs at startup (``fws node ID: ...``)."""
    for line in proc.lines():
        if "fws node " in line:
            return line.split("fws node ", 1)[1].split(":", 1)[0]
    raise AssertionError("no node id logged")


def recv_text(ws: ClientConnection, timeout: float = 5.0) -> str | bytes:
    return ws.recv(timeout=timeout)


def assert_silent(ws: ClientConnection, wait: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        ws.recv(timeout=wait)


def test_seed_pubsub_example(redis: RedisProcess, processes: list[FwsProcess]) -> None:
    server = node(processes, redis, "filtered_websocket.filters.broadcast_pubsub")
    with connect(server.url) as a, connect(server.url) as b:
        r = redis_py.Redis(port=redis.port)
        assert r.publish("global", "hello from the server!") == 1
        assert recv_text(a) == "hello from the server!"
        assert recv_text(b) == "hello from the server!"
        r.publish("global", b"\x80\xff not utf-8")
        assert recv_text(a) == b"\x80\xff not utf-8"
        assert recv_text(b) == b"\x80\xff not utf-8"


def test_seed_combined_example_across_three_nodes(redis: RedisProcess, processes: list[FwsProcess]) -> None:
    filters = ("filtered_websocket.filters.broadcast_messages",
               "filtered_websocket.filters.broadcast_pubsub")
    servers = [node(processes, redis, *filters) for _ in range(3)]
    with ExitStack() as stack:
        clients = [stack.enter_context(connect(s.url)) for s in servers for _ in range(2)]
        sender = clients[0]
        for i in range(30):
            sender.send(f"msg {i}")
        for other in clients[1:]:
            assert [recv_text(other) for _ in range(30)] == [f"msg {i}" for i in range(30)]
        assert_silent(sender)
        redis_py.Redis(port=redis.port).publish("global", "from a server-side process")
        for client in clients:
            assert recv_text(client) == "from a server-side process"
        for client in clients[1:]:
            assert_silent(client, 0.1)  # exactly once: no duplicate through the relay


def test_custom_channels_with_twistd(redis: RedisProcess, processes: list[FwsProcess],
                                     tmp_path: Path) -> None:
    proc = FwsProcess([], env=LEGACY, cwd=tmp_path,
                      command=[str(BIN / "twistd"), "-n", "--pidfile=", "fws"])
    proc.args = ["--listen", f"tcp:{proc.port}:interface=127.0.0.1", "--filters",
                 "fws.filters.broadcast_pubsub,fws.filters.stdout_pubsub",
                 "--redis-port", str(redis.port), "--redis_channels", "news", "alerts.*"]
    processes.append(proc)
    proc.start()
    proc.wait_for_line("subscribed to")
    with connect(proc.url) as ws:
        r = redis_py.Redis(port=redis.port)
        r.publish("global", "not subscribed")
        r.publish("news", "extra extra")
        r.publish("alerts.fire", "run")
        assert recv_text(ws) == "extra extra"
        assert recv_text(ws) == "run"
        assert_silent(ws)
    proc.wait_for_line("--PUBSUB--")
    proc.wait_for_line("alerts.fire: run")


def test_token_groups_across_nodes_and_a_killed_node(redis: RedisProcess,
                                                     processes: list[FwsProcess]) -> None:
    filters = ("fws.filters.broadcast_messages_by_token",)
    one = node(processes, redis, *filters, extra=("--redis_node_ttl", "1"))
    two = node(processes, redis, *filters, extra=("--redis_node_ttl", "1"))
    r = redis_py.Redis(port=redis.port)
    with connect(one.url) as a, connect(two.url) as b, connect(two.url) as c:
        for ws, group in ((a, "room"), (b, "room"), (c, "other")):
            ws.send(f"token:{group}")
            assert recv_text(ws) == f"Successfully registered with broadcast group: {group}"
        a.send("hi room")
        assert recv_text(b) == "hi room"
        assert_silent(c)
        two.wait_for(lambda: r.scard("fws:group:room") == 2, "both members stored", 5)
        dead, survivor = node_id(one), node_id(two)
        assert {m.decode().rsplit("-", 1)[0] for m in r.smembers("fws:group:room")} == {
            dead, survivor}
        one.kill()  # SIGKILL: no goodbye, its member must be swept by the survivor
        two.wait_for(lambda: r.scard("fws:group:room") == 1, "the dead node's member to go",
                     timeout=5)
        [left] = r.smembers("fws:group:room")
        assert left.decode().startswith(survivor + "-")
        two.wait_for(lambda: not r.sismember("fws:nodes", dead), "the dead node forgotten", 2)
        b.send("still here")
        assert_silent(c)


def test_redis_killed_and_restarted(redis: RedisProcess, processes: list[FwsProcess]) -> None:
    filters = ("fws.filters.broadcast_messages", "fws.filters.broadcast_pubsub")
    one, two = node(processes, redis, *filters), node(processes, redis, *filters)
    with connect(one.url) as a, connect(one.url) as a2, connect(two.url) as b:
        redis.kill()
        one.wait_for_line(" unavailable (")
        a.send("local only")
        assert recv_text(a2) == "local only"  # same node: still delivered
        assert_silent(b)  # other node: lost, and the log says so
        redis.start()
        for proc in (one, two):
            proc.wait_for_line(" back after ", timeout=5)
        # The relay of "local only" failed: the outage's closing line counts it.
        assert [line for line in one.lines() if " back after " in line and "failed while it was down" in line]
        a.send("after the restart")
        assert recv_text(a2) == "after the restart"
        assert recv_text(b) == "after the restart"
        redis_py.Redis(port=redis.port).publish("global", "pubsub again")
        for ws in (a, a2, b):
            assert recv_text(ws) == "pubsub again"


def test_starts_with_redis_absent(tmp_path: Path, processes: list[FwsProcess]) -> None:
    redis = RedisProcess(tmp_path)  # chosen port, not started
    proc = FwsProcess(["-i", "127.0.0.1", "-f", "broadcast_messages", "broadcast_pubsub",
                       "--redis_port", str(redis.port), "--redis_host", "127.0.0.1"], env=LEGACY)
    proc.args = ["-p", str(proc.port), *proc.args]
    processes.append(proc)
    proc.start()
    proc.wait_for_line("cannot reach Redis")
    try:
        with connect(proc.url) as a, connect(proc.url) as b:
            a.send("works without redis")
            assert recv_text(b) == "works without redis"
            redis.start()
            proc.wait_for_line("Redis ready at", timeout=5)
            redis_py.Redis(port=redis.port).publish("global", "redis is here")
            assert recv_text(a) == "redis is here"
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0
    finally:
        redis.kill()
