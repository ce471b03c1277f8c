"""
The bundled filters (fws/filters/), each unit-tested in memory with
fws.testing, as a filter author tests their own. Their behaviour over real
sockets, with Redis and in fws_server processes, is tested elsewhere
(test_server.py, test_redis.py, test_pipeline.py ...).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from fws import Refuse
from fws.filters.broadcast_messages_by_token import NO_TOKEN, NOT_ALLOWED, REGISTERED, TOO_MANY
from fws.pipeline import FilterLoadError
from fws.testing import Broadcast, FakeServer, Relay

SECRET = "a-secret-of-at-least-thirty-two-bytes"


# --- echo ---------------------------------------------------------------------------------

def test_echo_sends_each_message_back_as_it_came() -> None:
    server = FakeServer("fws.filters.echo")
    a, b = server.connect(), server.connect()
    a.client_send("héllo")
    a.client_send(b"\x00\xff")
    a.client_send(b"text in bytes", binary=False)
    assert a.sent == [("héllo".encode(), False), (b"\x00\xff", True), (b"text in bytes", False)]
    assert b.sent == [] and server.broadcasts == []


def test_echo_sends_what_earlier_filters_made_of_the_message(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "reverse.py").write_text(
        "from fws import WebSocketMessageFilter\n"
        "class Reverse(WebSocketMessageFilter):\n"
        "    @staticmethod\n"
        "    def filter(conn, data):\n"
        "        data.reverse()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    server = FakeServer("reverse", "echo")  # a bare name is a bundled filter
    conn = server.connect()
    conn.client_send("abc")
    assert conn.texts == ["cba"]


# --- broadcast_messages -------------------------------------------------------------------

def test_broadcast_messages_goes_to_everyone_else_on_every_node() -> None:
    server = FakeServer("fws.filters.broadcast_messages")
    a, b, c = server.connect(), server.connect(), server.connect()
    a.client_send("hi")
    b.client_send(b"\x01")
    assert (a.sent, b.sent, c.sent) == ([(b"\x01", True)], [(b"hi", False)],
                                        [(b"hi", False), (b"\x01", True)])
    assert server.broadcasts == [Broadcast("all", b"hi", False, (b.id, c.id)),
                                 Broadcast("all", b"\x01", True, (a.id, c.id))]
    assert server.relayed == [Relay(None, a.id, False, b"hi"), Relay(None, b.id, True, b"\x01")]


def test_broadcast_messages_skips_those_who_left() -> None:
    server = FakeServer("fws.filters.broadcast_messages")
    a, b = server.connect(), server.connect()
    b.client_close()
    a.client_send("anyone?")
    assert b.sent == [] and server.broadcasts[-1].recipients == ()


# --- broadcast_messages_by_token ----------------------------------------------------------

def test_token_groups() -> None:
    server = FakeServer("fws.filters.broadcast_messages_by_token")
    a, b, c, loner = (server.connect() for _ in range(4))
    for conn in (a, b):
        conn.client_send("token:red")
    c.client_send("please token:blue thanks")  # NAME runs to the next whitespace
    assert [conn.texts for conn in (a, b, c)] == [[REGISTERED.format("red")]] * 2 + [
        [REGISTERED.format("blue")]]
    for conn in (a, b, c):
        conn.take()
    a.client_send("to red")
    loner.client_send("hello?")
    assert (a.sent, b.sent, c.sent) == ([], [(b"to red", False)], [])
    assert loner.texts == [NO_TOKEN]
    assert server.relayed == [Relay("red", a.id, False, b"to red")]
    assert server.joins == [("red", a.id), ("red", b.id), ("blue", c.id)]
    b.client_send("token:blue")  # moving leaves the old group
    assert server.leaves == [("red", b.id)] and set(server.groups["blue"]) == {b.id, c.id}
    c.client_drop()  # leaving the server leaves the group
    assert server.leaves[-1] == ("blue", c.id) and set(server.groups["blue"]) == {b.id}
    assert b.token == "blue" and a.token == "red"


def test_token_groups_keep_the_kind_of_the_message() -> None:
    server = FakeServer("fws.filters.broadcast_messages_by_token")
    a, b = server.connect(), server.connect()
    a.client_send("token:g")
    b.client_send("token:g")
    a.client_send(b"\x00\x01")
    assert b.sent[-1] == (b"\x00\x01", True)


def test_a_connection_joins_at_most_max_groups_per_connection() -> None:
    server = FakeServer("fws.filters.broadcast_messages_by_token",
                        args=["--max-groups-per-connection", "2"])
    conn = server.connect()
    for name in ("one", "two", "one", "three"):
        conn.client_send(f"token:{name}")
    assert conn.texts == [REGISTERED.format("one"), REGISTERED.format("two"),
                          REGISTERED.format("one"), TOO_MANY]
    assert conn.token == "one" and conn.groups_joined == {"one", "two"}


def test_max_groups_per_connection_0_is_no_limit() -> None:
    """0 is "no limit", as for the other limits (it refused every join)."""
    server = FakeServer("fws.filters.broadcast_messages_by_token",
                        args=["--max-groups-per-connection", "0"])
    conn = server.connect()
    names = [f"g{i}" for i in range(100)]
    for name in names:
        conn.client_send(f"token:{name}")
    assert conn.texts == [REGISTERED.format(name) for name in names]
    assert conn.token == "g99"


def token(**claims: Any) -> str:
    return jwt.encode(claims, SECRET, algorithm="HS256")


def test_group_claim_lists_the_groups_a_token_may_join() -> None:
    server = FakeServer("fws.filters.auth_jwt", "fws.filters.broadcast_messages_by_token",
                        args=["--jwt-secret", SECRET, "--group-claim", "groups"])
    listed = server.connect(headers={"Authorization": f"Bearer {token(groups=['red'])}"})
    spaced = server.connect(headers={"Authorization": f"Bearer {token(groups='red blue')}"})
    none = server.connect(headers={"Authorization": f"Bearer {token(sub='x')}"})
    listed.client_send("token:red")
    listed.client_send("token:blue")
    spaced.client_send("token:blue")
    none.client_send("token:red")
    assert listed.texts == [REGISTERED.format("red"), NOT_ALLOWED.format("blue")]
    assert spaced.texts == [REGISTERED.format("blue")]
    assert none.texts == [NOT_ALLOWED.format("red")]
    assert listed.token == "red"


# --- broadcast_pubsub ---------------------------------------------------------------------

def test_broadcast_pubsub_forwards_each_pub_sub_message_to_every_user() -> None:
    server = FakeServer("fws.filters.broadcast_pubsub")
    a, b = server.connect(), server.connect()
    server.publish("news", "héllo")
    server.publish("news", b"\xff\xfe")
    for conn in (a, b):
        assert conn.sent == [("héllo".encode(), False), (b"\xff\xfe", True)]
    # Every node gets the pub/sub message itself: it is delivered here only, never relayed.
    assert [x.kind for x in server.broadcasts] == ["local", "local"] and server.relayed == []


def test_broadcast_pubsub_gets_what_a_filter_publishes() -> None:
    server = FakeServer("fws.filters.broadcast_pubsub", "fws.filters.echo")
    conn = server.connect()
    conn.storage_object.publish("ch", "from a filter")
    server.settle()
    assert conn.texts == ["from a filter"] and server.published == [("ch", b"from a filter")]


# --- stdout_* -----------------------------------------------------------------------------

def test_stdout_messages_prints_each_message_with_its_sender(capsys: pytest.CaptureFixture[str]) -> None:
    server = FakeServer("fws.filters.stdout_messages")
    conn = server.connect()
    conn.client_send("héllo")
    conn.client_send(b"\x00")
    conn.client_send(b"\xff", binary=True)
    assert capsys.readouterr().out == (f"--MESSAGE--\n{conn.id}: héllo\n"
                                       f"--MESSAGE--\n{conn.id}: b'\\x00'\n"
                                       f"--MESSAGE--\n{conn.id}: b'\\xff'\n")
    assert conn.sent == []


def test_stdout_pubsub_prints_channel_and_data(capsys: pytest.CaptureFixture[str]) -> None:
    server = FakeServer("fws.filters.stdout_pubsub")
    server.publish("news", "hi")
    server.publish("raw", b"\xff")
    assert capsys.readouterr().out == "--PUBSUB--\nnews: hi\n--PUBSUB--\nraw: b'\\xff'\n"


def test_stdout_rawdata_prints_each_read_and_passes_it_on(capsys: pytest.CaptureFixture[str]) -> None:
    server = FakeServer("fws.filters.stdout_rawdata")
    conn = server.connect()
    conn.client_send_raw(b"\x81\x85abc")
    assert capsys.readouterr().out == f"--RAWDATA--\n{conn.id}: b'\\x81\\x85abc'\n"
    assert conn.raw == [b"\x81\x85abc"]


# --- auth_jwt -----------------------------------------------------------------------------

def jwt_server(*args: str) -> FakeServer:
    return FakeServer("fws.filters.auth_jwt", "fws.filters.echo", args=["--jwt-secret", SECRET, *args])


def test_auth_jwt_takes_the_token_from_header_query_or_cookie() -> None:
    server = jwt_server("--jwt-query-param", "t", "--jwt-cookie", "session")
    by_header = server.connect(headers={"Authorization": f"Bearer {token(sub='h')}"})
    by_query = server.connect(f"/?t={token(sub='q')}")
    by_cookie = server.connect(headers={"Cookie": f"other=1; session={token(sub='c')}"})
    assert [c.claims["sub"] if c.claims else None for c in (by_header, by_query, by_cookie)] == [
        "h", "q", "c"]
    by_header.client_send("in")
    assert by_header.texts == ["in"]


@pytest.mark.parametrize("headers, path, reason", [
    ({}, "/", "a token is required"),
    ({"Cookie": "token=; x"}, "/", "a token is required"),
    ({"Authorization": "Bearer not.a.jwt"}, "/", "invalid token"),
    ({}, "/?token=" + jwt.encode({"sub": "x"}, "another-secret-of-thirty-two-bytes!", "HS256"),
     "invalid token"),
    ({}, "/?token=" + jwt.encode({"exp": int(time.time()) - 60}, SECRET, "HS256"), "invalid token"),
])
def test_auth_jwt_refuses_with_401(headers: dict[str, str], path: str, reason: str) -> None:
    server = jwt_server()
    with pytest.raises(Refuse) as refused:
        server.connect(path, headers=headers)
    assert (refused.value.status, refused.value.reason) == (401, reason)
    assert not server.users


def test_auth_jwt_checks_audience_and_issuer() -> None:
    server = jwt_server("--jwt-audience", "app", "--jwt-issuer", "me")
    good = server.connect(f"/?token={token(aud='app', iss='me')}")
    assert good.claims == {"aud": "app", "iss": "me"}
    for claims in ({"aud": "other", "iss": "me"}, {"aud": "app", "iss": "you"}, {"iss": "me"}):
        with pytest.raises(Refuse) as refused:
            server.connect(f"/?token={token(**claims)}")
        assert refused.value.status == 401 and refused.value.detail


def test_auth_jwt_verifies_rs256_with_a_public_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = tmp_path / "jwt.pub"
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    server = FakeServer("fws.filters.auth_jwt", args=["--jwt-public-key", str(public)])
    conn = server.connect(f"/?token={jwt.encode({'sub': 'rsa'}, key, algorithm='RS256')}")
    assert conn.claims == {"sub": "rsa"}
    with pytest.raises(Refuse):  # an HS256 token "signed" with the public key: confusion refused
        server.connect(f"/?token={jwt.encode({'sub': 'x'}, SECRET, algorithm='HS256')}")


@pytest.mark.parametrize("args, message", [
    ([], "needs exactly one of --jwt-secret"),
    (["--jwt-secret", SECRET, "--jwt-algorithms", "RS256"], "RS256 cannot be used with a secret"),
    (["--jwt-public-key", "/nonexistent/jwt.pub"], "cannot read --jwt-public-key"),
])
def test_auth_jwt_checks_its_options_at_load(args: list[str], message: str) -> None:
    with pytest.raises(FilterLoadError, match=message):
        FakeServer("fws.filters.auth_jwt", args=args)
