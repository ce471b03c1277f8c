"""
The default storage object: sets in a dict, and pub/sub within this process.

Values are kept as bytes (``str`` is stored UTF-8 encoded), exactly as the
Redis storage object keeps them, so a filter behaves the same on both.
Every method returns an already-fired ``Deferred`` (pub/sub delivery itself
happens on the next reactor turn, as it would through Redis, so a consumer
filter that publishes never recurses into itself).  Every published channel is
delivered: in one process there is nobody else to subscribe.

``storage_object[key]``, the 2014 read, works here as it did then: it returns
the set under ``key`` at once (a :class:`fws.storage_objects.Members`, empty
if there is none, in which ``str`` values are found as their UTF-8 bytes).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from fws.storage_objects import Consumer, Members, StorageBase

#: ``storage_object[key]`` is answered at once (see :func:`fws.storage_objects.subscript_problem`).
SUBSCRIPT_READS = True


class MemoryStorage(StorageBase, Service):
    """In-process :class:`fws.storage_objects.StorageObject`."""

    def __init__(self, reactor: IReactorTime) -> None:
        self.setName("storage")
        self._reactor = reactor
        self._sets: dict[str, set[bytes]] = {}
        self.consumer: Consumer | None = None

    def attach(self, server: Any) -> None:
        """Deliver pub/sub messages to ``server``'s consumer chain."""
        self.consumer = server.deliver_pubsub

    def get(self, key: str) -> Deferred[set[bytes]]:
        return succeed(Members(self._sets.get(key, ())))

    def __getitem__(self, key: str) -> Members:
        """The 2014 read: a copy of the set under ``key``, at once (empty if none)."""
        return Members(self._sets.get(key, ()))

    def add(self, key: str, value: str | bytes) -> Deferred[bool]:
        value = _bytes(value)
        members = self._sets.setdefault(key, set())
        new = value not in members
        members.add(value)
        return succeed(new)

    def remove(self, key: str, value: str | bytes) -> Deferred[bool]:
        value = _bytes(value)
        members = self._sets.get(key)
        if members is None or value not in members:
            return succeed(False)
        members.discard(value)
        if not members:
            del self._sets[key]
        return succeed(True)

    def publish(self, channel: str, data: str | bytes) -> Deferred[int]:
        payload = _bytes(data)
        consumer = self.consumer
        if consumer is None or not self.running:
            return succeed(0)
        self._reactor.callLater(0, consumer, channel, payload, None)
        return succeed(1)


def _bytes(value: str | bytes | bytearray | memoryview) -> bytes:
    """Values are stored as bytes, as Redis stores them: str is encoded as UTF-8."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"storage values are str or bytes, not {type(value).__name__}")


def make_storage_object(config: Any, reactor: IReactorTime) -> MemoryStorage:
    """Storage-module entry point (see :mod:`fws.storage_objects`)."""
    return MemoryStorage(reactor)
