"""
Group history: offsets, epochs, the ``fws.v1`` header, resume and replay.

With ``--history SIZE`` every message delivered to a group (a token group,
``*`` for everyone, a pub/sub channel) gets the group's next **offset**
(1, 2, 3 ...) within an **epoch**, a short random string that names one
unbroken history; the last SIZE messages (none older than ``--history-ttl``)
are kept. Clients that opt in with the ``fws.v1`` subprotocol receive each
group message as a header line, ``\\n``, then the payload
(:func:`header`); reconnecting with ``?resume={"group": [epoch, offset]}``
(:func:`parse_resume`) replays what they missed, then tells them whether
the history was complete (:func:`control`). ``--history 0``, the default,
changes nothing: no subprotocol is accepted and ``resume`` is not read.

Who keeps what:

* a :class:`HistoryStore` keeps the messages and assigns offsets:
  :class:`MemoryHistory` here (one node), the Redis one
  (:class:`fws.storage_objects.redis.RedisHistory`) in one Redis Stream per
  group shared by every node. A store delivers what it records through
  :meth:`HistoryServer.deliver_history` (at once in memory; from Redis's
  pub/sub echo with Redis, on every node, the sender's included, so that
  every member sees one order);
* the server (:class:`fws.factory.FwsServerFactory`) frames each message
  once per group in its two forms, plain and headed (the wire's
  ``send_split``), and skips the connections being replayed;
* a :class:`Replay` catches one connection up on one group, page by page,
  holding the live messages that arrive meanwhile and delivering them after
  the replay without duplicates; the node's :class:`Replayer` paces every
  replay together (:data:`REPLAY_BUDGET` messages per reactor turn), so a
  reconnect storm does not stall the node.
"""

from __future__ import annotations

import json
import secrets
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger()

#: The subprotocol that asks for headers (``Sec-WebSocket-Protocol: fws.v1``).
SUBPROTOCOL = "fws.v1"
#: The group of everyone (``broadcast_messages``).
EVERYONE = "*"
#: The query parameter a reconnecting client names its positions in.
RESUME_PARAM = "resume"
#: Bounds of ``resume``: its length, its groups, a group name, an epoch.
RESUME_MAX_BYTES = 4096
RESUME_MAX_GROUPS = 32
MAX_NAME = 256
MAX_EPOCH = 64
#: Offsets are JSON numbers that every client can hold exactly.
MAX_OFFSET = 2**53 - 1
#: Messages, and payload bytes, all the replays of a node send per reactor turn together ...
REPLAY_BUDGET = 500
REPLAY_BYTES = 4 * 1024 * 1024
#: ... read from the store this many (and about this many bytes) at a time per replay.
PAGE = 200
PAGE_BYTES = 1024 * 1024
#: Groups the memory history knows at most (the least recently written go first).
MAX_GROUPS = 100_000
#: Live messages a replay holds for its connection before it gives up (recovered:false).
MAX_HELD = 10_000
#: Seconds a replay to a client that does not read waits before it looks again.
BLOCKED_WAIT = 0.05
#: Seconds a read's fence may take to come back (it is lost if the subscriber
#: connection was down) before the replay reads again, with a new fence.
FENCE_TIMEOUT = 3.0


def new_epoch() -> str:
    """A new epoch: 8 random hex digits."""
    return secrets.token_hex(4)


def header(group: str, epoch: str | None, offset: int | None) -> bytes:
    """The ``fws.v1`` header line of a group message, ``\\n`` included."""
    return json.dumps({"group": group, "epoch": epoch, "offset": offset}, separators=(",", ":"),
                      ensure_ascii=False).encode() + b"\n"


def control(group: str, recovered: bool, epoch: str | None, offset: int | None) -> str:
    """What a resumed group ends with: whether everything missed was replayed, and where it is."""
    return json.dumps({"group": group, "recovered": recovered, "epoch": epoch, "offset": offset},
                      separators=(",", ":"), ensure_ascii=False)


class Once:
    """
    Remembers which keys something was already said for, at most ``most`` of
    them: one warning per channel, and a publisher inventing channel names
    cannot grow it without bound. Once full it forgets nothing (forgetting
    the oldest would say it again for every message of a publisher cycling
    through more names than that): a new key is then said for on the first
    and every 1000th time one comes.
    """

    __slots__ = ("_most", "_seen", "_beyond")

    def __init__(self, most: int = 1000) -> None:
        self._most = most
        self._seen: set[str] = set()
        self._beyond = 0

    def first(self, key: str) -> bool:
        """Whether to say it for ``key`` (new: remembered from now on, while there is room)."""
        seen = self._seen
        if key in seen:
            return False
        if len(seen) < self._most:
            seen.add(key)
            return True
        self._beyond += 1
        return self._beyond % 1000 == 1


class ResumeError(ValueError):
    """A ``resume`` parameter fws cannot use; the message says why, in one line."""


def parse_resume(values: list[str] | None) -> dict[str, tuple[str, int]]:
    """
    ``resume``'s groups (the query parameter, already URL-decoded): group ->
    (epoch, offset), in the client's order.

    :raises ResumeError: it is not one JSON object of at most
        :data:`RESUME_MAX_GROUPS` groups, each ``[epoch, offset]`` within bounds.
    """
    if not values:
        return {}
    if len(values) > 1:
        raise ResumeError("resume given more than once")
    text = values[0]
    if len(text) > RESUME_MAX_BYTES:
        raise ResumeError(f"resume longer than {RESUME_MAX_BYTES} characters")
    try:
        data = json.loads(text)
    except ValueError:
        raise ResumeError("resume is not JSON") from None
    if not isinstance(data, dict):
        raise ResumeError('resume must be a JSON object: {"group": [epoch, offset]}')
    if len(data) > RESUME_MAX_GROUPS:
        raise ResumeError(f"resume names more than {RESUME_MAX_GROUPS} groups")
    out: dict[str, tuple[str, int]] = {}
    for group, position in data.items():
        if not group or len(group) > MAX_NAME or any(c.isspace() for c in group):
            raise ResumeError("resume: a group name must be 1 to 256 characters without spaces")
        if (not isinstance(position, list) or len(position) != 2
                or not isinstance(position[0], str) or len(position[0]) > MAX_EPOCH
                or type(position[1]) is not int or not 0 <= position[1] <= MAX_OFFSET):
            raise ResumeError(f"resume: {group!r} must be [epoch, offset] (a string and a "
                              "whole number from 0)")
        out[group] = (position[0], position[1])
    return out


@dataclass
class Page:
    """
    One read of a group's history: what follows an offset.

    :ivar epoch: The group's current epoch.
    :ivar last: The group's last offset.
    :ivar entries: ``(offset, time, binary, payload)`` after the offset asked
        for, in order, as kept (:class:`Replay` checks them against the
        retention).
    :ivar now: The store's clock, to compare ``time`` with.
    :ivar complete: Nothing more was kept after these when they were read.
    """

    epoch: str
    last: int
    entries: list[tuple[int, float, bool, bytes]]
    now: float
    complete: bool


class HistoryServer(Protocol):
    """What a store and a replay call on the server."""

    def deliver_history(self, group: str, epoch: str | None, offset: int | None,
                        exclude_id: str | None, is_binary: bool, payload: bytes,
                        everyone: bool = False) -> int:
        """
        A group message with its position (``None``: not kept): deliver it to
        the members here (``everyone``: all users, for ``*`` and channels).
        """

    def replay_done(self, replay: Replay) -> None:
        """``replay`` is over: its connection takes the group's live messages again."""

    def history_fenced(self, fence: str) -> None:
        """A replay's read fence came back from the store (:meth:`HistoryStore.read`)."""

    @property
    def delivers_channels(self) -> bool:
        """Whether this server's consumer chain delivers pub/sub channels to its users."""


class HistoryStore(Protocol):
    """Keeps each group's messages and assigns their offsets."""

    def record(self, group: str, exclude_id: str | None, is_binary: bool, payload: bytes,
               channel: bool = False) -> int:
        """
        Keep one group message, give it its offset and have it delivered
        (:meth:`HistoryServer.deliver_history`): now, or once the store has
        assigned it. ``channel``: the group is a pub/sub channel.

        :returns: How many local connections it was written to now.
        """

    def is_channel(self, group: str) -> bool:
        """Whether ``group`` names a pub/sub channel (not a token group) to this store."""

    def read(self, group: str, after: int, count: int, fence: str) -> Deferred[Page]:
        """
        Up to ``count`` kept messages after offset ``after``, stopping after
        the first that reaches :data:`PAGE_BYTES` of payload (the group gets
        an epoch if it had none). A store whose deliveries come from a
        stream of their own (Redis's pub/sub) sends ``fence`` down that
        stream in the same step: :meth:`Replayer.fenced` once it arrives, so
        that a replay knows which live messages the read already covered.
        """

    @property
    def fences(self) -> bool:
        """Whether :meth:`read` sends fences (else its pages are in step with deliveries)."""

    def collect(self) -> Mapping[str, int]:
        """
        For the metrics: ``kept`` (messages kept so far, a counter) and, where
        the store is this node's, ``groups``, ``messages`` and ``bytes`` kept now.
        """


class _Ring:
    """One group's kept messages in memory."""

    __slots__ = ("epoch", "last", "entries", "channel")

    def __init__(self, channel: bool) -> None:
        self.epoch = new_epoch()
        self.last = 0
        self.entries: deque[tuple[int, float, bool, bytes]] = deque()
        self.channel = channel


class MemoryHistory:
    """
    :class:`HistoryStore` of one node: a ring per group, bounded by
    ``--history`` messages, ``--history-ttl`` seconds, and
    ``--history-max-bytes`` for all groups together (the groups that were
    written to least recently lose their oldest messages first; a group
    idle for longer than the TTL is forgotten, and starts a new epoch).
    """

    fences = False

    def __init__(self, server: HistoryServer, reactor: IReactorTime, size: int, ttl: float,
                 max_bytes: int) -> None:
        self.server = server
        self.reactor = reactor
        self.size = size
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.bytes = 0
        self.messages = 0
        #: Messages kept so far (a counter; ``messages`` is what is kept now).
        self.kept = 0
        #: Groups by when they were last written to, the oldest first.
        self._rings: OrderedDict[str, _Ring] = OrderedDict()
        self._last_write: dict[str, float] = {}

    def _ring(self, group: str, channel: bool) -> _Ring:
        ring = self._rings.get(group)
        if ring is None:
            rings = self._rings
            while len(rings) >= MAX_GROUPS:
                oldest, dropped = rings.popitem(last=False)
                del self._last_write[oldest]
                while dropped.entries:
                    self._drop_oldest(dropped)
            ring = rings[group] = _Ring(channel)
            self._last_write[group] = self.reactor.seconds()
        return ring

    def is_channel(self, group: str) -> bool:
        ring = self._rings.get(group)
        return ring is not None and ring.channel

    def record(self, group: str, exclude_id: str | None, is_binary: bool, payload: bytes,
               channel: bool = False) -> int:
        now = self.reactor.seconds()
        self._forget_idle(now)
        ring = self._ring(group, channel)
        ring.channel = ring.channel or channel
        self._rings.move_to_end(group)
        self._last_write[group] = now
        ring.last += 1
        ring.entries.append((ring.last, now, is_binary, payload))
        self.bytes += len(payload)
        self.messages += 1
        while len(ring.entries) > self.size:
            self._drop_oldest(ring)
        self._expire(ring, now)
        while self.bytes > self.max_bytes:
            oldest = next((r for r in self._rings.values() if r.entries), None)
            if oldest is None:
                break
            self._drop_oldest(oldest)
        self.kept += 1
        return self.server.deliver_history(group, ring.epoch, ring.last, exclude_id, is_binary,
                                           payload, channel)

    def _drop_oldest(self, ring: _Ring) -> None:
        entry = ring.entries.popleft()
        self.bytes -= len(entry[3])
        self.messages -= 1

    def _expire(self, ring: _Ring, now: float) -> None:
        entries, horizon = ring.entries, now - self.ttl
        while entries and entries[0][1] < horizon:
            self._drop_oldest(ring)

    def _forget_idle(self, now: float) -> None:
        """Groups not written to for a TTL: nothing of them is resumable any more."""
        horizon = now - self.ttl
        rings = self._rings
        while rings:
            group = next(iter(rings))
            if self._last_write[group] >= horizon:
                return
            ring = rings.pop(group)
            del self._last_write[group]
            while ring.entries:
                self._drop_oldest(ring)

    def read(self, group: str, after: int, count: int, fence: str) -> Deferred[Page]:
        now = self.reactor.seconds()
        self._forget_idle(now)
        ring = self._ring(group, False)
        self._expire(ring, now)
        entries = ring.entries
        start = 0
        if entries:
            # Offsets in a ring are consecutive: the index of ``after + 1`` is known.
            start = max(0, after + 1 - entries[0][0])
        page = []
        size = 0
        for i in range(start, min(len(entries), start + count)):
            page.append(entries[i])
            size += len(entries[i][3])
            if size >= PAGE_BYTES:
                break
        complete = start + len(page) >= len(entries)
        return succeed(Page(ring.epoch, ring.last, page, now, complete))

    def collect(self) -> Mapping[str, int]:
        return {"kept": self.kept, "groups": len(self._rings), "messages": self.messages,
                "bytes": self.bytes}


class _Conn(Protocol):
    """What a replay needs of its connection."""

    id: str
    state: int
    STATE_OPEN: int

    @property
    def send_full(self) -> bool: ...
    @property
    def send_blocked(self) -> bool: ...

    def sendMessage(self, payload: str | bytes | bytearray | memoryview,
                    isBinary: bool | None = None) -> None: ...


@dataclass(eq=False)
class Replay:
    """
    One connection caught up on one group, from the position it resumed at.

    Live messages for the group are not sent to the connection while this
    runs (the server skips it): they are held here (:meth:`hold`) and
    delivered after the replay, those the replay already sent left out.

    :ivar cursor: The last offset the connection has (replayed or live).
    """

    conn: _Conn
    group: str
    epoch: str
    cursor: int
    #: The group is a pub/sub channel (whose history is not a token group's of that name).
    channel: bool = False
    id: str = field(default_factory=lambda: secrets.token_hex(6))
    #: Read, to be sent: ``(offset, binary, payload)`` (the header is added as each is sent).
    entries: deque[tuple[int, bool, bytes]] = field(default_factory=deque)
    #: Live, to be sent after the replay: ``(offset, binary, header + payload)``;
    #: offset ``None`` for one that could not be kept (it is sent all the same).
    held: list[tuple[int | None, bool, bytes]] = field(default_factory=list)
    #: Whether the whole history after ``cursor`` has been read ...
    read_all: bool = False
    #: ... and the fence of the last read has come back (deliveries caught up with it).
    fence: str | None = None
    fenced: bool = True
    reading: bool = False
    #: Set once the replay found a gap: what it ends with then.
    recovered: bool = True
    last: int = 0
    done: bool = False
    replayed: int = 0
    #: The store could not be read: the position is not known.
    unknown: bool = False
    reads: int = 0
    fence_call: Any = None

    def hold(self, offset: int | None, is_binary: bool, data: bytes) -> bool:
        """
        A live message the connection must get after the replay (``data``:
        header + payload; ``offset`` ``None``: it has no place in the history,
        and no replay can give it, so it is held too); ``False`` once more
        than :data:`MAX_HELD` wait.
        """
        if offset is None or offset > self.cursor:
            self.held.append((offset, is_binary, data))
        return len(self.held) <= MAX_HELD


class Replayer:
    """
    Every replay of one node, paced together: at most :data:`REPLAY_BUDGET`
    messages per reactor turn for all of them, a page at a time each, in
    turn, so that a thousand clients resuming at once after a deploy cost
    the node a bounded slice of every turn, and the live traffic goes on.
    """

    def __init__(self, server: HistoryServer, store: HistoryStore, reactor: IReactorTime,
                 size: int, ttl: float, stats: Any) -> None:
        self.server = server
        self.store = store
        self.reactor = reactor
        self.size = size
        self.ttl = ttl
        self.stats = stats
        self._queue: deque[Replay] = deque()
        self._by_fence: dict[str, Replay] = {}
        self._call: Any = None
        #: Reads of the store that failed (the resumes answered with a null position).
        self.read_failures = 0

    def start(self, replay: Replay) -> None:
        self.stats.replays += 1
        self._wake(replay)

    def cancel(self, replay: Replay) -> None:
        """The connection closed or left the group: stop (nothing more is sent)."""
        replay.done = True
        self._stop_fence_timer(replay)
        if replay.fence is not None:
            self._by_fence.pop(replay.fence, None)

    def _wake(self, replay: Replay) -> None:
        if replay.done:
            return
        self._queue.append(replay)
        if self._call is None:
            self._call = self.reactor.callLater(0, self._run)

    def _run(self) -> None:
        self._call = None
        budget, room = REPLAY_BUDGET, REPLAY_BYTES
        queue = self._queue
        while queue and budget > 0 and room > 0:
            replay = queue.popleft()
            if replay.done:
                continue
            sent, size = self._step(replay, min(budget, PAGE), room)
            budget -= sent
            room -= size
        if queue and self._call is None:
            self._call = self.reactor.callLater(0, self._run)

    def _step(self, replay: Replay, most: int, room: int) -> tuple[int, int]:
        """
        Send up to ``most`` of ``replay``'s messages (and about ``room`` bytes);
        read, finish or wait as it needs. Returns the turn's budget it used:
        messages (at least 1, so that a turn ends) and bytes.
        """
        conn = replay.conn
        if conn.state != conn.STATE_OPEN:
            self.cancel(replay)
            return 1, 0
        entries = replay.entries
        if entries and conn.send_blocked:
            # The client is not reading: its replay waits for it rather than filling
            # its send buffer (the rest of the node's replays go on meanwhile).
            self.reactor.callLater(BLOCKED_WAIT, self._wake, replay)
            return 1, 0
        sent = size = 0
        group, epoch = replay.group, replay.epoch
        while entries and sent < most and size < room:
            offset, is_binary, payload = entries.popleft()
            conn.sendMessage(header(group, epoch, offset) + payload, is_binary)
            replay.cursor = offset
            sent += 1
            size += len(payload)
        replay.replayed += sent
        self.stats.replayed += sent
        if conn.send_full:  # --slow-consumer-action drop dropped some: not all was replayed
            replay.recovered = False
        if entries:
            self._wake(replay)
        elif not replay.read_all:
            if not replay.reading:
                self._read(replay)
        elif replay.fenced:
            self._finish(replay)
        return max(sent, 1), size

    def _read(self, replay: Replay) -> None:
        replay.reading = True
        fence = None
        if self.store.fences:
            if replay.fence is not None:
                self._by_fence.pop(replay.fence, None)
            replay.reads += 1
            fence = f"{replay.id}.{replay.reads}"
            replay.fence, replay.fenced = fence, False
            self._by_fence[fence] = replay
            self._stop_fence_timer(replay)
            replay.fence_call = self.reactor.callLater(FENCE_TIMEOUT, self._fence_late, replay,
                                                       fence)
        d = self.store.read(replay.group, replay.cursor, PAGE, fence or "")
        d.addCallbacks(self._page, self._read_failed, callbackArgs=(replay,),
                       errbackArgs=(replay,))

    @staticmethod
    def _stop_fence_timer(replay: Replay) -> None:
        call, replay.fence_call = replay.fence_call, None
        if call is not None and call.active():
            call.cancel()

    def _fence_late(self, replay: Replay, fence: str) -> None:
        """A fence did not come back: read again (what the read gives is checked as ever)."""
        replay.fence_call = None
        if replay.done or replay.fence != fence or replay.fenced:
            return
        self._by_fence.pop(fence, None)
        log.debug("the fence of a history read for connection {conn_id} did not come back "
                 "within {timeout}s; reading again", conn_id=replay.conn.id,
                 timeout=FENCE_TIMEOUT)
        replay.read_all = False
        if not replay.reading and not replay.entries:
            self._read(replay)

    def channel_fence(self, fence: str) -> bool:
        """
        Whether ``fence`` is that of a pub/sub channel's replay, whose live
        messages reach the server through its consumer chain (so the fence
        must wait behind them there); a token group's come straight.
        """
        replay = self._by_fence.get(fence)
        return replay is not None and replay.channel

    def fenced(self, fence: str) -> None:
        """A read's fence came back down the delivery stream: what was live before it is held."""
        replay = self._by_fence.pop(fence, None)
        if replay is None or replay.done:
            return
        self._stop_fence_timer(replay)
        replay.fenced = True
        if replay.read_all and not replay.entries:
            self._wake(replay)

    def _read_failed(self, failure: Any, replay: Replay) -> None:
        replay.reading = False
        if replay.done:
            return
        self.read_failures += 1
        if self.read_failures == 1 or self.read_failures % 1000 == 0:
            # One line for a storm of resumes while Redis is away, not one per resume.
            log.warn("history could not be read for a resume ({count} so far; the last of "
                     "{group} for connection {conn_id}): {reason}", count=self.read_failures,
                     group=replay.group, conn_id=replay.conn.id,
                     reason=failure.getErrorMessage())
        # Nothing is known of the position: recovered:false with a null epoch and
        # offset, as the headers of messages that could not be kept say it.
        replay.recovered = False
        replay.unknown = True
        replay.read_all = replay.fenced = True
        self._wake(replay)

    def _page(self, page: Page, replay: Replay) -> None:
        replay.reading = False
        if replay.done:
            return
        cursor = replay.cursor
        kept_from = max(page.last - self.size, 0)  # the SIZE most recent are the ones kept
        horizon = page.now - self.ttl
        # Old ones come first: what is left is consecutive, or the check below sees a gap.
        fresh = [e for e in page.entries if e[0] > kept_from and e[1] >= horizon]
        if page.epoch != replay.epoch or cursor > page.last or (
                cursor < page.last and (not fresh or fresh[0][0] != cursor + 1)):
            # Another epoch, an offset this history never had, or a gap: the client reloads.
            replay.recovered = False
            replay.epoch, replay.last = page.epoch, page.last
            replay.entries.clear()
            replay.read_all = True
            self._wake(replay)
            return
        for offset, _, is_binary, payload in fresh:
            replay.entries.append((offset, is_binary, payload))
        replay.last = page.last
        replay.read_all = page.complete
        self._wake(replay)

    def _finish(self, replay: Replay) -> None:
        """
        Say how the replay went, deliver the live messages it held after that
        line (those it replayed left out), and hand the connection back to
        live delivery: the ``recovered`` line names the position just before
        the first message that follows it.
        """
        self.cancel(replay)
        conn = replay.conn
        if replay.recovered:
            self.stats.recovered += 1
        else:
            self.stats.not_recovered += 1
            replay.cursor = replay.last
        if replay.unknown:
            conn.sendMessage(control(replay.group, False, None, None), False)
        else:
            conn.sendMessage(control(replay.group, replay.recovered, replay.epoch, replay.cursor),
                             False)
        for offset, is_binary, data in replay.held:
            if offset is None:  # (the other members got it live: so does this one)
                conn.sendMessage(data, is_binary)
            elif offset > replay.cursor or replay.unknown:
                conn.sendMessage(data, is_binary)
                replay.cursor = offset
        replay.held.clear()
        self.server.replay_done(replay)

    def give_up(self, replay: Replay, offset: int | None) -> None:
        """
        More live traffic than :data:`MAX_HELD` came during the replay: it ends
        now, not recovered, at ``offset`` (the live message just held; ``None``:
        one that was not kept, so at the last offset known); the connection
        takes the messages after it live.
        """
        if replay.done:
            return
        replay.entries.clear()
        replay.held.clear()
        replay.recovered = False
        replay.last = offset if offset is not None else max(replay.last, replay.cursor)
        self._finish(replay)



__all__ = [
    "EVERYONE",
    "SUBPROTOCOL",
    "HistoryServer",
    "HistoryStore",
    "MemoryHistory",
    "Once",
    "Page",
    "Replay",
    "Replayer",
    "ResumeError",
    "control",
    "header",
    "new_epoch",
    "parse_resume",
]
