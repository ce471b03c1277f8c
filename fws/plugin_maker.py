"""The twistd ``ServiceMaker`` for fws; import-light, as twistd imports it to list plugins."""

from twisted.application.service import ServiceMaker

fws_service_maker = ServiceMaker(
    "fws WebSocket server",
    "fws.tap",
    "A WebSocket server whose behaviour is a pipeline of filter modules.",
    "fws",
)
