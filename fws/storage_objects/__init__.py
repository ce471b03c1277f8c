"""
Storage objects: shared key/set storage and pub/sub behind one small async interface.

A storage module (named by ``--storage`` or ``$STORAGE_OBJECT_MODULE``) provides:

* ``make_storage_object(config, reactor)``: returns an object that satisfies
  :class:`StorageObject` and is also a Twisted ``IService`` (it joins the
  service tree, so it connects in ``startService`` and disconnects in
  ``stopService``);
* optionally ``OPTIONS``: a sequence of :class:`fws.config.Option` that the
  command line, config files and ``FWS_*`` variables then accept (this is how
  the Redis module adds ``--redis_host`` and friends to ``-h``).

The factory calls ``storage_object.attach(server)``; the storage object then
calls ``server.deliver_pubsub(channel, data, pattern)`` for every pub/sub
message, which feeds the consumer chain.  A storage object that joins several
processes into one server also has ``relay(group, exclude_id, is_binary,
payload)`` (the factory calls it for every broadcast, and the other nodes get
it through ``server.deliver_relayed``) and ``member_joined(group, id)`` /
``member_left(group, id)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred

Consumer = Callable[[str, bytes, "str | None"], None]


class StorageObject(Protocol):
    """What filters may call on ``web_socket_instance.storage_object``."""

    def attach(self, server: Any) -> None:
        """Deliver pub/sub messages (and relayed broadcasts) to ``server``."""

    def get(self, key: str) -> Deferred[set[bytes]]:
        """Fire with the set stored under ``key`` (empty if none), as bytes."""

    def add(self, key: str, value: str | bytes) -> Deferred[bool]:
        """Add ``value`` to the set under ``key``; fire with whether it was new."""

    def remove(self, key: str, value: str | bytes) -> Deferred[bool]:
        """Remove ``value`` from the set under ``key``; fire with whether it was there."""

    def publish(self, channel: str, data: str | bytes) -> Deferred[int]:
        """Publish ``data`` on ``channel``; fire with the number of receivers."""
