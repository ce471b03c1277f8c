"""
docs/troubleshooting.rst quotes what a user sees: fws_server's log lines and
the errors of a Python ``websockets`` client (written ``client: ...``). Each
trouble is produced here for real, with fws_server processes and real
clients, and every quoted line must be among what was produced (timestamps,
node ids and numbers aside), so the page cannot drift from fws.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import websockets

from tests.processes import BIN, FwsProcess
from tests.redis_support import RedisProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "troubleshooting.rst"
QUOTED = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[|client: |fws_server: error: |"
                    r"HTTP \d{3} )")

ASYNCIO_FILTER = """
import asyncio

from fws import WebSocketMessageFilter


class Sleepy(WebSocketMessageFilter):
    @classmethod
    async def filter(cls, web_socket_instance, data):
        await asyncio.sleep(0.01)
        web_socket_instance.sendMessage(bytes(data))
"""


def normal(line: str) -> str:
    """
    A line without what changes from run to run: timestamps, node ids, numbers,
    and which of the two Redis connections noticed an outage first (a race).
    """
    line = re.sub(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} ", "", line.strip())
    line = re.sub(r"\b[0-9a-f]{12}\b", "NODE", line)
    line = re.sub(r"\((command|subscriber) connection: ", "(LINK connection: ", line)
    return re.sub(r"\d+", "0", line)


def quoted_lines() -> list[str]:
    return [line.strip() for line in PAGE.read_text().splitlines() if QUOTED.match(line.strip())]


async def client_error(url: str, talk: Callable[[Any], Awaitable[None]], **options: Any) -> str:
    """What a websockets client's failure says, as the page quotes it."""
    try:
        async with websockets.connect(url, open_timeout=5, **options) as ws:
            await talk(ws)
            while True:
                await asyncio.wait_for(ws.recv(), 5)
    except (websockets.exceptions.WebSocketException, OSError, TimeoutError) as e:
        return f"client: {type(e).__name__}: {e}"


def start(processes: list[FwsProcess], cwd: Path, *args: str) -> FwsProcess:
    proc = FwsProcess([], cwd=cwd)
    proc.args = ["-p", str(proc.port), "-i", "127.0.0.1", *args]
    processes.append(proc)
    return proc.start()


def produce(tmp_path: Path, processes: list[FwsProcess]) -> list[str]:
    seen: list[str] = []

    # Redis unreachable, then back.
    redis_port, admin = free_port(), free_port()
    proc = start(processes, tmp_path, "--storage", "fws.storage_objects.redis", "--redis-host",
                 "127.0.0.1", "--redis-port", str(redis_port), "--admin",
                 f"tcp:{admin}:interface=127.0.0.1")
    proc.wait_for_line("cannot reach Redis")
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=5)
    except urllib.error.HTTPError as e:
        seen += [f"HTTP {e.code} {line}" for line in e.read().decode().splitlines()]
    redis = RedisProcess(tmp_path, redis_port).start()
    try:
        proc.wait_for_line("Redis ready at", timeout=15)
    finally:
        redis.kill()

    # Origin refused.
    proc = start(processes, tmp_path, "-f", "echo", "--allowed-origins", "https://app.example.com")
    seen.append(asyncio.run(client_error(proc.url, _nothing, origin="https://evil.example.net")))
    proc.wait_for_line("refused connection")

    # 1009, 1008, 4008.
    proc = start(processes, tmp_path, "-f", "echo", "--max-message-size", "1000")

    async def too_big(ws: Any) -> None:
        await ws.send("x" * 2000)

    seen.append(asyncio.run(client_error(proc.url, too_big)))
    proc.wait_for_line("closed by the server: 1009")

    proc = start(processes, tmp_path, "-f", "echo", "--max-message-rate", "5", "--message-burst", "5")

    async def too_fast(ws: Any) -> None:
        for _ in range(50):
            await ws.send("x")

    seen.append(asyncio.run(client_error(proc.url, too_fast)))
    proc.wait_for_line("closed by the server: 1008")

    proc = start(processes, tmp_path, "-f", "echo", "--max-send-buffer", "65536",
                 "--max-message-rate", "0")

    async def never_reads(ws: Any) -> None:
        for _ in range(3000):
            await asyncio.wait_for(ws.send("y" * 8000), 5)
        await asyncio.sleep(1)

    seen.append(asyncio.run(client_error(proc.url, never_reads, max_queue=1)))
    proc.wait_for_line("closed by the server: 4008")

    # Port in use.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = subprocess.run([str(BIN / "fws_server"), "-p", str(busy.getsockname()[1]), "-i",
                                 "127.0.0.1"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    seen += result.stderr.splitlines()

    # asyncio without, then with, --reactor asyncio.
    (tmp_path / "aio.py").write_text(ASYNCIO_FILTER)
    for extra in ((), ("--reactor", "asyncio")):
        proc = start(processes, tmp_path, "-f", "aio", *extra)

        async def echo(ws: Any) -> None:
            await ws.send("one")
            assert await asyncio.wait_for(ws.recv(), 5) == "one"
            await ws.close()

        if extra:
            assert asyncio.run(client_error(proc.url, echo)).startswith("client: ConnectionClosedOK")
        else:  # the filter fails: no answer
            assert asyncio.run(client_error(proc.url, echo)) == "client: TimeoutError: "
            proc.wait_for_line("awaits asyncio")

    for proc in processes:
        proc.stop()
        seen += proc.lines()
    return seen


async def _nothing(ws: Any) -> None:
    pass


def test_every_line_the_page_quotes_is_what_fws_says(tmp_path: Path,
                                                     processes: list[FwsProcess]) -> None:
    lines = produce(tmp_path, processes)
    produced = {normal(line) for line in lines}
    quoted = quoted_lines()
    missing = [line for line in quoted if normal(line) not in produced]
    # On failure, what fws said as it is: the lines to quote instead.
    assert not missing, "\n".join(["quoted but not produced:", *missing, "produced:", *lines])
    assert len(quoted) >= 12
