"""
Autobahn's per-connection timers, batched as txaio batches them, but with
cancelling in constant time.

Autobahn schedules every connection's opening-handshake timeout, its
auto-pings and pong timeouts and its closing-handshake timeout through
``factory._batched_timer`` (``txaio.make_batched_timer``): one reactor
``DelayedCall`` per bucket instead of one per connection, which keeps the
reactor's timer heap small with many connections. txaio keeps each bucket's
calls in a list, though, and its buckets are whole seconds (it truncates the
deadline to a second before bucketing), so cancelling a call, which every
successful handshake does to its timeout and every pong to its ping timeout,
scans a list of everything else due in that second: at a few thousand
handshakes per second, 20 % of a handshake's CPU time (profile in
``benchmarks/profiles/fws-connect.before.txt``).

:class:`BucketTimer` keeps each bucket as an insertion-ordered dict, so
cancelling is one ``del``; it never fires a call early (txaio's rounding could
by up to a second), and a call that raises is logged without stopping the
others in its bucket.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import MethodType
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

_log = Logger()

#: BucketCall._self of a call that is not of a bound method.
_NO_SELF = object()


class BucketCall:
    """One scheduled call; the only thing Autobahn does with it is :meth:`cancel`."""

    __slots__ = ("_timer", "_key", "_func", "_self", "_args", "_kwargs")

    def __init__(self, timer: BucketTimer, key: int, func: Callable[..., Any],
                 args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> None:
        self._timer: BucketTimer | None = timer
        self._key = key
        #: A bound method is kept as its function and its object: Autobahn
        #: schedules ``self._sendAutoPing`` for every connection, and the bound
        #: method object would be 64 bytes of every idle connection.
        if type(func) is MethodType:
            self._func: Callable[..., Any] = func.__func__
            self._self: object = func.__self__
        else:
            self._func = func
            self._self = _NO_SELF
        self._args = args
        #: None rather than an empty dict (64 bytes per connection's auto-ping).
        self._kwargs = kwargs

    def cancel(self) -> None:
        """Forget the call; a no-op once it has run or been cancelled."""
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer._remove(self)

    def active(self) -> bool:
        """Whether the call is still to run."""
        return self._timer is not None


class BucketTimer:
    """
    ``txaio.IBatchedTimer`` for ``WebSocketServerFactory._batched_timer``.

    :param reactor: Where the per-bucket ``DelayedCall`` is scheduled.
    :param bucket_seconds: Calls due within one such interval run together, at
        its end (Autobahn asks txaio for 0.2 s).
    :param chunk_size: At most this many calls run per reactor turn, so that
        thousands of timeouts due at once do not stall the reactor.
    """

    def __init__(self, reactor: IReactorTime, bucket_seconds: float = 0.2,
                 chunk_size: int = 1000) -> None:
        if bucket_seconds <= 0:
            raise ValueError("bucket_seconds must be > 0")
        self._reactor = reactor
        self._bucket = bucket_seconds
        self._chunk = max(1, chunk_size)
        #: Bucket number -> its DelayedCall, its calls, and the number once more:
        #: every call of the bucket holds that one int, not one of its own.
        self._buckets: dict[int, tuple[IDelayedCall, dict[BucketCall, None], int]] = {}

    def call_later(self, delay: float, func: Callable[..., Any], *args: Any,
                   **kwargs: Any) -> BucketCall:
        """Run ``func(*args, **kwargs)`` at the end of the bucket ``delay`` seconds from now falls in."""
        key = math.ceil((self._reactor.seconds() + delay) / self._bucket)
        bucket = self._buckets.get(key)
        if bucket is None:
            call = BucketCall(self, key, func, args, kwargs or None)
            wait = max(0.0, key * self._bucket - self._reactor.seconds())
            self._buckets[key] = (self._reactor.callLater(wait, self._fire, key), {call: None}, key)
        else:
            call = BucketCall(self, bucket[2], func, args, kwargs or None)
            bucket[1][call] = None
        return call

    def pending(self) -> int:
        """How many calls are waiting (for tests and metrics)."""
        return sum(len(calls) for _, calls, _key in self._buckets.values())

    def _remove(self, call: BucketCall) -> None:
        bucket = self._buckets.get(call._key)
        if bucket is None:
            return  # its bucket is running; _run skips cancelled calls
        calls = bucket[1]
        calls.pop(call, None)
        if not calls:
            del self._buckets[call._key]
            bucket[0].cancel()

    def _fire(self, key: int) -> None:
        calls = self._buckets.pop(key)[1]
        self._run(list(calls))

    def _run(self, calls: list[BucketCall]) -> None:
        chunk, rest = calls[:self._chunk], calls[self._chunk:]
        for call in chunk:
            if call._timer is None:
                continue  # cancelled after its bucket came due (by an earlier call of it)
            call._timer = None
            try:
                args = call._args if call._self is _NO_SELF else (call._self, *call._args)
                kwargs = call._kwargs
                if kwargs is None:
                    call._func(*args)
                else:
                    call._func(*args, **kwargs)
            except Exception:
                _log.failure("timer call {func!r} failed", func=call._func)
        if rest:
            self._reactor.callLater(0, self._run, rest)
