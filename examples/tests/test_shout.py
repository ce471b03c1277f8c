# Unit tests of the shout filter (examples/shout.py), in memory: no server, no sockets.
#   cd examples && python -m pytest tests/test_shout.py
import pytest

from fws import Refuse
from fws.testing import FakeServer


@pytest.fixture
def server():
    # The same -f list as on the command line: shout changes what the next filter sends.
    return FakeServer("shout", "fws.filters.broadcast_messages")


def test_text_is_shouted_to_the_others(server):
    alice, bob = server.connect(), server.connect()
    alice.client_send("hello")
    assert bob.sent == [(b"HELLO", False)]  # (payload, is_binary): a text message
    assert alice.sent == []                 # broadcast_messages skips the sender


def test_binary_passes_untouched(server):
    alice, bob = server.connect(), server.connect()
    alice.client_send(b"\x00abc")
    assert bob.sent == [(b"\x00abc", True)]


def test_empty_messages_stop_the_chain(server):
    alice, bob = server.connect(), server.connect()
    alice.client_send("   ")
    assert bob.sent == [] and server.broadcasts == []


def test_a_handshake_without_the_key_is_refused(monkeypatch):
    # examples/require_key.py: a connect filter that reads its key from the environment.
    monkeypatch.setenv("FWS_DEMO_KEY", "s3cret")
    server = FakeServer("require_key", "fws.filters.echo")
    with pytest.raises(Refuse) as refused:
        server.connect("/?key=wrong")
    assert refused.value.status == 401
    client = server.connect("/?key=s3cret")
    client.client_send(b"ping")
    assert client.sent == [(b"ping", True)]
    client.client_close(4000, "bye")        # the disconnect chain runs; nothing left to send
    assert client.id not in server.users
