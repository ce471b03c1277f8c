"""
fws.ordered.Ordered: the one runner behind a connection's message and
disconnect chains, its data chain and the server's consumer chain. Unit
tests of its logic (the chains over real sockets are in test_server.py and
test_pipeline.py); items finish when the test fires their Deferreds.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

from fws.ordered import MAX_BACKLOG, Ordered


class Work:
    """A ``run`` for the runner: records each item as it starts; some go asynchronous."""

    def __init__(self, asynchronous: set[Any] = frozenset()) -> None:  # type: ignore[assignment]
        self.started: list[Any] = []
        self.pending: dict[Any, Deferred[None]] = {}
        self.asynchronous = set(asynchronous)

    def __call__(self, item: Any) -> Any:
        self.started.append(item)
        if item in self.asynchronous:
            d: Deferred[None] = Deferred()
            self.pending[item] = d
            return d
        return None

    def finish(self, item: Any) -> None:
        self.pending.pop(item).callback(None)


def start(work: Work, first: Any, **kwargs: Any) -> Ordered:
    """What an owner does: run the first item itself, make the runner when it goes asynchronous."""
    outcome = work(first)
    assert isinstance(outcome, Deferred)
    return Ordered(work, busy_with=outcome, **kwargs)


def test_items_wait_for_the_asynchronous_one_before_them() -> None:
    work = Work({1, 3})
    runner = start(work, 1)
    for item in (2, 3, 4, 5):
        runner.submit(item)
    assert work.started == [1] and runner.busy
    work.finish(1)
    assert work.started == [1, 2, 3] and runner.busy  # 3 is asynchronous too
    work.finish(3)
    assert work.started == [1, 2, 3, 4, 5] and not runner.busy
    runner.submit(6)  # idle: runs at once
    assert work.started[-1] == 6


def test_random_mixes_keep_submission_order() -> None:
    rng = random.Random(14)
    for _ in range(50):
        items = list(range(40))
        work = Work({i for i in items if rng.random() < 0.3} | {0})
        runner = start(work, 0)
        for item in items[1:]:
            runner.submit(item)
            while work.pending and rng.random() < 0.3:
                work.finish(rng.choice(list(work.pending)))
        while work.pending:
            work.finish(next(iter(work.pending)))
        assert work.started == items


def test_a_failed_item_does_not_stop_the_ones_after_it() -> None:
    started = []

    def run(item: int) -> Any:
        started.append(item)
        return fail(RuntimeError("filter failed")) if item == 2 else succeed(None)

    first: Deferred[None] = Deferred()
    runner = Ordered(run, busy_with=first)
    for item in (2, 3):
        runner.submit(item)
    first.callback(None)
    assert started == [2, 3] and not runner.busy


def test_the_owner_is_paused_over_the_backlog_and_resumed_at_half() -> None:
    calls: list[str] = []
    work = Work({0})
    runner = start(work, 0, pause=lambda: calls.append("pause"),
                   resume=lambda: calls.append("resume"))
    for item in range(1, MAX_BACKLOG + 1):
        runner.submit(item)
    assert calls == []  # MAX_BACKLOG waiting: not over it yet
    runner.submit(MAX_BACKLOG + 1)
    assert calls == ["pause"]
    # Stop just after half the backlog has run: MAX_BACKLOG // 2 still wait then.
    work.asynchronous = {MAX_BACKLOG // 2 + 2}
    work.finish(0)
    assert calls == ["pause", "resume"]
    assert len(work.started) == MAX_BACKLOG // 2 + 3


def test_high_zero_pauses_as_soon_as_an_item_runs_asynchronously() -> None:
    calls: list[str] = []
    work = Work({"a"})
    runner = start(work, "a", pause=lambda: calls.append("pause"),
                   resume=lambda: calls.append("resume"), high=0)
    assert calls == ["pause"]
    runner.submit("b")
    assert calls == ["pause"]
    work.finish("a")
    assert work.started == ["a", "b"] and calls == ["pause", "resume"]
