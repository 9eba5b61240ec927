"""Two server processes on one PostgreSQL database, joined by Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from sio_server.store import PostgresStore
from tests.cluster import REDIS_URL, require_redis
from tests.database import create_postgres_database, drop_postgres_database
from tests.support import ChatClient, Clients, ServerProcess


async def test_two_nodes_share_one_database(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """Visitors on both nodes join at once, and agents on both nodes take them."""
    require_redis()
    url = await create_postgres_database()
    env = {
        "CHAT_DATABASE_URL": url,
        "CHAT_REDIS_URL": REDIS_URL,
        "CHAT_CLUSTER_NAME": f"shared-db-{uuid.uuid4().hex[:8]}",
    }
    nodes: list[ServerProcess] = []
    groups: list[Clients] = []
    try:
        nodes = [server_factory(**env), server_factory(**env)]
        groups = [Clients(node) for node in nodes]
        agents = [
            await groups[n].agent(f"agent{n}@example.com", ready=True, max_chats=2)
            for n in range(2)
        ]
        visitors = [await groups[n % 2].visitor(name=f"V{n}") for n in range(6)]
        replies = await asyncio.gather(
            *(
                visitor.call("join_queue", {"message": f"hi {n}"})
                for n, visitor in enumerate(visitors)
            )
        )
        assert all(reply["ok"] for reply in replies), replies
        visitor_of = {
            reply["chat"]["id"]: visitor
            for reply, visitor in zip(replies, visitors, strict=True)
        }

        # Four places for six chats, so each agent gets two and no chat twice.
        agent_of: dict[str, ChatClient] = {}
        for agent in agents:
            for _ in range(2):
                started = await agent.next("chat_started")
                agent_of[started["chat"]["id"]] = agent
            await agent.no_more("chat_started", within=0.5)
        assert len(agent_of) == 4

        store = PostgresStore(url)
        await store.open()
        try:
            loads = [load.load for load in await store.list_agent_loads()]
            queued = await store.count_queued()
        finally:
            await store.close()
        assert loads == [2, 2]
        assert queued == 2

        # Each agent's reply reaches its visitor, whichever node that is on.
        for chat_id, agent in agent_of.items():
            sent = await agent.call(
                "message", {"chat_id": chat_id, "text": "hello", "client_id": "a1"}
            )
            assert sent["message"]["seq"] == 2, sent
            received = await visitor_of[chat_id].next("message")
            assert received["chat_id"] == chat_id
            assert received["text"] == "hello"
    finally:
        for group in groups:
            await group.close()
        # The nodes hold connections that the drop would cut mid-request.
        for node in nodes:
            node.stop()
        await drop_postgres_database(url)
