"""
RFC 6455 framing for fws's fast paths: parse client frames, build server frames.

The Python functions here define the behaviour. ``fws._speedups`` (C, built
by ``pip install`` when a compiler is there) implements the same two
functions in one pass and one allocation each; on the echo path the Python
versions were a third of the server's time. ``tests/test_framing.py`` checks
that both agree, frame by frame and byte for byte, on generated input.

:data:`parse_frames` and :data:`encode_frame` are the compiled versions when
the module is importable and the environment variable ``FWS_PURE_PYTHON`` is
not set to a non-empty value, the Python ones otherwise; :data:`COMPILED`
says which.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

_HEADER16 = struct.Struct("!BBH").pack
_HEADER64 = struct.Struct("!BBQ").pack


def py_encode_frame(payload: bytes, is_binary: bool) -> bytes:
    """
    One complete, unmasked, uncompressed server frame (RFC 6455 section 5.2).

    This is all a server frame is; building it here lets fws write it to the
    transport directly instead of through Autobahn's per-frame bookkeeping.
    ``tests/test_framing.py`` pins it (and the compiled one) to what Autobahn
    itself sends.
    """
    n = len(payload)
    first = 0x82 if is_binary else 0x81
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return _HEADER16(first, 126, n) + payload
    return _HEADER64(first, 127, n) + payload


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR a client frame's payload with its 4-byte masking key (RFC 6455 section 5.3)."""
    n = len(payload)
    if not n:
        return b""
    key = (mask * ((n + 3) >> 2))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def py_parse_frames(data: bytes, limit: int) -> tuple[list[tuple[bytes, bool]], int]:
    """
    The frames at the start of ``data`` that fws's inbound fast path takes.

    Those are complete, unfragmented, masked text and binary frames of at most
    ``limit`` payload bytes whose text is valid UTF-8. Parsing stops at the
    first frame that is anything else (a control frame, a fragment, RSV bits,
    no mask, a 64-bit length, a 16-bit length under 126, not all there yet,
    too big, bad UTF-8): from there on Autobahn's parser takes over, so it
    keeps enforcing RFC 6455 and the size limits, and closes with the right
    code. What this takes must be a strict subset of what Autobahn accepts,
    or a frame's fate would depend on how its bytes arrived (the first read
    after the handshake goes to Autobahn); ``tests/test_wire_differential.py``
    holds both to that.

    :returns: ``([(payload, is_binary), ...], bytes_consumed)``.
    """
    frames: list[tuple[bytes, bool]] = []
    n = len(data)
    pos = 0
    while n - pos >= 6:
        b0 = data[pos]
        b1 = data[pos + 1]
        if (b0 != 0x81 and b0 != 0x82) or b1 < 0x80:
            break
        length = b1 & 0x7F
        start = pos + 6
        if length == 126:
            if n - pos < 8:
                break
            length = (data[pos + 2] << 8) | data[pos + 3]
            if length < 126:
                break  # not the minimal encoding (RFC 6455 5.2): Autobahn fails it with 1002
            start = pos + 8
        elif length == 127:
            break
        end = start + length
        if end > n or length > limit:
            break
        payload = unmask(data[start:end], data[start - 4:start])
        if b0 == 0x81:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                break  # Autobahn fails the connection with 1007
        frames.append((payload, b0 == 0x82))
        pos = end
    return frames, pos


parse_frames: Callable[[bytes, int], tuple[list[tuple[bytes, bool]], int]] = py_parse_frames
encode_frame: Callable[[bytes, bool], bytes] = py_encode_frame
#: Whether :data:`parse_frames` and :data:`encode_frame` are ``fws._speedups``'s.
COMPILED = False
#: Which framing serves and why, as ``--check`` and the startup log say it.
DESCRIPTION = "compiled (fws._speedups)"

if os.environ.get("FWS_PURE_PYTHON"):
    DESCRIPTION = "Python (FWS_PURE_PYTHON is set)"
else:
    try:
        from fws import _speedups
    except ImportError:  # no compiler at install time: the Python versions serve
        DESCRIPTION = "Python (fws._speedups was not built: reinstall with a C compiler)"
    else:
        parse_frames = _speedups.parse_frames
        encode_frame = _speedups.encode_frame
        COMPILED = True

__all__ = ["COMPILED", "DESCRIPTION", "encode_frame", "parse_frames", "py_encode_frame", "py_parse_frames",
           "unmask"]
