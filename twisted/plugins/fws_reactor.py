"""``twistd --reactor fws-epoll``: the reactor ``fws_server`` uses (see fws._wire.reactor)."""

from twisted.application.reactors import Reactor

fws_epoll = Reactor(
    "fws-epoll", "fws._wire.reactor",
    "epoll reactor that dispatches socket events without a legacy log context (fws)",
)
