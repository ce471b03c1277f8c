# A filter that changes the message for the filters after it:
#   fws_server -f shout fws.filters.broadcast_messages fws.filters.stdout_messages
from fws import STOP, WebSocketMessageFilter


class DropEmpty(WebSocketMessageFilter):
    """Nothing to say: stop the chain here, nobody gets the message."""

    @staticmethod
    def filter(web_socket_instance, data):
        if not data.strip():
            return STOP
        return None


class Shout(WebSocketMessageFilter):
    """Upper-case text messages in place; binary ones pass untouched."""

    @staticmethod
    def filter(web_socket_instance, data):
        if not web_socket_instance.is_binary:
            data[:] = bytes(data).upper()
