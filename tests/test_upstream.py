"""
fws._wire.upstream lists every internal of Twisted, Autobahn and txredisapi
that fws relies on: each must exist in the installed versions, and only fws's
wire package (fws._wire.upstream.OWNER) may name the private ones.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import re
import tokenize
from pathlib import Path
from typing import Any

import pytest

from fws._wire.upstream import OWNER, UPSTREAM_INTERNALS

FWS = Path(__file__).resolve().parent.parent / "fws"


def owner_object(path: str) -> Any:
    """The class or module at a dotted path."""
    try:
        return importlib.import_module(path)
    except ImportError:
        module, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module), name)


def live_autobahn_protocol() -> Any:
    """A plain Autobahn server protocol after a handshake, over an in-memory transport."""
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet.testing import StringTransport

    factory = WebSocketServerFactory()
    factory.protocol = WebSocketServerProtocol
    proto = factory.buildProtocol(None)
    proto.makeConnection(StringTransport())
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       b"Sec-WebSocket-Version: 13\r\n\r\n")
    assert proto.state == proto.STATE_OPEN
    return proto


def assigned_in_source(cls: type, name: str) -> bool:
    """Whether some class in ``cls``'s MRO assigns ``self.NAME`` (or ``x.NAME``)."""
    pattern = re.compile(rf"\.{re.escape(name)}\s*(:[^=\n]+)?(=|\+=|-=)[^=]")
    for klass in cls.__mro__:
        if klass is object:
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if pattern.search(source):
            return True
    return False


@pytest.mark.parametrize(("owner", "name", "kind"), UPSTREAM_INTERNALS,
                         ids=[f"{o}.{n}" for o, n, _ in UPSTREAM_INTERNALS])
def test_every_internal_exists_upstream(owner: str, name: str, kind: str) -> None:
    target = owner_object(owner)
    if kind in ("method", "class", "global"):
        assert hasattr(target, name), f"{owner} has no {name} any more"
        if kind == "method":
            assert callable(getattr(target, name))
        return
    assert kind == "instance", kind
    if owner.startswith("autobahn.websocket.protocol.WebSocket") and \
            owner.endswith("Protocol"):
        assert hasattr(live_autobahn_protocol(), name), f"a live {owner} has no {name}"
        return
    assert hasattr(target, name) or assigned_in_source(target, name), \
        f"nothing in {owner} (or its bases) sets {name} any more"


def test_the_list_is_sorted_and_has_no_duplicates() -> None:
    assert list(UPSTREAM_INTERNALS) == sorted(set(UPSTREAM_INTERNALS))
    assert {kind for _, _, kind in UPSTREAM_INTERNALS} <= {"method", "class", "instance", "global"}


def attribute_names(path: Path) -> set[str]:
    """Every ``.name`` in the code of a module (not in its strings or comments)."""
    names = set()
    with path.open("rb") as source:
        tokens = list(tokenize.tokenize(source.readline))
    for before, token in itertools.pairwise(tokens):
        if before.type == tokenize.OP and before.string == "." and token.type == tokenize.NAME:
            names.add(token.string)
    return names


def test_only_the_wire_names_upstream_internals() -> None:
    """A private upstream name (leading underscore) in any other fws module fails."""
    private = {name for _, name, _ in UPSTREAM_INTERNALS if name.startswith("_")}
    offenders = []
    for path in sorted(FWS.rglob("*.py")):
        module = ".".join(path.relative_to(FWS.parent).with_suffix("").parts)
        if module == OWNER or module.startswith(OWNER + "."):
            continue
        for name in attribute_names(path) & private:
            offenders.append(f"{module}: .{name}")
    assert not offenders, offenders


def test_the_owner_is_the_wire_package() -> None:
    assert (FWS.parent / OWNER.replace(".", "/") / "__init__.py").exists(), OWNER
