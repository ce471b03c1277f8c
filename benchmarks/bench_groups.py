"""
fws's token-group path as a peer in the shared benchmark harness: every
connection of the broadcast room is in group ``room``, and each message goes
to the group (``factory.broadcast_group``), as
``fws.filters.broadcast_messages_by_token`` sends it once its senders have
joined.

    fws_server -p PORT -f bench_groups        (with this directory on PYTHONPATH)

The harness's receivers never send, so they cannot send ``token:room``
themselves: the filter puts every user that is not in a group yet into
``room`` whenever the group is smaller than the user list (one length
comparison per message otherwise).
"""

from __future__ import annotations

from typing import Any

from fws import WebSocketMessageFilter

GROUP = "room"


class Room(WebSocketMessageFilter):
    """Send each message to the other members of group ``room``."""

    @staticmethod
    def filter(web_socket_instance: Any, data: bytearray) -> None:
        conn = web_socket_instance
        factory = conn.factory
        if len(factory.groups.get(GROUP, ())) != len(factory.users):
            for user in list(factory.users.values()):
                if user.token is None:
                    factory.join_group(user, GROUP)
        factory.broadcast_group(GROUP, bytes(data), conn.is_binary, exclude=conn)
