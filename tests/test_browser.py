"""
The browser client, end to end: a real ``fws_server -f
fws.filters.broadcast_messages_by_token --static examples/chat`` process and
three headless Chromium pages driving examples/chat through Selenium.

Chromium and its driver are Debian's (``chromium``, ``chromium-driver``;
``.ci/run`` installs them). The driver is given by path, so Selenium Manager
never downloads anything.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.processes import FwsProcess
from tests.system_tools import module, program

ROOT = Path(__file__).resolve().parent.parent
CHAT = ROOT / "examples" / "chat"
SCREENSHOT = ROOT / "docs" / "_static" / "chat.png"
WAIT = 20  # seconds; a safety net, never a measurement


def _binaries() -> tuple[str, str]:
    return program("chromium", "chromium"), program("chromedriver", "chromium-driver")


@pytest.fixture
def server(processes: list[FwsProcess]) -> FwsProcess:
    proc = FwsProcess([])
    proc.args = ["-p", str(proc.port), "-i", "127.0.0.1",
                 "-f", "fws.filters.broadcast_messages_by_token", "--static", str(CHAT)]
    processes.append(proc)
    return proc.start()


@pytest.fixture
def browser() -> Iterator[Any]:
    """A factory of headless Chromium pages, all quit at the end."""
    chromium, chromedriver = _binaries()
    module("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers: list[Any] = []

    def open_page(url: str) -> Any:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=900,640", "--force-device-scale-factor=1"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
        drivers.append(driver)
        driver.get(url)
        return driver

    try:
        yield open_page
    finally:
        for driver in drivers:
            driver.quit()


def join(page: Any, name: str, room: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(page, WAIT)
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "connected"))
    page.find_element(By.ID, "name").send_keys(name)
    page.find_element(By.ID, "room").send_keys(room)
    page.find_element(By.ID, "join").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "log"), f"joined room {room}"))
    wait.until(ec.element_to_be_clickable((By.ID, "send")))


def say(page: Any, text: str) -> None:
    from selenium.webdriver.common.by import By

    page.find_element(By.ID, "message").send_keys(text)
    page.find_element(By.ID, "send").click()


def sees(page: Any, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(page, WAIT).until(ec.text_to_be_present_in_element((By.ID, "log"), text))


def log_lines(page: Any) -> list[str]:
    from selenium.webdriver.common.by import By

    return [item.text for item in page.find_elements(By.CSS_SELECTOR, "#log li")]


def test_two_pages_chat_and_a_third_room_hears_nothing(server: FwsProcess, browser: Any,
                                                       tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{server.port}/"
    ada, grace, linus = browser(url), browser(url), browser(url)
    assert ada.title == "fws chat"
    join(ada, "ada", "engines")
    join(grace, "grace", "engines")
    join(linus, "linus", "kernels")

    say(ada, "Has anyone seen my notes on the engine?")
    sees(grace, "ada: Has anyone seen my notes on the engine?")
    say(grace, "They are on the second shelf, next to the compiler.")
    sees(ada, "grace: They are on the second shelf, next to the compiler.")
    # Markup arrives as text, never as HTML; "token:" in a message is not a room change.
    say(ada, "<b>thanks</b> & my token:engines is safe")
    sees(grace, "ada: <b>thanks</b> & my token:engines is safe")
    say(grace, "Anytime!")
    sees(ada, "grace: Anytime!")

    # The other room: a marker message of its own arrives, the first room's never did.
    say(linus, "just me here")
    other = browser(url)
    join(other, "tux", "kernels")
    say(other, "hello linus")
    sees(linus, "tux: hello linus")
    assert not any("ada" in line or "grace" in line for line in log_lines(linus))
    assert "you: Has anyone seen my notes on the engine?" in log_lines(ada)
    assert len([line for line in log_lines(grace) if line.startswith("ada:")]) == 2

    shot = tmp_path / "chat.png"
    assert grace.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 800 and height >= 400
    if os.environ.get("FWS_UPDATE_SCREENSHOTS") == "1":
        shutil.copy(shot, SCREENSHOT)  # what docs/tutorial.rst shows


def _chat_then_stop(browser: Any, processes: list[FwsProcess],
                    *extra: str) -> tuple[list[str], int, Any]:
    """The chat on its own server, a page joined to "engines", then the server stopped
    (SIGTERM): its arguments (to start the next one with), its port and the page."""
    import signal

    first = FwsProcess([])
    port = first.port
    args = ["-p", str(port), "-i", "127.0.0.1", "-f", "fws.filters.broadcast_messages_by_token",
            "--static", str(CHAT), "--drain-period", "0", *extra]
    first.args = args
    processes.append(first)
    first.start()
    page = browser(f"http://127.0.0.1:{port}/")
    join(page, "ada", "engines")
    first.signal(signal.SIGTERM)
    assert first.wait(20) == 0
    return args, port, page


def test_the_page_reconnects_and_rejoins(processes: list[FwsProcess], browser: Any) -> None:
    """A restarted server (SIGTERM, 1001) costs the page a reconnect, not its room."""

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    args, port, page = _chat_then_stop(browser, processes)
    # The log keeps the close (the status line moves on with every retry: a retry
    # before the new server listens fails with 1006).
    sees(page, "connection closed (1001), reconnecting")
    second = FwsProcess(args, port=port)
    processes.append(second)
    second.start()
    # Back in the room without doing anything: a message from a fresh client reaches it.
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}/") as ws:
        ws.send("token:engines")
        assert ws.recv(timeout=WAIT).startswith("Successfully registered")
        WebDriverWait(page, WAIT).until(
            ec.text_to_be_present_in_element((By.ID, "status"), "connected"))
        sees(page, "joined room engines")
        # The page may be re-joining at this very moment: repeat until it hears one.
        WebDriverWait(page, WAIT).until(
            lambda p: ws.send('{"name": "grace", "text": "welcome back"}')
            or "grace: welcome back" in p.find_element(By.ID, "log").text)


def test_the_page_resumes_and_shows_what_it_missed(processes: list[FwsProcess], browser: Any,
                                                   redis: Any) -> None:
    """
    --history on Redis, two nodes: the page's node is killed, messages are sent on the
    other meanwhile; the node comes back and the page shows every one it missed.
    """
    import signal

    from websockets.sync.client import connect

    redis_args = ["--storage", "fws.storage_objects.redis", "--redis-host", "127.0.0.1",
                  "--redis-port", str(redis.port), "--history", "100", "--drain-period", "0",
                  "-f", "fws.filters.broadcast_messages_by_token"]
    first = FwsProcess([])
    port = first.port
    args = ["-p", str(port), "-i", "127.0.0.1", "--static", str(CHAT), *redis_args]
    first.args = args
    other = FwsProcess([])
    other.args = ["-p", str(other.port), "-i", "127.0.0.1", *redis_args]
    processes.extend([first, other])
    first.start()
    other.start()
    page = browser(f"http://127.0.0.1:{port}/")
    join(page, "ada", "engines")
    with connect(f"ws://127.0.0.1:{other.port}/") as grace:
        grace.send("token:engines")
        assert grace.recv(timeout=WAIT).startswith("Successfully registered")
        grace.send('{"name": "grace", "text": "before"}')
        sees(page, "grace: before")
        say(page, "I will be right back")
        assert "I will be right back" in grace.recv(timeout=WAIT)  # plain client: no header
        first.signal(signal.SIGKILL)
        first.wait()
        sees(page, "reconnecting")
        for text in ("while you were away", "and this too"):
            grace.send(json.dumps({"name": "grace", "text": text}))
        second = FwsProcess(args, port=port)
        processes.append(second)
        second.start()
        sees(page, "back in room engines (2 missed messages shown)")
    lines = log_lines(page)
    assert lines.index("grace: while you were away") < lines.index("grace: and this too")
    assert lines.index("grace: and this too") < lines.index(
        "back in room engines (2 missed messages shown)")
    assert not any(line.startswith("ada:") for line in lines)  # its own message not shown twice


def test_the_page_says_when_it_could_not_recover(processes: list[FwsProcess],
                                                 browser: Any) -> None:
    """Memory history dies with its node: after a restart the page says it missed messages."""

    args, port, page = _chat_then_stop(browser, processes, "--history", "100")
    second = FwsProcess(args, port=port)
    processes.append(second)
    second.start()
    sees(page, "back in room engines: messages sent while you were away could not be recovered")
