"""nginx from deploy/nginx.conf.template in front of server nodes.

The nodes here run alone, each on its own SQLite file, so these tests check
nginx's routing without Redis or PostgreSQL: pages and API, both transports,
sticky long-polling, skipping a dead node and the forwarded client address.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
import socketio

from deploy.nginx import TEMPLATE, render_config
from tests.cluster import SHORT_PINGS, ClusterFactory
from tests.support import Clients, chat_both_ways, session_of


def test_template_renders_every_node() -> None:
    values = {"listen": "8080", "state_dir": "/run/chat", "log_dir": "/var/log/chat"}
    nodes = ["10.0.0.11:8080", "10.0.0.12:8080"]
    config = render_config(TEMPLATE.read_text(), values, nodes)

    assert "server 10.0.0.11:8080 max_fails=" in config
    assert "server 10.0.0.12:8080 max_fails=" in config
    assert "listen 8080;" in config
    assert "pid /run/chat/nginx.pid;" in config
    code = [line for line in config.splitlines() if not line.lstrip().startswith("#")]
    assert not any("{{" in line for line in code)


@pytest.mark.parametrize(
    ("values", "nodes"),
    [
        ({"listen": "8080", "state_dir": "/run", "log_dir": "/log"}, []),
        (
            {"listen": "8080; user root", "state_dir": "/run", "log_dir": "/log"},
            ["a:1"],
        ),
        ({"listen": "8080", "state_dir": "/run"}, ["a:1"]),
    ],
    ids=["no nodes", "directive in value", "missing value"],
)
def test_template_rejects_bad_values(values: dict[str, str], nodes: list[str]) -> None:
    with pytest.raises(ValueError):
        render_config(TEMPLATE.read_text(), values, nodes)


async def test_pages_and_api_through_nginx(cluster_factory: ClusterFactory) -> None:
    cluster = await cluster_factory(1, shared=False)
    node = cluster.nodes[0]
    await node.create_agent("alice@example.com")

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{cluster.url}/") as response:
            assert response.status == 200
            assert response.content_type == "text/html"
        # The redirect keeps nginx's host and port, so Host reached the node.
        async with http.get(f"{cluster.url}/agent", allow_redirects=False) as response:
            assert response.status in (301, 302, 307, 308)
            location = response.headers["Location"]
            assert location in ("/agent/", f"{cluster.url}/agent/"), location
        async with http.post(
            f"{cluster.url}/api/auth/login",
            json={"email": "alice@example.com", "password": "correct horse battery"},
            headers={"Origin": cluster.url},
        ) as response:
            body = await response.json()
            assert response.status == 200, body
            assert body["token"]
        async with http.get(f"{cluster.url}/metrics") as response:
            assert response.status == 404
        async with http.get(f"{node.url}/metrics") as response:
            assert response.status == 200


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_chat_through_nginx(
    cluster_factory: ClusterFactory, transport: str
) -> None:
    cluster = await cluster_factory(1, shared=False, **SHORT_PINGS)
    clients = Clients(cluster.nodes[0]).at(cluster.url)
    try:
        agent = await clients.agent(ready=True)
        # A browser on nginx's own origin sends that Origin header.
        visitor = clients.client({"role": "visitor", "token": None})
        await visitor.connect([transport], headers={"Origin": cluster.url})
        assert visitor.sio.transport() == transport
        await chat_both_ways(agent, visitor, transport)
    finally:
        await clients.close()


async def test_polling_sticks_to_one_node(cluster_factory: ClusterFactory) -> None:
    """Long-polling clients routed to each of three lone nodes keep their sessions.

    The nodes share no state, so a polling request sent to another node than
    the one that has the session would get 400 and drop the connection.
    """
    cluster = await cluster_factory(3, shared=False, **SHORT_PINGS)
    sources = [await cluster.source_for(index) for index in range(3)]
    clients = Clients(cluster.nodes[0])
    try:
        visitors = []
        for source in sources:
            group = clients.at(cluster.url, local_address=source)
            visitor = await group.visitor(transports=["polling"])
            visitors.append(visitor)
        for round_number in range(5):
            replies = await asyncio.gather(
                *(visitor.call("join_queue", {}) for visitor in visitors)
            )
            for reply in replies:
                assert reply["ok"], (round_number, reply)
            await asyncio.sleep(0.1)
        for visitor in visitors:
            assert visitor.sio.connected
            assert sum(1 for event, _ in visitor.received if event == "session") == 1
    finally:
        await clients.close()


async def test_dead_node_is_skipped(cluster_factory: ClusterFactory) -> None:
    cluster = await cluster_factory(2, shared=False, **SHORT_PINGS)
    source = await cluster.source_for(0)
    clients = Clients(cluster.nodes[0]).at(cluster.url, local_address=source)
    try:
        visitor = await clients.visitor()
        token = visitor.auth["token"]

        cluster.kill(0)
        # The connected visitor comes back through nginx to the other node,
        # which accepts its token because all nodes share the secret key.
        session = await visitor.next("session", timeout=15)
        assert session["visitor_id"] == session_of(visitor)["visitor_id"]
        assert visitor.sio.connected

        # Requests go to node 1, straight away once the worker that takes
        # them has marked node 0 failed (each nginx worker keeps its own).
        assert (await cluster.route(source))[-1] == 1
        for transport in ("polling", "websocket"):
            other = await clients.visitor(token=token, transports=[transport])
            assert (await other.call("join_queue", {}))["ok"]
    finally:
        await clients.close()


async def test_forwarded_for_reaches_node(cluster_factory: ClusterFactory) -> None:
    """The connection limit per address counts each client, not nginx."""
    cluster = await cluster_factory(
        1, shared=False, CHAT_LIMIT_CONNECT_PER_IP="2/minute"
    )
    clients = Clients(cluster.nodes[0])
    noisy = clients.at(cluster.url, local_address="127.0.0.2")
    quiet = clients.at(cluster.url, local_address="127.0.0.3")
    try:
        await noisy.visitor()
        await noisy.visitor()
        error = await connect_rejected(noisy)
        assert error["code"] == "rate_limited"
        assert (await quiet.visitor()).sio.connected
    finally:
        await clients.close()


async def connect_rejected(clients: Clients) -> dict[str, Any]:
    """Connect a new visitor and expect a `connect_error`; return its `data`."""
    client = clients.client({"role": "visitor", "token": None})
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.sio.connect(clients.url, auth=client.auth, wait_timeout=5)
    return dict(client.connect_errors[0]["data"])
