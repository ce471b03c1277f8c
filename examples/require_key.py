# A connect filter that refuses the handshake unless ?key=... is right, and a
# disconnect filter that logs who left.
#   FWS_DEMO_KEY=s3cret fws_server -f require_key fws.filters.broadcast_messages
import hmac
import os

from twisted.logger import Logger

from fws import Refuse, WebSocketConnectFilter, WebSocketDisconnectFilter

log = Logger()


class RequireKey(WebSocketConnectFilter):
    @staticmethod
    def filter(web_socket_instance, request):
        expected = os.environ.get("FWS_DEMO_KEY", "")
        given = request.params.get("key", [""])[0]
        if not expected or not hmac.compare_digest(given, expected):
            raise Refuse(401, "a valid ?key= is required")


class Goodbye(WebSocketDisconnectFilter):
    @staticmethod
    def filter(web_socket_instance, data):
        log.info("{id} left with close code {code}", id=web_socket_instance.id, code=data.code)
