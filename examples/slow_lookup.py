# An asynchronous filter: the next filter (and this connection's next message)
# waits for it, so order is kept even though the lookup takes a while.
#   fws_server -f slow_lookup fws.filters.broadcast_messages
from twisted.internet import reactor
from twisted.internet.task import deferLater

from fws import WebSocketMessageFilter


async def lookup_nickname(connection_id):
    # Stands in for a database or HTTP call; never block the reactor with time.sleep().
    await deferLater(reactor, 0.05, lambda: None)
    return f"user-{connection_id[-4:]}"


class Nickname(WebSocketMessageFilter):
    @classmethod
    async def filter(cls, web_socket_instance, data):
        nickname = await lookup_nickname(web_socket_instance.id)
        if not web_socket_instance.is_binary:
            data[:0] = f"{nickname}: ".encode()
