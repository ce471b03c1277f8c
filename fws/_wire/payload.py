"""
What ``sendMessage`` and the broadcasts accept, turned into what the wire sends.

A filter hands over ``str`` or anything bytes-like; the wire sends bytes,
as a text or a binary frame. Which one, when the filter does not say, is
the kind of the message its chain is handling: the message chain records
it in :data:`current_message_binary` while it runs, so that forwarding
``bytes(data)`` keeps text as text and binary as binary.
"""

from __future__ import annotations

import contextvars
from typing import Any

#: While a message chain runs, the binary flag of the message being handled
#: (set by :func:`fws.pipeline.run_chain`).
current_message_binary: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "fws_current_message_binary", default=None
)


def normalize_payload(payload: Any, is_binary: bool | None) -> tuple[bytes, bool]:
    """
    Turn what a filter hands to ``sendMessage`` into ``(bytes, is_binary)``.

    ``str`` is text.  ``bytes``/``bytearray``/``memoryview`` with ``is_binary``
    left as ``None`` take the kind of the message the current message chain is
    handling (so ``other.sendMessage(bytes(data))`` forwards text as text and
    binary as binary); outside a message chain (a consumer filter forwarding
    pub/sub data, say) valid UTF-8 goes as text and anything else as binary.
    Inferred text that is not valid UTF-8 (a filter cut a character in half)
    goes as binary rather than making the client fail the connection.

    :raises ValueError: ``is_binary=False`` was asked for bytes that are not UTF-8.
    :raises TypeError: the payload is neither text nor bytes-like.
    """
    if type(payload) is str:
        return payload.encode("utf-8"), bool(is_binary)
    if type(payload) is not bytes:
        if isinstance(payload, (bytearray, memoryview, bytes)):
            payload = bytes(payload)
        else:
            raise TypeError(f"sendMessage takes str or bytes, not {type(payload).__name__}")
    if is_binary:
        return payload, True
    explicit = is_binary is not None
    if not explicit:
        current = current_message_binary.get()
        if current:
            return payload, True
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        if explicit:
            raise ValueError("a text message must be valid UTF-8; pass isBinary=True") from None
        return payload, True
    return payload, False
