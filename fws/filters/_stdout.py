"""Shared printing for the stdout_* filters."""

from __future__ import annotations

import sys


def show(payload: bytes | bytearray, is_binary: bool = False) -> str:
    """Text as text; binary (or undecodable) data as a Python bytes literal."""
    if not is_binary:
        try:
            return bytes(payload).decode("utf-8")
        except UnicodeDecodeError:
            pass
    return repr(bytes(payload))


def emit(header: str, line: str) -> None:
    """Write a header line and a content line to stdout (line buffered by fws_server)."""
    sys.stdout.write(f"{header}\n{line}\n")
