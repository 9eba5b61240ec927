"""Origins: Socket.IO over polling and WebSocket, and the HTTP API."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import pytest

from sio_server.config import load_settings
from sio_server.errors import ConfigError
from tests.support import ServerProcess

LISTED = "https://shop.example"
FOREIGN = "https://evil.example"


async def connects(server: ServerProcess, transport: str, origin: str | None) -> bool:
    """Open an Engine.IO session with this Origin header and tell if it opened."""
    headers = {"Origin": origin} if origin else {}
    url = f"{server.url}/socket.io/?EIO=4&transport={transport}"
    async with aiohttp.ClientSession() as http:
        if transport == "polling":
            async with http.get(url, headers=headers) as response:
                body = await response.text()
                return response.status == 200 and body.startswith("0{")
        try:
            async with http.ws_connect(url, headers=headers) as ws:
                opened = await ws.receive_str(timeout=5)
                return opened.startswith("0{")
        except aiohttp.WSServerHandshakeError:
            return False


@pytest.mark.parametrize("transport", ["polling", "websocket"])
async def test_socket_origins(
    server_factory: Callable[..., ServerProcess], transport: str
) -> None:
    server = server_factory(CHAT_CORS_ORIGINS=LISTED)
    assert await connects(server, transport, LISTED)
    assert await connects(server, transport, server.url)
    # Native apps send no Origin; their token decides.
    assert await connects(server, transport, None)
    assert not await connects(server, transport, FOREIGN)
    assert f"rejected requests from origin {FOREIGN}" in server.log()


async def fetch(
    method: str, url: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], str]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, headers=headers) as response,
    ):
        return response.status, dict(response.headers), await response.text()


async def test_api_origins(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(CHAT_CORS_ORIGINS=LISTED)
    await server.create_agent("ann@example.com")
    token = await server.login("ann@example.com")
    auth = {"Authorization": f"Bearer {token}"}
    chats = f"{server.url}/api/chats"

    status, _, body = await fetch("GET", chats, {**auth, "Origin": FOREIGN})
    assert status == 403
    assert '"forbidden"' in body

    status, headers, _ = await fetch("GET", chats, {**auth, "Origin": LISTED})
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == LISTED

    # A listed origin's preflight gets a 204 reply, and its errors carry the
    # header so that the page can read them.
    preflight = {
        "Origin": LISTED,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    status, headers, _ = await fetch("OPTIONS", chats, preflight)
    assert status == 204
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    status, headers, _ = await fetch("GET", chats, {"Origin": LISTED})
    assert status == 401
    assert headers["Access-Control-Allow-Origin"] == LISTED

    # The dashboard page is held to the same rule.
    status, _, _ = await fetch("GET", f"{server.url}/agent/", {"Origin": FOREIGN})
    assert status == 403
    status, _, _ = await fetch("GET", f"{server.url}/agent/", {})
    assert status == 200


def test_wildcard_needs_consent() -> None:
    with pytest.raises(ConfigError, match="CHAT_CORS_ALLOW_ANY"):
        load_settings({"CHAT_CORS_ORIGINS": "*"})
    settings = load_settings({"CHAT_CORS_ORIGINS": "*", "CHAT_CORS_ALLOW_ANY": "on"})
    assert settings.cors_origins == ("*",)


async def test_wildcard_warns(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(CHAT_CORS_ORIGINS="*", CHAT_CORS_ALLOW_ANY="on")
    assert await connects(server, "websocket", FOREIGN)
    assert "any web site can open chats" in server.log()
