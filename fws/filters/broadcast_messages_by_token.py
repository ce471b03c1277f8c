"""
Token groups: ``token:NAME`` joins group NAME, other messages go to the group.

* A message containing ``token:NAME`` (NAME runs to the next whitespace) puts
  its sender in group NAME, leaving any group it was in, and the sender gets
  ``Successfully registered with broadcast group: NAME``.
* Any other message goes to the other members of the sender's group; a sender
  without a group gets ``Error: No token has been set``.
* A user that disconnects leaves its group (the server does that for every
  connection, so groups never hold closed connections).
"""

from __future__ import annotations

import re
from typing import Any

from fws.filters.base import WebSocketMessageFilter

TOKEN = re.compile(rb"token:(\S+)")
REGISTERED = "Successfully registered with broadcast group: {}"
NO_TOKEN = "Error: No token has been set"


class BroadcastMessagesByToken(WebSocketMessageFilter):
    """Join a group on ``token:NAME``, otherwise send to the sender's group."""

    @staticmethod
    def filter(web_socket_instance: Any, data: bytearray) -> None:
        conn = web_socket_instance
        match = TOKEN.search(data) if b"token:" in data else None
        if match is not None:
            name = match.group(1).decode("utf-8", "replace")
            conn.factory.join_group(conn, name)
            conn.sendMessage(REGISTERED.format(name))
            return
        if conn.token is None:
            conn.sendMessage(NO_TOKEN)
            return
        conn.factory.broadcast_group(conn.token, bytes(data), conn.is_binary, exclude=conn)

