# The storage object from a filter: count who is online (works in memory and,
# across every node, with Redis) and publish join/leave events on "presence".
#   fws_server -f presence fws.filters.broadcast_pubsub
# (with Redis, subscribe to the channel too: --redis_channels global presence)
from fws import WebSocketDisconnectFilter, WebSocketMessageFilter


class Join(WebSocketMessageFilter):
    @staticmethod
    async def filter(web_socket_instance, data):
        storage = web_socket_instance.storage_object
        if await storage.add("online", web_socket_instance.id):
            await storage.publish("presence", f"{web_socket_instance.id} joined")


class Leave(WebSocketDisconnectFilter):
    @staticmethod
    async def filter(web_socket_instance, data):
        storage = web_socket_instance.storage_object
        await storage.remove("online", web_socket_instance.id)
        online = await storage.get("online")
        await storage.publish("presence", f"{web_socket_instance.id} left; {len(online)} online")
