"""
Print every pub/sub message::

    --PUBSUB--
    <channel>: <data>
"""

from __future__ import annotations

from typing import Any

from fws.filters._stdout import emit, show
from fws.filters.base import WebSocketConsumerFilter


class StdoutPubSub(WebSocketConsumerFilter):
    """Print the channel and the data of each pub/sub message."""

    @staticmethod
    def filter(web_socket_instance: Any, data: dict[str, Any]) -> None:
        emit("--PUBSUB--", f"{data['channel']}: {show(data['data'])}")
