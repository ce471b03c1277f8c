"""
fws.timers.BucketTimer: Autobahn's per-connection timers with O(1) cancel.

Pure unit tests on a twisted Clock (no sockets, no wall clock); the real
timeouts it serves (opening handshake, ping, pong) are exercised end to end in
test_hardening.py.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from fws.timers import BucketTimer


def test_calls_run_at_the_end_of_their_bucket_never_early() -> None:
    clock = Clock()
    timer = BucketTimer(clock, bucket_seconds=0.25)
    ran: list[tuple[str, Any]] = []
    timer.call_later(0.3, lambda *a, **k: ran.append(("a", (a, k))), 1, x=2)
    timer.call_later(0.45, ran.append, ("b", None))
    timer.call_later(1.0, ran.append, ("c", None))
    clock.advance(0.375)
    assert ran == []  # past a's deadline, but its bucket ends at 0.5
    clock.advance(0.0625)
    assert ran == []
    clock.advance(0.0625)  # 0.5
    assert ran == [("a", ((1,), {"x": 2})), ("b", None)]
    clock.advance(0.25)
    assert ran[-1] == ("b", None)  # c is due at 1.0, not a moment before
    clock.advance(0.25)
    assert ran[-1] == ("c", None)
    assert timer.pending() == 0 and clock.getDelayedCalls() == []


def test_cancel_is_constant_time_and_frees_the_bucket() -> None:
    clock = Clock()
    timer = BucketTimer(clock)
    ran: list[int] = []
    calls = [timer.call_later(10, ran.append, i) for i in range(5000)]
    assert len(clock.getDelayedCalls()) == 1  # one reactor timer for the whole bucket
    for call in calls[1:]:
        call.cancel()
    assert timer.pending() == 1 and len(clock.getDelayedCalls()) == 1
    calls[0].cancel()
    calls[0].cancel()  # twice is harmless
    assert timer.pending() == 0 and clock.getDelayedCalls() == []  # last one out cancels it
    clock.advance(11)
    assert ran == []


def test_big_buckets_run_in_chunks_and_cancels_between_chunks_hold() -> None:
    clock = Clock()
    turns: list[float] = []
    call_later = clock.callLater

    def counting_call_later(delay: float, *args: Any, **kwargs: Any) -> Any:
        turns.append(delay)
        return call_later(delay, *args, **kwargs)

    clock.callLater = counting_call_later  # type: ignore[method-assign]
    timer = BucketTimer(clock, chunk_size=100)
    ran: list[int] = []
    calls: list[Any] = []

    def first() -> None:
        ran.append(0)
        calls[150].cancel()  # a call of the first chunk cancels one of the second

    calls.append(timer.call_later(1, first))
    calls += [timer.call_later(1, ran.append, i) for i in range(1, 250)]
    clock.advance(1)
    assert ran == [i for i in range(250) if i != 150]
    assert turns.count(0) == 2  # 250 calls, 100 per reactor turn: two more turns
    assert not calls[1].active() and calls[1].cancel() is None  # cancel after running: no-op


def test_a_failing_call_is_logged_and_the_others_still_run() -> None:
    clock = Clock()
    timer = BucketTimer(clock)
    ran: list[str] = []
    events: list[dict[str, Any]] = []
    timer.call_later(1, ran.append, "before")
    timer.call_later(1, lambda: 1 / 0)
    timer.call_later(1, ran.append, "after")
    globalLogPublisher.addObserver(events.append)
    try:
        clock.advance(1)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert ran == ["before", "after"]
    [failure] = [e["log_failure"] for e in events if "log_failure" in e]
    assert failure.check(ZeroDivisionError)


def test_bucket_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        BucketTimer(Clock(), bucket_seconds=0)


def test_autobahn_schedules_its_timeouts_through_the_factory_timer() -> None:
    """What fws replaces is what Autobahn uses (else the replacement is a harmless no-op)."""
    import autobahn.websocket.protocol as autobahn_protocol
    from autobahn.websocket.protocol import WebSocketProtocol, WebSocketServerProtocol

    scheduled = "self.factory._batched_timer.call_later"
    assert scheduled in inspect.getsource(WebSocketProtocol._connectionMade)  # handshake timeout
    assert scheduled in inspect.getsource(WebSocketProtocol._sendAutoPing)  # pong timeout
    assert scheduled in inspect.getsource(WebSocketProtocol._cancelAutoPingTimeoutCall)  # next ping
    assert "openHandshakeTimeoutCall.cancel()" in inspect.getsource(WebSocketServerProtocol)
    assert "batched_timer = txaio.make_batched_timer" in inspect.getsource(autobahn_protocol)


def test_a_bound_method_is_kept_as_its_function_and_object() -> None:
    """No bound-method object per scheduled call (64 bytes per idle connection's auto-ping)."""
    import gc

    clock = Clock()
    timer = BucketTimer(clock)
    got: list[Any] = []

    class Pinger:
        def ping(self, *args: Any, **kwargs: Any) -> None:
            got.append((self, args, kwargs))

    pinger = Pinger()
    call = timer.call_later(1, pinger.ping)
    with_args = timer.call_later(1, pinger.ping, 1, two=2)
    assert call._func is Pinger.ping and call._self is pinger
    gc.collect()
    assert not [o for o in gc.get_referrers(pinger) if inspect.ismethod(o)]
    clock.advance(1.2)
    assert got == [(pinger, (), {}), (pinger, (1,), {"two": 2})]
    assert not call.active() and not with_args.active()
