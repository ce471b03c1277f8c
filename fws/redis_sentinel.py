"""
Redis Sentinel for fws: where the master is, asked of any Sentinel that answers.

:class:`Sentinels` asks the Sentinels in turn (``SENTINEL
get-master-addr-by-name``) for the address of the master, each within one
bounded timeout, skipping a Sentinel that refuses, is silent or answers
nonsense, and puts the one that answered first for the next question (the
client guidelines of the Redis documentation). Questions asked while one is
under way share its answer, so that the two connections of a node that
reconnect together ask once.

:class:`fws.redis_service.RedisService` asks on every (re)connect and watches
one Sentinel's ``+switch-master`` channel (:func:`parse_switch`) to follow a
failover as soon as it happens. Nothing here blocks; every answer from a
Sentinel is checked and bounded before it is used.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import txredisapi
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from fws._wire.redis import QueryFactory, QueryProtocol

log = Logger()

#: The Sentinels' own port when an address gives none.
SENTINEL_PORT = 26379
#: Most Sentinel addresses fws takes (a deployment has three or five).
MAX_SENTINELS = 16
#: Longest host name or master name accepted, from the configuration or a Sentinel.
MAX_NAME = 255
#: Longest ``+switch-master`` message considered (five short fields).
MAX_EVENT = 1024

#: A (host, port) pair.
HostPort = tuple[str, int]


def parse_host_port(text: str, default_port: int = SENTINEL_PORT) -> HostPort:
    """
    ``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` as a (host, port) pair.

    :raises ValueError: with a one-line explanation.
    """
    text = text.strip()
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1:] if end >= 0 else "?"
        if rest and not rest.startswith(":"):
            raise ValueError(f"invalid address {text!r}: an IPv6 host is written [addr]:port")
        host, port_text = text[1:end], rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        raise ValueError(f"invalid address {text!r}: write an IPv6 host as [addr]:port")
    if not host or len(host) > MAX_NAME or any(c.isspace() or c in "/@,?#" for c in host):
        raise ValueError(f"invalid address {text!r}: no usable host")
    if not port_text:
        return host, default_port
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"invalid address {text!r}: port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"invalid address {text!r}: port must be between 1 and 65535")
    return host, port


def parse_sentinels(values: Sequence[str]) -> tuple[HostPort, ...]:
    """Sentinel addresses, at most :data:`MAX_SENTINELS`, without duplicates."""
    out: list[HostPort] = []
    for value in values:
        address = parse_host_port(value)
        if address not in out:
            out.append(address)
    if not out:
        raise ValueError("no Sentinel address given")
    if len(out) > MAX_SENTINELS:
        raise ValueError(f"at most {MAX_SENTINELS} Sentinel addresses, not {len(out)}")
    return tuple(out)


def check_master_name(name: str) -> str:
    """A master name as Sentinel knows it (``sentinel monitor NAME ...``)."""
    if not name or len(name) > MAX_NAME or any(c.isspace() for c in name):
        raise ValueError(f"invalid Sentinel master name {name!r}: one word of at most "
                         f"{MAX_NAME} characters")
    return name


def client_endpoint(reactor: Any, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    """
    A TCP client endpoint: straight to an IP address (what Sentinels answer),
    through the reactor's resolver for a name (resolved again on every connect).

    HostnameEndpoint would also take an address, but reports a refused
    connection only at its next attempt tick (0.3 s later): too slow for
    asking the next Sentinel, or retrying a master that is not up yet.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return HostnameEndpoint(reactor, host, port, timeout=timeout)
    if ip.version == 6:
        return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)


def format_host_port(address: HostPort) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_switch(data: bytes, name: str) -> tuple[HostPort, HostPort] | None:
    """
    ``(old, new)`` from a ``+switch-master`` message
    (``<name> <old-ip> <old-port> <new-ip> <new-port>``) about master ``name``;
    None for another master's or a malformed one.
    """
    if len(data) > MAX_EVENT:
        return None
    try:
        fields = data.decode("ascii").split()
    except UnicodeDecodeError:
        return None
    if len(fields) != 5 or fields[0] != name:
        return None
    try:
        old = _checked_address(fields[1], fields[2])
        new = _checked_address(fields[3], fields[4])
    except ValueError:
        return None
    return old, new


def _checked_address(host: Any, port: Any) -> HostPort:
    if isinstance(host, bytes):
        host = host.decode("ascii", "strict")
    if isinstance(port, bytes):
        port = port.decode("ascii", "strict")
    if not isinstance(host, str) or not host or len(host) > MAX_NAME \
            or any(c.isspace() or c in "/@,?#[]" for c in host):
        raise ValueError("not a host")
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError("not a port")
    return host, number


class NoMaster(Exception):
    """No Sentinel said where the master is; ``str()`` says what each one did."""


class UnknownMaster(NoMaster):
    """Every Sentinel that answered does not monitor a master of that name (configuration)."""


class SentinelRefused(NoMaster):
    """Sentinels refused the login or the question (a password, an ACL: configuration)."""


class Sentinels:
    """
    The Sentinels of one master: ask them where it is.

    :param addresses: The Sentinels, in the order to ask them.
    :param name: The master's name (``sentinel monitor NAME ...``).
    :param timeout: Seconds each Sentinel has, connecting included.
    :param login: The Sentinels' own ``AUTH`` arguments (``[user,] password``), if any.
    """

    def __init__(self, reactor: Any, addresses: Sequence[HostPort], name: str,
                 timeout: float, login: Sequence[str] = ()) -> None:
        self._reactor = reactor
        self.addresses = list(addresses)
        self.name = name
        self.timeout = timeout
        self.login = tuple(login)
        self._asking: Deferred[HostPort] | None = None
        self._waiters: list[Deferred[HostPort]] = []
        #: The Sentinel that answered the last question.
        self.last_answered: HostPort | None = None

    def prefer(self, address: HostPort) -> None:
        """Ask ``address`` first from now on (it answered, or announced a failover)."""
        if address in self.addresses:
            self.addresses.remove(address)
            self.addresses.insert(0, address)

    def master(self) -> Deferred[HostPort]:
        """
        Fire with the master's address, or fail with :class:`NoMaster`.

        Each caller gets a Deferred of its own: cancelling it leaves the
        question to the others.
        """
        waiter: Deferred[HostPort] = Deferred(self._forget_waiter)
        self._waiters.append(waiter)
        if self._asking is None:
            asking = self._asking = Deferred.fromCoroutine(self._ask_all())
            asking.addBoth(self._answered)
        return waiter

    def _forget_waiter(self, waiter: Deferred[HostPort]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if not self._waiters and self._asking is not None:
            self._asking.cancel()  # nobody waits for the answer any more

    def _answered(self, result: Any) -> None:
        self._asking = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)

    def stop(self) -> None:
        """Cancel the question under way, if any."""
        if self._asking is not None:
            self._asking.cancel()

    async def _ask_all(self) -> HostPort:
        problems: list[str] = []
        unknown = refused = 0
        for address in list(self.addresses):
            try:
                master = await self._ask(address)
            except CancelledError:
                raise
            except UnknownMaster:
                unknown += 1
                problems.append(f"{format_host_port(address)}: does not know master {self.name!r}")
                continue
            except SentinelRefused as e:
                refused += 1
                problems.append(f"{format_host_port(address)}: {e}")
                continue
            except Exception as e:
                problems.append(f"{format_host_port(address)}: {_describe(e)}")
                continue
            self.last_answered = address
            self.prefer(address)
            return master
        text = "; ".join(problems)
        if unknown and unknown == len(problems):
            raise UnknownMaster(f"no Sentinel knows a master named {self.name!r} ({text})")
        if refused and refused + unknown == len(problems):
            raise SentinelRefused(f"Sentinels refused: {text}")
        raise NoMaster(f"no Sentinel said where master {self.name!r} is ({text})")

    async def _ask(self, address: HostPort) -> HostPort:
        host, port = address
        endpoint = client_endpoint(self._reactor, host, port, self.timeout)
        # One deadline for connecting and answering.
        timed_out = False
        current: Deferred[Any] = endpoint.connect(QueryFactory())

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            current.cancel()

        timer = self._reactor.callLater(self.timeout, expire)
        proto: QueryProtocol | None = None
        try:
            proto = await current
            if self.login:
                current = proto.own_command("AUTH", *self.login)
                answer = await current
                if isinstance(answer, txredisapi.ResponseError):
                    raise SentinelRefused(f"refused: {str(answer)[:200]}")
            current = proto.own_command("SENTINEL", "get-master-addr-by-name", self.name)
            reply = await current
        except txredisapi.ResponseError as e:  # an error reply, to AUTH or to the question
            raise SentinelRefused(f"refused: {str(e)[:200]}") from None
        except (CancelledError, ConnectingCancelledError):
            if timed_out:  # our deadline, not a stop
                raise TimeoutError(f"no answer within {self.timeout}s") from None
            raise CancelledError() from None
        finally:
            if timer.active():
                timer.cancel()
            if proto is not None and proto.transport is not None:
                proto.transport.abortConnection()
        if reply is None:
            raise UnknownMaster(self.name)
        if isinstance(reply, txredisapi.ResponseError):
            raise SentinelRefused(f"refused: {str(reply)[:200]}")
        if not isinstance(reply, list) or len(reply) != 2:
            raise ValueError("a malformed answer")
        try:
            return _checked_address(reply[0], reply[1])
        except (ValueError, UnicodeDecodeError):
            raise ValueError("a malformed address") from None


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text.splitlines()[0][:200] if text else type(error).__name__


__all__ = [
    "MAX_SENTINELS",
    "SENTINEL_PORT",
    "HostPort",
    "NoMaster",
    "SentinelRefused",
    "Sentinels",
    "UnknownMaster",
    "check_master_name",
    "client_endpoint",
    "format_host_port",
    "parse_host_port",
    "parse_sentinels",
    "parse_switch",
]
