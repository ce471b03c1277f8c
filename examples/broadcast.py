# The 2014 documentation's entire broadcast/chat server, as a working module.
# Run it from this directory with:  fws_server -f broadcast
from fws import WebSocketMessageFilter


class Broadcast(WebSocketMessageFilter):
    @classmethod
    def filter(cls, web_socket_instance, data):
        for user_id, user_instance in web_socket_instance.users.items():
            user_instance.sendMessage(bytes(data))
