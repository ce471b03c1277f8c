"""
Safe limits: what one connection, one client address and the whole server may
use, with the defaults a careful operator wants.

Autobahn's own defaults are unlimited message and frame sizes, no keepalive,
any Origin and no connection cap, and Twisted buffers outgoing data without
bound; every one of those is closed here, and every one is an option.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MiB = 1024 * 1024

#: Close codes fws uses, besides the RFC 6455 ones Autobahn sends itself
#: (1002 protocol error, 1007 invalid UTF-8, 1009 message too big).
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008  # message or frame rate limit exceeded
CLOSE_TOO_BIG = 1009
CLOSE_IDLE = 4000  # no message for --idle-timeout seconds
CLOSE_SLOW_CONSUMER = 4008  # outgoing buffer over --max-send-buffer

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TokenBucket:
    """
    ``rate`` tokens a second, at most ``burst`` at once: one connection's
    budget of messages (``--max-message-rate``) or frames (``--max-frame-rate``).

    Its own small object, made only when the limit is on, rather than four
    attributes of the connection: they pushed an idle connection's instance
    dict over the 21 keys that fit its smaller table (issue 16).
    """

    __slots__ = ("at", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = self.tokens = float(burst)
        self.at = now

    def take(self, count: float, now: float) -> bool:
        """Take ``count`` tokens if there are as many (refilled up to ``now``); else take none."""
        tokens = self.tokens + (now - self.at) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.at = now
        if tokens >= count:
            self.tokens = tokens - count
            return True
        self.tokens = tokens
        return False


class LimitError(ValueError):
    """An invalid limit option; the message is one line."""


@dataclass(frozen=True)
class Limits:
    """Every limit of one server; ``0`` means "no limit" where a limit may be turned off."""

    max_message_size: int = MiB
    max_frame_size: int = MiB
    max_connections: int = 10000
    #: TCP connections accepted beyond ``max_connections``: open and in-handshake
    #: connections together are capped at the sum, checked as each is accepted,
    #: so idle sockets cannot take every file descriptor, and a server whose
    #: users fill ``max_connections`` still has room to answer 503.
    max_pending_handshakes: int = 1000
    max_connections_per_ip: int = 0
    #: TCP connections from one address that may be at once in their opening
    #: handshake (or, on the HTTP port, plain HTTP connections), checked as each
    #: is accepted by the TCP peer address; trusted proxies are exempt. 0: no limit.
    max_pending_per_ip: int = 100
    trusted_proxies: tuple[Network, ...] = ()
    max_message_rate: float = 1000.0
    message_burst: int = 2000
    rate_limit_action: str = "close"
    #: Frames of any kind (data, continuation, ping, pong, close) a connection may
    #: send per second, and at once: the budget the message rate cannot be, since
    #: pings and fragments are not messages. The defaults are what limits_from_options
    #: derives from the message rate's (twice it); 0 means no limit.
    max_frame_rate: float = 2000.0
    frame_burst: int = 4000
    open_handshake_timeout: float = 10.0
    #: Bytes an opening handshake request may hold up to and including the empty
    #: line that ends its headers, and how many headers it may have: without
    #: them, a client sending headers that never end is buffered until the timeout.
    max_handshake_size: int = 16384
    max_handshake_headers: int = 100
    compression: bool = False
    max_send_buffer: int = 4 * MiB
    slow_consumer_action: str = "close"
    ping_interval: float = 30.0
    ping_timeout: float = 10.0
    idle_timeout: float = 0.0
    allowed_origins: tuple[str, ...] = ()
    #: Refuse (403) requests that name no origin: no Origin header, or an empty one.
    require_origin: bool = False
    filter_timeout: float = 0.0
    drain_period: float = 2.0
    max_groups_per_connection: int = 32
    group_claim: str | None = None
    #: Messages kept per group for resume (fws.history); 0: none, no fws.v1.
    history_size: int = 0
    #: Seconds a kept message stays resumable.
    history_ttl: float = 300.0
    #: Bytes of payload the memory history keeps on this node, all groups together.
    history_max_bytes: int = 64 * MiB

    def protocol_options(self) -> dict[str, Any]:
        """The Autobahn protocol options these limits stand for."""
        options: dict[str, Any] = {
            "maxMessagePayloadSize": self.max_message_size,
            "maxFramePayloadSize": self.max_frame_size,
            "openHandshakeTimeout": self.open_handshake_timeout,
            "closeHandshakeTimeout": 2.0,
            "autoPingInterval": self.ping_interval,
            "autoPingTimeout": self.ping_timeout,
            "failByDrop": False,
            # fws decides on Origin itself (fws.protocol._origin_refusal): Autobahn is
            # told every Origin is "null" (fws._wire.protocol._null_origin) and lets it pass.
            "allowNullOrigin": True,
            # A plain GET gets 426 Upgrade Required, not Autobahn's status page; protocol
            # errors get a close frame (1002, 1007 ...), then TCP close.
            "webStatus": False,
        }
        if self.compression:
            options["perMessageCompressionAccept"] = self._accept_deflate
        return options

    def _accept_deflate(self, offers: Sequence[Any]) -> Any:
        """Accept permessage-deflate, decompressing no more than a message may hold."""
        from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept

        for offer in offers:
            if isinstance(offer, PerMessageDeflateOffer):
                return PerMessageDeflateOfferAccept(
                    offer, max_message_size=self.max_message_size or None)
        return None

    def is_trusted_proxy(self, host: str) -> bool:
        if not self.trusted_proxies:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.trusted_proxies)


def _positive(values: Mapping[str, Any], name: str, allow_zero: bool = True) -> Any:
    value = values[name]
    if value < 0 or (value == 0 and not allow_zero):
        raise LimitError(f"{name} must be {'zero or more' if allow_zero else 'positive'}, "
                         f"not {value}")
    return value


def limits_from_options(values: Mapping[str, Any]) -> Limits:
    """Validate the limit options of a resolved configuration."""
    defaults = Limits()
    merged = {name: values.get(name, getattr(defaults, name)) for name in (
        "max_message_size", "max_frame_size", "max_connections", "max_pending_handshakes",
        "max_connections_per_ip", "max_pending_per_ip",
        "max_message_rate", "message_burst", "open_handshake_timeout", "max_send_buffer",
        "ping_interval", "ping_timeout", "idle_timeout", "filter_timeout", "drain_period",
        "max_groups_per_connection", "max_handshake_size", "max_handshake_headers")}
    merged = {k: (getattr(defaults, k) if v is None else v) for k, v in merged.items()}
    for name in merged:
        _positive(merged, name)
    if merged["max_message_size"] == 0 or merged["max_frame_size"] == 0:
        raise LimitError("max_message_size and max_frame_size must be positive: fws never "
                         "accepts unbounded messages")
    if merged["max_send_buffer"] == 0:
        raise LimitError("max_send_buffer must be positive: outgoing buffers are always bounded")
    if merged["open_handshake_timeout"] == 0:
        raise LimitError("open_handshake_timeout must be positive")
    if merged["max_handshake_size"] == 0 or merged["max_handshake_headers"] == 0:
        raise LimitError("max_handshake_size and max_handshake_headers must be positive: fws "
                         "never buffers an unbounded handshake")
    rate = float(merged["max_message_rate"])
    burst = int(merged["message_burst"]) or int(max(1.0, 2 * rate))
    frame_rate, frame_burst = _frame_budget(values, rate)
    proxies = []
    for text in values.get("trusted_proxies") or ():
        try:
            proxies.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise LimitError(f"trusted_proxies: {text!r} is not an address or network") from None
    origins = tuple(o.strip().lower().rstrip("/") for o in values.get("allowed_origins") or ()
                    if o.strip())
    return Limits(
        max_message_size=int(merged["max_message_size"]),
        max_frame_size=int(merged["max_frame_size"]),
        max_connections=int(merged["max_connections"]),
        max_pending_handshakes=int(merged["max_pending_handshakes"]),
        max_connections_per_ip=int(merged["max_connections_per_ip"]),
        max_pending_per_ip=int(merged["max_pending_per_ip"]),
        trusted_proxies=tuple(proxies),
        max_message_rate=rate,
        message_burst=burst,
        rate_limit_action=values.get("rate_limit_action") or "close",
        max_frame_rate=frame_rate,
        frame_burst=frame_burst,
        open_handshake_timeout=float(merged["open_handshake_timeout"]),
        max_handshake_size=int(merged["max_handshake_size"]),
        max_handshake_headers=int(merged["max_handshake_headers"]),
        compression=bool(values.get("compression")),
        max_send_buffer=int(merged["max_send_buffer"]),
        slow_consumer_action=values.get("slow_consumer_action") or "close",
        ping_interval=float(merged["ping_interval"]),
        ping_timeout=float(merged["ping_timeout"]),
        idle_timeout=float(merged["idle_timeout"]),
        allowed_origins=origins,
        require_origin=bool(values.get("require_origin")),
        filter_timeout=float(merged["filter_timeout"]),
        drain_period=float(merged["drain_period"]),
        max_groups_per_connection=int(merged["max_groups_per_connection"]),
        group_claim=values.get("group_claim") or None,
        **_history(values),
    )


#: The most messages ``--history`` keeps per group, and the longest ``--history-ttl``.
HISTORY_SIZE_CAP = 100_000
HISTORY_TTL_CAP = 86400.0


def _history(values: Mapping[str, Any]) -> dict[str, Any]:
    """``--history``, ``--history-ttl`` and ``--history-max-bytes``, checked against their caps."""
    defaults = Limits()
    size = values.get("history_size")
    size = defaults.history_size if size is None else size
    ttl = values.get("history_ttl")
    ttl = defaults.history_ttl if ttl is None else ttl
    most = values.get("history_max_bytes")
    most = defaults.history_max_bytes if most is None else most
    if not 0 <= size <= HISTORY_SIZE_CAP:
        raise LimitError(f"history must be between 0 and {HISTORY_SIZE_CAP} messages, not {size}")
    if not 0 < ttl <= HISTORY_TTL_CAP:
        raise LimitError(f"history_ttl must be more than 0 and at most {HISTORY_TTL_CAP:g} "
                         f"seconds, not {ttl}")
    if most <= 0:
        raise LimitError(f"history_max_bytes must be positive, not {most}")
    return {"history_size": int(size), "history_ttl": float(ttl), "history_max_bytes": int(most)}


def _frame_budget(values: Mapping[str, Any], message_rate: float) -> tuple[float, int]:
    """
    ``(max_frame_rate, frame_burst)``: as given, or twice the message rate and twice that.

    Unset, the frame rate follows ``--max-message-rate``: twice it leaves a
    client at the message rate room for its pongs and for fragmenting, and a
    server that turned the message rate off (benchmarks, trusted clients) has
    no frame budget either. The burst (twice the frame rate: 4000 frames by
    default) is what fragmenting one message may take at once: a maximum-size
    message (1 MiB) in 256-byte fragments; a message in 1-byte fragments is
    not a client, it is a flood.
    """
    given = values.get("max_frame_rate")
    rate = 2 * message_rate if given is None else float(given)
    if rate < 0:
        raise LimitError(f"max_frame_rate must be zero or more, not {given}")
    burst_given = values.get("frame_burst") or 0
    if burst_given < 0:
        raise LimitError(f"frame_burst must be zero or more, not {burst_given}")
    burst = int(burst_given) or int(max(1.0, 2 * rate))
    return rate, burst


def origin_allowed(origin: str | None, allowed: Sequence[str]) -> bool:
    """
    Whether a browser's ``Origin`` may connect.

    ``allowed`` holds ``scheme://host[:port]`` entries, where ``*`` matches any
    run of characters (``https://*.example.com``) and a lone ``*`` allows all;
    an empty ``allowed`` (no ``--allowed-origins``) allows every origin.
    ``None`` (no Origin header: not a browser) is allowed: Origin protects
    browsers from cross-site use, and any other client can send any Origin it
    likes (``--require-origin`` refuses it, in the protocol). Every other value
    is an origin like any other and must match an entry: ``null`` (sandboxed
    iframes, ``file://`` pages) only matches an entry ``null``, and an empty
    or malformed value matches none.
    """
    if not allowed or origin is None:
        return True
    from fnmatch import fnmatchcase

    origin = origin.strip().lower().rstrip("/")
    return any(pattern == "*" or fnmatchcase(origin, pattern) for pattern in allowed)
