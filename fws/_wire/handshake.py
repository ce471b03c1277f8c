"""
The opening handshake's request head, looked at as it arrives: what can be
told about it before Autobahn (or twisted.web) parses it, so that a request
that cannot be HTTP, or cannot end within the limits, is refused early and
cheaply on both ports (``--max-handshake-size``, ``--max-handshake-headers``).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib import parse

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


# --- the common request, parsed here (WireProtocol._open_lean) --------------------------------

#: A request line fws opens itself: ``GET``, a target of printable ASCII, HTTP/1.1.
_LEAN_REQUEST_LINE = re.compile(r"GET ([!-~]+) HTTP/1\.1")
#: A header line as Autobahn's ``parseHttpHeader`` accepts it (a token, a colon,
#: optional SP/HTAB, a value of VCHAR, obs-text, SP and HTAB, optional SP/HTAB),
#: with the value as Autobahn keeps it (without the optional whitespace).
_LEAN_HEADER_LINE = re.compile(
    r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*")
#: A Sec-WebSocket-Key as Autobahn accepts one: 16 bytes in base64.
LEAN_KEY = re.compile(r"[A-Za-z0-9+/]{22}==")
#: A Host value whose Python ``strip()`` is itself (what Autobahn reads of it).
LEAN_HOST = re.compile(r"[!-~]+")
#: A request target Autobahn's ``urlparse`` gives back whole as the path.
_PLAIN_PATH = re.compile(r"/(?!/)[^?#;]*")


def parse_head(head: bytes | bytearray, end: int) -> tuple[str, str, dict[str, str]] | None:
    """
    The request line, target and headers of the common request head, or None.

    ``end`` is where the head's empty line starts. What this accepts,
    Autobahn's ``parseHttpHeader`` accepts with the same result: the request
    line (``GET``, HTTP/1.1), and each header's lower-case name and value as
    Autobahn keeps them. Anything else gives None and goes to Autobahn,
    which parses it as before and says what is wrong with it: a header that
    comes twice (Autobahn joins or refuses those), a control character, a
    target that is not printable ASCII. ``tests/test_handshake_differential.py``
    holds the two to the same outcome.
    """
    text = head[:end].decode("iso-8859-1")
    lines = text.split("\r\n")
    line = _LEAN_REQUEST_LINE.fullmatch(lines[0])
    if line is None:
        return None
    headers: dict[str, str] = {}
    match = _LEAN_HEADER_LINE.fullmatch
    for raw in lines[1:]:
        header = match(raw)
        if header is None:
            return None
        name = header[1].lower()
        if name in headers:
            return None
        headers[name] = header[2]
    return lines[0], line[1], headers


def split_target(target: str) -> tuple[str, dict[str, list[str]]] | None:
    """
    The path and query parameters of a request target, as Autobahn reads
    them (``urlparse``, ``parse_qs``); None for one with a fragment, which
    Autobahn refuses. The usual plain path skips both.
    """
    if _PLAIN_PATH.fullmatch(target):
        return target, {}
    try:
        parts = parse.urlparse(target)
        if parts.fragment:
            return None
        return parts.path, parse.parse_qs(parts.query)
    except Exception:  # Autobahn refuses what urlparse cannot take, whatever it raises
        return None


#: RFC 6455's GUID, appended to the client's key for the accept key.
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (RFC 6455, 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("utf8") + _WS_GUID).digest()).decode()
