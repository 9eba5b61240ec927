"""The cached count of ready agents and their capacity, in one process.

Join replies and queue updates read the count from a short cache, which every
change of agents made here clears. A read that starts before such a change
and returns after it must not put its result back into the cache, because the
next join reply would then carry a capacity that is no longer true.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import socketio

from sio_server.auth import TokenSigner
from sio_server.config import Settings
from sio_server.metrics import Metrics
from sio_server.service import ChatService
from sio_server.socket_server import ChatManager
from sio_server.store import create_store
from sio_server.store.base import Store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = create_store(f"sqlite:///{tmp_path / 'chat.sqlite3'}")
    await opened.open()
    yield opened
    await opened.close()


async def test_stale_read_not_cached(store: Store) -> None:
    settings = Settings(secret_key="k" * 32)
    signer = TokenSigner(settings.secret_key, 60, 60)
    service = ChatService(
        socketio.AsyncServer(client_manager=ChatManager()),
        store,
        signer,
        settings,
        Metrics(),
    )
    agent = await store.create_agent("alice@example.com", "Alice", "unused")
    await store.set_agent_connected(agent.id, True)
    await store.set_agent_ready(agent.id, 5, None)

    read = store.available_agents
    answered = asyncio.Event()
    release = asyncio.Event()

    async def held_read() -> tuple[int, int]:
        result = await read()
        answered.set()
        await release.wait()
        return result

    store.available_agents = held_read  # type: ignore[method-assign]
    slow = asyncio.create_task(service._open_capacity())
    await answered.wait()
    store.available_agents = read  # type: ignore[method-assign]

    await store.set_agent_ready(agent.id, 1, None)
    service._agents_changed()
    release.set()
    # The slow caller's read started first, so it returns the old capacity.
    assert await slow == 5
    assert await service._open_capacity() == 1
