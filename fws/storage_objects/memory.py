"""
The default storage object: sets in a dict, and pub/sub within this process.

Every method returns an already-fired ``Deferred`` (pub/sub delivery itself
happens on the next reactor turn, as it would through Redis, so a consumer
filter that publishes never recurses into itself).  Every published channel is
delivered: in one process there is nobody else to subscribe.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from fws.storage_objects import Consumer


class MemoryStorage(Service):
    """In-process :class:`fws.storage_objects.StorageObject`."""

    name = "storage"

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor
        self._sets: dict[str, set[Hashable]] = {}
        self.consumer: Consumer | None = None

    def get(self, key: str) -> Deferred[set[Any]]:
        return succeed(set(self._sets.get(key, ())))

    def add(self, key: str, value: Hashable) -> Deferred[bool]:
        members = self._sets.setdefault(key, set())
        new = value not in members
        members.add(value)
        return succeed(new)

    def remove(self, key: str, value: Hashable) -> Deferred[bool]:
        members = self._sets.get(key)
        if members is None or value not in members:
            return succeed(False)
        members.discard(value)
        if not members:
            del self._sets[key]
        return succeed(True)

    def publish(self, channel: str, data: str | bytes) -> Deferred[int]:
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        consumer = self.consumer
        if consumer is None or not self.running:
            return succeed(0)
        self._reactor.callLater(0, consumer, channel, payload, None)
        return succeed(1)


def make_storage_object(config: Any, reactor: IReactorTime) -> MemoryStorage:
    """Storage-module entry point (see :mod:`fws.storage_objects`)."""
    return MemoryStorage(reactor)
