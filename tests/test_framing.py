"""
fws._wire.framing: the frame parser and builder of the fast paths, in Python and in C.

The C module must be a faster copy of the Python functions, nothing else:
generated streams of frames (every opcode, fragments, RSV bits, unmasked,
each length encoding, good and bad UTF-8, cut off anywhere, any size limit)
are parsed by both and checked against what RFC 6455 says fws's fast path
takes, which is worked out from how each stream was built, not by either
parser. Pure unit tests: no server.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from dataclasses import dataclass

import pytest
from autobahn.websocket.protocol import PreparedMessage
from autobahn.websocket.xormasker import create_xor_masker
from hypothesis import given, settings
from hypothesis import strategies as st

from fws._wire import framing
from fws._wire.framing import py_encode_frame, py_parse_frames, unmask
from tests.system_tools import speedups

try:
    from fws import _speedups
except ImportError:  # test_the_compiled_framing_is_built says what to install
    _speedups = None  # type: ignore[assignment]


@pytest.fixture(scope="module")
def compiled() -> None:
    speedups()


needs_c = pytest.mark.usefixtures("compiled")

SIZES = [0, 1, 7, 8, 9, 125, 126, 127, 65535, 65536, 70000]


def test_the_compiled_framing_is_built() -> None:
    """``pip install`` builds fws._speedups wherever a C compiler is (as on CI)."""
    speedups()  # skips (fails under CI) saying what to install
    if not os.environ.get("FWS_PURE_PYTHON"):
        assert framing.COMPILED and framing.parse_frames is _speedups.parse_frames
        assert framing.DESCRIPTION == "compiled (fws._speedups)"


def test_fws_pure_python_selects_the_python_framing() -> None:
    code = "import fws._wire.framing as f; print(f.COMPILED, f.parse_frames.__name__, f.DESCRIPTION)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "FWS_PURE_PYTHON": "1"}, check=True)
    assert result.stdout == "False py_parse_frames Python (FWS_PURE_PYTHON is set)\n"


# --- building frames ---------------------------------------------------------------------------

ENCODERS = [py_encode_frame] + ([_speedups.encode_frame] if _speedups else [])


@pytest.mark.parametrize("encode", ENCODERS, ids=lambda f: f.__module__)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("binary", [False, True])
def test_encode_frame_is_autobahns_framing(encode: object, size: int, binary: bool) -> None:
    payload = os.urandom(size) if binary else b"a" * size
    expected = PreparedMessage(payload, binary, False, False).payloadHybi
    assert encode(payload, binary) == expected  # type: ignore[operator]
    assert encode(bytearray(payload), binary) == expected  # type: ignore[operator]
    assert encode(memoryview(payload), binary) == expected  # type: ignore[operator]


@needs_c
def test_compiled_functions_reject_wrong_arguments() -> None:
    with pytest.raises(TypeError):
        _speedups.encode_frame("text", False)
    with pytest.raises(TypeError):
        _speedups.encode_frame(b"x")
    with pytest.raises(TypeError):
        _speedups.parse_frames(b"x", "10")
    with pytest.raises(TypeError):
        _speedups.parse_frames(b"x", 10, 0)
    with pytest.raises(TypeError):
        _speedups.parse_frames(None, 10)


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 1000, 65536])
def test_unmask_matches_autobahn(size: int) -> None:
    payload, mask = os.urandom(size), os.urandom(4)
    assert unmask(payload, mask) == create_xor_masker(mask, size).process(payload)


# --- parsing: generated streams against what the RFC says the fast path takes --------------------


@dataclass
class Spec:
    """One frame as a client might send it, and whether fws's fast path may take it."""

    opcode: int
    payload: bytes
    fin: bool
    rsv: int
    masked: bool
    encoding: int  # 0: the shortest length form, 126: 16-bit, 127: 64-bit
    key: bytes

    def wire(self) -> bytes:
        n = len(self.payload)
        first = bytes([(0x80 if self.fin else 0) | (self.rsv << 4) | self.opcode])
        bit = 0x80 if self.masked else 0
        form = self.encoding or (0 if n < 126 else 126 if n < 65536 else 127)
        if form == 0:
            length = bytes([bit | n])
        elif form == 126:
            length = bytes([bit | 126]) + struct.pack("!H", n)
        else:
            length = bytes([bit | 127]) + struct.pack("!Q", n)
        if not self.masked:
            return first + length + self.payload
        return first + length + self.key + bytes(
            b ^ self.key[i % 4] for i, b in enumerate(self.payload))

    def fast(self, limit: int) -> bool:
        """Whether the fast path takes this frame (when all of it has arrived)."""
        if not (self.fin and self.rsv == 0 and self.masked and self.opcode in (1, 2)):
            return False
        if self.encoding == 127 or len(self.payload) >= 65536 or len(self.payload) > limit:
            return False
        if self.encoding == 126 and len(self.payload) < 126:
            return False  # not the minimal length encoding: Autobahn's, which fails it with 1002
        if self.opcode == 1:
            try:
                self.payload.decode("utf-8")
            except UnicodeDecodeError:
                return False
        return True


TEXTS = st.one_of(
    st.text(max_size=40).map(lambda t: t.encode("utf-8")),  # any valid UTF-8, often non-ASCII
    st.binary(max_size=40),  # mostly invalid UTF-8
    st.sampled_from([b"\xed\xa0\x80", b"\xc3", b"\xf4\x90\x80\x80", b"\xe2\x82\xac" * 50,
                     "a€".encode() * 60, b"x" * 300]),  # surrogate, cut, > U+10FFFF, long
    # Whole 8-byte words (the C code checks those a word at a time) then an ASCII tail.
    st.sampled_from([b"\xff" + b"a" * 15, b"abcdefg\xc3" + b"(" * 9, "é".encode() * 8 + b"ok"]),
)


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    eligible = draw(st.integers(0, 3)) > 0  # mostly frames the fast path takes
    opcode = draw(st.sampled_from([1, 2]) if eligible else st.integers(0, 15))
    payload = draw(TEXTS if opcode == 1 else st.binary(max_size=300))
    return Spec(
        opcode=opcode,
        payload=payload,
        fin=draw(st.just(True) if eligible else st.booleans()),
        rsv=draw(st.just(0) if eligible else st.integers(0, 7)),
        masked=draw(st.just(True) if eligible else st.booleans()),
        encoding=draw(st.sampled_from([0, 0, 0, 126] if eligible else [0, 126, 127])),
        key=draw(st.binary(min_size=4, max_size=4)),
    )


def expected(frames: list[Spec], received: int, limit: int) -> tuple[list[tuple[bytes, bool]],
                                                                    int]:
    """The fast path's answer, from the specs: the eligible frames before the first other."""
    taken: list[tuple[bytes, bool]] = []
    pos = 0
    for spec in frames:
        size = len(spec.wire())
        if pos + size > received or not spec.fast(limit):
            break
        taken.append((spec.payload, spec.opcode == 2))
        pos += size
    return taken, pos


@settings(max_examples=400, deadline=None)
@given(frames=st.lists(specs(), max_size=6), cut=st.integers(0, 40),
       limit=st.sampled_from([0, 5, 64, 125, 126, 299, 65535, 1 << 40]))
def test_parsers_agree_with_the_rfc(frames: list[Spec], cut: int, limit: int) -> None:
    data = b"".join(spec.wire() for spec in frames)
    data = data[:max(0, len(data) - cut)] if cut < 20 else data  # cut off mid-frame, or not
    want = expected(frames, len(data), limit)
    assert py_parse_frames(data, limit) == want
    if _speedups is not None:
        assert _speedups.parse_frames(data, limit) == want
        assert _speedups.parse_frames(bytearray(data), limit) == want
        assert _speedups.parse_frames(memoryview(data), limit) == want


@needs_c
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), limit=st.integers(0, 300))
def test_parsers_agree_on_any_bytes(data: bytes, limit: int) -> None:
    assert _speedups.parse_frames(data, limit) == py_parse_frames(data, limit)


@pytest.mark.parametrize("size", SIZES)
def test_every_length_form_round_trips(size: int) -> None:
    """What one side frames (masked, as a client) the other parses back, text and binary."""
    for spec in (Spec(2, os.urandom(size), True, 0, True, 0, os.urandom(4)),
                 Spec(1, b"\xe2\x82\xac" * (size // 3) + b"e" * (size % 3), True, 0, True, 0,
                      os.urandom(4))):
        data = spec.wire() * 2
        want = expected([spec, spec], len(data), 1 << 20)
        assert len(want[0]) == (2 if size < 65536 else 0)  # 64-bit lengths go to Autobahn
        assert py_parse_frames(data, 1 << 20) == want
        if _speedups is not None:
            assert _speedups.parse_frames(data, 1 << 20) == want
