"""
Redis high availability against real processes: a master, a replica and
Sentinels started here on free ports (``redis-server ... --replicaof``,
``redis-server sentinel.conf --sentinel``), fws_server nodes with
``--redis_sentinel``, and a managed Redis whose DNS name moves, served by a
real DNS server on a free UDP port.

The master is killed with SIGKILL, or demoted with REPLICAOF (it answers
READONLY and keeps its connections); every node must follow to the new
master, cross-node broadcasts and token groups must work again on every node,
group membership must be in the new master, and a failover back to the first
master must work too. The time from the promotion to readiness and delivery
is printed (the issue's 2 s); the asserts bound it only by a failure of
function (30 s).
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from websockets.sync.client import ClientConnection, connect

from fws.config import ConfigError
from tests.processes import FwsProcess
from tests.redis_support import RedisProcess, SentinelProcess, free_port
from tests.system_tools import module
from tests.test_redis_faults import readyz, wait_for, wait_until

redis_py = module("redis")

NAME = "mymaster"
#: The documented sentinel.conf: every Sentinel here starts from it.
SENTINEL_CONF = Path(__file__).resolve().parent.parent / "docs" / "deploy" / "sentinel.conf"
#: Longer than this is not slow but broken (the issue promises 2 s; printed, not asserted).
BROKEN_AFTER = 30.0


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Callable[[str], None]:
    def say(text: str) -> None:
        with capsys.disabled():
            print(f"\n  [sentinel] {text}", end="")

    return say


class Deployment:
    """A master, a replica of it, and Sentinels monitoring it as ``mymaster``."""

    def __init__(self, directory: Path, sentinels: int, quorum: int) -> None:
        self.master = RedisProcess(directory)
        self.replica = RedisProcess(directory, replicaof=self.master)
        self.sentinels = [SentinelProcess(directory, self.master, NAME, quorum, template=SENTINEL_CONF)
                          for _ in range(sentinels)]
        self.processes: list[RedisProcess] = [self.master, self.replica, *self.sentinels]

    def stop(self) -> None:
        for proc in self.processes:
            proc.kill()

    def client(self, proc: RedisProcess) -> Any:
        return redis_py.Redis(host=proc.host, port=proc.port, socket_timeout=2)

    def said_master(self, sentinel: SentinelProcess) -> str | None:
        try:
            reply = self.client(sentinel).execute_command("SENTINEL", "get-master-addr-by-name",
                                                          NAME)
        except redis_py.RedisError:
            return None
        return f"{reply[0].decode()}:{reply[1].decode()}" if reply else None

    def said_master_by_any(self, redis: RedisProcess) -> bool:
        """A running Sentinel says ``redis`` is the master."""
        return any(self.said_master(s) == redis.address for s in self.sentinels if s.proc is not None)

    def wait_known(self, running: list[SentinelProcess], timeout: float = 15.0) -> None:
        """Until every running Sentinel knows the replica and the other running Sentinels."""

        def known() -> bool:
            for sentinel in running:
                client = self.client(sentinel)
                replicas = client.execute_command("SENTINEL", "replicas", NAME)
                peers = client.execute_command("SENTINEL", "sentinels", NAME)
                if not replicas or len(peers) < len(running) - 1:
                    return False
            return True

        wait_until(known, timeout, "the Sentinels to know the replica and each other", 0.1)

    def wait_good_replica(self, replica: RedisProcess, timeout: float = 15.0) -> None:
        """Until ``replica`` is in sync and every Sentinel sees it fit for promotion."""

        def good() -> bool:
            info = self.client(replica).info("replication")
            if info.get("master_link_status") != "up":
                return False
            for sentinel in self.sentinels:
                if sentinel.proc is None:
                    continue
                entries = self.client(sentinel).execute_command("SENTINEL", "replicas", NAME)
                flags = [e.get(b"flags") for e in entries if e.get(b"port") == str(replica.port).encode()]
                if flags != [b"slave"]:
                    return False
            return True

        wait_until(good, timeout, f"{replica.address} to be a replica fit for promotion", 0.1)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Callable[..., Deployment]]:
    made: list[Deployment] = []

    def make(sentinels: int = 1, quorum: int = 1) -> Deployment:
        made.append(Deployment(tmp_path, sentinels, quorum))
        return made[-1]

    try:
        yield make
    finally:
        for one in made:
            one.stop()


def node(processes: list[FwsProcess], sentinels: list[SentinelProcess], *extra: str,
         order: list[SentinelProcess] | None = None) -> FwsProcess:
    """A fws_server node on the Sentinels (token groups, /readyz and /metrics on an admin port)."""
    admin = free_port()
    addresses = ",".join(s.address for s in (order or sentinels))
    proc = FwsProcess(["-i", "127.0.0.1", "-f", "broadcast_messages_by_token", "--storage",
                       "fws.storage_objects.redis", "--redis_sentinel", addresses,
                       "--redis_sentinel_master", NAME, "--redis_node_ttl", "3",
                       "--admin", f"tcp:{admin}:interface=127.0.0.1", *extra])
    proc.args = ["-p", str(proc.port), *proc.args]
    proc.admin = admin  # type: ignore[attr-defined]
    processes.append(proc)
    proc.start()
    proc.wait_for(lambda: readyz(admin)[0] == 200, "/readyz 200", 15)
    return proc


def master_of(proc: FwsProcess) -> str | None:
    status, body = readyz(proc.admin)  # type: ignore[attr-defined]
    if status != 200:
        return None
    master: str | None = body.get("storage", {}).get("redis_master")
    return master


def watched(proc: FwsProcess) -> bool:
    """/readyz says a Sentinel's +switch-master is watched."""
    return bool(readyz(proc.admin)[1].get("storage", {}).get("redis_sentinel_watched") == "yes")  # type: ignore[attr-defined]


def failovers(proc: FwsProcess) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{proc.admin}/metrics",  # type: ignore[attr-defined]
                                timeout=2) as response:
        text = response.read().decode()
    found = re.search(r"^fws_redis_failovers_total ([0-9.e+]+)$", text, re.M)
    assert found, text
    return float(found.group(1))


def join(clients: list[ClientConnection], group: str) -> None:
    for ws in clients:
        ws.send(f"token:{group}")
        assert ws.recv(timeout=5) == f"Successfully registered with broadcast group: {group}"


def assert_group_works(clients: list[ClientConnection], tag: str) -> None:
    """Every member's broadcast reaches every other member (each on another node), once."""
    for i, sender in enumerate(clients):
        sender.send(f"{tag} from {i}")
        for j, other in enumerate(clients):
            if j != i:
                assert other.recv(timeout=5) == f"{tag} from {i}"
    for ws in clients:
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.05)


def delivered_again(clients: list[ClientConnection], since: float) -> float:
    """Probe until a broadcast from every node reaches every other node; seconds from ``since``."""
    pending = {(i, j) for i in range(len(clients)) for j in range(len(clients)) if i != j}
    probe = 0
    while pending:
        assert time.monotonic() - since < BROKEN_AFTER, f"no cross-node delivery for {pending}"
        probe += 1
        for i in {i for i, _ in pending}:
            clients[i].send(f"probe {probe} from {i}")
        for j, ws in enumerate(clients):
            while True:
                try:
                    message = ws.recv(timeout=0.05)
                except TimeoutError:
                    break
                assert isinstance(message, str) and message.startswith("probe "), message
                pending.discard((int(message.rsplit(" ", 1)[1]), j))
    took = time.monotonic() - since
    for ws in clients:  # drain the late probes
        while True:
            try:
                ws.recv(timeout=0.2)
            except TimeoutError:
                break
    return took


def members(deployment: Deployment, redis: RedisProcess, group: str) -> set[str]:
    """The node ids of ``group``'s members, as stored in ``redis``."""
    stored = deployment.client(redis).smembers(f"fws:group:{group}")
    return {m.decode().rsplit("-", 1)[0] for m in stored}


def node_id(proc: FwsProcess) -> str:
    for line in proc.lines():
        if "fws node " in line:
            return line.split("fws node ", 1)[1].split(":", 1)[0]
    raise AssertionError("no node id logged")


def follow(nodes: list[FwsProcess], clients: list[ClientConnection], new: RedisProcess,
           since: float) -> tuple[float, float]:
    """Until every node is ready on ``new`` and delivers across nodes: (ready, delivered) seconds."""
    for proc in nodes:
        wait_until(lambda proc=proc: master_of(proc) == new.address, BROKEN_AFTER,  # type: ignore[misc]
                   f"{proc.url} ready on {new.address}")
    ready = time.monotonic() - since
    return ready, delivered_again(clients, since)


# --- Sentinel: SIGKILL, a node started while a Sentinel is down, failover back ----------


@pytest.mark.slow
def test_three_sentinels_sigkill_and_failover_back(
    deployment: Callable[..., Deployment], processes: list[FwsProcess],
    report: Callable[[str], None],
) -> None:
    setup = deployment(sentinels=3, quorum=2)
    master, replica = setup.master, setup.replica
    first, second, third = setup.sentinels
    master.start()
    replica.start()
    first.start()
    second.start()
    setup.wait_known([first, second])
    # The third Sentinel is down, and first in this node's list: it is skipped.
    one = node(processes, setup.sentinels, order=[third, first, second])
    assert master_of(one) == master.address
    third.start()
    setup.wait_known(setup.sentinels)
    nodes = [one, node(processes, setup.sentinels), node(processes, setup.sentinels)]
    with ExitStack() as stack:
        clients = [stack.enter_context(connect(proc.url)) for proc in nodes]
        join(clients, "room")
        assert_group_works(clients, "before")
        ids = {node_id(proc) for proc in nodes}
        assert members(setup, master, "room") == ids

        # 1. The Sentinel that every node watches dies: each watches another one.
        first.kill()
        for proc in nodes:
            wait_until(lambda proc=proc: watched(proc), BROKEN_AFTER,  # type: ignore[misc]
                       f"{proc.url} watching another Sentinel")
        # 2. SIGKILL the master: the two Sentinels left (a majority) promote the replica.
        master.kill()
        killed = time.monotonic()
        # (promoted: the first Sentinel that says so; nodes may hear it from that one)
        wait_until(lambda: setup.said_master_by_any(replica), BROKEN_AFTER,
                   "the Sentinels to promote the replica", 0.01)
        promoted = time.monotonic()
        ready, delivered = follow(nodes, clients, replica, promoted)
        report(f"3 Sentinels, SIGKILL: promoted {promoted - killed:.2f}s after the kill; every "
               f"node ready on the new master {ready:.2f}s and delivering across nodes "
               f"{delivered:.2f}s after the promotion")
        assert_group_works(clients, "after the kill")
        wait_until(lambda: members(setup, replica, "room") == ids, 5, "membership in the new master")
        for proc in nodes:
            assert failovers(proc) == 1
            wait_until(lambda proc=proc: replica.address in "\n".join(proc.lines()), 5, "logged")

        # 3. The old master comes back as a replica; fail over back to it.
        master.replicaof = replica
        master.start()
        setup.wait_good_replica(master)
        client = setup.client(second)
        wait_until(lambda: _forced_failover(client), BROKEN_AFTER, "SENTINEL FAILOVER accepted", 0.5)
        asked = time.monotonic()
        wait_until(lambda: setup.said_master_by_any(master), BROKEN_AFTER,
                   "the Sentinels to promote the first master again", 0.01)
        promoted = time.monotonic()
        ready, delivered = follow(nodes, clients, master, promoted)
        report(f"3 Sentinels, failover back: promoted {promoted - asked:.2f}s after SENTINEL "
               f"FAILOVER; every node ready {ready:.2f}s and delivering across nodes "
               f"{delivered:.2f}s after the promotion")
        assert_group_works(clients, "after the failover back")
        wait_until(lambda: members(setup, master, "room") == ids, 5, "membership in the first master")
        for proc in nodes:
            assert failovers(proc) == 2
    for proc in nodes:
        lines = "\n".join(proc.lines())
        assert "Traceback" not in lines, lines
        assert "announced the failover of master mymaster" in lines, lines
        assert "failover followed" in lines, lines
        assert f"lost the Sentinel at {first.address}" in lines, lines


def _forced_failover(client: Any) -> bool:
    try:
        return bool(client.execute_command("SENTINEL", "FAILOVER", NAME))
    except redis_py.ResponseError:  # NOGOODSLAVE, INPROG: not yet
        return False


# --- Sentinel: a master demoted with REPLICAOF, connections kept: READONLY, ROLE -------


@pytest.mark.slow
def test_a_master_demoted_with_replicaof_is_left_for_the_new_one(
    deployment: Callable[..., Deployment], processes: list[FwsProcess],
    report: Callable[[str], None],
) -> None:
    """
    An operator swaps the roles by hand (REPLICAOF) and re-points the Sentinel
    (no ``+switch-master``): the old master keeps every connection and answers
    READONLY; one node writes (a client joins a group) and is told so, the other
    notices with its ROLE keepalive. Both ask the Sentinel again and follow.
    """
    setup = deployment(sentinels=1)
    master, replica = setup.master, setup.replica
    [sentinel] = setup.sentinels
    for proc in setup.processes:
        proc.start()
    setup.wait_known([sentinel])
    nodes = [node(processes, [sentinel], "--redis_ping_interval", "60"),
             node(processes, [sentinel], "--redis_ping_interval", "1")]
    writer, keepalive = nodes
    with ExitStack() as stack:
        clients = [stack.enter_context(connect(proc.url)) for proc in nodes]
        join(clients, "room")
        assert_group_works(clients, "before")
        setup.wait_good_replica(replica)
        sentinel_client = setup.client(sentinel)
        assert setup.client(replica).execute_command("REPLICAOF", "NO", "ONE") == b"OK"
        assert setup.client(master).execute_command("REPLICAOF", replica.host, str(replica.port)) == b"OK"
        sentinel_client.execute_command("SENTINEL", "REMOVE", NAME)
        sentinel_client.execute_command("SENTINEL", "MONITOR", NAME, replica.host, replica.port, 1)
        promoted = time.monotonic()
        assert setup.said_master(sentinel) == replica.address
        with pytest.raises(redis_py.ReadOnlyError):
            setup.client(master).sadd("fws:probe", "x")
        # The writer is told READONLY by its next write: a client joins a group on it.
        with connect(writer.url) as late:
            join([late], "other")
            wait_until(lambda: master_of(writer) == replica.address, BROKEN_AFTER,
                       "the writer on the new master")
            writer_ready = time.monotonic() - promoted
            wait_until(lambda: master_of(keepalive) == replica.address, BROKEN_AFTER,
                       "the other node on the new master")
            keepalive_ready = time.monotonic() - promoted
            delivered = delivered_again(clients, promoted)
            report(f"REPLICAOF demotion: the writing node on the new master {writer_ready:.2f}s "
                   f"(READONLY), the other {keepalive_ready:.2f}s (ROLE every 1 s); delivering "
                   f"across nodes {delivered:.2f}s after")
            assert_group_works(clients, "after the demotion")
            ids = {node_id(proc) for proc in nodes}
            wait_until(lambda: members(setup, replica, "room") == ids
                       and members(setup, replica, "other") == {node_id(writer)}, 5,
                       "membership in the new master")
    writer_log = "\n".join(writer.lines())
    assert "is no longer the master (Redis answered READONLY" in writer_log, writer_log
    keepalive_log = "\n".join(keepalive.lines())
    assert f"is a replica of {replica.address}, not the master" in keepalive_log, keepalive_log
    for proc in nodes:
        assert failovers(proc) == 1


# --- a managed Redis behind a DNS name that moves ------------------------------------------


class MovingName:
    """A real DNS server (twisted.names, UDP on a free loopback port) for one name, A records only."""

    def __init__(self, reactor: Any, name: str, address: str) -> None:
        from twisted.internet.defer import fail, succeed
        from twisted.names import dns, server
        from twisted.names.common import ResolverBase
        from twisted.names.error import DomainError

        self.name = name
        self.address = address
        self.queries = 0
        outer = self

        class Zone(ResolverBase):
            def _lookup(self, name: bytes, cls: int, type: int, timeout: Any = None) -> Any:
                if name.decode().lower() != outer.name or type not in (dns.A, dns.ALL_RECORDS):
                    return fail(DomainError(name))
                outer.queries += 1
                record = dns.RRHeader(name=name, type=dns.A, ttl=0,
                                      payload=dns.Record_A(outer.address, ttl=0))
                return succeed(([record], [], []))

        factory = server.DNSServerFactory(clients=[Zone()])
        self.port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        self.udp_port = self.port.getHost().port


@pytest_twisted.ensureDeferred
async def test_a_managed_redis_whose_name_moves(
    reactor: Any, tmp_path: Path, report: Callable[[str], None]
) -> None:
    """
    Two Redis servers on one port and two loopback addresses, a DNS name
    pointing at the master; the failover moves the name and demotes the old
    master with REPLICAOF (its connections stay: READONLY). One service
    notices with ROLE in its keepalive, one (no keepalive) by READONLY to its
    next write; both resolve the name again, reconnect to the new master and
    re-subscribe. Then back again.
    """
    from twisted.names import client

    from fws.redis_service import RedisAddress, RedisService

    port = free_port()
    a = RedisProcess(tmp_path, port, host="127.0.0.2").start()
    b = RedisProcess(tmp_path, port, host="127.0.0.3", replicaof=a).start()
    dns_server = MovingName(reactor, "redis.fws.test", a.host)
    resolver = client.Resolver(servers=[("127.0.0.1", dns_server.udp_port)], reactor=reactor)
    saved = reactor.nameResolver
    reactor.installResolver(resolver)
    services: list[Any] = []
    try:
        for ping in (0.3, 0):  # ROLE every 0.3 s; none at all (READONLY only)
            received: list[bytes] = []
            service = RedisService(
                reactor, RedisAddress(host="redis.fws.test", port=port), channels=[b"global"],
                on_message=lambda channel, data, pattern, received=received: received.append(data),
                ping_interval=ping, ping_timeout=0.2, reply_timeout=1.0, connect_timeout=1.0)
            service.received = received
            services.append(service)
            service.startService()
        await wait_for(reactor, lambda: all(s.ready for s in services), 10, "ready")
        assert [s.master for s in services] == [a.address, a.address]
        asked = dns_server.queries
        keepalive, silent = services
        for step, (old, new) in enumerate(((a, b), (b, a)), 1):
            await wait_for(reactor, lambda new=new: _in_sync(new), 10, "the replica in sync")
            dns_server.address = new.host
            assert new.command("REPLICAOF", "NO", "ONE") == b"+OK"
            assert old.command("REPLICAOF", new.host, str(new.port)) == b"+OK"
            moved = time.monotonic()
            took = await wait_for(reactor, lambda new=new: keepalive.master == new.address
                                  and keepalive.ready, BROKEN_AFTER, "ROLE noticed")
            assert silent.master == old.address and silent.ready  # nothing told it yet
            with pytest.raises(Exception, match="READONLY"):
                await silent.execute("sadd", "fws:probe", [b"x"])
            await wait_for(reactor, lambda new=new: silent.master == new.address and silent.ready,
                           BROKEN_AFTER, "READONLY followed")
            report(f"moving DNS name, step {step}: ROLE keepalive on the new master {took:.2f}s "
                   f"after the move; READONLY-driven {time.monotonic() - moved:.2f}s")
            for service in services:
                assert service.failovers == step
                assert await service.execute("sadd", "fws:probe", [b"x"]) in (0, 1)
                tag = f"step {step}".encode()
                assert await service.publish("global", tag) == 2  # both subscribers, on new
                await wait_for(reactor, lambda s=service, t=tag: t in s.received, 5, "delivered")
        assert dns_server.queries > asked  # asked again on reconnect
    finally:
        for service in services:
            await service.stopService()
        reactor.installNameResolver(saved)
        await dns_server.port.stopListening()
        a.kill()
        b.kill()


def _in_sync(redis: RedisProcess) -> bool:
    info = redis_py.Redis(host=redis.host, port=redis.port, socket_timeout=2).info("replication")
    return bool(info.get("master_link_status") == "up")


# --- options ---------------------------------------------------------------------------------


def test_sentinel_options_from_the_command_line_the_environment_and_a_file(tmp_path: Path) -> None:
    from fws.config import resolve
    from fws.storage_objects.redis import make_storage_object

    def address(argv: list[str], environ: dict[str, str] | None = None) -> Any:
        config = resolve(["--storage", "fws.storage_objects.redis", *argv], environ=environ or {})
        assert config is not None
        return make_storage_object(config, None).redis

    cli = address(["--redis_sentinel", "s1:26380", "s2", "--redis-sentinel-master", "cache",
                   "--redis_db", "2", "--redis_password", "pw", "--redis_sentinel_timeout", "0.2"])
    assert cli.address.sentinels == (("s1", 26380), ("s2", 26379))
    assert (cli.address.master_name, cli.address.db, cli.address.password) == ("cache", 2, "pw")
    assert cli.sentinel_timeout == 0.2
    env = address([], {"FWS_REDIS_SENTINEL": "[::1]:5000,h", "FWS_REDIS_SENTINEL_MASTER": "m",
                       "FWS_REDIS_SENTINEL_PASSWORD": "sp"})
    assert env.address.sentinels == (("::1", 5000), ("h", 26379))
    assert env.address.sentinel_login == ("sp",) and env.address.password is None
    config_file = tmp_path / "fws.json"
    config_file.write_text('{"redis_url": "redis+sentinel://u:p%40ss@a:1,b:2/main?db=3"}')
    url = address(["-c", str(config_file), "--redis_sentinel_username", "su",
                   "--redis_sentinel_password", "sp"])
    assert url.address == url.address.__class__(db=3, username="u", password="p@ss",
                                                 sentinels=(("a", 1), ("b", 2)), master_name="main",
                                                 sentinel_username="su", sentinel_password="sp")
    assert url.address.sentinel_login == ("su", "sp")
    assert url.address.describe() == "redis+sentinel://u@a:1,b:2/main?db=3"


@pytest.mark.parametrize(("argv", "message"), [
    (["--redis_sentinel", "a"], "redis_sentinel and redis_sentinel_master go together"),
    (["--redis_sentinel_master", "m"], "redis_sentinel and redis_sentinel_master go together"),
    (["--redis_sentinel", "a:0", "--redis_sentinel_master", "m"], "port must be between 1 and 65535"),
    (["--redis_sentinel", "a", "--redis_sentinel_master", "two words"], "invalid Sentinel master name"),
    (["--redis_sentinel", ",".join(f"h{i}" for i in range(17)), "--redis_sentinel_master", "m"],
     "at most 16 Sentinel addresses, not 17"),
    (["--redis_sentinel", "a", "--redis_sentinel_master", "m", "--redis_url", "redis://x"],
     "redis_url and redis_sentinel/redis_sentinel_master both say where Redis is"),
    (["--redis_sentinel", "a", "--redis_sentinel_master", "m", "--redis_sentinel_timeout", "31"],
     "redis_sentinel_timeout must be at most 30.0 seconds"),
    (["--redis_url", "redis+sentinel://u:secret@/m"], "no Sentinel address given"),
    (["--redis_url", "redis+sentinel://a,b/"], "invalid Sentinel master name ''"),
    (["--redis_url", "redis://u:secret@h:x/0"], "invalid Redis URL 'redis://u:***@h:x/0'"),
    (["--redis_url", "redis://u:secret@h/zero"], "database 'zero' is not a number"),
])
def test_bad_sentinel_options_are_one_clear_line(argv: list[str], message: str) -> None:
    from fws.config import resolve
    from fws.storage_objects.redis import make_storage_object

    config = resolve(["--storage", "fws.storage_objects.redis", *argv], environ={})
    assert config is not None
    with pytest.raises(ConfigError) as info:
        make_storage_object(config, None)
    assert message in str(info.value)
    assert "secret" not in str(info.value) and "\n" not in str(info.value)


@pytest_twisted.ensureDeferred
async def test_unreachable_and_unknowing_sentinels(reactor: Any, tmp_path: Path) -> None:
    """
    A silent Sentinel (a listener that never answers) costs one timeout, a
    refused one nothing; one that does not know the master is a configuration
    problem, said as such; the first that answers is asked first next time.
    """
    import socket

    from fws.redis_sentinel import NoMaster, Sentinels, UnknownMaster

    setup = Deployment(tmp_path, sentinels=1, quorum=1)
    try:
        setup.master.start()
        [sentinel] = setup.sentinels
        sentinel.start()
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts (the kernel does), never answers
        refused = ("127.0.0.1", free_port())
        good = ("127.0.0.1", sentinel.port)
        asking = Sentinels(reactor, [silent.getsockname(), refused, good], NAME, 0.3)
        start = time.monotonic()
        assert await asking.master() == (setup.master.host, setup.master.port)
        assert 0.3 <= time.monotonic() - start < BROKEN_AFTER
        assert asking.addresses[0] == good
        assert await asking.master() == (setup.master.host, setup.master.port)
        unknowing = Sentinels(reactor, [good], "not-monitored", 0.3)
        with pytest.raises(UnknownMaster, match="no Sentinel knows a master named 'not-monitored'"):
            await unknowing.master()
        nobody = Sentinels(reactor, [refused, silent.getsockname()], NAME, 0.2)
        with pytest.raises(NoMaster, match=r"refused.*no answer within 0.2s"):
            await nobody.master()
        silent.close()
    finally:
        setup.stop()


@pytest.mark.parametrize(("text", "expected"), [
    ("h", ("h", 26379)), ("h:1", ("h", 1)), ("[::1]", ("::1", 26379)), ("[::1]:7", ("::1", 7)),
    (" 10.0.0.1:26380 ", ("10.0.0.1", 26380)),
    ("::1", "write an IPv6 host as [addr]:port"), ("[::1", "an IPv6 host is written"),
    ("h:x", "is not a number"), ("h:65536", "between 1 and 65535"), (":1", "no usable host"),
    ("a/b:1", "no usable host"), ("x" * 256, "no usable host"),
])
def test_sentinel_addresses(text: str, expected: Any) -> None:
    from fws.redis_sentinel import parse_host_port

    if isinstance(expected, tuple):
        assert parse_host_port(text) == expected
    else:
        with pytest.raises(ValueError, match=re.escape(expected)):
            parse_host_port(text)


@pytest.mark.parametrize(("data", "expected"), [
    (b"mymaster 10.0.0.5 6379 10.0.0.6 6380", (("10.0.0.5", 6379), ("10.0.0.6", 6380))),
    (b"other 10.0.0.5 6379 10.0.0.6 6380", None),  # another master's
    (b"mymaster 10.0.0.5 6379 10.0.0.6", None),
    (b"mymaster 10.0.0.5 6379 10.0.0.6 0", None),
    (b"mymaster 10.0.0.5 6379 10.0.0.6 99999", None),
    (b"mymaster 10.0.0.5 6379 \xff 6380", None),
    (b"mymaster 10.0.0.5 6379 " + b"h" * 2000 + b" 6380", None),  # over the bound
])
def test_switch_master_messages_are_checked(data: bytes, expected: Any) -> None:
    from fws.redis_sentinel import parse_switch

    assert parse_switch(data, NAME) == expected


@pytest_twisted.ensureDeferred
async def test_no_sentinel_answers_then_one_does(
    reactor: Any, tmp_path: Path, logged_errors: list[dict[str, Any]]
) -> None:
    """
    A RedisService whose Sentinels refuse or are silent keeps asking (one
    warning, no error), is ready as soon as one answers, and stops at once
    even while a question to a silent Sentinel is under way.
    """
    import socket

    from twisted.internet.task import deferLater
    from twisted.logger import formatEvent, globalLogPublisher

    from fws.redis_service import RedisAddress, RedisService

    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").startswith("fws.redis_service"):
            lines.append(formatEvent(event))

    def make(sentinels: tuple[tuple[str, int], ...], timeout: float) -> RedisService:
        service = RedisService(reactor, RedisAddress(sentinels=sentinels, master_name=NAME),
                               channels=[b"global"], on_message=lambda *_: None,
                               ping_interval=0.3, ping_timeout=0.2, reply_timeout=0.5,
                               connect_timeout=0.5, sentinel_timeout=timeout)
        service.startService()
        return service

    setup = Deployment(tmp_path, sentinels=1, quorum=1)
    [sentinel] = setup.sentinels
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # the kernel accepts; nothing ever answers
    hole = silent.getsockname()
    globalLogPublisher.addObserver(observe)
    services: list[RedisService] = []
    try:
        setup.master.start()
        services.append(make((("127.0.0.1", sentinel.port), hole), 0.3))  # refused, then silent
        await deferLater(reactor, 1.5, lambda: None)
        assert not services[0].ready
        starts = [line for line in lines if "cannot reach Redis" in line]
        assert len(starts) == 1 and "no Sentinel said where master 'mymaster' is" in starts[0], lines
        assert "no answer within 0.3s" in starts[0] and "refused" in starts[0], starts
        sentinel.start()
        await wait_for(reactor, lambda: services[0].ready, BROKEN_AFTER, "ready once one answers")
        assert services[0].master == setup.master.address
        await wait_for(reactor, lambda: services[0].watching, BROKEN_AFTER, "watching it")
        # A question to a silent Sentinel with a long timeout: stopping does not wait for it.
        asking = make((hole,), 20.0)
        services.append(asking)
        await deferLater(reactor, 0.3, lambda: None)
        began = time.monotonic()
        await asking.stopService()
        assert time.monotonic() - began < 10, "the stop waited for the Sentinel's timeout"
    finally:
        for service in services:
            if service.running:
                await service.stopService()
        globalLogPublisher.removeObserver(observe)
        silent.close()
        setup.stop()


@pytest_twisted.ensureDeferred
async def test_sentinels_with_a_password_of_their_own(
    reactor: Any, tmp_path: Path, logged_errors: list[dict[str, Any]]
) -> None:
    """
    Sentinels with ``requirepass``: with ``--redis_sentinel_password`` fws asks
    and watches; without it, one error line says the Sentinels refused, and fws
    goes on asking (a configuration to fix, not an outage to wait out).
    """
    from twisted.internet.task import deferLater

    from fws.redis_service import RedisAddress, RedisService

    master = RedisProcess(tmp_path)
    sentinel = SentinelProcess(tmp_path, master, NAME, template=SENTINEL_CONF,
                               extra=("requirepass s3cret",))
    services: list[RedisService] = []
    try:
        master.start()
        sentinel.start()
        for password in ("s3cret", None):
            service = RedisService(
                reactor, RedisAddress(sentinels=(("127.0.0.1", sentinel.port),), master_name=NAME,
                                      sentinel_password=password),
                channels=[b"global"], on_message=lambda *_: None, ping_interval=0.3,
                ping_timeout=0.2, reply_timeout=0.5, connect_timeout=0.5, sentinel_timeout=0.3)
            services.append(service)
            service.startService()
        right, wrong = services
        await wait_for(reactor, lambda: right.ready and right.watching, BROKEN_AFTER, "ready")
        assert right.master == master.address
        await deferLater(reactor, 1.0, lambda: None)
        assert not wrong.ready
        [error] = logged_errors
        from twisted.logger import formatEvent

        text = formatEvent(error)
        assert "Sentinels refused" in text and "NOAUTH" in text, text
        logged_errors.clear()
    finally:
        for service in services:
            await service.stopService()
        sentinel.kill()
        master.kill()
