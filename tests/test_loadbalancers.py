"""
Several fws nodes behind the load balancer configurations of the docs
(``docs/deploy/nginx.conf`` and ``docs/deploy/haproxy.cfg``), exactly as
written but for the ports: real nginx and HAProxy processes, real fws
processes joined by a private Redis, real WebSocket clients.
"""

from __future__ import annotations

import re
import signal
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from websockets.sync.client import connect as ws_connect

from tests.processes import FwsProcess
from tests.redis_support import RedisProcess, free_port
from tests.system_tools import program

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "docs" / "deploy"


def start_nodes(processes: list[FwsProcess], redis: RedisProcess,
                *extra: str) -> dict[str, int]:
    ports = {"9001": free_port(), "9002": free_port(), "9101": free_port(), "9102": free_port(),
             "8080": free_port()}
    for node, admin in (("9001", "9101"), ("9002", "9102")):
        proc = FwsProcess(["-p", str(ports[node]), "-i", "127.0.0.1",
                           "-f", "fws.filters.broadcast_messages_by_token",
                           "--storage", "fws.storage_objects.redis", "--redis-host", "127.0.0.1",
                           "--redis-port", str(redis.port), "--trusted-proxies", "127.0.0.1",
                           "--admin", f"tcp:{ports[admin]}:interface=127.0.0.1",
                           "--drain-period", "0", *extra], port=ports[node])
        processes.append(proc)
        proc.start()
        proc.wait_for_line("Redis ready at")
    return ports


def with_ports(text: str, ports: dict[str, int]) -> str:
    return re.sub(r"\b(9001|9002|9101|9102|8080)\b", lambda m: str(ports[m.group(1)]), text)


def join(stack: ExitStack, url: str, room: str) -> Any:
    ws = stack.enter_context(ws_connect(url, open_timeout=10))
    ws.send(f"token:{room}")
    assert ws.recv(timeout=10) == f"Successfully registered with broadcast group: {room}"
    return ws


def check_cluster(url: str, nodes: list[FwsProcess]) -> None:
    """Clients land on both nodes, and a message reaches the room on both."""
    with ExitStack() as stack:
        clients = [join(stack, url, "lobby") for _ in range(4)]
        for node in nodes:
            node.wait_for_line("open from 127.0.0.1 to /")
        clients[0].send("hello from the load balancer")
        for ws in clients[1:]:
            assert ws.recv(timeout=10) == "hello from the load balancer"


def survive_node_stop(url: str, nodes: list[FwsProcess]) -> None:
    """With one node stopped (SIGTERM), every new connection still gets in."""
    nodes[0].signal(signal.SIGTERM)
    assert nodes[0].wait(15) == 0
    with ExitStack() as stack:
        clients = [join(stack, url, "after") for _ in range(6)]
        clients[0].send("still here")
        for ws in clients[1:]:
            assert ws.recv(timeout=10) == "still here"


def test_nginx_config(tmp_path: Path, redis: RedisProcess, processes: list[FwsProcess]) -> None:
    nginx = program("nginx", "nginx-light")
    ports = start_nodes(processes, redis)
    snippet = tmp_path / "fws.conf"
    snippet.write_text(with_ports((DEPLOY / "nginx.conf").read_text(), ports)
                       .replace(f"listen {ports['8080']};", f"listen 127.0.0.1:{ports['8080']};"))
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / d).mkdir()
    main = tmp_path / "nginx.conf"
    main.write_text(f"""
daemon off;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    include {snippet};
}}
""")
    proxy = FwsProcess(["-e", str(tmp_path / "error.log"), "-p", str(tmp_path), "-c", str(main)],
                       command=[nginx], port=ports["8080"])
    processes.append(proxy)
    proxy.start(wait=False)
    proxy.wait_for_port(ports["8080"])
    url = f"ws://127.0.0.1:{ports['8080']}/"
    nodes = processes[:2]
    check_cluster(url, nodes)
    survive_node_stop(url, nodes)


def start_haproxy(haproxy: str, tmp_path: Path, ports: dict[str, int],
                  processes: list[FwsProcess]) -> FwsProcess:
    """HAProxy with docs/deploy/haproxy.cfg in front of the nodes, listening."""
    config = tmp_path / "haproxy.cfg"
    # Check every 200 ms instead of 2 s: the test waits for the checks to see both nodes.
    config.write_text(with_ports((DEPLOY / "haproxy.cfg").read_text(), ports)
                      .replace("inter 2s", "inter 200ms"))
    proxy = FwsProcess(["-db", "-f", str(config)], command=[haproxy], port=ports["8080"])
    processes.append(proxy)
    proxy.start(wait=False)
    proxy.wait_for_port(ports["8080"])
    return proxy


def test_haproxy_config(tmp_path: Path, redis: RedisProcess, processes: list[FwsProcess]) -> None:
    haproxy = program("haproxy", "haproxy")
    ports = start_nodes(processes, redis)
    proxy = start_haproxy(haproxy, tmp_path, ports, processes)
    nodes = processes[:2]
    url = f"ws://127.0.0.1:{ports['8080']}/"
    check_cluster(url, nodes)
    survive_node_stop(url, nodes)
    # ... and the health check saw the node go: HAProxy says so on its log.
    proxy.wait_for_line("node1 is DOWN")


def test_haproxy_node_killed_client_resumes(tmp_path: Path, redis: RedisProcess,
                                            processes: list[FwsProcess]) -> None:
    """
    --history behind HAProxy: the node a fws.v1 client is on is killed; the client
    reconnects through the proxy with ?resume= and gets what the room said meanwhile.
    """
    import json
    import time
    from urllib.parse import quote

    haproxy = program("haproxy", "haproxy")
    ports = start_nodes(processes, redis, "--history", "100")
    start_haproxy(haproxy, tmp_path, ports, processes)
    nodes = processes[:2]
    url = f"ws://127.0.0.1:{ports['8080']}/"
    with ExitStack() as stack:
        reader = stack.enter_context(ws_connect(url, subprotocols=["fws.v1"], open_timeout=10))
        assert reader.subprotocol == "fws.v1"
        reader.send("token:room")
        assert reader.recv(timeout=10).startswith("Successfully registered")
        deadline = time.monotonic() + 10
        while not any("open from" in line for node in nodes for line in node.lines()):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        [doomed] = [node for node in nodes if any("open from" in line for line in node.lines())]
        [other] = [node for node in nodes if node is not doomed]
        sender = join(stack, f"ws://127.0.0.1:{other.port}/", "room")
        deadline = time.monotonic() + 10
        while redis.command("SCARD", "fws:group:room") != b":2":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        sender.send("before")
        line, _, body = reader.recv(timeout=10).partition("\n")
        head = json.loads(line)
        assert body == "before" and head["offset"] == 1
        doomed.signal(signal.SIGKILL)
        doomed.wait()
        for text in ("missed one", "missed two"):
            sender.send(text)
        resume = "?resume=" + quote(json.dumps({"room": [head["epoch"], 1]}))
        deadline = time.monotonic() + 15
        while True:  # until HAProxy's checks have seen the node go
            try:
                back = stack.enter_context(ws_connect(url + resume, subprotocols=["fws.v1"],
                                                      open_timeout=5))
                break
            except Exception:  # refused, or a 503 while HAProxy still sends to the dead node
                assert time.monotonic() < deadline
                time.sleep(0.1)
        got = [back.recv(timeout=10).partition("\n")[2] for _ in range(2)]
        assert got == ["missed one", "missed two"]
        assert json.loads(back.recv(timeout=10)) == {
            "group": "room", "recovered": True, "epoch": head["epoch"], "offset": 3}
