"""The Socket.IO Admin UI: its namespace and its page, served by the server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import socketio

from tests.browser import PageWatch, launch_chromium, new_page
from tests.support import PASSWORD, ServerProcess


async def admin_connect(server: ServerProcess, auth: dict[str, Any]) -> Any:
    """Connect to /admin; return the first `server_stats`, or the refusal."""
    async with aiohttp.ClientSession() as session:
        client = socketio.AsyncClient(reconnection=False, http_session=session)
        stats: list[Any] = []
        refusals: list[Any] = []
        client.on("server_stats", stats.append, namespace="/admin")
        client.on("connect_error", refusals.append, namespace="/admin")
        try:
            await client.connect(
                server.url,
                namespaces=["/admin"],
                auth=auth,
                transports=["websocket"],
                wait_timeout=5,
            )
        except socketio.exceptions.ConnectionError:
            return {"refused": refusals}
        try:
            for _ in range(50):
                if stats:
                    return stats[0]
                await client.sleep(0.1)
            return None
        finally:
            await client.disconnect()


@pytest.fixture
async def server_with_ui(
    server_factory: Callable[..., ServerProcess],
) -> ServerProcess:
    server = server_factory(CHAT_ADMIN_UI="on")
    await server.create_agent("root@example.com", "Root", is_admin=True)
    await server.create_agent("ann@example.com", "Ann")
    return server


async def test_admin_namespace_needs_admin(server_with_ui: ServerProcess) -> None:
    server = server_with_ui
    wrong = await admin_connect(
        server, {"username": "root@example.com", "password": "wrong"}
    )
    assert "refused" in wrong
    not_admin = await admin_connect(
        server, {"username": "ann@example.com", "password": PASSWORD}
    )
    assert "refused" in not_admin

    stats = await admin_connect(
        server, {"username": "root@example.com", "password": PASSWORD}
    )
    assert stats is not None
    assert "clientsCount" in stats
    assert "Admin UI login rejected" in server.log()


async def test_admin_ui_page_is_local(server_with_ui: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server_with_ui.url}/admin-ui/") as response:
            assert response.status == 200
            html = await response.text()
        assert "https://" not in html
        assert 'href="icons/css/materialdesignicons.min.css"' in html
        icons = f"{server_with_ui.url}/admin-ui/icons/css/materialdesignicons.min.css"
        async with http.get(icons) as response:
            assert response.status == 200
        escape = f"{server_with_ui.url}/admin-ui/icons/..%2F..%2F..%2Fpackage.json"
        async with http.get(escape) as response:
            assert response.status == 404


async def test_admin_ui_off_by_default(server: ServerProcess) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/admin-ui/") as response,
    ):
        assert response.status == 404


async def test_admin_ui_in_browser(server_with_ui: ServerProcess) -> None:
    """Sign in to the Admin UI page as an admin; the namespaces show up."""
    async with launch_chromium() as browser:
        watch = PageWatch()
        page = await new_page(browser, watch, "admin")
        await page.goto(f"{server_with_ui.url}/admin-ui/")
        # The connection dialog: server URL, user name, password.
        dialog = page.locator(".v-dialog--active")
        await dialog.locator("input[type=text]").nth(0).fill(server_with_ui.url)
        await dialog.locator("input[type=text]").nth(1).fill("root@example.com")
        await dialog.locator("input[type=password]").fill(PASSWORD)
        await dialog.locator("button[type=submit]").click()
        await page.get_by_text("connected", exact=True).first.wait_for(timeout=10_000)
        await page.locator("code", has_text="/admin").wait_for()
        assert watch.errors == []
