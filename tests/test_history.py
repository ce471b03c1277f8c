"""
Group history with memory storage (fws.history): the fws.v1 header, resume,
recovered or not, pacing, and no change for plain clients or --history 0.
Real servers on loopback ports, real Autobahn clients.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import jwt
import pytest
import pytest_twisted
from twisted.internet.task import deferLater

from fws import history
from fws.config import resolve
from fws.history import ResumeError, parse_resume
from tests.helpers import Client, Server, count_calls

V1 = ["fws.v1"]
BY_TOKEN = "fws.filters.broadcast_messages_by_token"
SECRET = "a-secret-of-at-least-thirty-two-bytes"


def history_server(reactor: Any, filters: list[str], *argv: str) -> Server:
    return Server.from_argv(reactor, "-f", *filters, "--max-message-rate", "0", *argv).start()


def resume_path(positions: dict[str, list[Any]]) -> str:
    return "/?resume=" + quote(json.dumps(positions))


def split(payload: bytes) -> tuple[dict[str, Any], bytes]:
    """A headed message: its header and its payload."""
    line, newline, rest = payload.partition(b"\n")
    assert newline, payload
    return json.loads(line), rest


async def joined(client: Client, group: str) -> None:
    client.send(f"token:{group}")
    assert await client.recv() == (f"Successfully registered with broadcast group: {group}".encode(),
                                   False)


async def drain(client: Client, count: int) -> list[tuple[bytes, bool]]:
    return [await client.recv() for _ in range(count)]


def test_parse_resume_bounds() -> None:
    assert parse_resume(None) == {}
    assert parse_resume(['{"room": ["k3f9", 42], "*": ["ab", 0]}']) == {
        "room": ("k3f9", 42), "*": ("ab", 0)}
    for bad in ('["room"]', "not json", '{"room": ["e", -1]}', '{"room": ["e", 1.5]}',
                '{"room": ["e", true]}', '{"room": [1, 2]}', '{"": ["e", 1]}',
                '{"a b": ["e", 1]}', '{"room": ["e"]}', '{"room": ["' + "e" * 65 + '", 1]}',
                json.dumps({f"g{i}": ["e", 1] for i in range(33)}), "x" * 5000):
        with pytest.raises(ResumeError):
            parse_resume([bad])
    with pytest.raises(ResumeError):
        parse_resume(['{}', '{}'])


def test_check_says_what_history_is_kept(processes: list[Any]) -> None:
    import subprocess

    from tests.processes import BIN

    out = subprocess.run([str(BIN / "fws_server"), "--check", "-f", BY_TOKEN, "--history", "50",
                          "--history-ttl", "60"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert ("history: 50 messages per group for 60 s, in this node's memory (fws.v1 clients can "
            "resume)") in out.stdout.splitlines()
    plain = subprocess.run([str(BIN / "fws_server"), "--check", "-f", BY_TOKEN],
                           capture_output=True, text=True, timeout=60)
    assert "history:" not in plain.stdout


def test_history_options_are_capped() -> None:
    config = resolve(["--history", "50", "--history-ttl", "60"], environ={})
    assert config is not None
    assert (config.limits.history_size, config.limits.history_ttl) == (50, 60.0)
    config = resolve([], environ={"FWS_HISTORY_SIZE": "7"})
    assert config is not None and config.limits.history_size == 7
    assert resolve([], environ={}).limits.history_size == 0  # type: ignore[union-attr]
    from fws.config import ConfigError

    for argv in (["--history", "100001"], ["--history", "-1"], ["--history-ttl", "0"],
                 ["--history-ttl", "86401"], ["--history-max-bytes", "0"]):
        with pytest.raises(ConfigError):
            resolve(argv, environ={})


@pytest_twisted.ensureDeferred
async def test_headers_for_v1_plain_unchanged_binary_stays_binary(reactor: Any) -> None:
    server = history_server(reactor, [BY_TOKEN], "--history", "10")
    try:
        sender, plain, headed = (await server.connect(), await server.connect(),
                                 await server.connect(protocols=V1))
        assert headed.websocket_protocol_in_use == "fws.v1"
        assert plain.websocket_protocol_in_use is None
        for client in (sender, plain, headed):
            await joined(client, "room")
        sender.send("hello")
        sender.send(b"\x00\xffbin")
        assert await plain.recv() == (b"hello", False)
        assert await plain.recv() == (b"\x00\xffbin", True)
        payload, binary = await headed.recv()
        assert not binary
        assert payload.startswith(b'{"group":"room","epoch":"') and payload.endswith(b"\nhello")
        first, rest = split(payload)
        assert first["offset"] == 1 and rest == b"hello"
        payload, binary = await headed.recv()
        second, rest = split(payload)
        assert binary and rest == b"\x00\xffbin"
        assert second == {"group": "room", "epoch": first["epoch"], "offset": 2}
        await sender.silent(0.05)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_history_off_is_todays_behaviour(reactor: Any) -> None:
    """--history 0: fws.v1 is not accepted, resume is not read, messages carry no header."""
    server = history_server(reactor, [BY_TOKEN])
    try:
        assert server.factory.history is None
        a = await server.connect(resume_path({"room": ["x", 1]}), protocols=V1)
        assert a.websocket_protocol_in_use is None
        b = await server.connect()
        await joined(a, "room")
        await joined(b, "room")
        b.send("plain")
        assert await a.recv() == (b"plain", False)
        await a.silent(0.05)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_resume_replays_what_was_missed_then_live(reactor: Any) -> None:
    server = history_server(reactor, [BY_TOKEN], "--history", "100")
    try:
        sender, reader = await server.connect(), await server.connect(protocols=V1)
        await joined(sender, "room")
        await joined(reader, "room")
        sender.send("m1")
        first, _ = split((await reader.recv())[0])
        epoch = first["epoch"]
        reader.sendClose(1000)
        await reader.closed
        for text in ("m2", "m3", "m4"):
            sender.send(text)
        await deferLater(reactor, 0.05, lambda: None)
        back = await server.connect(resume_path({"room": [epoch, 1]}), protocols=V1)
        got = [split(p) for p, _ in await drain(back, 3)]
        assert [(h["offset"], body) for h, body in got] == [(2, b"m2"), (3, b"m3"), (4, b"m4")]
        assert json.loads((await back.recv())[0]) == {
            "group": "room", "recovered": True, "epoch": epoch, "offset": 4}
        assert back.factory is not None
        conn = next(c for c in server.factory.users.values() if c._lane.headed)
        assert conn.token == "room"  # rejoined, without a "registered" reply
        sender.send("m5")
        head, body = split((await back.recv())[0])
        assert (head["offset"], body) == (5, b"m5")
        # Resuming at the current position: nothing to replay, recovered.
        again = await server.connect(resume_path({"room": [epoch, 5]}), protocols=V1)
        assert json.loads((await again.recv())[0])["recovered"] is True
        stats = server.factory.stats
        assert (stats.replays, stats.replayed, stats.recovered, stats.not_recovered) == (2, 3, 2, 0)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_retention_exceeded_or_other_epoch_is_not_recovered(reactor: Any) -> None:
    server = history_server(reactor, [BY_TOKEN], "--history", "3")
    try:
        sender, reader = await server.connect(), await server.connect(protocols=V1)
        await joined(sender, "room")
        await joined(reader, "room")
        sender.send("m1")
        epoch = split((await reader.recv())[0])[0]["epoch"]
        reader.sendClose(1000)
        await reader.closed
        for i in range(2, 8):
            sender.send(f"m{i}")
        await deferLater(reactor, 0.05, lambda: None)
        back = await server.connect(resume_path({"room": [epoch, 1]}), protocols=V1)
        assert json.loads((await back.recv())[0]) == {
            "group": "room", "recovered": False, "epoch": epoch, "offset": 7}
        sender.send("m8")
        assert split((await back.recv())[0])[0]["offset"] == 8
        other = await server.connect(resume_path({"room": ["nope", 7]}), protocols=V1)
        assert json.loads((await other.recv())[0]) == {
            "group": "room", "recovered": False, "epoch": epoch, "offset": 8}
        ahead = await server.connect(resume_path({"room": [epoch, 99]}), protocols=V1)
        assert json.loads((await ahead.recv())[0])["recovered"] is False
        # Within the last three: recovered.
        inside = await server.connect(resume_path({"room": [epoch, 5]}), protocols=V1)
        got = [split(p)[0]["offset"] for p, _ in await drain(inside, 3)]
        assert got == [6, 7, 8]
        assert json.loads((await inside.recv())[0])["recovered"] is True
        assert server.factory.stats.not_recovered == 3
        from fws.metrics import FwsCollector

        samples = {(sample.name, tuple(sample.labels.values())): sample.value
                   for family in FwsCollector(server.factory).collect()
                   for sample in family.samples}
        assert samples[("fws_history_messages_kept_total", ())] == 8
        assert samples[("fws_history_messages", ())] == 3
        assert samples[("fws_history_replays_total", ())] == 4
        assert samples[("fws_history_messages_replayed_total", ())] == 3
        assert samples[("fws_history_resumes_total", ("true",))] == 1
        assert samples[("fws_history_resumes_total", ("false",))] == 3
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_ttl_drops_old_messages(reactor: Any) -> None:
    server = history_server(reactor, [BY_TOKEN], "--history", "10", "--history-ttl", "0.2")
    try:
        sender, reader = await server.connect(), await server.connect(protocols=V1)
        await joined(sender, "room")
        await joined(reader, "room")
        sender.send("old")
        epoch = split((await reader.recv())[0])[0]["epoch"]
        await deferLater(reactor, 0.3, lambda: None)
        back = await server.connect(resume_path({"room": [epoch, 0]}), protocols=V1)
        answer = json.loads((await back.recv())[0])
        # Idle for longer than the TTL: the group's history is gone, a new epoch begins.
        assert answer["recovered"] is False and answer["epoch"] != epoch
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_bad_resume_is_refused_with_400(reactor: Any) -> None:
    server = history_server(reactor, [BY_TOKEN], "--history", "10")
    try:
        for path, protocols in (("/?resume=%7Bnot", V1), (resume_path({"room": ["e", -3]}), V1),
                                (resume_path({"room": ["e", 3]}), None)):
            with pytest.raises(ConnectionError):
                await server.connect(path, protocols=protocols)
        assert server.factory.stats.refused.get(400) == 3
        assert server.factory.stats.limit_hits["resume"] == 3
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_resume_is_refused_like_a_join_without_the_claim(reactor: Any) -> None:
    server = history_server(reactor, ["fws.filters.auth_jwt", BY_TOKEN], "--history", "10",
                            "--jwt-secret", SECRET, "--group-claim", "groups")
    try:
        token = jwt.encode({"groups": ["room"]}, SECRET, algorithm="HS256")
        headers = {"Authorization": f"Bearer {token}"}
        client = await server.connect(resume_path({"secret": ["e", 0], "room": ["e", 0]}),
                                      headers=headers, protocols=V1)
        assert await client.recv() == (b"Error: Not allowed to join broadcast group: secret",
                                       False)
        answer = json.loads((await client.recv())[0])
        assert answer["group"] == "room" and answer["recovered"] is False
        assert [c.token for c in server.factory.users.values()] == ["room"]
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_everyone_and_pubsub_channels_have_history(reactor: Any) -> None:
    server = history_server(reactor, ["fws.filters.broadcast_messages", "fws.filters.broadcast_pubsub"],
                            "--history", "10")
    try:
        sender, reader = await server.connect(), await server.connect(protocols=V1)
        sender.send("to all")
        head, body = split((await reader.recv())[0])
        assert head["group"] == "*" and head["offset"] == 1 and body == b"to all"
        server.factory.storage_object.publish("news", b"\xff\x02")
        payload, binary = await reader.recv()
        news, body = split(payload)
        assert binary and body == b"\xff\x02" and (news["group"], news["offset"]) == ("news", 1)
        assert await sender.recv() == (b"\xff\x02", True)  # plain: as today
        reader.sendClose(1000)
        await reader.closed
        sender.send("missed")
        server.factory.storage_object.publish("news", "missed news")
        await deferLater(reactor, 0.05, lambda: None)
        back = await server.connect(resume_path({"*": [head["epoch"], 1],
                                                 "news": [news["epoch"], 1]}), protocols=V1)
        got = {}
        for _ in range(4):
            payload, _ = await back.recv()
            if b"\n" in payload:
                h, body = split(payload)
                got[h["group"]] = (h["offset"], body)
            else:
                answer = json.loads(payload)
                assert answer["recovered"] is True
                assert (answer["group"], answer["offset"]) in (("*", 2), ("news", 2))
        assert got == {"*": (2, b"missed"), "news": (2, b"missed news")}
        assert all(c.token is None for c in server.factory.users.values())
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_resume_storm_is_paced_and_loses_nothing(reactor: Any) -> None:
    """
    Many clients resume at once while messages keep coming: every client gets
    every message once, in offset order, and no reactor turn replays more than
    the node's budget.
    """
    server = history_server(reactor, [BY_TOKEN], "--history", "1000")
    try:
        sender = await server.connect()
        await joined(sender, "room")
        probe = await server.connect(protocols=V1)
        await joined(probe, "room")
        for i in range(1, 61):
            sender.send(f"m{i}")
        epoch = split((await probe.recv())[0])[0]["epoch"]
        await drain(probe, 59)
        replayer = server.factory._replayer
        per_turn: list[int] = []
        run = replayer._run

        def counted() -> None:
            before = server.factory.stats.replayed
            run()
            per_turn.append(server.factory.stats.replayed - before)

        replayer._run = counted
        clients = [await server.connect(resume_path({"room": [epoch, 0]}), protocols=V1)
                   for _ in range(40)]
        for i in range(61, 71):  # live messages while the replays run
            sender.send(f"m{i}")
        for client in clients:
            offsets = []
            while True:
                payload, _ = await client.recv()
                if b"\n" not in payload:
                    answer = json.loads(payload)
                    break
                head, body = split(payload)
                assert body == f"m{head['offset']}".encode()
                offsets.append(head["offset"])
            assert answer["recovered"] is True and answer["offset"] == offsets[-1]
            while len(offsets) < 70:
                head, _ = split((await client.recv())[0])
                offsets.append(head["offset"])
            assert offsets == list(range(1, 71))
            await client.silent(0)
        assert max(per_turn) <= history.REPLAY_BUDGET
        assert len([n for n in per_turn if n]) >= 40 * 60 // history.REPLAY_BUDGET
        assert server.factory.stats.replayed >= 40 * 60
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_python_calls_per_delivery_with_history(reactor: Any) -> None:
    """
    With --history, a group message costs per recipient one send and no
    Python call, plain and fws.v1 members alike: the header is framed once
    per message, not once per member.
    """
    server = history_server(reactor, [BY_TOKEN], "--history", "10")
    try:
        clients = [await server.connect(protocols=V1 if i % 2 else None) for i in range(50)]
        factory = server.factory
        users = sorted(factory.users.values(), key=lambda c: int(c.id.rsplit("-", 1)[1]))
        for conn in users:
            factory.join_group(conn, "big" if conn in users[:45] else "small")

        def group_and_flush(group: str) -> None:
            factory.broadcast_group(group, b"g" * 64, False)
            factory._flush_call.cancel()
            factory._flush()

        group_and_flush("big")
        group_and_flush("small")  # every lane written once: ok from now on
        extra = dict(count_calls(lambda: group_and_flush("big"))
                     - count_calls(lambda: group_and_flush("small")))
        assert extra == {"socket:send": 40}, extra
        for client in clients[:45]:
            for _ in range(2):
                payload, _ = await client.recv()
                assert payload.endswith(b"g" * 64)
                assert (b"\n" in payload) == (client.websocket_protocol_in_use == "fws.v1")
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_large_messages_replay_page_by_page(reactor: Any) -> None:
    """Pages and turns are bounded in bytes too: 12 messages of 600 kB take several of each."""
    server = history_server(reactor, [BY_TOKEN], "--history", "100")
    try:
        sender, reader = await server.connect(), await server.connect(protocols=V1)
        await joined(sender, "room")
        await joined(reader, "room")
        sender.send("first")
        epoch = split((await reader.recv())[0])[0]["epoch"]
        reader.sendClose(1000)
        await reader.closed
        big = [bytes([i]) * 600_000 for i in range(12)]
        for payload in big:
            sender.send(payload)
        await deferLater(reactor, 0.2, lambda: None)
        reads = []
        store = server.factory.history
        read = store.read

        def counted(*args: Any) -> Any:
            reads.append(args)
            return read(*args)

        store.read = counted
        back = await server.connect(resume_path({"room": [epoch, 1]}), protocols=V1)
        for offset, payload in enumerate(big, 2):
            head, body = split((await back.recv(timeout=20))[0])
            assert head["offset"] == offset and body == payload
        assert json.loads((await back.recv())[0])["recovered"] is True
        assert len(reads) >= 12 * 600_000 // history.PAGE_BYTES
    finally:
        await server.stop()


def test_plain_clients_see_the_same_bytes_with_and_without_history(processes: list[Any]) -> None:
    """fws_server processes with --history 0 and 10: a plain client's handshake and frames match."""
    from tests.processes import serve
    from tests.rawws import RawClient, frame

    seen = []
    for size in ("0", "10"):
        proc = serve("-f", BY_TOKEN, "--history", size)
        processes.append(proc)
        member, sender = RawClient(proc.port), RawClient(proc.port)
        v1 = RawClient(proc.port, extra="Sec-WebSocket-Protocol: fws.v1\r\n")
        got = [member.response.split(b"\r\n", 1)[0],
               b"\r\n".join(sorted(line for line in member.response.split(b"\r\n")[1:]
                                   if not line.lower().startswith(b"sec-websocket-accept")))]
        for client in (member, sender, v1):
            client.send(frame(b"token:room"))
            assert client.read_frame()[1].startswith(b"Successfully registered")
        sender.send(frame(b"hello"))
        sender.send(frame(b"\x00\xff", opcode=2))
        got += [repr(member.read_frame()).encode(), repr(member.read_frame()).encode()]
        headed = [v1.read_frame(), v1.read_frame()]
        if size == "0":
            assert b"sec-websocket-protocol" not in v1.response.lower()
            assert headed == [(1, b"hello"), (2, b"\x00\xff")]
        else:
            assert b"sec-websocket-protocol: fws.v1" in v1.response.lower()
            assert [(op, payload.partition(b"\n")[2]) for op, payload in headed] == [
                (1, b"hello"), (2, b"\x00\xff")]
        seen.append(got)
        for client in (member, sender, v1):
            client.close()
    assert seen[0] == seen[1]


def test_a_replay_waits_for_a_client_that_does_not_read(processes: list[Any]) -> None:
    """
    24 MB to replay, a client that reads nothing for a while: the replay waits
    for it instead of going over --max-send-buffer (4 MiB), so the client is
    not closed as a slow consumer and gets everything once it reads.
    """
    import time

    from tests.processes import serve
    from tests.rawws import RawClient, frame

    proc = serve("-f", BY_TOKEN, "--history", "100", "--max-message-rate", "0")
    processes.append(proc)
    sender, reader = RawClient(proc.port), RawClient(
        proc.port, extra="Sec-WebSocket-Protocol: fws.v1\r\n")
    for client in (sender, reader):
        client.send(frame(b"token:room"))
        assert client.read_frame()[1].startswith(b"Successfully registered")
    sender.send(frame(b"first"))
    head = json.loads(reader.read_frame()[1].partition(b"\n")[0])
    reader.close()
    chunk = b"x" * 400_000
    for i in range(60):
        sender.send(frame(b"%02d" % i + chunk, opcode=2))
    time.sleep(0.3)
    slow = RawClient(proc.port, resume_path({"room": [head["epoch"], 1]}),
                     extra="Sec-WebSocket-Protocol: fws.v1\r\n", rcvbuf=65536)
    time.sleep(1.5)  # not reading: the kernel buffers fill, fws's transport pauses
    for i in range(60):
        opcode, payload = slow.read_frame()
        line, _, body = payload.partition(b"\n")
        assert opcode == 2 and json.loads(line)["offset"] == i + 2 and body == b"%02d" % i + chunk
    assert json.loads(slow.read_frame()[1])["recovered"] is True
    assert not any("4008" in line or "slow" in line for line in proc.lines())
    for client in (sender, slow):
        client.close()


@pytest_twisted.ensureDeferred
async def test_resume_names_one_token_group_at_most(reactor: Any) -> None:
    server = history_server(reactor, [BY_TOKEN], "--history", "10")
    try:
        client = await server.connect(resume_path({"a": ["e", 0], "b": ["e", 0]}), protocols=V1)
        # The refusal at once; the replay's line when its turn comes.
        assert await client.recv() == (
            b"Error: a connection is in one broadcast group at a time: b", False)
        assert json.loads((await client.recv())[0])["group"] == "a"
        [conn] = server.factory.users.values()
        assert conn.token == "a" and conn.groups_joined == {"a"}
    finally:
        await server.stop()


def test_history_metrics_pass_promtool(processes: list[Any]) -> None:
    """/metrics of a server with --history, after a resume, is valid for promtool."""
    import subprocess
    from urllib.parse import quote

    from websockets.sync.client import connect

    from tests.test_metrics_promtool import admin_server, promtool, samples, scrape

    tool = promtool()
    proc, port = admin_server("-f", BY_TOKEN, "--history", "10")
    processes.append(proc)
    with connect(proc.url, subprotocols=["fws.v1"]) as ws:
        ws.send("token:room")
        ws.recv(timeout=5)
    with connect(proc.url + "?resume=" + quote('{"room": ["e", 0]}'), subprotocols=["fws.v1"]) as ws:
        assert json.loads(ws.recv(timeout=5))["recovered"] is False
    text = scrape(port)
    check = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, f"promtool check metrics:\n{check.stdout}{check.stderr}"
    from tests.test_operations import documented, exported

    history = {name for name in documented() if name.startswith("fws_history_")}
    assert history <= exported(text) <= documented()  # docs/operations.rst lists them all
    found = samples(text)
    assert found["fws_history_replays_total"] == 1
    assert found['fws_history_resumes_total{recovered="false"}'] == 1
    assert found["fws_history_groups"] == 1


@pytest_twisted.ensureDeferred
async def test_compressed_clients_get_their_form_of_a_group_message(reactor: Any) -> None:
    """--compression: a compressed fws.v1 member gets the headed frame, a compressed plain one the plain."""
    from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateResponseAccept

    server = history_server(reactor, [BY_TOKEN], "--history", "10", "--compression")
    try:
        deflate = {"perMessageCompressionOffers": [PerMessageDeflateOffer()],
                   "perMessageCompressionAccept": PerMessageDeflateResponseAccept}
        sender = await server.connect()
        packed_v1 = await server.connect(protocols=V1, **deflate)
        packed_plain = await server.connect(**deflate)
        for client in (sender, packed_v1, packed_plain):
            await joined(client, "room")
        assert all(c._perMessageCompress is not None
                   for c in server.factory.users.values() if c._lane.headed)
        for text in ("one " * 50, "two " * 50):
            sender.send(text)
            head, body = split((await packed_v1.recv())[0])
            assert body == text.encode() and head["group"] == "room"
            assert await packed_plain.recv() == (text.encode(), False)
    finally:
        await server.stop()


def test_once_says_it_once_per_key_and_seldom_beyond_its_room() -> None:
    """A publisher cycling through more channel names than Once remembers: no warning per message."""
    from fws.history import Once

    once = Once(3)
    said = [key for _ in range(3000) for key in "abcd" if once.first(key)]
    assert said[:3] == ["a", "b", "c"]
    assert said[3:] == ["d"] * 3  # d's messages: the 1st, 1001st and 2001st
    assert not once.first("a")
