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

:class:`StorageObject` is the whole contract: what filters call (``get``,
``add``, ``remove``, ``publish``) and what the server, the service and the
metrics call (``attach``, ``health``, ``shared`` with ``relay`` and the
membership hooks, ``collect_metrics``). The factory calls
``storage_object.attach(server)`` with a :class:`StorageServer`; the storage
object then calls ``server.deliver_pubsub(channel, data, pattern)`` for every
pub/sub message, which feeds the consumer chain. A storage object that joins
several processes into one server (``shared``) gets every broadcast through
``relay(group, exclude_id, is_binary, payload)`` and hands the other nodes'
to ``server.deliver_relayed``. :class:`StorageBase` has the single-process
defaults of everything but the filter-facing methods; :func:`complete` gives
them to a storage object written for the five-method contract of earlier
releases.

The 2014 read, ``storage_object[key]``, answered at once with the set under
``key``. The memory storage object still answers it (a :class:`Members`); a
storage object that cannot answer without waiting (Redis) says so in its
module (``SUBSCRIPT_READS = False``), and :func:`subscript_problem` then
refuses, at load time and so in ``--check``, a filter module that reads it,
with what to write instead (:data:`SUBSCRIPT_FIX`).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType
from typing import Any, Protocol, cast

from twisted.internet.defer import Deferred

Consumer = Callable[[str, bytes, "str | None"], None]


class StorageServer(Protocol):
    """What a storage object may call on the server it is attached to."""

    #: This node's id: the prefix of its connection ids, unique across nodes.
    node_id: str

    @property
    def groups(self) -> Mapping[str, Mapping[str, object]]:
        """Token group name -> this node's members by id (to restore them in shared storage)."""

    def deliver_pubsub(self, channel: str, data: bytes, pattern: str | None, *,
                       position: tuple[str, int] | None = None) -> None:
        """
        A pub/sub message for the consumer chain; ``position``: its (epoch,
        offset) in the channel's history, where the storage kept it (Redis).
        """

    def deliver_relayed(self, group: str | None, exclude_id: str | None, is_binary: bool,
                        payload: bytes) -> object:
        """A broadcast another node relayed: deliver it to this node's users (or members)."""


class StorageObject(Protocol):
    """
    The whole contract of a storage object.

    Filters call ``get``, ``add``, ``remove`` and ``publish`` on
    ``web_socket_instance.storage_object``; the rest is for fws itself.
    """

    #: Whether several processes share this storage as one server: only then
    #: are ``relay``, ``member_joined`` and ``member_left`` called (a broadcast
    #: pays for nothing it does not need).
    shared: bool

    def attach(self, server: StorageServer) -> None:
        """Deliver pub/sub messages (and relayed broadcasts) to ``server``."""

    def health(self) -> str | None:
        """``None`` when the storage serves its whole contract, else why not, in a few
        words (what ``/readyz`` says, e.g. ``not connected to Redis``)."""

    def relay(self, group: str | None, exclude_id: str | None, is_binary: bool,
              payload: bytes) -> None:
        """Hand a broadcast already delivered on this node to the other nodes."""

    def member_joined(self, group: str, member_id: str) -> None:
        """A connection of this node joined token group ``group``."""

    def member_left(self, group: str, member_id: str) -> None:
        """A connection of this node left token group ``group``."""

    def collect_metrics(self) -> Iterable[Any]:
        """Prometheus metric families about the storage itself (``/metrics``)."""

    def details(self) -> Mapping[str, str]:
        """What ``/readyz`` says about the storage besides its health (e.g. which Redis
        master it is on); empty for none."""

    def history(self, server: Any, reactor: Any, limits: Any) -> Any:
        """
        With ``--history``: the :class:`fws.history.HistoryStore` this storage
        keeps group messages in for ``server``, or ``None`` for the node's
        own memory (:class:`fws.history.MemoryHistory`).
        """

    # It is a Twisted IService too: it joins the tree, and connects when started.

    def setServiceParent(self, parent: Any) -> Any:
        """Join the service tree."""

    def stopService(self) -> Deferred[None] | None:
        """Disconnect (the tree stops storage after the clients are closed)."""

    def get(self, key: str) -> Deferred[set[bytes]]:
        """Fire with the set stored under ``key`` (empty if none), as bytes."""

    def add(self, key: str, value: str | bytes) -> Deferred[bool]:
        """Add ``value`` to the set under ``key``; fire with whether it was new."""

    def remove(self, key: str, value: str | bytes) -> Deferred[bool]:
        """Remove ``value`` from the set under ``key``; fire with whether it was there."""

    def publish(self, channel: str, data: str | bytes) -> Deferred[int]:
        """Publish ``data`` on ``channel``; fire with the number of receivers."""

    def publish_kept(self, channel: str, data: str | bytes) -> Deferred[int | None]:
        """
        Publish ``data`` on ``channel`` so that ``--history`` keeps it for
        resume on every node: with Redis through ``FCALL fws_publish``, firing
        with its offset (``None`` when no node keeps history); elsewhere, as
        ``publish`` (whose channel messages the node's own history keeps),
        firing with ``None``.
        """


class StorageBase:
    """The single-process defaults of :class:`StorageObject`'s server-side half."""

    shared = False

    def health(self) -> str | None:
        return None

    def relay(self, group: str | None, exclude_id: str | None, is_binary: bool,
              payload: bytes) -> None:
        pass

    def member_joined(self, group: str, member_id: str) -> None:
        pass

    def member_left(self, group: str, member_id: str) -> None:
        pass

    def collect_metrics(self) -> Iterable[Any]:
        return ()

    def details(self) -> Mapping[str, str]:
        return {}

    def history(self, server: Any, reactor: Any, limits: Any) -> Any:
        return None

    def publish_kept(self, channel: str, data: str | bytes) -> Deferred[int | None]:
        # One process: the node's history keeps what publish delivers; no offset is
        # known until the consumer chain has run.
        published: Deferred[Any] = cast(Any, self).publish(channel, data)
        return published.addCallback(lambda _: None)


class Members(set[bytes]):
    """
    The values stored under one key, as bytes, in which a ``str`` is found as
    its UTF-8 encoding: ``web_socket_instance.id in members`` works although
    ``add(key, web_socket_instance.id)`` stored it as bytes (2014 filters test
    ids that way).
    """

    __slots__ = ()

    def __contains__(self, value: object) -> bool:
        if isinstance(value, str):
            value = value.encode("utf-8")
        elif isinstance(value, (bytearray, memoryview)):
            value = bytes(value)
        return set.__contains__(self, value)


#: What to write instead of ``storage_object[key]`` where a storage object cannot answer
#: it at once: the one read every storage object has, awaited.
SUBSCRIPT_FIX = ("make the filter `async def filter(cls, web_socket_instance, data)` and read "
                 "`members = await web_socket_instance.storage_object.get(key)` instead")


def subscript_lines(module: ModuleType) -> list[int]:
    """
    The lines of ``module``'s source that read ``<anything>.storage_object[...]``
    (or a bare ``storage_object[...]``): the 2014 read, found without running it.
    """
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError, SyntaxError, ValueError):
        return []
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript):
            value = node.value
            name = value.attr if isinstance(value, ast.Attribute) else getattr(value, "id", None)
            if name == "storage_object":
                lines.append(node.lineno)
    return sorted(lines)


def subscript_problem(module: ModuleType, storage: str | None) -> str | None:
    """
    Why the filter ``module`` cannot run on storage module ``storage``
    (``None``: it can): it reads ``storage_object[key]``, which that storage
    declares it cannot answer at once (``SUBSCRIPT_READS = False``), so the
    filter would fail on every event; better one line before anything listens.
    """
    if not storage:
        return None
    try:
        storage_module = sys.modules.get(storage) or importlib.import_module(storage)
    except Exception:
        return None  # the configuration reports an unusable storage module itself
    if getattr(storage_module, "SUBSCRIPT_READS", True):
        return None
    lines = subscript_lines(module)
    if not lines:
        return None
    where = f"{(module.__file__ or module.__name__).rsplit('/', 1)[-1]}, line {lines[0]}"
    return f"{where} reads storage_object[...], which {storage} cannot answer at once: {SUBSCRIPT_FIX}"


#: What every storage object must have itself (the filter-facing methods and attach).
REQUIRED = ("attach", "get", "add", "remove", "publish")
_DEFAULTS = ("shared", "health", "relay", "member_joined", "member_left", "collect_metrics",
             "details", "history", "publish_kept")


def complete(storage: Any, name: str) -> StorageObject:
    """
    Check ``storage`` (made by module ``name``) against the contract, and give
    one written for the five methods of earlier releases the single-process
    defaults of the rest, on the instance: the server, service and metrics
    then call declared members only.

    :raises TypeError: naming what is missing.
    """
    missing = [member for member in REQUIRED if not callable(getattr(storage, member, None))]
    if missing:
        raise TypeError(f"the storage object of {name} has no {', '.join(missing)}()")
    for member in _DEFAULTS:
        if not hasattr(storage, member):
            default = getattr(StorageBase, member)
            setattr(storage, member, default if member == "shared" else default.__get__(storage))
    result: StorageObject = storage
    return result


__all__ = ["REQUIRED", "SUBSCRIPT_FIX", "Consumer", "Members", "StorageBase", "StorageObject",
           "StorageServer", "complete", "subscript_lines", "subscript_problem"]
