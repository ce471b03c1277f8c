"""
One ordered runner for everything fws feeds to filters one item at a time.

A connection's messages (and, last, its disconnect), a connection's raw
reads through the data chain, and the server's pub/sub messages through the
consumer chain must each reach their filters in arrival order, even when a
filter goes asynchronous: the next item starts only when the one before has
finished. :class:`Ordered` is that rule, written once. It costs nothing until
a chain first returns a Deferred: the owner runs items itself while it has no
runner, and makes one (``busy_with`` that Deferred) the first time an item
goes asynchronous; from then on every item goes through the runner.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

#: While more items than this wait, the runner asks its owner to stop reading
#: (for a connection: TCP backpressure to its client).
MAX_BACKLOG = 256


class Ordered:
    """
    Runs items one at a time through ``run``, in the order they were given.

    :param run: Does one item; returns ``None``, a result, or a Deferred
        that fires when the item is done.
    :param pause: Called once more than ``high`` items wait (``high=0``: as
        soon as an item is running asynchronously), to stop what feeds the
        runner; ``resume`` is called once at most ``high // 2`` wait again.
    :param busy_with: The Deferred of the item already running, when the
        runner is made because an item went asynchronous.
    """

    __slots__ = ("_high", "_pause", "_paused", "_queue", "_resume", "_run")

    def __init__(self, run: Callable[[Any], Any], *, busy_with: Deferred[Any] | None = None,
                 pause: Callable[[], None] | None = None,
                 resume: Callable[[], None] | None = None, high: int = MAX_BACKLOG) -> None:
        self._run = run
        self._pause = pause
        self._resume = resume
        self._high = high
        self._paused = False
        self._queue: deque[Any] | None = None
        if busy_with is not None:
            self._wait(busy_with)

    @property
    def busy(self) -> bool:
        """Whether an item is running asynchronously (what is submitted now waits)."""
        return self._queue is not None

    def submit(self, item: Any) -> None:
        """Run ``item`` now if nothing is running, else after everything before it."""
        queue = self._queue
        if queue is not None:
            queue.append(item)
            if not self._paused and len(queue) > self._high and self._pause is not None:
                self._paused = True
                self._pause()
            return
        outcome = self._run(item)
        if outcome is not None and isinstance(outcome, Deferred):
            self._wait(outcome)

    def _wait(self, outcome: Deferred[Any]) -> None:
        self._queue = deque()
        if self._high == 0 and not self._paused and self._pause is not None:
            self._paused = True
            self._pause()
        outcome.addBoth(self._next)

    def _next(self, _: Any = None) -> None:
        """The running item is done: run what waited, in order, until one goes asynchronous."""
        queue = self._queue
        assert queue is not None
        while queue:
            outcome = self._run(queue.popleft())
            if outcome is not None and isinstance(outcome, Deferred):
                outcome.addBoth(self._next)
                return
            if self._paused and len(queue) <= self._high // 2 and self._high:
                self._paused = False
                if self._resume is not None:
                    self._resume()
        self._queue = None
        if self._paused:
            self._paused = False
            if self._resume is not None:
                self._resume()


__all__ = ["MAX_BACKLOG", "Ordered"]
