"""
Redis faults of every kind, against a real private redis-server: fws detects
each, drops the dead connection itself, reconnects for as long as it runs, and
is ready again within a second of Redis answering.

Each fault class has a test: a stall longer than every timeout (SIGSTOP, with
fws's own default timeouts, on real fws_server processes with two nodes), a
kill and restart, a refused connection at startup, a half-open connection and
replies that never come (both through :class:`FaultyProxy`), and a login that
Redis refuses until it is fixed (where txredisapi alone gives up for good).
The time from "Redis answers again" to "ready" is printed for each.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher

from fws.redis_service import RedisConnectionError
from tests.processes import FwsProcess
from tests.redis_support import FaultyProxy, RedisProcess, free_port

#: Readiness must be back this soon after Redis answers again (the issue's promise).
BACK_WITHIN = 1.0


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Callable[[str], None]:
    """Print a measurement to the terminal, past pytest's capture."""

    def say(text: str) -> None:
        with capsys.disabled():
            print(f"\n  [redis faults] {text}", end="")

    return say


@pytest.fixture
def redis_log() -> Iterator[list[str]]:
    """Every log line of fws.redis_service during the test, formatted."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").startswith(("fws.redis_service", "twisted.application")):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        yield lines
    finally:
        globalLogPublisher.removeObserver(observe)


async def wait_for(reactor: Any, predicate: Any, timeout: float = 10.0, what: str = "") -> float:
    """Poll every 10 ms; return how long it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


async def sleep(reactor: Any, seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


def make_service(reactor: Any, port: int, **options: Any) -> Any:
    """A RedisService on ``port`` subscribed to ``global`` (messages in ``.received``)."""
    from fws.redis_service import RedisAddress, RedisService

    received: list[bytes] = []
    timeouts = {"ping_interval": 0.3, "ping_timeout": 0.2, "reply_timeout": 0.5,
                "connect_timeout": 0.5}
    timeouts.update(options.pop("timeouts", {}))
    service = RedisService(
        reactor, RedisAddress(host="127.0.0.1", port=port, **options), channels=[b"global"],
        on_message=lambda channel, data, pattern: received.append(data), **timeouts,
    )
    service.received = received  # type: ignore[attr-defined]
    return service


async def assert_works(reactor: Any, service: Any, redis: RedisProcess, tag: str) -> None:
    """Commands and the subscription both work: a PUBLISH of fws's own comes back."""
    # (at least 1: Redis may still count a half-open subscriber it cannot tell is gone)
    assert await service.publish("global", tag.encode()) >= 1
    await wait_for(reactor, lambda: tag.encode() in service.received, 5, f"{tag} delivered")
    assert redis.publish("global", tag + "-from-outside") >= 1


@asynccontextmanager
async def running(reactor: Any, port: int, **options: Any) -> AsyncIterator[Any]:
    """A started :func:`make_service` on ``port``, stopped (and waited for) on the way out."""
    service = make_service(reactor, port, **options)
    service.startService()
    try:
        yield service
    finally:
        await service.stopService()


@pytest.fixture
def proxy(redis: RedisProcess) -> Iterator[FaultyProxy]:
    """A :class:`FaultyProxy` in front of the test's Redis."""
    faulty = FaultyProxy(redis.port)
    try:
        yield faulty
    finally:
        faulty.close()


def assert_one_outage(lines: list[str]) -> tuple[str, str]:
    """Exactly one line when the outage started, and one when it ended (after the ready line)."""
    starts, ends = outage_lines(lines)
    assert len(starts) == 1 and len(ends) == 2, lines
    return starts[0], ends[1]


def outage_lines(lines: list[str]) -> tuple[list[str], list[str]]:
    starts = [line for line in lines if " unavailable (" in line or "cannot reach Redis" in line]
    ends = [line for line in lines if " back after " in line or "Redis ready at" in line]
    return starts, ends


@pytest_twisted.ensureDeferred
async def test_a_stall_longer_than_every_timeout(
    reactor: Any, redis: RedisProcess, redis_log: list[str], report: Callable[[str], None]
) -> None:
    """SIGSTOP for 8 connect timeouts: fws keeps trying, and is back at once after SIGCONT."""
    try:
        async with running(reactor, redis.port) as service:
            await wait_for(reactor, lambda: service.ready, what="ready")
            redis.pause()
            noticed = await wait_for(reactor, lambda: not service.ready, 5, "the stall noticed")
            await sleep(reactor, 4.0)  # every timeout (0.2 to 0.5 s) and many attempts go by
            assert not service.ready
            redis.resume()
            back = await wait_for(reactor, lambda: service.ready, 5, "ready after SIGCONT")
            report(f"SIGSTOP: noticed after {noticed:.2f}s; ready {back:.3f}s after SIGCONT")
            assert back < BACK_WITHIN
            await assert_works(reactor, service, redis, "after-stall")
            _, end = assert_one_outage(redis_log)
            assert "back after 4." in end or "back after 5." in end, end
            assert "lost in flight" not in end, end  # fws's own PINGs are no one's commands
            assert not [line for line in redis_log if "Scheduling retry" in line]
    finally:
        redis.resume()


@pytest_twisted.ensureDeferred
async def test_killed_and_restarted(
    reactor: Any, redis: RedisProcess, redis_log: list[str], report: Callable[[str], None]
) -> None:
    async with running(reactor, redis.port) as service:
        await wait_for(reactor, lambda: service.ready, what="ready")
        redis.kill()
        await wait_for(reactor, lambda: not service.ready, 5, "the kill noticed")
        await sleep(reactor, 2.0)  # refused, again and again
        redis.start()
        back = await wait_for(reactor, lambda: service.ready, 5, "ready after the restart")
        report(f"SIGKILL and restart: ready {back:.3f}s after Redis answered")
        assert back < BACK_WITHIN
        await assert_works(reactor, service, redis, "after-restart")
        assert_one_outage(redis_log)
        assert not [line for line in redis_log if "Scheduling retry" in line]


@pytest_twisted.ensureDeferred
async def test_refused_at_startup_for_as_long_as_it_takes(
    reactor: Any, tmp_path: Path, redis_log: list[str], report: Callable[[str], None]
) -> None:
    """No Redis for many backoff periods: still trying, and one line says so."""
    redis = RedisProcess(tmp_path)  # a free port, nothing listening yet
    try:
        async with running(reactor, redis.port) as service:
            await sleep(reactor, 3.0)  # well past the backoff's cap
            assert not service.ready
            starts, ends = outage_lines(redis_log)
            assert len(starts) == 1 and not ends, redis_log
            redis.start()
            back = await wait_for(reactor, lambda: service.ready, 5, "ready once Redis is up")
            report(f"refused at startup: ready {back:.3f}s after Redis answered")
            assert back < BACK_WITHIN
            await assert_works(reactor, service, redis, "late-redis")
            assert len(redis_log) == 3, redis_log  # connecting, cannot reach, ready
    finally:
        redis.kill()


@pytest_twisted.ensureDeferred
async def test_a_half_open_connection_is_dropped_and_made_again(
    reactor: Any, redis: RedisProcess, proxy: FaultyProxy, redis_log: list[str],
    report: Callable[[str], None]
) -> None:
    """The sockets stay up and carry nothing: only fws's PINGs and watchdog can tell."""
    async with running(reactor, proxy.port) as service:
        await wait_for(reactor, lambda: service.ready, what="ready")
        proxy.freeze()  # both connections are now black holes; new ones work
        frozen_at = time.monotonic()
        d = service.publish("global", b"into the void")
        await wait_for(reactor, lambda: not service.ready, 5, "the half-open connection noticed")
        back = await wait_for(reactor, lambda: service.ready, 5, "ready on new connections")
        report(f"half-open: ready again {time.monotonic() - frozen_at:.3f}s after the freeze "
               f"(reconnect {back:.3f}s after noticing)")
        assert back < BACK_WITHIN
        with pytest.raises(RedisConnectionError):  # its connection died with it: never a hang
            await d
        await assert_works(reactor, service, redis, "after-half-open")
        assert_one_outage(redis_log)


@pytest_twisted.ensureDeferred
async def test_replies_that_never_come(
    reactor: Any, redis: RedisProcess, proxy: FaultyProxy, redis_log: list[str],
    report: Callable[[str], None]
) -> None:
    """Requests reach Redis, answers never come back, on every new connection too."""
    async with running(reactor, proxy.port) as service:
        await wait_for(reactor, lambda: service.ready, what="ready")
        proxy.drop_replies()
        unanswered = service.execute("set", "fws-test-key", b"1")
        await wait_for(reactor, lambda: not service.ready, 5, "the silence noticed")
        with pytest.raises(Exception, match=r"Redis response|Lost connection"):
            await unanswered
        await sleep(reactor, 3.0)  # many attempts, each failing on its deadline
        assert not service.ready
        proxy.heal()
        back = await wait_for(reactor, lambda: service.ready, 5, "ready once replies come")
        report(f"replies never coming: ready {back:.3f}s after they came again")
        assert back < BACK_WITHIN
        await assert_works(reactor, service, redis, "after-silence")
        start, _ = assert_one_outage(redis_log)
        assert "did not answer" in start


@pytest_twisted.ensureDeferred
async def test_a_refused_login_is_retried_until_it_works(
    reactor: Any, redis: RedisProcess, redis_log: list[str],
    logged_errors: list[dict[str, Any]], report: Callable[[str], None]
) -> None:
    """
    Redis refuses AUTH (no such password configured) until an operator sets it:
    txredisapi alone stops trying after the first refusal; fws says so once,
    at error level, and connects as soon as the password is right.
    """
    async with running(reactor, redis.port, password="s3cret") as service:
        await sleep(reactor, 2.0)
        assert not service.ready
        refusals = [line for line in redis_log if "refused the" in line]
        assert len(refusals) == 1, redis_log  # one line, not one per attempt or connection
        assert "AUTH" in refusals[0]
        assert len(logged_errors) == 1
        logged_errors.clear()
        assert redis.command("CONFIG", "SET", "requirepass", "s3cret") == b"+OK"
        back = await wait_for(reactor, lambda: service.ready, 5, "ready once AUTH works")
        report(f"refused login: ready {back:.3f}s after the password was set")
        assert back < BACK_WITHIN
        assert await service.publish("global", b"logged-in") == 1


# --- the reproduction of the issue: fws_server nodes, default timeouts, a long SIGSTOP ---


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.02) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.slow
def test_two_nodes_survive_a_stall_longer_than_every_default_timeout(
    redis: RedisProcess, processes: list[FwsProcess], report: Callable[[str], None]
) -> None:
    """
    The issue's reproduction: two nodes, Redis stopped for longer than the
    longest timeout fws has (the node TTL, 15 s; replies 5 s, connecting 3 s,
    PING 5 + 2 s). /readyz goes 503, then 200 again and cross-node broadcasts
    flow again within a second of SIGCONT.
    """
    from websockets.sync.client import connect

    nodes = []
    for _ in range(2):
        admin = free_port()
        proc = FwsProcess(["-i", "127.0.0.1", "-f", "broadcast_messages", "--storage",
                           "fws.storage_objects.redis", "--redis_port", str(redis.port),
                           "--redis_host", "127.0.0.1", "--admin",
                           f"tcp:{admin}:interface=127.0.0.1"])
        proc.args = ["-p", str(proc.port), *proc.args]
        proc.admin = admin  # type: ignore[attr-defined]
        processes.append(proc)
        proc.start()
        proc.wait_for(lambda admin=admin: readyz(admin)[0] == 200, "/readyz 200")
        nodes.append(proc)
    one, two = nodes
    with connect(one.url) as a, connect(two.url) as b:
        a.send("before")
        assert b.recv(timeout=5) == "before"
        redis.pause()
        try:
            for proc in nodes:
                wait_until(lambda proc=proc: readyz(proc.admin)[0] == 503,  # type: ignore[misc]
                           12, "/readyz 503")
            time.sleep(16.5 - 7)  # stopped for about 16.5 s in all
            for proc in nodes:
                assert readyz(proc.admin)[0] == 503  # type: ignore[attr-defined]
        finally:
            redis.resume()
        resumed = time.monotonic()
        for proc in nodes:
            wait_until(lambda proc=proc: readyz(proc.admin)[0] == 200,  # type: ignore[misc]
                       10, "/readyz 200 again")
        ready_after = time.monotonic() - resumed
        # Cross-node delivery: probes until one arrives on the other node.
        got: list[str] = []
        probe = 0
        while time.monotonic() - resumed < 10 and not got:
            probe += 1
            a.send(f"probe {probe}")
            try:
                got.append(b.recv(timeout=0.05))
            except TimeoutError:
                pass
        delivered_after = time.monotonic() - resumed
        report(f"two nodes, 16.5 s SIGSTOP: /readyz 200 on both {ready_after:.3f}s and "
               f"cross-node delivery {delivered_after:.3f}s after SIGCONT")
        assert got and got[0].startswith("probe ")
        assert ready_after < BACK_WITHIN and delivered_after < BACK_WITHIN
        a.send("after")
        while (message := b.recv(timeout=5)) != "after":
            assert message.startswith("probe ")
    for proc in nodes:
        proc.signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        outage = [line for line in proc.lines() if " unavailable (" in line]
        back = [line for line in proc.lines() if " back after " in line]
        assert len(outage) == 1 and len(back) == 1, proc.lines()
        assert "Scheduling retry" not in "\n".join(proc.lines())


@pytest_twisted.ensureDeferred
async def test_connecting_that_never_completes_fails_on_the_deadline(
    reactor: Any, redis_log: list[str]
) -> None:
    """A listener whose accept queue is full drops SYNs: the attempt hangs in connect()."""
    import socket

    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(blackhole.getsockname())
        except BlockingIOError:
            pass
        fillers.append(filler)
    await sleep(reactor, 0.3)
    try:
        async with running(reactor, blackhole.getsockname()[1]) as service:
            await sleep(reactor, 1.5)
            assert not service.ready
            starts, _ = outage_lines(redis_log)
            assert len(starts) == 1 and "no connection within 0.5s" in starts[0], redis_log
    finally:
        for sock in (*fillers, blackhole):
            sock.close()


@pytest_twisted.ensureDeferred
async def test_a_refused_subscription_is_one_error_line_without_a_traceback(
    reactor: Any, redis: RedisProcess, redis_log: list[str],
    logged_errors: list[dict[str, Any]], report: Callable[[str], None]
) -> None:
    """An ACL that forbids a channel: said once, in words, and fixed without a restart."""
    from fws.redis_service import RedisAddress, RedisService

    assert redis.command("ACL", "SETUSER", "fws", "on", ">pw", "~*", "+@all", "resetchannels",
                         "&global") == b"+OK"
    service = RedisService(
        reactor, RedisAddress(host="127.0.0.1", port=redis.port, username="fws", password="pw"),
        channels=[b"global", b"forbidden"], on_message=lambda *_: None,
        ping_interval=0.3, ping_timeout=0.2, reply_timeout=0.5, connect_timeout=0.5,
    )
    service.startService()
    try:
        await sleep(reactor, 1.5)
        assert service.commands_connected and not service.subscribed
        refusals = [line for line in redis_log if "refused the" in line]
        assert len(refusals) == 1 and "NOPERM" in refusals[0], redis_log
        assert not [line for line in redis_log if "Traceback" in line or "\n" in line], redis_log
        assert len(logged_errors) == 1
        logged_errors.clear()
        assert redis.command("ACL", "SETUSER", "fws", "allchannels") == b"+OK"
        back = await wait_for(reactor, lambda: service.ready, 5, "subscribed once allowed")
        report(f"refused subscription: ready {back:.3f}s after the ACL allowed it")
        assert back < BACK_WITHIN
    finally:
        await service.stopService()
