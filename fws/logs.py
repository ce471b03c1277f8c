"""
Log observers: fws's events as JSON lines, for log shippers.

fws logs with ``twisted.logger`` and puts the facts in fields
(``conn_id``, ``peer``, ``code``, ``filter`` ...), not only in the text, so
that a JSON observer can hand them on as they are.  ``fws_server
--log-format json`` uses :func:`json_observer`; under twistd, which owns
logging, pass the factory: ``twistd --logger fws.logs.json_logger -n fws``.

One line is one object::

    {"time": "2026-11-25T01:27:27.123456Z", "level": "info",
     "namespace": "fws.protocol.FwsServerProtocol",
     "message": "connection 4f..-1 open from 127.0.0.1 to /chat",
     "conn_id": "4f..-1", "peer": "127.0.0.1", "path": "/chat"}
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import ILogObserver, formatEvent
from zope.interface import provider

#: Keys of Twisted's own bookkeeping, not worth shipping.
_SKIP = {"log_format", "log_logger", "log_source", "log_io", "log_text", "log_trace",
         "log_flattened", "log_system", "log_time", "log_level", "log_namespace",
         "log_failure", "message", "format", "isError", "printed", "system", "time", "why"}


def _plain(value: Any) -> Any:
    """A JSON-compatible version of one field value."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)


def event_as_record(event: dict[str, Any]) -> dict[str, Any]:
    """The JSON object for one log event."""
    level = event.get("log_level")
    when = datetime.fromtimestamp(event.get("log_time") or 0.0, UTC)
    record: dict[str, Any] = {
        "time": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace") or event.get("system") or "-",
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if key not in _SKIP and not key.startswith("log_") and key not in record:
            record[key] = _plain(value)
    failure = event.get("log_failure")
    if failure is not None:
        record["error"] = failure.getErrorMessage()
        record["traceback"] = failure.getTraceback()
    return record


def json_observer(out: IO[str]) -> ILogObserver:
    """An observer writing one JSON object per line to ``out``."""

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        try:
            line = json.dumps(event_as_record(event), ensure_ascii=False)
        except Exception as e:  # never lose a log line to a field that will not serialise
            line = json.dumps({"level": "error", "message": f"unloggable event: {e!r}"})
        out.write(line + "\n")
        out.flush()

    return observe


def json_logger() -> ILogObserver:
    """twistd's ``--logger`` factory: JSON lines on standard output."""
    # The real stdout: twistd redirects sys.stdout into the log once logging starts.
    return json_observer(sys.__stdout__ or sys.stdout)


__all__ = ["event_as_record", "json_logger", "json_observer"]
