"""
The opening handshake's request head, looked at as it arrives: what can be
told about it before Autobahn (or twisted.web) parses it, so that a request
that cannot be HTTP, or cannot end within the limits, is refused early and
cheaply on both ports (``--max-handshake-size``, ``--max-handshake-headers``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from fws.versions import SERVER

if TYPE_CHECKING:
    from autobahn.websocket.types import ConnectionRequest

#: What fws's own refusals of a request head say besides their status (as fws.web's do).
#: Autobahn writes a refusal with only the headers it is given: the ``Server`` it puts on
#: its 101 (the factory's ``server``) must be given too, or refusals say nothing of it.
REFUSAL_HEADERS = (("Server", SERVER), ("Connection", "close"), ("Content-Length", "0"))


def refusal_headers(headers: Iterable[tuple[str, str]] | None) -> list[tuple[str, str]]:
    """
    The headers of a refused handshake: ``headers`` (Autobahn's own, such as
    ``Sec-WebSocket-Version`` on a 400, or :data:`REFUSAL_HEADERS`) with
    fws's ``Server`` first, once, whatever ``headers`` said it was.
    """
    given = [(name, value) for name, value in headers or ()
             if name.lower() != "server"]
    return [("Server", SERVER), *given]

#: Bytes no HTTP request line holds (control characters; CR only in its CRLF).
_NOT_IN_REQUEST_LINE = bytes(range(0x00, 0x0d)) + bytes(range(0x0e, 0x20)) + b"\x7f"


def not_http(part: bytes | bytearray) -> bool:
    """Whether part of a request line holds a byte no HTTP request line may (a control character)."""
    return len(part.translate(None, _NOT_IN_REQUEST_LINE)) != len(part)


def request_line_so_far(head: bytearray, seen: int, line_end: int) -> bool:
    """
    Whether ``head`` may still start with an HTTP request line: its new bytes
    (from ``seen``) hold no control character and, once it has ended
    (``line_end``, else -1), it is ``METHOD SP TARGET SP HTTP/x``. Each byte is
    looked at once until the line ends, and the line once more then.
    """
    if not_http(head[seen:line_end] if line_end >= 0 else head[seen:]):
        return False
    if line_end < 0:
        return True
    parts = bytes(head[:line_end]).split(b" ")
    return (len(parts) == 3 and all(parts) and parts[2].startswith(b"HTTP/")
            and b"\r" not in head[:line_end])


#: Headers whose values differ from one connection to the next: sharing them
#: would only churn :class:`SharedStrings`.
_OWN_VALUES = frozenset({"sec-websocket-key", "cookie", "authorization", "x-request-id",
                         "traceparent", "x-amzn-trace-id"})


class SharedStrings:
    """
    One copy of the request strings that many connections send alike.

    An open connection keeps its handshake request (``request.headers`` is
    the public API filters read), and Autobahn parses every header name and
    value into strings of the connection's own: ~600 bytes per connection
    for a bare client, more for a browser's ``User-Agent``, ``Accept-*`` and
    ``Origin``, although almost all of them are the same on every
    connection. Passed through here, the request holds this table's copy
    instead. The table is bounded (``cap`` strings of at most ``longest``
    characters; a header known to differ per connection is left alone) and
    starts afresh when full, so a client sending new strings all the time
    costs a little CPU and never more memory than before.
    """

    __slots__ = ("_strings", "cap", "longest")

    def __init__(self, cap: int = 1024, longest: int = 256) -> None:
        self._strings: dict[str, str] = {}
        self.cap = cap
        self.longest = longest

    def __len__(self) -> int:
        return len(self._strings)

    def share(self, text: str) -> str:
        """The table's copy of ``text`` (``text`` itself if it is new or too long)."""
        if len(text) > self.longest:
            return text
        strings = self._strings
        shared = strings.get(text)
        if shared is None:
            if len(strings) >= self.cap:
                strings.clear()
            strings[text] = shared = text
        return shared

    def share_request(self, request: ConnectionRequest) -> None:
        """Make ``request``'s header names and values, host, path and origin the table's copies."""
        # share() inlined for the names and values (a handshake's dozen lookups).
        strings = self._strings
        known = strings.get
        share = self.share
        headers = {}
        for name, value in request.headers.items():
            name = known(name) or share(name)
            if name not in _OWN_VALUES:
                value = known(value) or share(value)
            headers[name] = value
        request.headers = headers
        request.host = known(request.host) or share(request.host)
        request.path = known(request.path) or share(request.path)
        if request.origin:
            request.origin = known(request.origin) or share(request.origin)
