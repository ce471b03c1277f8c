"""
The Redis storage object: shared sets, pub/sub, and many fws processes acting as one server.

Activate it with ``STORAGE_OBJECT_MODULE=fws.storage_objects.redis`` (or the
legacy ``filtered_websocket.storage_objects.redis``, or ``--storage``); then
``-h`` lists the ``--redis_*`` options below.

Keys and channels (``K`` is ``--redis_key``, default ``fws``):

=============================  ==========================================================
``K:<key>``                    the sets behind ``storage_object.get/add/remove``
``K:group:<name>``             ids of the members of token group ``<name>``, all nodes
``K:node:<id>``                a node's liveness key, expiring ``--redis_node_ttl`` s
                               after the node stops refreshing it
``K:node:<id>:groups``         the groups a node has members in (for clean-up)
``K:nodes``                    ids of the nodes that may have members
channel ``K:bus``              broadcasts relayed between nodes (internal)
``K:hist:<group>``             with ``--history``: a Redis Stream of the group's last
                               messages (entry id ``<offset>-<ms>``, fields ``b``, ``p``)
``K:histpos:<group>``          with ``--history``: the group's epoch and last offset
``K:chist:<channel>``          with ``--history``: a pub/sub channel's stream, written by
                               ``FCALL fws_publish`` (:data:`FUNCTIONS`; field ``p``)
``K:chistpos:<channel>``       with ``--history``: the channel's epoch and last offset
``K:histconf``                 with ``--history``: what ``fws_publish`` keeps, written
                               by every node (the last wins), expiring with the node TTL
``--redis_channels``           the user's channels (default ``global``), fed to the
                               consumer chain; glob patterns (``news.*``) use PSUBSCRIBE
=============================  ==========================================================

Delivery: a broadcast is written to local users at once and relayed once on
``K:bus``; every other node delivers it to its own users (or group members),
so each user gets it exactly once, in the sender's order, and never the
sender.  While Redis is down, local delivery goes on and relays fail fast
(counted and logged); pub/sub messages published during an outage are lost
(Redis pub/sub keeps nothing).

With ``--history`` (:class:`RedisHistory`), a message to a token group or
to everyone is not written locally: one Lua script gives it the group's next
offset, adds it to the group's stream and publishes it on ``K:bus``, and
every node, the sender's included, delivers it from there; so every member
on every node sees the group's messages in one order, offset after offset.
A pub/sub channel's messages are numbered the same way where they are
published, by the ``fws_publish`` function (:data:`FUNCTIONS`), and reach
every node once, on ``K:bus``, with their place.

``storage_object[key]``, the 2014 read, cannot be answered without waiting
for Redis (2014 blocked the whole server for it): a filter module that reads
it is refused when it is loaded (and so by ``--check``), and a read that gets
past that raises a ``TypeError`` saying what to write instead
(:data:`fws.storage_objects.SUBSCRIPT_FIX`).
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, NoReturn

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from fws.config import ConfigError, Option
from fws.history import (
    MAX_EPOCH,
    MAX_GROUPS,
    MAX_HELD,
    MAX_NAME,
    MAX_OFFSET,
    PAGE,
    PAGE_BYTES,
    HistoryServer,
    Once,
    Page,
    new_epoch,
)
from fws.redis_sentinel import MAX_SENTINELS, SENTINEL_PORT, check_master_name, parse_sentinels
from fws.redis_service import (
    RedisAddress,
    RedisConnectionError,
    RedisService,
    RedisUnavailable,
    parse_redis_url,
)
from fws.storage_objects import SUBSCRIPT_FIX, Members, StorageBase, StorageServer

log = Logger()

#: ``storage_object[key]`` cannot be answered at once (see
#: :func:`fws.storage_objects.subscript_problem`).
SUBSCRIPT_READS = False

def _redis_option(name: str, help: str, kind: str, default: Any, metavar: str) -> Option:
    return Option(name, help, kind, default, (), metavar, underscore_first=True)


OPTIONS: tuple[Option, ...] = (
    _redis_option("redis_host", "Redis host", "str", "localhost", "HOST"),
    _redis_option("redis_port", "Redis port", "int", 6379, "PORT"),
    _redis_option("redis_channels", "pub/sub channels (or glob patterns such as news.*) fed to "
                  "the consumer chain", "list", ("global",), "CHANNEL"),
    _redis_option("redis_key", "prefix of every key and internal channel fws uses", "str",
                  "fws", "PREFIX"),
    _redis_option("redis_db", "Redis database number", "int", 0, "N"),
    _redis_option("redis_username", "Redis ACL user name", "str", None, "USER"),
    _redis_option("redis_password", "Redis password (better: $FWS_REDIS_PASSWORD, or in the "
                  "URL)", "str", None, "PASSWORD"),
    _redis_option("redis_url", "redis://[user:password@]host:port/db, rediss://... (TLS), "
                  "unix:///path/redis.sock?db=N or redis+sentinel://[user:password@]host:port"
                  "[,host:port...]/MASTER?db=N; overrides host, port, db and credentials",
                  "str", None, "URL"),
    _redis_option("redis_sentinel", "Sentinels to ask where the master is (HOST[:PORT], port "
                  f"{SENTINEL_PORT} by default; several, or comma separated; at most "
                  f"{MAX_SENTINELS}): fws follows failovers; needs --redis_sentinel_master",
                  "list", (), "HOST:PORT"),
    _redis_option("redis_sentinel_master", "name of the master the Sentinels monitor "
                  "(sentinel monitor NAME ...)", "str", None, "NAME"),
    _redis_option("redis_sentinel_username", "ACL user name fws logs in to the Sentinels with",
                  "str", None, "USER"),
    _redis_option("redis_sentinel_password", "password of the Sentinels themselves (their "
                  "requirepass; better: $FWS_REDIS_SENTINEL_PASSWORD); the master's is "
                  "--redis_password", "str", None, "PASSWORD"),
    _redis_option("redis_sentinel_timeout", "seconds each Sentinel has to say where the master "
                  "is, connecting included (an unreachable one is skipped)", "float", 0.5,
                  "SECONDS"),
    _redis_option("redis_node_ttl", "seconds after which the token-group members of a node "
                  "that died are removed", "float", 15.0, "SECONDS"),
    _redis_option("redis_timeout", "seconds Redis may answer nothing while replies are owed "
                  "before fws drops the connection and reconnects", "float", 5.0, "SECONDS"),
    _redis_option("redis_connect_timeout", "seconds a connection attempt may take, login "
                  "and subscriptions included", "float", 3.0, "SECONDS"),
    _redis_option("redis_ping_interval", "seconds between PINGs that detect a silently dead "
                  "connection (answered within a third of it, at most 2 s)", "float", 5.0,
                  "SECONDS"),
)

GLOB = frozenset("*?[")

#: The longest header of a kept channel message on ``K:bus`` read
#: (``{"e":<epoch of MAX_EPOCH>,"o":<offset>,"n":<length>}`` is far shorter).
KEPT_HEADER = 256


def _signed(byte: int) -> int:
    """A byte as C's ``char`` compares it in Redis's ranges (signed on x86 and arm64 Linux)."""
    return byte - 256 if byte > 127 else byte


def glob_match(pattern: bytes, name: bytes) -> bool:
    """
    Whether channel ``name`` matches ``pattern`` as Redis's PSUBSCRIBE
    matches it (``stringmatchlen`` in Redis's ``util.c``, which this
    follows step by step): ``*``, ``?``, ``[abc]``, ``[^abc]``, ``[a-z]``
    (reversed ranges too), ``\\`` escaping the next character, inside a
    class as well; an unterminated class ends at the pattern's end. The node
    decides with it which kept channel messages (``fws_publish``, which
    arrive on ``K:bus``, not on their channel) are its own; ``fnmatch`` is
    not the same (``[!...]``, no escapes).
    """
    skip = [False]
    return _match(pattern, 0, name, 0, skip)


def _match(pat: bytes, p: int, text: bytes, s: int, skip: list[bool]) -> bool:
    plen, slen = len(pat), len(text)
    while p < plen and s < slen:
        c = pat[p]
        if c == 0x2A:  # '*'
            while p + 1 < plen and pat[p + 1] == 0x2A:
                p += 1
            if p + 1 == plen:
                return True
            while s < slen:
                if _match(pat, p + 1, text, s, skip):
                    return True
                if skip[0]:
                    return False
                s += 1
            # The rest cannot match this or any later start (Redis's skipLongerMatches).
            skip[0] = True
            return False
        if c == 0x3F:  # '?'
            s += 1
        elif c == 0x5B:  # '['
            p += 1
            negate = p < plen and pat[p] == 0x5E
            if negate:
                p += 1
            matched = False
            while True:
                if p < plen and pat[p] == 0x5C and plen - p >= 2:
                    p += 1
                    matched = matched or pat[p] == text[s]
                elif p < plen and pat[p] == 0x5D:
                    break
                elif p >= plen:
                    p -= 1
                    break
                elif plen - p >= 3 and pat[p + 1] == 0x2D:
                    low, high = sorted((_signed(pat[p]), _signed(pat[p + 2])))
                    p += 2
                    matched = matched or low <= _signed(text[s]) <= high
                else:
                    matched = matched or pat[p] == text[s]
                p += 1
            if negate:
                matched = not matched
            if not matched:
                return False
            s += 1
        else:
            if c == 0x5C and plen - p >= 2:
                p += 1
            if pat[p] != text[s]:
                return False
            s += 1
        p += 1
        if s == slen:
            while p < plen and pat[p] == 0x2A:
                p += 1
            break
    return p == plen and s == slen


class RedisStorage(StorageBase, MultiService):
    """:class:`fws.storage_objects.StorageObject` on Redis, plus the node-to-node relay."""

    shared = True

    def __init__(self, reactor: Any, address: RedisAddress, channels: Sequence[str], key: str,
                 node_ttl: float = 15.0, **timeouts: float) -> None:
        super().__init__()
        self.setName("storage")
        self._reactor = reactor
        self.key = key
        self.bus = f"{key}:bus".encode()
        self.node_ttl = node_ttl
        user = [c.encode("utf-8") for c in channels]
        self.redis = RedisService(
            reactor, address,
            channels=[self.bus, *(c for c in user if not GLOB & set(c.decode()))],
            patterns=[c for c in user if GLOB & set(c.decode())],
            on_message=self._on_message,
            on_commands_up=self._restore,
            on_resubscribed=self._resubscribed,
            **timeouts,
        )
        self.redis.setServiceParent(self)
        self._server: StorageServer | None = None
        self.node_id = ""
        self._relay_failures = 0
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = reactor
        self._history: RedisHistory | None = None
        self._channels = frozenset(c for c in channels if not GLOB & set(c))
        self._patterns = [c.encode("utf-8") for c in channels if GLOB & set(c)]
        #: Channels published to with a plain PUBLISH while history is on (warned once each).
        self._plain_warned = Once(1000)
        #: Messages on ``K:bus`` that were none of fws's (ignored; see :meth:`_malformed`).
        self.malformed = 0

    def history(self, server: Any, reactor: Any, limits: Any) -> RedisHistory:
        """With ``--history``: one Redis Stream per group, shared by every node."""
        self._history = RedisHistory(self, server, limits.history_size, limits.history_ttl,
                                     limits.max_message_size, reactor)
        return self._history

    def is_channel(self, name: str) -> bool:
        """Whether ``name`` is one of the pub/sub channels (or patterns) this node subscribes to."""
        return self.serving(name) is not False

    def serving(self, name: str) -> str | bool | None:
        """
        How this node subscribes to channel ``name``: ``None`` by its name, the
        pattern (the first of ``--redis_channels`` that matches, as Redis
        would say it) or ``False`` for not at all.
        """
        return self._serving(name, name.encode("utf-8", "surrogateescape"))

    def _serving(self, name: str, raw: bytes) -> str | bool | None:
        """:meth:`serving`, with the name as Redis has it too (patterns match its bytes)."""
        if name in self._channels:
            return None
        for pattern in self._patterns:
            if glob_match(pattern, raw):
                return pattern.decode("utf-8")
        return False

    # --- wiring ------------------------------------------------------------------------

    def attach(self, server: StorageServer) -> None:
        self._server = server
        self.node_id = server.node_id

    def startService(self) -> None:
        super().startService()
        self._heartbeat.start(max(self.node_ttl / 3.0, 0.1), now=False)

    async def _stop(self) -> None:
        if self._heartbeat.running:
            self._heartbeat.stop()
        if self.redis.commands_connected:
            # Graceful stop: this node's members leave now, not after the TTL.
            cleanup = self._forget_node(self.node_id)
            cleanup.addTimeout(2.0, self._reactor)
            try:
                await cleanup
            except Exception:
                log.warn("could not remove this node's group members from Redis on stop")
        await MultiService.stopService(self)

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    @property
    def ready(self) -> bool:
        return self.redis.ready

    def health(self) -> str | None:
        if not self.redis.commands_connected:
            return "not connected to Redis"
        if not self.redis.subscribed:
            return "not subscribed on Redis"
        return None

    def collect_metrics(self) -> Iterator[Metric]:
        """The state of both connections to Redis."""
        redis = self.redis
        up = GaugeMetricFamily("fws_redis_connected", "1 while the Redis connection is up.",
                               labels=["connection"])
        up.add_metric(["command"], 1 if redis.commands_connected else 0)
        up.add_metric(["subscriber"], 1 if redis.subscribed else 0)
        yield up
        outages = CounterMetricFamily("fws_redis_outages", "Times a Redis connection was lost.",
                                      labels=["connection"])
        reconnects = CounterMetricFamily("fws_redis_reconnects",
                                         "Times a Redis connection came back after an outage.",
                                         labels=["connection"])
        for kind in ("command", "subscriber"):
            outages.add_metric([kind], redis.outages[kind])
            reconnects.add_metric([kind], redis.reconnects[kind])
        yield outages
        yield reconnects
        yield CounterMetricFamily("fws_redis_commands_failed_fast",
                                  "Storage commands failed at once because Redis was down.",
                                  value=redis.failed_fast)
        yield CounterMetricFamily("fws_redis_failovers",
                                  "Times the command connection came back on another Redis "
                                  "master than before (a failover followed).",
                                  value=redis.failovers)
        if redis.address.sentinels:
            yield GaugeMetricFamily("fws_redis_sentinel_watched",
                                    "1 while a Sentinel's +switch-master is watched.",
                                    value=1 if redis.watching else 0)

    def details(self) -> dict[str, str]:
        """Which Redis master this node is on (``/readyz``)."""
        redis = self.redis
        out = {"redis_master": (redis.master if redis.commands_connected and redis.master
                                else "none")}
        if redis.address.sentinels:
            out["redis_sentinel_master"] = redis.address.master_name or ""
            out["redis_sentinel_watched"] = "yes" if redis.watching else "no"
        return out

    # --- the storage object API ----------------------------------------------------------

    def _k(self, key: str) -> str:
        return f"{self.key}:{key}"

    def get(self, key: str) -> Deferred[set[bytes]]:
        return self.redis.execute("smembers", self._k(key)).addCallback(lambda r: Members(r or ()))

    def __getitem__(self, key: str) -> NoReturn:
        """The 2014 read, which Redis cannot answer at once: say what to write instead."""
        raise TypeError(f"storage_object[{key!r}] cannot be read from Redis without waiting: "
                        f"{SUBSCRIPT_FIX}")

    def add(self, key: str, value: str | bytes) -> Deferred[bool]:
        return self.redis.execute("sadd", self._k(key), [value]).addCallback(bool)

    def remove(self, key: str, value: str | bytes) -> Deferred[bool]:
        return self.redis.execute("srem", self._k(key), [value]).addCallback(bool)

    def publish(self, channel: str, data: str | bytes) -> Deferred[int]:
        """Publish on a channel as any Redis client would (no key prefix, no envelope)."""
        return self.redis.publish(channel, data)

    def publish_kept(self, channel: str,
                     data: str | bytes | bytearray | memoryview) -> Deferred[int | None]:
        """
        Publish so that the message is kept in ``channel``'s history
        (``FCALL fws_publish``, see :data:`FUNCTIONS`): fires with its offset,
        or ``None`` if no node keeps history (it was published plainly);
        fails with Redis's error for a payload over ``--max-message-size``.
        """
        d = self.redis.command(b"FCALL", b"fws_publish", b"1", channel, data, self.key)
        return d.addCallback(lambda offset: offset if offset is None else int(offset))

    # --- one logical server --------------------------------------------------------------

    def relay(self, group: str | None, exclude_id: str | None, is_binary: bool, payload: bytes) -> None:
        """Hand a broadcast to the other nodes (the factory already delivered it here)."""
        header = json.dumps([self.node_id, group, exclude_id, is_binary], separators=(",", ":"))
        d = self.redis.publish(self.bus, header.encode() + b"\n" + payload)
        d.addErrback(self._relay_failed)

    def _relay_failed(self, failure: Any) -> None:
        self._relay_failures += 1
        if failure.check(RedisConnectionError):
            return  # an outage: its two log lines say what was lost
        if self._relay_failures == 1 or self._relay_failures % 1000 == 0:
            log.warn("could not relay broadcasts to other nodes ({count} so far): {reason}",
                     count=self._relay_failures, reason=failure.getErrorMessage())

    def _on_message(self, channel: bytes, data: bytes, pattern: bytes | None) -> None:
        server = self._server
        if server is None:
            return
        if channel == self.bus and pattern is None:
            header, _, payload = data.partition(b"\n")
            if header[:1] == b"{":  # a channel message fws_publish kept
                self._kept_channel_message(header, payload)
            else:
                self._bus_message(header, payload)
            return
        name = channel.decode("utf-8", "backslashreplace")
        history = self._history
        if history is not None and history.delivers_channels and self._plain_warned.first(name):
            log.warn("channel {channel} was published to with a plain PUBLISH: its messages are "
                     "delivered with null epoch and offset and are not kept for resume; publish "
                     "with FCALL fws_publish 1 {channel} <payload> {prefix} to keep them (said "
                     "once per channel)", channel=name, prefix=self.key)
        server.deliver_pubsub(
            name, data,
            pattern.decode("utf-8", "backslashreplace") if pattern is not None else None,
        )

    def _bus_message(self, header: bytes, payload: bytes) -> None:
        """
        One of the nodes' own messages on ``K:bus``: a relayed broadcast
        (``[origin, group, exclude, binary]``), a kept group message (the same
        and its epoch and offset) or a replay's fence (``["fence", origin,
        fence]``). Anything else (another client publishing there, a node of
        another version) is counted and ignored: nothing read from Redis may
        raise out of the subscriber's callback.
        """
        server = self._server
        assert server is not None
        try:
            parts = json.loads(header)
        except (ValueError, RecursionError):  # (RecursionError: deeply nested JSON)
            parts = None
        if type(parts) is not list:
            self._malformed("not a JSON list")
            return
        if len(parts) == 3:  # a replay's fence: deliveries are past its read
            _, origin, fence = parts
            if type(fence) is not str or not 0 < len(fence) <= MAX_NAME:
                self._malformed("a fence that is not a short string")
            elif origin == self.node_id and self._history is not None:
                self._history.fenced(fence)
            return
        if len(parts) not in (4, 6):
            self._malformed(f"{len(parts)} fields")
            return
        origin, group, exclude_id, is_binary = parts[:4]
        if (type(origin) is not str or not (group is None or type(group) is str)
                or not (exclude_id is None or type(exclude_id) is str)
                or type(is_binary) not in (bool, int)):
            self._malformed("a field of the wrong type")
            return
        if len(parts) == 4:
            if origin != self.node_id:
                server.deliver_relayed(group, exclude_id, bool(is_binary), payload)
            return
        # A group message with its place in the history.
        epoch, offset = parts[4:]
        if (group is None or type(epoch) is not str or not 0 < len(epoch) <= MAX_EPOCH
                or type(offset) is not int or not 0 < offset <= MAX_OFFSET):
            self._malformed("a group message without a valid group, epoch and offset")
            return
        history = self._history
        if history is not None:
            history.deliver(group, epoch, offset, exclude_id, bool(is_binary), payload)
        elif origin != self.node_id:
            # A node without --history (a rolling change): as a plain relay.
            server.deliver_relayed(None if group == "*" else group, exclude_id,
                                   bool(is_binary), payload)

    def _malformed(self, why: str) -> None:
        """A bus message that is none of fws's: the first and every 1000th said, in one line."""
        self.malformed += 1
        if self.malformed == 1 or self.malformed % 1000 == 0:
            log.warn("ignoring a malformed message on {bus} ({why}; {count} so far)",
                     bus=self.bus.decode("utf-8", "replace"), why=why, count=self.malformed)

    def _kept_channel_message(self, header: bytes, rest: bytes) -> None:
        """
        ``{"e":epoch,"o":offset,"n":length}\\n`` + channel + payload on ``K:bus``:
        a message ``fws_publish`` kept; the consumer chain gets it if this node
        serves the channel (by name or pattern), with its position.
        """
        server = self._server
        assert server is not None
        fields: Any = None
        if len(header) <= KEPT_HEADER:
            try:
                fields = json.loads(header)
            except (ValueError, RecursionError):
                pass
        if type(fields) is not dict:
            self._malformed("a kept channel message whose header is not a short JSON object")
            return
        epoch, offset, length = fields.get("e"), fields.get("o"), fields.get("n")
        if (type(epoch) is not str or not 0 < len(epoch) <= MAX_EPOCH
                or type(offset) is not int or not 0 < offset <= MAX_OFFSET
                or type(length) is not int or not 0 <= length <= len(rest)):
            self._malformed("a kept channel message without a valid epoch, offset and length")
            return
        raw = rest[:length]
        pattern = self._serving(raw.decode("utf-8", "surrogateescape"), raw)
        if pattern is False:
            return
        assert pattern is not True
        history = self._history
        name = raw.decode("utf-8", "backslashreplace")
        if history is None:
            server.deliver_pubsub(name, rest[length:], pattern)
            return
        history.channel_received += 1
        history.deliver_channel(name, pattern, epoch, offset, rest[length:])

    def deliver_kept_channel(self, name: str, payload: bytes, pattern: str | None,
                             position: tuple[str, int]) -> None:
        """A kept channel message, in its place (:class:`RedisHistory`), to the consumer chain."""
        server = self._server
        if server is not None:
            server.deliver_pubsub(name, payload, pattern, position=position)

    def _resubscribed(self) -> None:
        """The subscriber connection is back: what was published meanwhile may be kept."""
        if self._history is not None:
            self._history.check_all()

    def member_joined(self, group: str, member_id: str) -> None:
        self._quietly(gatherResults([
            self.redis.execute("sadd", self._k(f"group:{group}"), [member_id]),
            self.redis.execute("sadd", self._k(f"node:{self.node_id}:groups"), [group]),
        ], consumeErrors=True))

    def member_left(self, group: str, member_id: str) -> None:
        self._quietly(self.redis.execute("srem", self._k(f"group:{group}"), [member_id]))

    def _quietly(self, d: Deferred[Any]) -> None:
        # While Redis is down these fail fast; _restore() rewrites membership when it is back.
        d.addErrback(lambda f: log.debug("group membership update failed: {f}", f=f.getErrorMessage()))

    def _restore(self) -> None:
        """The command connection is (back) up: Redis may have restarted empty."""
        server = self._server
        if server is None:
            return
        commands = [
            self.redis.execute("set", self._k(f"node:{self.node_id}"), b"1", int(self.node_ttl) or 1),
            self.redis.execute("sadd", self._k("nodes"), [self.node_id]),
        ]
        for group, members in list(server.groups.items()):
            if members:
                commands.append(self.redis.execute("sadd", self._k(f"group:{group}"), list(members)))
                commands.append(self.redis.execute("sadd", self._k(f"node:{self.node_id}:groups"),
                                                   [group]))
        history = self._history
        if history is not None:
            # Redis may have restarted, or its functions been flushed: load the library
            # again (first, so that this node's own FCALLs after it find it).
            load = self.redis.command(b"FUNCTION", b"LOAD", b"REPLACE", FUNCTIONS)
            load.addErrback(self._function_failed)
            commands += [load, history.write_conf()]
        self._quietly(gatherResults(commands, consumeErrors=True))

    @staticmethod
    def _function_failed(failure: Any) -> Any:
        if not failure.check(RedisConnectionError):
            log.warn("could not load the fws function library into Redis (FCALL fws_publish "
                     "fails until a node does; Redis 7 or later is needed): {reason}",
                     reason=failure.getErrorMessage())
        return failure

    def _beat(self) -> Deferred[None] | None:
        if not self.redis.commands_connected or self._server is None:
            return None
        d = Deferred.fromCoroutine(self._refresh_and_sweep())
        d.addErrback(lambda f: log.debug("node heartbeat failed: {f}", f=f.getErrorMessage()))
        return None

    async def _refresh_and_sweep(self) -> None:
        execute = self.redis.execute
        alive = await execute("set", self._k(f"node:{self.node_id}"), b"1", int(self.node_ttl) or 1)
        del alive
        if self._history is not None:
            await self._history.write_conf()
        await execute("sadd", self._k("nodes"), [self.node_id])
        for node in await execute("smembers", self._k("nodes")):
            node_id = node.decode("utf-8", "replace")
            if node_id != self.node_id and not await execute("exists", self._k(f"node:{node_id}")):
                log.info("node {node} stopped refreshing its liveness key; removing its group "
                         "members", node=node_id)
                await self._forget_node(node_id)

    def _forget_node(self, node_id: str) -> Deferred[None]:
        return Deferred.fromCoroutine(self._forget(node_id))

    async def _forget(self, node_id: str) -> None:
        execute = self.redis.execute
        prefix = f"{node_id}-".encode()
        groups_key = self._k(f"node:{node_id}:groups")
        for group in await execute("smembers", groups_key):
            key = self._k(f"group:{group.decode('utf-8', 'replace')}")
            members = [m for m in await execute("smembers", key) if m.startswith(prefix)]
            if members:
                await execute("srem", key, members)
        await execute("delete", [groups_key, self._k(f"node:{node_id}")])
        await execute("srem", self._k("nodes"), [node_id])


#: How both scripts below begin (KEYS[1] the stream, KEYS[2] the position, ARGV[3] a
#: new epoch): a group whose position is gone (Redis restarted without persistence,
#: the key expired or evicted) starts a new epoch, and its stream, which no longer
#: matches any epoch a client holds, goes too. The ``if`` is left open for the script.
_EPOCH = """
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[3]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', epoch, 'o', 0)"""

#: KEYS: stream, position, bus. ARGV: SIZE, TTL in ms, an epoch for a group that has
#: none, the bus header so far, binary flag, payload. Gives the message the group's
#: next offset, keeps it, and publishes it on the bus: one atomic step, so the bus
#: carries every group's messages in offset order.
APPEND = _EPOCH + """
end
local offset = redis.call('HINCRBY', KEYS[2], 'o', 1)
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], string.format('%d-%d', offset, ms),
           'b', ARGV[5], 'p', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PUBLISH', KEYS[3], ARGV[4] .. cjson.encode(epoch) .. ',' ..
           string.format('%d', offset) .. ']\\n' .. ARGV[6])
return offset
"""

#: KEYS: stream, position, bus. ARGV: after, count, an epoch for a group that has none,
#: TTL in ms, the fence to publish ('' for none), page bytes. The group's epoch, last
#: offset, up to count entries after ``after`` (ending with the first that reaches page
#: bytes of payload), Redis's clock, and whether nothing more is kept; the fence goes down
#: the bus in the same step, so that it follows every message this read can see.
READ = _EPOCH + """
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
local last = redis.call('HGET', KEYS[2], 'o')
local entries = redis.call('XRANGE', KEYS[1], string.format('%d-0', tonumber(ARGV[1]) + 1), '+',
                           'COUNT', ARGV[2])
local size, cut = 0, #entries
for i, entry in ipairs(entries) do
  local fields = entry[2]
  for j = 1, #fields, 2 do
    if fields[j] == 'p' then size = size + #fields[j + 1] end
  end
  if size >= tonumber(ARGV[6]) then cut = i break end
end
local complete = 0
if #entries < tonumber(ARGV[2]) and cut == #entries then complete = 1 end
while #entries > cut do table.remove(entries) end
if ARGV[5] ~= '' then
  redis.call('PUBLISH', KEYS[3], ARGV[5])
end
local t = redis.call('TIME')
return {epoch, last, entries, t[1], t[2], complete}
"""


#: KEYS: ``K:histconf``. ARGV: SIZE, TTL in ms, the largest payload, how long the
#: configuration lives (ms: the node TTL, so that it goes once no node refreshes it).
CONF = """
redis.call('HSET', KEYS[1], 'size', ARGV[1], 'ttl', ARGV[2], 'max', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

#: The function library every node with ``--history`` loads (``FUNCTION LOAD
#: REPLACE``) on each (re)connect: ``FCALL fws_publish 1 <channel> <payload>
#: [prefix]`` is how anyone (the user's backend) publishes to a channel so that
#: it is kept. Without ``K:histconf`` (no node with history alive) it is a plain
#: PUBLISH. Otherwise, as APPEND does for a token group, in one atomic step:
#: the channel's next offset (``K:chistpos:<channel>``, a new epoch if it had
#: none), the entry in ``K:chist:<channel>`` (``MAXLEN ~ SIZE``, expiring with
#: the TTL), and one message on ``K:bus`` (not on the channel: every node hears
#: it once, from there) that nodes tell from their own by its first byte:
#: ``{"e":epoch,"o":offset,"n":len(channel)}\n`` + channel + payload. Returns
#: the offset (nil: not kept).
#:
#: :meta hide-value:
FUNCTIONS = b"""#!lua name=fws
-- A whole number of K:histconf from 1 up, or nil: a bad value must not reach XADD or
-- PEXPIRE halfway through (a script's writes before an error stay: a lost offset).
local function whole(value)
  local n = tonumber(value)
  if n and n >= 1 and n < 2 ^ 53 and n == math.floor(n) then return n end
  return nil
end

local function fws_publish(keys, args)
  local channel, payload = keys[1], args[1]
  if channel == nil or payload == nil or #keys ~= 1 then
    return redis.error_reply('ERR usage: FCALL fws_publish 1 <channel> <payload> [prefix]')
  end
  local prefix = args[2] or 'fws'
  local conf = redis.call('HMGET', prefix .. ':histconf', 'size', 'ttl', 'max')
  local size, ttl, most = whole(conf[1]), whole(conf[2]), whole(conf[3])
  if not size or not ttl then
    redis.call('PUBLISH', channel, payload)
    return false
  end
  if most and #payload > most then  -- (no limit without one: 0 is true in Lua)
    return redis.error_reply(string.format(
      'ERR fws_publish: the payload is %d bytes, more than the %d of --max-message-size',
      #payload, most))
  end
  local stream = prefix .. ':chist:' .. channel
  local position = prefix .. ':chistpos:' .. channel
  local t = redis.call('TIME')
  local epoch = redis.call('HGET', position, 'e')
  if not epoch then
    epoch = string.sub(redis.sha1hex(t[1] .. '.' .. t[2] .. '.' .. channel), 1, 8)
    redis.call('DEL', stream)
    redis.call('HSET', position, 'e', epoch, 'o', 0)
  end
  local offset = redis.call('HINCRBY', position, 'o', 1)
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('XADD', stream, 'MAXLEN', '~', string.format('%d', size),
             string.format('%d-%d', offset, ms), 'p', payload)
  redis.call('PEXPIRE', stream, string.format('%d', ttl))
  redis.call('PEXPIRE', position, string.format('%d', ttl))
  redis.call('PUBLISH', prefix .. ':bus', '{"e":' .. cjson.encode(epoch) .. ',"o":' ..
             string.format('%d', offset) .. ',"n":' .. string.format('%d', #channel) ..
             '}\\n' .. channel .. payload)
  return offset
end
redis.register_function('fws_publish', fws_publish)
"""


def _is_binary(payload: bytes) -> bool:
    """What a channel message is live (not valid UTF-8: binary), for one kept without a flag."""
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


#: A group message as this node sequences it: epoch, offset, the sender to leave out,
#: binary flag, payload, and (channels) the pattern this node serves it by.
_Message = tuple[str, int, str | None, bool, bytes, str | None]

#: Groups whose check after the subscriber came back reads at once, at most (the
#: others wait their turn, a reactor turn after one is done).
CHECKS_AT_ONCE = 32


class _Sequence:
    """Where this node is in one group's history: the last (epoch, offset) it delivered."""

    __slots__ = ("epoch", "last", "held", "fill", "pattern")

    def __init__(self, epoch: str, last: int, pattern: str | None) -> None:
        self.epoch = epoch
        self.last = last
        #: While a fill reads: the live messages that came meanwhile, in order.
        self.held: list[_Message] = []
        self.fill: _Fill | None = None
        self.pattern = pattern


class _Fill:
    """
    One read of what this node missed of a group: up to ``target`` (the
    first held message, after a gap) or, for a check after the subscriber
    came back, whatever follows ``last``.
    """

    __slots__ = ("key", "seq", "epoch", "start", "target", "end", "got", "check", "renewed")

    def __init__(self, key: tuple[bool, str], seq: _Sequence, target: int | None,
                 check: bool) -> None:
        self.key = key
        self.seq = seq
        self.epoch = seq.epoch
        self.start = seq.last
        self.target = target
        #: The last offset the fill is after (``target - 1``; a check: the first page's last).
        self.end = target - 1 if target is not None else None
        #: Offsets delivered by this fill.
        self.got: set[int] = set()
        self.check = check
        #: A check found the group in a new epoch and reads that one from its start.
        self.renewed = False


class RedisHistory:
    """
    :class:`fws.history.HistoryStore` on Redis: one stream per group, shared
    by every node (see the module's documentation). A pub/sub channel's
    messages are kept where they are published, by ``FCALL fws_publish``
    (:data:`FUNCTIONS`), and come to every node once on ``K:bus`` with their
    place; published with a plain PUBLISH they reach ``fws.v1`` clients with
    a header whose epoch and offset are ``null``, as do group messages while
    Redis is unavailable, which are then delivered on this node only.

    The node fills its own gaps: it remembers the last (epoch, offset) it
    delivered of each group (:data:`fws.history.MAX_GROUPS` at most, the
    least recently delivered forgotten first: such a group starts afresh).
    A message whose offset is not the next one was missed by this node's
    subscriber connection (down while it was published: Redis pub/sub keeps
    nothing), but the stream kept it: the message is held (with those that
    follow it, :data:`fws.history.MAX_HELD` at most), the missing ones are
    read (the history's SIZE at most) and delivered in order, then the held
    ones; an offset already delivered is dropped. Once the subscriber
    connection is back (:meth:`check_all`), every group remembered is read
    after its last offset, so that a gap is filled even if no later message
    shows it. A filled message goes through the same delivery as a live one
    (replays hold it as live); its stream entry names no sender, so the
    sender gets a filled message of a token group too. A filled channel
    message goes through the consumer chain as a live one does, with its
    place: behind the live ones still in an asynchronous chain (its order),
    and through the same filters (what plain clients get of it is what they
    would have got live); a replay, which sends what was kept to one
    client, does not.
    """

    fences = True

    def __init__(self, storage: RedisStorage, server: HistoryServer, size: int, ttl: float,
                 max_message_size: int, reactor: Any) -> None:
        self.storage = storage
        self.reactor = reactor
        self.server = server
        self.size = size
        self.ttl_ms = max(1, int(ttl * 1000))
        self.max_message_size = max_message_size
        self.kept = 0
        self.failures = 0
        #: Kept channel messages (``fws_publish``) this node got from the bus, for a
        #: channel it serves: every node counts each, unlike ``kept`` (this node's writes).
        self.channel_received = 0
        #: Whether the server delivers channels at all (else a plain PUBLISH loses no
        #: history there, and is not warned about).
        self.delivers_channels = server.delivers_channels
        #: (is a channel, name) -> where this node is in it, the least recent first.
        self._sequences: OrderedDict[tuple[bool, str], _Sequence] = OrderedDict()
        #: Messages this node missed live and read from the stream; missed ones the
        #: stream no longer had; ones heard twice (dropped); fills that could not read.
        self.filled = 0
        self.gap_lost = 0
        self.duplicates = 0
        self.fill_failures = 0
        #: Fills that found messages gone (the first ten and every 1000th are said).
        self.lossy_fills = 0
        #: Fills reading now; replays' fences held meanwhile (see :meth:`fenced`).
        self._fills = 0
        self._fences: list[str] = []
        #: Groups to check after the subscriber came back, checks reading, and what
        #: this round of checks found (filled, lost, groups in a new epoch).
        self._checks: deque[tuple[bool, str]] = deque()
        self._checking = 0
        self._pump_call: Any = None
        self._round = [0, 0, 0]

    def _keys(self, group: str, channel: bool = False) -> list[str | bytes]:
        key, kind = self.storage.key, "chist" if channel else "hist"
        return [f"{key}:{kind}:{group}", f"{key}:{kind}pos:{group}", self.storage.bus]

    def write_conf(self) -> Deferred[Any]:
        """
        Tell ``fws_publish`` what to keep (``K:histconf``), for the node TTL:
        every node writes it, the last one wins, so every node must be given
        the same ``--history``, ``--history-ttl`` and ``--max-message-size``.
        """
        storage = self.storage
        return storage.redis.run_script(CONF, [f"{storage.key}:histconf"], [
            self.size, self.ttl_ms, self.max_message_size, max(1000, int(storage.node_ttl * 1000))])

    def is_channel(self, group: str) -> bool:
        return self.storage.is_channel(group)

    def record(self, group: str, exclude_id: str | None, is_binary: bool, payload: bytes,
               channel: bool = False) -> int:
        if channel:
            # Published with a plain PUBLISH (or changed by a consumer filter): every
            # node has its own copy, with no place in the channel's history.
            return int(self.server.deliver_history(group, None, None, None, is_binary, payload,
                                                   True))
        start = json.dumps([self.storage.node_id, group, exclude_id, is_binary],
                           separators=(",", ":"))[:-1] + ","
        d = self.storage.redis.run_script(APPEND, self._keys(group), [
            self.size, self.ttl_ms, new_epoch(), start, b"1" if is_binary else b"0", payload])
        d.addCallbacks(self._kept, self._not_kept,
                       errbackArgs=(group, exclude_id, is_binary, payload))
        return 0

    def _kept(self, _: Any) -> None:
        self.kept += 1

    def _not_kept(self, failure: Any, group: str, exclude_id: str | None, is_binary: bool,
                  payload: bytes) -> None:
        """Redis did not take it: this node's members get it, without a place in the history."""
        self.failures += 1
        if not failure.check(RedisConnectionError) and (
                self.failures == 1 or self.failures % 1000 == 0):
            log.warn("could not keep group messages in Redis ({count} so far): {reason}",
                     count=self.failures, reason=failure.getErrorMessage())
        self.server.deliver_history(group, None, None, exclude_id, is_binary, payload)

    def deliver(self, group: str, epoch: str, offset: int, exclude_id: str | None,
                is_binary: bool, payload: bytes) -> None:
        """A kept group message from the bus (any node's, this one's too), in its place."""
        self._arrive((False, group), (epoch, offset, exclude_id, is_binary, payload, None))

    def deliver_channel(self, channel: str, pattern: str | None, epoch: str, offset: int,
                        payload: bytes) -> None:
        """A kept channel message from the bus (``fws_publish``), for a channel this node serves."""
        self._arrive((True, channel), (epoch, offset, None, False, payload, pattern))

    def _send(self, key: tuple[bool, str], message: _Message) -> None:
        epoch, offset, exclude_id, is_binary, payload, pattern = message
        if key[0]:
            self.storage.deliver_kept_channel(key[1], payload, pattern, (epoch, offset))
        else:
            self.server.deliver_history(key[1], epoch, offset, exclude_id, is_binary, payload)

    def _arrive(self, key: tuple[bool, str], message: _Message) -> None:
        sequences = self._sequences
        seq = sequences.get(key)
        if seq is None:
            for _ in range(len(sequences)):
                if len(sequences) < MAX_GROUPS:
                    break
                oldest, first = next(iter(sequences.items()))
                if first.fill is None:
                    del sequences[oldest]  # (it starts afresh if it comes again)
                else:
                    sequences.move_to_end(oldest)  # (a fill under way keeps its place)
            seq = sequences[key] = _Sequence(message[0], message[1] - 1, message[5])
        else:
            sequences.move_to_end(key)
        if key[0]:
            seq.pattern = message[5]
        if seq.fill is not None:
            if len(seq.held) < MAX_HELD:
                seq.held.append(message)
                return
            # More live traffic than a fill may hold: it ends now, with what it has.
            self._finish(seq.fill, "more live messages came than a fill holds")
            if seq.fill is not None:  # (a held one began another)
                seq.held.append(message)
                return
        self._next(key, seq, message)

    def _next(self, key: tuple[bool, str], seq: _Sequence, message: _Message) -> None:
        epoch, offset = message[0], message[1]
        if epoch != seq.epoch:  # a new history: nothing before it can be asked for
            seq.epoch, seq.last = epoch, offset
            self._send(key, message)
        elif offset <= seq.last:
            self.duplicates += 1
        elif offset == seq.last + 1:
            seq.last = offset
            self._send(key, message)
        else:
            seq.held.append(message)
            self._fill(key, seq, offset, check=False)

    def _fill(self, key: tuple[bool, str], seq: _Sequence, target: int | None,
              check: bool) -> None:
        fill = seq.fill = _Fill(key, seq, target, check)
        self._fills += 1
        after = seq.last if target is None else max(seq.last, target - 1 - self.size)
        self._read_more(fill, after)

    def _read_more(self, fill: _Fill, after: int) -> None:
        count = min(PAGE, self.size - len(fill.got))
        if fill.end is not None:
            count = min(count, fill.end - after)
        if count <= 0:
            self._finish(fill)
            return
        d = self._read(fill.key[1], fill.key[0], after, count, "")
        d.addCallbacks(self._filled, self._fill_failed, callbackArgs=(fill,),
                       errbackArgs=(fill,))

    def _filled(self, page: Page, fill: _Fill) -> None:
        seq = fill.seq
        if seq.fill is not fill:  # (it ended meanwhile: more live messages than it holds)
            return
        if page.epoch != fill.epoch:
            if not fill.check or fill.renewed or fill.got:
                # The history was lost after what was held (or meanwhile): what was
                # missed cannot be read any more.
                self._finish(fill)
                return
            # A check: the group began a new epoch while the subscriber was down (Redis
            # restarted empty): what was missed of the old one is gone, the new one's
            # messages are read from its start.
            fill.renewed = True
            if page.last:  # (none: the group was idle, its position expired, nothing lost)
                self._round[2] += 1
            seq.epoch, seq.last = page.epoch, 0
            fill.epoch, fill.start, fill.end = page.epoch, 0, page.last
            self._read_more(fill, max(0, page.last - self.size))
            return
        if fill.end is None:
            fill.end = page.last
            if page.last - fill.start > self.size:
                # More was missed than is kept: the SIZE most recent, as a resume would.
                self._read_more(fill, page.last - self.size)
                return
        after = seq.last
        for offset, _, is_binary, payload in page.entries:
            after = offset
            if offset > fill.end or len(fill.got) >= self.size:
                break
            if offset <= seq.last:
                continue
            seq.last = offset
            fill.got.add(offset)
            self.filled += 1
            self._send(fill.key, (fill.epoch, offset, None, is_binary, payload, seq.pattern))
        if page.complete or not page.entries or after >= fill.end or len(fill.got) >= self.size:
            self._finish(fill)
        else:
            self._read_more(fill, after)

    def _fill_failed(self, failure: Any, fill: _Fill) -> None:
        if fill.seq.fill is not fill:
            return
        self.fill_failures += 1
        if self.fill_failures == 1 or self.fill_failures % 1000 == 0:
            log.warn("could not read what this node missed of {group} from Redis ({count} "
                     "so far); delivering what came after it: {reason}", group=fill.key[1],
                     count=self.fill_failures, reason=failure.getErrorMessage())
        self._finish(fill, "", failed=True)

    def _finish(self, fill: _Fill, why: str = "", failed: bool = False) -> None:
        """
        The fill is over: count (and say) what the stream no longer had, then
        deliver the held messages in order (one that begins another gap
        begins another fill, which holds the rest).
        """
        seq, key = fill.seq, fill.key
        seq.fill = None
        self._fills -= 1
        held, seq.held = seq.held, []
        end = fill.end if fill.end is not None else seq.last
        came = {m[1] for m in held if m[0] == fill.epoch and fill.start < m[1] <= end}
        lost = max(0, end - fill.start - len(fill.got | came))
        if lost:
            self.gap_lost += lost
            if fill.check:
                self._round[1] += lost
            if not failed:  # (a failed read said so already)
                self.lossy_fills += 1
                if self.lossy_fills <= 10 or self.lossy_fills % 1000 == 0:
                    log.warn("{lost} messages of {group} that this node missed are no longer "
                             "kept in Redis ({why}); its members here did not get them ({count} "
                             "such gaps so far)", lost=lost, group=key[1], count=self.lossy_fills,
                             why=why or "retention exceeded, or the history lost")
        if fill.check:
            self._round[0] += len(fill.got)
        if fill.epoch == seq.epoch:
            # What was not found is given up: the held messages follow on.
            first = held[0][1] - 1 if held and held[0][0] == seq.epoch else end
            seq.last = max(seq.last, min(first, end) if held else end)
        for message in held:
            if seq.fill is not None:
                seq.held.append(message)
            else:
                self._next(key, seq, message)
        if fill.check:
            self._checking -= 1
            self._pump_later()
        if not self._fills and self._fences:
            fences, self._fences = self._fences, []
            for fence in fences:
                self.server.history_fenced(fence)

    def fenced(self, fence: str) -> None:
        """
        A replay's fence from the bus: while a fill reads, it waits until the
        fills are over, so that no replay ends before a message its read
        covered (missed live, being filled) has been delivered, and held.
        """
        if self._fills and len(self._fences) < MAX_HELD:
            self._fences.append(fence)
        else:
            self.server.history_fenced(fence)

    def check_all(self) -> None:
        """
        The subscriber connection is back: read what follows the last offset
        of every group this node remembers, :data:`CHECKS_AT_ONCE` at a time.
        """
        queued = set(self._checks)
        self._checks.extend(key for key in self._sequences if key not in queued)
        self._pump_later()

    def _pump_later(self) -> None:
        if self._checks:
            # (A check that ends calls this again: no turn is spent while all are reading.)
            if self._pump_call is None and self._checking < CHECKS_AT_ONCE:
                self._pump_call = self.reactor.callLater(0, self._pump)
        elif not self._checking:
            filled, lost, renewed = self._round
            self._round = [0, 0, 0]
            if filled or lost or renewed:
                log.info("after the Redis subscriber connection came back: {filled} missed "
                         "messages delivered, {lost} no longer kept, {renewed} groups in a new "
                         "epoch (their history was lost)", filled=filled, lost=lost,
                         renewed=renewed)

    def _pump(self) -> None:
        self._pump_call = None
        checks = self._checks
        while checks and self._checking < CHECKS_AT_ONCE:
            key = checks.popleft()
            seq = self._sequences.get(key)
            if seq is None or seq.fill is not None:
                continue
            self._checking += 1
            self._fill(key, seq, None, check=True)
        self._pump_later()

    def read(self, group: str, after: int, count: int, fence: str) -> Deferred[Page]:
        return self._read(group, self.is_channel(group), after, count, fence)

    def _read(self, group: str, channel: bool, after: int, count: int,
              fence: str) -> Deferred[Page]:
        message = json.dumps(["fence", self.storage.node_id, fence]) if fence else ""
        d = self.storage.redis.run_script(READ, self._keys(group, channel), [
            after, count, new_epoch(), self.ttl_ms, message, PAGE_BYTES])
        return d.addCallback(self._page)

    @staticmethod
    def _page(reply: Any) -> Page:
        epoch, last, entries, seconds, micros, complete = reply
        page = []
        for entry_id, fields in entries or ():
            offset, _, ms = entry_id.partition(b"-")
            values = dict(zip(fields[::2], fields[1::2]))
            payload = values.get(b"p", b"")
            flag = values.get(b"b")
            # A channel's entries (fws_publish) have no flag: binary as it was live.
            binary = _is_binary(payload) if flag is None else flag == b"1"
            page.append((int(offset), int(ms) / 1000.0, binary, payload))
        return Page(epoch.decode(), int(last or 0), page, int(seconds) + int(micros) / 1e6,
                    bool(int(complete)))

    def collect(self) -> Mapping[str, int]:
        return {"kept": self.kept, "channel_received": self.channel_received,
                "filled": self.filled, "gap_lost": self.gap_lost, "duplicates": self.duplicates}


def make_storage_object(config: Any, reactor: Any) -> RedisStorage:
    """Storage-module entry point: build (not start) the Redis storage object."""
    options = config.storage_options
    url = options.get("redis_url")
    sentinels = tuple(options.get("redis_sentinel") or ())
    master_name = options.get("redis_sentinel_master")
    if url and (sentinels or master_name):
        raise ConfigError("redis_url and redis_sentinel/redis_sentinel_master both say where "
                          "Redis is: give one (a redis+sentinel:// URL names the Sentinels too)")
    sentinel_login = {"sentinel_username": options.get("redis_sentinel_username"),
                      "sentinel_password": options.get("redis_sentinel_password")}
    if url:
        try:
            address = parse_redis_url(url)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if address.sentinels:
            address = replace(address, **sentinel_login)
    elif sentinels or master_name:
        if not sentinels or not master_name:
            raise ConfigError("redis_sentinel and redis_sentinel_master go together: the "
                              "Sentinels, and the name of the master they monitor")
        try:
            address = RedisAddress(
                db=options.get("redis_db") or 0, username=options.get("redis_username"),
                password=options.get("redis_password"), sentinels=parse_sentinels(sentinels),
                master_name=check_master_name(master_name), **sentinel_login,
            )
        except ValueError as e:
            raise ConfigError(f"redis_sentinel: {e}") from None
    else:
        port = options.get("redis_port") or 6379
        if not 0 < port < 65536:
            raise ConfigError(f"redis_port must be between 1 and 65535, not {port}")
        address = RedisAddress(
            host=options.get("redis_host") or "localhost", port=port,
            db=options.get("redis_db") or 0, username=options.get("redis_username"),
            password=options.get("redis_password"),
        )
    key = options.get("redis_key") or "fws"
    channels = tuple(options.get("redis_channels") or ())
    if f"{key}:bus" in channels:
        raise ConfigError(f"channel {key}:bus is fws's own relay channel; pick another name")
    ttl = options.get("redis_node_ttl")
    ttl = 15.0 if ttl is None else float(ttl)
    if ttl < 1:
        raise ConfigError("redis_node_ttl must be at least 1 second")
    timeouts = {}
    for name, default, least, most in (
        ("redis_timeout", 5.0, 0.1, None), ("redis_connect_timeout", 3.0, 0.1, None),
        ("redis_ping_interval", 5.0, 0.1, None), ("redis_sentinel_timeout", 0.5, 0.05, 30.0),
    ):
        value = options.get(name)
        value = default if value is None else float(value)
        if not value >= least:
            raise ConfigError(f"{name} must be at least {least} seconds, not {value}")
        if most is not None and value > most:
            raise ConfigError(f"{name} must be at most {most} seconds, not {value}")
        timeouts[name] = value
    ping = timeouts["redis_ping_interval"]
    return RedisStorage(reactor, address, channels, key, ttl,
                        reply_timeout=timeouts["redis_timeout"],
                        connect_timeout=timeouts["redis_connect_timeout"],
                        ping_interval=ping, ping_timeout=min(2.0, ping / 3),
                        sentinel_timeout=timeouts["redis_sentinel_timeout"])


__all__ = ["FUNCTIONS", "OPTIONS", "RedisHistory", "RedisStorage", "RedisUnavailable",
           "glob_match", "make_storage_object"]
