# Mask words the room does not want to read, before the broadcast sees them:
#   cd examples && fws_server -f polite fws.filters.broadcast_messages_by_token --static chat
import re

from fws import WebSocketMessageFilter

RUDE = re.compile(rb"\b(heck|darn|drat)\b", re.IGNORECASE)


class Polite(WebSocketMessageFilter):
    """Replace each rude word with as many asterisks, in text messages only."""

    @staticmethod
    def filter(web_socket_instance, data):
        if not web_socket_instance.is_binary:
            data[:] = RUDE.sub(lambda m: b"*" * len(m.group()), bytes(data))
