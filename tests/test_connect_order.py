"""Events for a socket that is still connecting wait for its CONNECT and session.

A connect handler puts the socket in its rooms before it returns, and
python-socketio sends CONNECT only after that. The server holds back what the
rooms receive meanwhile, so that a client always sees CONNECT, then `session`,
then the room's events in the order they were sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import socketio
from aiohttp import web

from sio_server.socket_server import ChatManager, ChatSocketServer


@pytest.fixture
async def server() -> AsyncIterator[tuple[ChatSocketServer, str]]:
    # Short pings, because a polling client's disconnect waits for its last
    # long poll to end.
    sio = ChatSocketServer(async_mode="aiohttp", ping_interval=1, ping_timeout=1)
    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield sio, f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_room_events_follow_session(
    server: tuple[ChatSocketServer, str], transport: str
) -> None:
    sio, url = server
    in_room = asyncio.Event()
    resume = asyncio.Event()

    async def connect(sid: str, environ: Any, auth: Any) -> None:
        await sio.enter_room(sid, "lobby")
        in_room.set()
        await resume.wait()

    async def send_session(sid: str) -> None:
        await sio.emit("session", {"sid": sid}, to=sid)

    sio.on("connect", connect)
    sio.after_connect = send_session

    received: list[str] = []
    all_received = asyncio.Event()
    client = socketio.AsyncClient(reconnection=False)

    @client.on("*")
    async def record(event: str, *args: Any) -> None:
        received.append(event)
        if len(received) == 4:
            all_received.set()

    connecting = asyncio.create_task(
        client.connect(url, transports=[transport], auth={}, wait_timeout=5)
    )
    await asyncio.wait_for(in_room.wait(), 5)
    for number in range(3):
        await sio.emit("news", {"number": number}, room="lobby")
    manager = sio.manager
    assert isinstance(manager, ChatManager)
    assert len(manager.held_frames) == 1
    resume.set()
    await connecting
    try:
        await asyncio.wait_for(all_received.wait(), 5)
        assert received == ["session", "news", "news", "news"]
        assert manager.held_frames == {}
    finally:
        await client.disconnect()


async def test_refused_connect_holds_nothing(
    server: tuple[ChatSocketServer, str],
) -> None:
    sio, url = server

    async def connect(sid: str, environ: Any, auth: Any) -> bool:
        await sio.enter_room(sid, "lobby")
        await sio.emit("news", {}, room="lobby")
        return False

    sio.on("connect", connect)
    client = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(url, transports=["websocket"], auth={}, wait_timeout=5)
    manager = sio.manager
    assert isinstance(manager, ChatManager)
    assert manager.held_frames == {}
