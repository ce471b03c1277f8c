"""
``--reactor asyncio``: coroutine filters that await asyncio libraries (asyncio.sleep,
redis.asyncio) run as asyncio tasks on Twisted's asyncio reactor, in per-connection
order and within ``--filter-timeout``; on the default reactor such a filter gets one
clear error naming the option.  Real ``fws_server`` and ``twistd`` processes, real
sockets, a private redis-server.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.sync.client import ClientConnection, connect

from fws.cli import reactor_choice
from tests.processes import BIN, FwsProcess
from tests.redis_support import RedisProcess

#: Awaits asyncio.sleep (the later messages sleep less, so that replies that were
#: not kept in order would come back reversed), then a Deferred, inside a task.
SLEEPY = '''
import asyncio
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from fws.filters.base import WebSocketMessageFilter

class Sleepy(WebSocketMessageFilter):
    @staticmethod
    async def filter(ws, data):
        text = bytes(data).decode()
        if text == "ping":
            ws.sendMessage(b"pong")  # no asyncio: works on every reactor
            return
        if text == "hang":
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                ws.sendMessage(b"hang cancelled")
                raise
        if text == "hang on a Deferred":
            try:
                await Deferred()  # never fires
            except CancelledError:  # Twisted's, as where Twisted runs the coroutine
                ws.sendMessage(b"Deferred cancelled")
                raise
        n = int(text)
        await asyncio.sleep(0.002 * (10 - n))
        from twisted.internet import reactor
        await deferLater(reactor, 0, lambda: None)  # a Deferred, awaited from the task
        task = asyncio.current_task()
        ws.sendMessage(f"{n} in task={task is not None} binary={ws.is_binary}".encode())
'''

#: INCR through redis.asyncio; the reply is the counter, so order shows as 1, 2, 3...
REDIS_ASYNCIO = '''
import os
import redis.asyncio
from fws.filters.base import WebSocketMessageFilter

_client = None

class Count(WebSocketMessageFilter):
    @staticmethod
    async def filter(ws, data):
        global _client
        if _client is None:
            _client = redis.asyncio.Redis(port=int(os.environ["TEST_REDIS_PORT"]))
        key = "count:" + bytes(data).decode()
        value = await _client.incr(key)
        await _client.rpush("seen:" + key, value)
        ws.sendMessage(f"{key}={value}".encode())
'''


def module(directory: Path, name: str, source: str) -> str:
    (directory / f"{name}.py").write_text(source)
    return name


def start(processes: list[FwsProcess], *args: str, cwd: Path, env: dict[str, str] | None = None,
          command: list[str] | None = None) -> FwsProcess:
    proc = FwsProcess([], cwd=cwd, env=env, command=command)
    proc.args = ["-p", str(proc.port), "-i", "127.0.0.1", *args]
    processes.append(proc)
    return proc.start()


def texts(ws: ClientConnection, count: int) -> list[str]:
    out = []
    for _ in range(count):
        message = ws.recv(timeout=10)
        out.append(message if isinstance(message, str) else message.decode())
    return out


def send_numbers(ws: ClientConnection) -> list[str]:
    for n in range(10):
        ws.send(str(n))
    return texts(ws, 10)


EXPECTED = [f"{n} in task=True binary=False" for n in range(10)]


@pytest.mark.parametrize("metrics", [[], ["--public-metrics"]], ids=["plain", "timed"])
def test_asyncio_sleep_runs_in_tasks_in_order(processes: list[FwsProcess], tmp_path: Path,
                                              metrics: list[str]) -> None:
    """With metrics on, every filter call is timed: that wrapper runs coroutines the same way."""
    name = module(tmp_path, "sleepy", SLEEPY)
    proc = start(processes, "--reactor", "asyncio", *metrics, "-f", name, cwd=tmp_path)
    loop = "uvloop.Loop" if importlib.util.find_spec("uvloop") else "asyncio.unix_events."
    proc.wait_for_line(f"reactor: AsyncioSelectorReactor on {loop}")
    with connect(proc.url) as a, connect(proc.url) as b:
        assert send_numbers(a) == EXPECTED
        for n in range(10):  # two connections at once: each keeps its own order
            a.send(str(n))
            b.send(str(9 - n))
        assert texts(a, 10) == EXPECTED
        assert texts(b, 10) == EXPECTED[::-1]
        a.send("ping")
        assert texts(a, 1) == ["pong"]
    assert not [line for line in proc.lines() if "Traceback" in line or "error" in line.lower()]
    proc.signal(15)
    assert proc.wait() == 0  # SIGTERM stops the asyncio reactor gracefully too


def test_asyncio_reactor_without_uvloop(processes: list[FwsProcess], tmp_path: Path) -> None:
    """Where uvloop cannot be imported, asyncio's own loop is used."""
    name = module(tmp_path, "sleepy", SLEEPY)
    code = "import sys; sys.modules['uvloop'] = None; from fws.cli import main; main()"
    proc = start(processes, "--reactor", "asyncio", "-f", name, cwd=tmp_path,
                 command=[sys.executable, "-c", code])
    proc.wait_for_line("reactor: AsyncioSelectorReactor on asyncio.unix_events.")
    with connect(proc.url) as ws:
        assert send_numbers(ws) == EXPECTED


def test_filter_timeout_cancels_the_task(processes: list[FwsProcess], tmp_path: Path) -> None:
    name = module(tmp_path, "sleepy", SLEEPY)
    proc = start(processes, "--reactor", "asyncio", "--filter-timeout", "0.3", "-f", name,
                 cwd=tmp_path)
    with connect(proc.url) as ws:
        ws.send("hang")
        ws.send("3")
        ws.send("hang on a Deferred")
        ws.send("4")
        # The timeout fails the message at once and cancels its task: the filter
        # sees CancelledError where it waits (and its cleanup may overlap the next
        # message, which starts as soon as the timeout fails this one).
        replies = texts(ws, 4)
        assert [r for r in replies if r[0].isdigit()] == ["3 in task=True binary=False",
                                                          "4 in task=True binary=False"]
        assert sorted(r for r in replies if not r[0].isdigit()) == ["Deferred cancelled",
                                                                    "hang cancelled"]
    proc.wait_for(lambda: sum("timed out on message" in line for line in proc.lines()) == 2,
                  "two timeouts logged")
    assert not [line for line in proc.lines() if "Traceback" in line]


def test_redis_asyncio_in_a_filter(processes: list[FwsProcess], tmp_path: Path,
                                   redis: RedisProcess) -> None:
    name = module(tmp_path, "counting", REDIS_ASYNCIO)
    proc = start(processes, "--reactor", "asyncio", "-f", name, cwd=tmp_path,
                 env={"TEST_REDIS_PORT": str(redis.port)})
    with connect(proc.url) as a, connect(proc.url) as b:
        for _ in range(20):
            a.send("a")
            b.send("b")
        assert texts(a, 20) == [f"count:a={n}" for n in range(1, 21)]
        assert texts(b, 20) == [f"count:b={n}" for n in range(1, 21)]
    # The filter's writes reached Redis in message order as well.
    assert redis.command("LLEN", "seen:count:a") == b":20"


def test_default_reactor_gives_one_clear_error(processes: list[FwsProcess], tmp_path: Path) -> None:
    name = module(tmp_path, "sleepy", SLEEPY)
    proc = start(processes, "-f", name, cwd=tmp_path)
    proc.wait_for_line("reactor: FwsEPollReactor")
    with connect(proc.url) as ws:
        for n in range(5):
            ws.send(str(n))
        ws.send("ping")  # each failed message failed alone: the connection still works
        assert texts(ws, 1) == ["pong"]
    proc.wait_for_line("awaits asyncio")
    errors = [line for line in proc.lines() if "awaits asyncio" in line]
    assert len(errors) == 1, proc.lines()
    assert (f"filter {name}.Sleepy awaits asyncio, which needs fws_server --reactor asyncio"
            in errors[0])
    assert not [line for line in proc.lines() if "Traceback" in line or "RuntimeError" in line]


def test_twistd_reactor_asyncio(processes: list[FwsProcess], tmp_path: Path) -> None:
    name = module(tmp_path, "sleepy", SLEEPY)
    proc = start(processes, "-f", name, cwd=tmp_path,
                 command=[str(BIN / "twistd"), "-n", "--pidfile=", "--reactor", "asyncio", "fws"])
    proc.wait_for_line("AsyncioSelectorReactor")
    with connect(proc.url) as ws:
        assert send_numbers(ws) == EXPECTED


def test_env_and_config_file_choose_the_reactor(processes: list[FwsProcess],
                                                tmp_path: Path) -> None:
    name = module(tmp_path, "sleepy", SLEEPY)
    by_env = start(processes, "-f", name, cwd=tmp_path, env={"FWS_REACTOR": "asyncio"})
    config = tmp_path / "fws.json"
    config.write_text(json.dumps({"reactor": "asyncio", "filters": [name]}))
    by_file = start(processes, "-c", str(config), cwd=tmp_path)
    for proc in (by_env, by_file):
        proc.wait_for_line("reactor: AsyncioSelectorReactor")
        with connect(proc.url) as ws:
            assert send_numbers(ws) == EXPECTED


def test_reactor_choice_precedence(tmp_path: Path) -> None:
    """The prescan reads the option as resolve() does: command line, environment, file."""
    config = tmp_path / "fws.json"
    config.write_text(json.dumps({"--reactor": "asyncio"}))
    assert reactor_choice([], {}) == "default"
    assert reactor_choice(["--reactor", "asyncio"], {}) == "asyncio"
    assert reactor_choice(["--reactor=asyncio"], {}) == "asyncio"
    assert reactor_choice([], {"FWS_REACTOR": "asyncio"}) == "asyncio"
    assert reactor_choice(["--reactor", "default"], {"FWS_REACTOR": "asyncio"}) == "default"
    assert reactor_choice(["-c", str(config)], {}) == "asyncio"
    assert reactor_choice([], {"FWS_CONFIG": str(config)}) == "asyncio"
    assert reactor_choice(["-c", str(config)], {"FWS_REACTOR": "default"}) == "default"
    assert reactor_choice(["--reactor", "nonsense"], {}) == "default"  # resolve() says why
    assert reactor_choice(["-c", str(tmp_path / "missing.json")], {}) == "default"


def test_an_unknown_reactor_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run([str(BIN / "fws_server"), "--reactor", "tornado"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "--reactor" in result.stderr and "default" in result.stderr
    assert "asyncio" in result.stderr


@pytest.mark.parametrize("choice", ["default", "asyncio"])
def test_check_names_no_reactor_problem(tmp_path: Path, choice: str) -> None:
    """--check with either reactor loads the pipeline and exits 0 without listening."""
    name = module(tmp_path, "sleepy", SLEEPY)
    result = subprocess.run([str(BIN / "fws_server"), "--reactor", choice, "--check", "-f", name],
                            cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert f"{name}.Sleepy" in result.stdout


def test_bundled_filters_and_redis_storage_on_the_asyncio_reactor(
        processes: list[FwsProcess], tmp_path: Path, redis: RedisProcess) -> None:
    """The rest of fws (txredisapi's storage and subscriber, broadcasts) runs there as before."""
    proc = start(processes, "--reactor", "asyncio", "--storage", "fws.storage_objects.redis",
                 "--redis-port", str(redis.port), "--redis-host", "127.0.0.1",
                 "-f", "fws.filters.broadcast_messages", "fws.filters.broadcast_pubsub",
                 cwd=tmp_path)
    proc.wait_for_line("subscribed to")
    with connect(proc.url) as a, connect(proc.url) as b:
        a.send("hello b")
        assert texts(b, 1) == ["hello b"]
        assert redis.publish("global", "from Redis") == 1
        assert texts(a, 1) == ["from Redis"]
        assert texts(b, 1) == ["from Redis"]


def test_asyncio_asked_for_with_another_reactor_installed(tmp_path: Path) -> None:
    """A program that installed its own reactor before fws_server's main() cannot get asyncio."""
    code = ("from twisted.internet import epollreactor; epollreactor.install(); "
            "from fws.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", code, "--reactor", "asyncio", "-f", "echo",
                             "--check"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr == ("fws_server: error: --reactor asyncio: another reactor (EPollReactor) "
                             "was installed before fws_server could install the asyncio one\n")
