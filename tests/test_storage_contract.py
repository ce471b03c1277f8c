"""
The storage contract: whatever the server, the service and the metrics ask of
a storage object is declared in :class:`fws.storage_objects.StorageObject`;
a storage module written for the five methods of earlier releases still works.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from fws.config import Config, ConfigError
from fws.service import make_service
from fws.storage_objects import REQUIRED, StorageBase, StorageObject, complete
from tests.helpers import Server, write_module

FWS = Path(__file__).resolve().parent.parent / "fws"

FIVE_METHODS = """
from twisted.application.service import Service
from twisted.internet.defer import succeed


class Dict(Service):
    def __init__(self):
        self.sets, self.server = {}, None

    def attach(self, server):
        self.server = server

    def get(self, key):
        return succeed(set(self.sets.get(key, ())))

    def add(self, key, value):
        self.sets.setdefault(key, set()).add(value)
        return succeed(True)

    def remove(self, key, value):
        self.sets.get(key, set()).discard(value)
        return succeed(True)

    def publish(self, channel, data):
        self.server.deliver_pubsub(channel, data if isinstance(data, bytes) else data.encode(), None)
        return succeed(1)


def make_storage_object(config, reactor):
    return Dict()
"""


def test_the_bundled_storage_objects_declare_the_whole_contract() -> None:
    from fws.storage_objects.memory import MemoryStorage
    from fws.storage_objects.redis import RedisStorage

    members = {name for name in dir(StorageObject) if not name.startswith("_")}
    members |= set(StorageObject.__annotations__)
    assert set(REQUIRED) | {"health", "shared", "relay", "collect_metrics"} <= members
    for cls in (MemoryStorage, RedisStorage):
        assert issubclass(cls, StorageBase)
        for name in members:
            assert hasattr(cls, name), (cls, name)
    assert MemoryStorage.shared is False and RedisStorage.shared is True


def test_nothing_outside_the_contract_is_looked_up_with_getattr() -> None:
    """The server, service and metrics call declared members, never ``getattr(storage, ...)``."""
    offenders = []
    for path in FWS.rglob("*.py"):
        if path.parent.name == "storage_objects":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"(has|get)attr\((self\.)?storage(_object)?\b|\"storage_object\"", line):
                offenders.append(f"{path.relative_to(FWS.parent)}:{number}: {line.strip()}")
    assert not offenders, offenders


@pytest_twisted.ensureDeferred
async def test_a_five_method_storage_module_gets_the_single_process_defaults(
    reactor: Any, tmp_path: Path
) -> None:
    name = write_module(tmp_path, FIVE_METHODS, prefix="storage")
    server = Server(reactor, ["fws.filters.broadcast_pubsub"], storage=name).start()
    try:
        storage = server.factory.storage_object
        assert storage.shared is False and storage.health() is None
        assert list(storage.collect_metrics()) == []
        ready, checks = server.service.readiness()
        assert ready and "storage" not in checks
        client = await server.connect()
        await storage.publish("global", "from a storage of 2014")
        assert await client.recv() == (b"from a storage of 2014", False)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_publish_kept_is_publish_where_the_node_keeps_history(
    reactor: Any, tmp_path: Path
) -> None:
    """Memory storage, and a storage of 2014 (its default): delivered, kept by the node, no offset."""
    from tests.test_history import split

    name = write_module(tmp_path, FIVE_METHODS, prefix="storage")
    for storage_name in ("fws.storage_objects.memory", name):
        server = Server.from_argv(reactor, "-f", "fws.filters.broadcast_pubsub", "--storage",
                                  storage_name, "--history", "5").start()
        try:
            client = await server.connect(protocols=["fws.v1"])
            assert await server.factory.storage_object.publish_kept("global", "kept") is None
            head, body = split((await client.recv())[0])
            assert (head["group"], head["offset"], body) == ("global", 1, b"kept")
        finally:
            await server.stop()


def test_a_storage_object_without_a_required_method_is_a_clear_error(
    reactor: Any, tmp_path: Path
) -> None:
    name = write_module(tmp_path, FIVE_METHODS.replace("def publish", "def not_publish"),
                        prefix="storage")
    with pytest.raises(ConfigError) as info:
        make_service(Config(filters=("fws.filters.echo",), storage=name), reactor)
    assert str(info.value) == f"the storage object of {name} has no publish()"


def test_complete_leaves_what_a_storage_object_defines() -> None:
    class Shared(StorageBase):
        shared = True

        def attach(self, server: Any) -> None: ...
        def get(self, key: str) -> Any: ...
        def add(self, key: str, value: Any) -> Any: ...
        def remove(self, key: str, value: Any) -> Any: ...
        def publish(self, channel: str, data: Any) -> Any: ...

        def health(self) -> str | None:
            return "not yet"

    storage = complete(Shared(), "shared")
    assert storage.shared and storage.health() == "not yet"
