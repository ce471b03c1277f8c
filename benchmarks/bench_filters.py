"""
fws as a peer in the shared benchmark harness: ``/echo`` echoes, any other
path is the broadcast room (every message to every other user).

    fws_server -p PORT -f bench_filters        (with this directory on PYTHONPATH)
"""

from __future__ import annotations

from typing import Any

from fws import WebSocketMessageFilter


class Route(WebSocketMessageFilter):
    """Echo on /echo, broadcast elsewhere: the harness's two workloads."""

    @staticmethod
    def filter(web_socket_instance: Any, data: bytearray) -> None:
        conn = web_socket_instance
        if conn.request.path == "/echo":
            conn.sendMessage(bytes(data), conn.is_binary)
        else:
            conn.factory.broadcast_all(bytes(data), conn.is_binary, exclude=conn)
