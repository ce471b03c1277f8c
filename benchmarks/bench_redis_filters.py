"""
The Redis path in the shared benchmark harness: every message a client sends
is published on Redis channel ``bench`` and reaches the receivers through
fws's subscriber and consumer chain, i.e. Redis -> consumer chain -> N clients
(the path ``broadcast_pubsub`` takes), framed once per message.

The sender's id rides in front of the payload so that the consumer filter can
leave the sender out, as the harness's fan-out scenario expects.

    STORAGE_OBJECT_MODULE=fws.storage_objects.redis \\
        fws_server -p PORT --redis_port RPORT --redis_channels bench -f bench_redis_filters
"""

from __future__ import annotations

from typing import Any

from fws import WebSocketConsumerFilter, WebSocketMessageFilter


class PublishToRedis(WebSocketMessageFilter):
    """/echo echoes; everything else goes out through Redis."""

    @staticmethod
    def filter(web_socket_instance: Any, data: bytearray) -> None:
        conn = web_socket_instance
        if conn.request.path == "/echo":
            conn.sendMessage(bytes(data), conn.is_binary)
            return
        conn.storage_object.publish("bench", conn.id.encode() + b" " + bytes(data))


class FanOutFromRedis(WebSocketConsumerFilter):
    """Deliver each Redis message to every local user but its sender."""

    @staticmethod
    def filter(web_socket_instance: Any, data: dict[str, Any]) -> None:
        sender, _, payload = data["data"].partition(b" ")
        server = web_socket_instance
        server.broadcast(payload, exclude=server.users.get(sender.decode()))
