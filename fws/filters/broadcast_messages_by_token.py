"""
Token groups: ``token:NAME`` joins group NAME, other messages go to the group.

* A message containing ``token:NAME`` (NAME runs to the next whitespace) puts
  its sender in group NAME, leaving any group it was in, and the sender gets
  ``Successfully registered with broadcast group: NAME``.
* Any other message goes to the other members of the sender's group; a sender
  without a group gets ``Error: No token has been set``.
* With ``--group-claim CLAIM`` (and ``fws.filters.auth_jwt`` before this
  filter), NAME must be listed in that claim of the connection's verified
  token (a list, or a space-separated string); otherwise the reply is
  ``Error: Not allowed to join broadcast group: NAME``.
* A connection may join at most ``--max-groups-per-connection`` distinct
  groups in its life (``Error: Too many broadcast groups for this connection``;
  0: no limit).
* A user that disconnects leaves its group (the server does that for every
  connection, so groups never hold closed connections); its ``token`` still
  names the group in the disconnect chain, so that a disconnect filter can
  clean up what it stored under it.
"""

from __future__ import annotations

import re
from typing import Any

from fws.filters.base import WebSocketMessageFilter

TOKEN = re.compile(rb"token:(\S+)")
REGISTERED = "Successfully registered with broadcast group: {}"
NO_TOKEN = "Error: No token has been set"
NOT_ALLOWED = "Error: Not allowed to join broadcast group: {}"
TOO_MANY = "Error: Too many broadcast groups for this connection"


class BroadcastMessagesByToken(WebSocketMessageFilter):
    """Join a group on ``token:NAME``, otherwise send to the sender's group."""

    @staticmethod
    def filter(web_socket_instance: Any, data: bytearray) -> None:
        conn = web_socket_instance
        match = TOKEN.search(data) if b"token:" in data else None
        if match is not None:
            name = match.group(1).decode("utf-8", "replace")
            refusal = join_refusal(conn, name)
            if refusal is not None:
                conn.sendMessage(refusal)
                return
            conn.factory.join_group(conn, name)
            conn.sendMessage(REGISTERED.format(name))
            return
        if conn.token is None:
            conn.sendMessage(NO_TOKEN)
            return
        conn.factory.broadcast_group(conn.token, bytes(data), conn.is_binary, exclude=conn)



def join_refusal(conn: Any, name: str) -> str | None:
    """
    Why ``conn`` may not join group ``name`` (the reply it gets), or ``None``
    if it may; a resume (:mod:`fws.history`) asks the same.
    """
    limits = conn.factory.limits
    if name == "*" and limits.history_size:
        return NOT_ALLOWED.format(name)  # the group of everyone, with history
    if limits.group_claim is not None:
        allowed = (conn.claims or {}).get(limits.group_claim)
        if isinstance(allowed, str):
            allowed = allowed.split()
        if not isinstance(allowed, (list, tuple)) or name not in allowed:
            return NOT_ALLOWED.format(name)
    most = limits.max_groups_per_connection
    if not most:  # 0: no limit, and nothing to count
        return None
    joined = conn.groups_joined
    if name not in joined:
        if len(joined) >= most:
            return TOO_MANY
        joined.add(name)
    return None


_refusal = join_refusal  # the name of earlier releases
