"""
The benchmark entries' filters do what the harness expects of a peer: the
broadcast room sends every message to every other client exactly once (the
harness counts a missing or extra delivery as lost), ``/echo`` echoes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from tests.helpers import Server

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(autouse=True)
def _benchmarks_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("module", ["bench_filters", "bench_groups"])
async def test_the_broadcast_room_reaches_every_other_client_once(reactor: Any, module: str) -> None:
    server = Server(reactor, [module]).start()
    try:
        sender = await server.connect("/broadcast")
        receivers = [await server.connect("/broadcast") for _ in range(3)]
        for i in range(3):
            sender.send(f"m{i}")
        late = await server.connect("/broadcast")  # joins between two messages
        sender.send("m3")
        for client in receivers:
            assert [await client.recv() for _ in range(4)] == [(f"m{i}".encode(), False)
                                                              for i in range(4)]
        assert await late.recv() == (b"m3", False)
        await sender.silent(0.05)
        for client in [*receivers, late]:
            await client.silent(0.0)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_the_echo_path_echoes(reactor: Any) -> None:
    server = Server(reactor, ["bench_filters"]).start()
    try:
        client = await server.connect("/echo")
        other = await server.connect("/echo")
        client.send(b"\x00\x01")
        client.send("text")
        assert await client.recv() == (b"\x00\x01", True)
        assert await client.recv() == (b"text", False)
        await other.silent(0.05)
    finally:
        await server.stop()
