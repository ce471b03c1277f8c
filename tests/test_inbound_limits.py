"""
What a client may send, over real sockets to a real ``fws_server`` (issue 14).

The frame budget (``--max-frame-rate``, ``--frame-burst``): every frame
counts, pings, pongs and continuation frames too, which the message rate
never saw. Close frames: a bad one is answered with 1002 (1007 for a reason
that is not UTF-8) and the connection then closed with a FIN, not reset
(which threw the close frame away); 1014 is a valid code.
"""

from __future__ import annotations

import socket
import struct

import pytest

from tests.processes import FwsProcess
from tests.rawws import RawClient, frame


def start(processes: list[FwsProcess], *args: str) -> FwsProcess:
    proc = FwsProcess([])
    proc.args = ["-p", str(proc.port), "-i", "127.0.0.1", "-f", "echo", *args]
    processes.append(proc)
    return proc.start()


def close(code: int | None = None, reason: bytes = b"", **kwargs: object) -> bytes:
    payload = (b"" if code is None else struct.pack("!H", code)) + reason
    return frame(payload, opcode=8, **kwargs)  # type: ignore[arg-type]


def ended_with_fin(client: RawClient, timeout: float = 5.0) -> bool:
    """After the frames read so far: the server closes the connection, without a reset."""
    client.sock.settimeout(timeout)
    try:
        return client.buffer == b"" and client.sock.recv(65536) == b""
    except ConnectionResetError:
        return False


# --- the frame budget ----------------------------------------------------------------------


@pytest.mark.parametrize("flood", ["ping", "pong", "continuation"])
def test_a_frame_flood_is_closed_with_1008_by_default(processes: list[FwsProcess],
                                                      flood: str) -> None:
    """
    With the default limits (1000 messages/s, so 2000 frames/s and 4000 at
    once): 20000 frames in one go, none of them a message, or all of them one.
    """
    server = start(processes)
    client = RawClient(server.port)
    one = {"ping": frame(b"p", opcode=9), "pong": frame(b"", opcode=10),
           "continuation": frame(b"c", opcode=0, fin=False)}[flood]
    head = frame(b"s", opcode=2, fin=False) if flood == "continuation" else b""
    client.send(head + one * 20000)
    assert client.close_code() == 1008
    other = RawClient(server.port)  # the server still serves everyone else
    other.send(frame(b"fine"))
    assert other.read_frame() == (1, b"fine")
    server.wait_for_line("frames/s; closing")


def test_fast_path_frames_count_too(processes: list[FwsProcess]) -> None:
    """Whole messages the fast path parses count, even with the message rate off."""
    server = start(processes, "--max-message-rate", "0", "--max-frame-rate", "20",
                   "--frame-burst", "10")
    client = RawClient(server.port)
    client.send(frame(b"warm"))
    assert client.read_frame() == (1, b"warm")
    client.send(b"".join(frame(f"m{i}".encode()) for i in range(30)))
    assert client.close_code() == 1008


def test_the_frame_budget_closes_even_when_messages_are_dropped(
        processes: list[FwsProcess]) -> None:
    """``--rate-limit-action drop`` drops messages; a frame cannot be dropped."""
    server = start(processes, "--rate-limit-action", "drop", "--max-frame-rate", "10",
                   "--frame-burst", "5")
    client = RawClient(server.port)
    client.send(frame(b"p", opcode=9) * 20)
    assert client.close_code() == 1008


def test_within_the_frame_budget_everything_is_served(processes: list[FwsProcess]) -> None:
    server = start(processes, "--max-frame-rate", "1000", "--frame-burst", "100")
    client = RawClient(server.port)
    stream = b"".join(frame(b"p%d" % i, opcode=9) + frame(b"m%d" % i) for i in range(20))
    stream += frame(b"fr", fin=False) + frame(b"ag", opcode=0, fin=False) + frame(b"!", opcode=0)
    client.send(stream)
    got = [client.read_frame() for _ in range(41)]
    assert got == [f for i in range(20) for f in ((10, b"p%d" % i), (1, b"m%d" % i))] \
        + [(1, b"frag!")]
    client.send(close(1000))
    assert client.close_code() == 1000


def test_no_frame_budget(processes: list[FwsProcess]) -> None:
    server = start(processes, "--max-frame-rate", "0")
    client = RawClient(server.port)
    client.send(frame(b"p", opcode=9) * 6000 + frame(b"still here"))
    frames = [client.read_frame() for _ in range(6001)]
    assert frames[-1] == (1, b"still here")


# --- close frames --------------------------------------------------------------------------


BAD_CLOSES = {
    "code 999": (close(999), 1002),
    "code 1004": (close(1004), 1002),
    "code 1005": (close(1005), 1002),
    "code 1006": (close(1006), 1002),
    "code 1015": (close(1015), 1002),
    "code 5000": (close(5000), 1002),
    "1-byte payload": (frame(b"\x03", opcode=8), 1002),
    "payload over 125 bytes": (close(1000, b"r" * 124), 1002),
    "fragmented": (close(1000, fin=False), 1002),
    "reason not UTF-8": (close(1000, b"bye \xff"), 1007),
}


@pytest.fixture(scope="module")
def echo_server() -> object:
    proc = FwsProcess([])
    proc.args = ["-p", str(proc.port), "-i", "127.0.0.1", "-f", "echo"]
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.mark.parametrize("name", list(BAD_CLOSES))
@pytest.mark.parametrize("with_handshake", [False, True], ids=["later", "with-handshake"])
def test_a_bad_close_frame_gets_a_close_frame_then_a_fin(echo_server: FwsProcess, name: str,
                                                         with_handshake: bool) -> None:
    """
    The client gets the close code the server's log names, then a FIN, whichever
    read the frame arrives in (with the handshake, Autobahn's parser has it).
    """
    bad, code = BAD_CLOSES[name]
    if with_handshake:
        from tests.rawws import handshake_request

        client = RawClient(echo_server.port, handshake=False)
        client.send(handshake_request(echo_server.port) + frame(b"hello") + bad)
        client.response = client._read_response()
    else:
        client = RawClient(echo_server.port)
        client.send(frame(b"hello") + bad)
    assert client.read_frame() == (1, b"hello")
    opcode, payload = client.read_frame()
    assert opcode == 8 and struct.unpack("!H", payload[:2])[0] == code, payload
    assert ended_with_fin(client)


def test_1014_is_a_valid_close_code(echo_server: FwsProcess) -> None:
    client = RawClient(echo_server.port)
    client.send(frame(b"hello") + close(1014, b"bad gateway"))
    assert client.read_frame() == (1, b"hello")
    assert client.read_frame() == (8, struct.pack("!H", 1000))  # answered, as any good code
    assert ended_with_fin(client)


def test_the_log_names_the_code_the_client_got(echo_server: FwsProcess) -> None:
    client = RawClient(echo_server.port)
    client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.send(close(1005))
    assert client.close_code() == 1002
    echo_server.wait_for_line("closed by the server: 1002 invalid close code 1005")
