"""
The sequencing of RedisHistory (fws.storage_objects.redis), as pure logic:
a server and a storage that record what is delivered, reads of the stream
answered by the test. The same against a real redis-server and real nodes:
tests/test_history_gapfill_redis.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

import fws.storage_objects.redis as redis_storage
from fws.history import Page
from fws.redis_service import RedisUnavailable
from fws.storage_objects.redis import CHECKS_AT_ONCE, RedisHistory


class Recorder:
    """The server and the storage: what reaches delivery, in order."""

    delivers_channels = True
    key = "fws"
    bus = b"fws:bus"
    node_id = "n"

    def __init__(self) -> None:
        self.out: list[tuple[Any, ...]] = []
        self.fences: list[str] = []

    def deliver_history(self, group: str, epoch: str | None, offset: int | None,
                        exclude_id: str | None, is_binary: bool, payload: bytes,
                        everyone: bool = False) -> int:
        self.out.append(("group", group, epoch, offset, exclude_id, payload))
        return 1

    def deliver_kept_channel(self, name: str, payload: bytes, pattern: str | None,
                             position: tuple[str, int]) -> None:
        self.out.append(("channel", name, *position, pattern, payload))

    def history_fenced(self, fence: str) -> None:
        self.fences.append(fence)

    def is_channel(self, name: str) -> bool:
        return False


class Store(RedisHistory):
    """Reads answered by the test: ``reads`` holds (group, channel, after, count, deferred)."""

    def __init__(self, size: int = 100) -> None:
        self.recorder = Recorder()
        self.clock = Clock()
        super().__init__(self.recorder, self.recorder, size, 300, 0, self.clock)  # type: ignore[arg-type]
        self.reads: list[tuple[str, bool, int, int, Deferred[Page]]] = []

    def _read(self, group: str, channel: bool, after: int, count: int,
              fence: str) -> Deferred[Page]:
        d: Deferred[Page] = Deferred()
        self.reads.append((group, channel, after, count, d))
        return d

    def answer(self, epoch: str, last: int, offsets: list[int], complete: bool = True) -> None:
        """The oldest read asked gets the entries ``offsets`` (payload ``p<offset>``)."""
        *_, d = self.reads.pop(0)
        d.callback(Page(epoch, last, [(o, 0.0, False, b"p%d" % o) for o in offsets], 0.0,
                        complete))

    def live(self, group: str, offset: int, epoch: str = "E") -> None:
        self.deliver(group, epoch, offset, None, False, b"p%d" % offset)

    def offsets(self) -> list[int]:
        return [entry[3] for entry in self.recorder.out]


@pytest.fixture
def warned() -> Any:
    lines: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_level") == LogLevel.warn:
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    yield lines
    globalLogPublisher.removeObserver(observer)


def test_in_order_messages_pass_and_duplicates_are_dropped_and_counted() -> None:
    store = Store()
    for offset in (5, 6, 6, 7, 3, 8):  # (the first seen starts the group wherever it is)
        store.live("room", offset)
    assert store.offsets() == [5, 6, 7, 8]
    assert store.duplicates == 2 and not store.reads


def test_a_gap_holds_live_messages_reads_the_missing_ones_then_delivers_all_in_order() -> None:
    store = Store()
    store.live("room", 1)
    store.live("room", 4)
    store.live("room", 5)
    assert store.offsets() == [1]  # 4 and 5 wait for 2 and 3
    assert [read[:4] for read in store.reads] == [("room", False, 1, 2)]
    store.answer("E", 5, [2, 3], complete=False)
    assert store.offsets() == [1, 2, 3, 4, 5]
    # A filled message names no sender (the stream does not keep it).
    assert store.recorder.out[1] == ("group", "room", "E", 2, None, b"p2")
    store.live("room", 3)
    store.live("room", 6)
    assert store.offsets() == [1, 2, 3, 4, 5, 6]
    assert (store.filled, store.gap_lost, store.duplicates) == (2, 0, 1)


def test_what_the_stream_no_longer_has_is_counted_and_said_once(warned: list[str]) -> None:
    store = Store(size=3)
    store.live("room", 1)
    store.live("room", 10)
    # At most SIZE: the three before 10, not the eight missed.
    assert [read[2:4] for read in store.reads] == [(6, 3)]
    store.answer("E", 10, [8, 9])  # 7 trimmed meanwhile
    assert store.offsets() == [1, 8, 9, 10]
    assert store.gap_lost == 6 and store.filled == 2
    assert len(warned) == 1 and "6 messages of room" in warned[0]


def test_an_epoch_changed_under_a_fill_delivers_the_held_ones(warned: list[str]) -> None:
    store = Store()
    store.live("room", 1)
    store.live("room", 3)
    store.answer("F", 0, [])
    assert store.offsets() == [1, 3]
    assert store.gap_lost == 1 and len(warned) == 1


def test_a_failed_read_delivers_the_held_ones_and_says_so_rate_limited(
        warned: list[str]) -> None:
    store = Store()
    for group in ("a", "b"):
        store.live(group, 1)
        store.live(group, 3)
        store.live(group, 4)
    for _ in range(2):
        *_, d = store.reads.pop(0)
        d.errback(Failure(RedisUnavailable("Redis is unavailable")))
    assert store.offsets() == [1, 1, 3, 4, 3, 4]
    assert store.fill_failures == 2 and store.gap_lost == 2
    assert len(warned) == 1 and "could not read" in warned[0]
    store.live("a", 5)
    assert store.offsets()[-1] == 5 and not store.reads


def test_a_token_group_and_a_channel_of_one_name_are_two_sequences() -> None:
    store = Store()
    store.live("news", 1)
    store.deliver_channel("news", "n*", "C", 7, b"c7")
    store.deliver_channel("news", "n*", "C", 9, b"c9")
    store.live("news", 2)
    assert [read[:3] for read in store.reads] == [("news", True, 7)]
    store.answer("C", 9, [8])
    assert store.recorder.out == [
        ("group", "news", "E", 1, None, b"p1"), ("channel", "news", "C", 7, "n*", b"c7"),
        ("group", "news", "E", 2, None, b"p2"), ("channel", "news", "C", 8, "n*", b"p8"),
        ("channel", "news", "C", 9, "n*", b"c9")]


def test_replay_fences_wait_for_the_fills_under_way() -> None:
    store = Store()
    store.fenced("f1")
    assert store.recorder.fences == ["f1"]
    store.live("room", 1)
    store.live("room", 3)
    store.fenced("f2")
    assert store.recorder.fences == ["f1"]
    store.answer("E", 3, [2])
    assert store.recorder.fences == ["f1", "f2"]
    assert store.offsets() == [1, 2, 3]


def test_more_live_messages_than_a_fill_holds_end_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_storage, "MAX_HELD", 3)
    store = Store()
    store.live("room", 1)
    for offset in range(5, 9):
        store.live("room", offset)
    assert store.offsets() == [1, 5, 6, 7, 8]  # given up: 2 to 4 are lost
    assert store.gap_lost == 3
    store.answer("E", 8, [2, 3, 4])  # too late: nothing more
    assert store.offsets() == [1, 5, 6, 7, 8]


def test_groups_remembered_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_storage, "MAX_GROUPS", 2)
    store = Store()
    for group in ("a", "b", "a", "c"):
        store.live(group, 1)
    store.live("b", 5)  # b was forgotten (the least recent): it starts afresh, no fill
    assert store.offsets() == [1, 1, 1, 5] and not store.reads
    store.live("c", 3)  # c was not: a gap
    assert [read[:3] for read in store.reads] == [("c", False, 1)]


def test_the_check_after_resubscribing_reads_every_group_paced() -> None:
    store = Store()
    groups = [f"g{i}" for i in range(CHECKS_AT_ONCE + 5)]
    for group in groups:
        store.live(group, 1)
    store.check_all()
    assert not store.reads  # (on the next reactor turn)
    store.clock.advance(0)
    assert len(store.reads) == CHECKS_AT_ONCE
    assert store.reads[0][:4] == ("g0", False, 1, 100)
    store.answer("E", 3, [2, 3])
    store.live("g1", 3)  # live while g1's check reads: held behind it
    store.answer("E", 2, [2])
    for _ in range(CHECKS_AT_ONCE - 2):
        store.answer("E", 1, [])
    store.clock.advance(0)
    assert len(store.reads) == 5
    while store.reads:
        store.answer("E", 1, [])
    store.clock.advance(0)
    out = [(entry[1], entry[3]) for entry in store.recorder.out[len(groups):]]
    assert out == [("g0", 2), ("g0", 3), ("g1", 2), ("g1", 3)]
    assert store.filled == 3 and not store.reads


def test_a_check_that_finds_a_new_epoch_reads_it_from_its_start() -> None:
    store = Store(size=10)
    store.live("room", 40)
    store.check_all()
    store.clock.advance(0)
    store.answer("F", 2, [])  # Redis restarted empty; two were published since
    assert store.reads[0][2:4] == (0, 2)
    store.answer("F", 2, [1, 2])
    assert [(entry[2], entry[3]) for entry in store.recorder.out] == [
        ("E", 40), ("F", 1), ("F", 2)]
    store.live("room", 3, epoch="F")
    assert store.offsets()[-1] == 3
