"""The admin page in headless Chromium, against a real server."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, expect

from tests.browser import PageWatch, launch_chromium, new_page
from tests.support import PASSWORD, Clients, ServerProcess, matched_pair

NEW_PASSWORD = "a much longer passphrase"
PHONE_OPTIONS = {"viewport": {"width": 375, "height": 800}}
HOSTILE_TEXT = "<img src=x onerror=alert(1)>"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with launch_chromium() as chromium:
        yield chromium


@pytest.fixture
def watch() -> PageWatch:
    """Collect script errors and dialogs. Any of them fails the test."""
    pages = PageWatch()
    yield pages  # type: ignore[misc]
    assert pages.dialogs == []
    assert pages.errors == []


async def api(
    server: ServerProcess,
    method: str,
    path: str,
    token: str | None = None,
    body: Any = None,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, server.url + path, json=body, headers=headers) as response,
    ):
        return response.status, await response.json()


async def sign_in(
    browser: Browser,
    watch: PageWatch,
    server: ServerProcess,
    email: str,
    **options: Any,
) -> Page:
    page = await new_page(browser, watch, "admin", **options)
    await page.goto(f"{server.url}/admin/")
    await page.fill("#email", email)
    await page.fill("#password", PASSWORD)
    await page.click("#signin-form button[type=submit]")
    return page


async def admin_page(
    browser: Browser,
    watch: PageWatch,
    server: ServerProcess,
    email: str,
    **options: Any,
) -> Page:
    """Sign in on the admin page and wait until its socket has a session."""
    page = await sign_in(browser, watch, server, email, **options)
    await expect(page.locator("#app")).to_be_visible()
    await expect(page.locator("#admin-name")).to_have_text(re.compile("^Signed in as "))
    return page


def team_row(page: Page, name: str) -> Any:
    return page.locator("#team-table tbody tr").filter(
        has=page.locator("td", has_text=re.compile("^" + re.escape(name)))
    )


def audit_cells(page: Page, index: int) -> Any:
    return page.locator("#audit-table tbody tr").nth(index).locator("td")


async def test_admin_adds_and_disables_agent(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    await server.create_agent("root@example.com", "Root", is_admin=True)
    page = await admin_page(browser, watch, server, "root@example.com", **PHONE_OPTIONS)
    await expect(team_row(page, "Root (you)")).to_be_visible()

    await page.fill("#add-form input[name=email]", "neo@example.com")
    await page.fill("#add-form input[name=name]", "Neo")
    await page.fill("#add-form input[name=password]", NEW_PASSWORD)
    await page.click("#add-form button[type=submit]")
    await expect(page.locator("#add-status")).to_have_text(
        "Added Neo (neo@example.com)."
    )
    await expect(team_row(page, "Neo")).to_contain_text("Active")
    assert await server.login("neo@example.com", NEW_PASSWORD)

    await page.get_by_role("button", name="Manage Neo").click()
    dialog = page.locator("#agent-dialog")
    await expect(dialog).to_be_visible()
    await dialog.get_by_role("button", name="Disable account").click()
    await expect(page.locator("#agent-dialog-status")).to_have_text("Account disabled.")
    await expect(dialog.get_by_role("button", name="Enable account")).to_be_visible()
    status, body = await api(
        server,
        "POST",
        "/api/auth/login",
        body={"email": "neo@example.com", "password": NEW_PASSWORD},
    )
    assert status == 401
    assert "disabled" in body["error"]["message"]

    await page.fill("#agent-max-chats", "5")
    await dialog.get_by_role("button", name="Save", exact=True).click()
    await expect(page.locator("#agent-dialog-status")).to_have_text(
        "Max chats set to 5."
    )
    await dialog.get_by_role("button", name="Close").click()
    await expect(dialog).to_be_hidden()
    await expect(page.get_by_role("button", name="Manage Neo")).to_be_focused()
    await expect(team_row(page, "Neo")).to_contain_text("Disabled")
    await expect(team_row(page, "Neo")).to_contain_text("0 / 5")

    # Newest first: both changes, the creation, and Root's own creation on
    # the command line.
    await expect(page.locator("#audit-table tbody tr")).to_have_count(4)
    await expect(audit_cells(page, 0)).to_have_text(
        [re.compile("."), "Root", "Changed agent", "Neo", "max chats: 5"]
    )
    await expect(audit_cells(page, 1)).to_have_text(
        [re.compile("."), "Root", "Changed agent", "Neo", "disabled: yes"]
    )
    await expect(audit_cells(page, 2)).to_have_text(
        [
            re.compile("."),
            "Root",
            "Added agent",
            "Neo",
            "email: neo@example.com, name: Neo, is admin: no",
        ]
    )
    await expect(audit_cells(page, 3).nth(1)).to_have_text("command line")

    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375


async def test_admin_cannot_disable_itself(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    await server.create_agent("root@example.com", "Root", is_admin=True)
    page = await admin_page(browser, watch, server, "root@example.com")

    await page.get_by_role("button", name="Manage Root").press("Enter")
    await expect(page.get_by_role("button", name="Disable account")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.locator("#agent-dialog-error")).to_contain_text(
        "admins cannot disable themselves"
    )
    await page.get_by_role("button", name="Remove admin role").click()
    await expect(page.locator("#agent-dialog-error")).to_contain_text(
        "drop their own admin role"
    )
    await page.keyboard.press("Escape")
    await expect(page.locator("#agent-dialog")).to_be_hidden()
    await expect(team_row(page, "Root (you)")).to_contain_text("Active")


async def test_admin_sets_departments_and_password(
    browser: Browser,
    watch: PageWatch,
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(CHAT_DEPARTMENTS="sales=Sales,billing=Billing")
    await server.create_agent("root@example.com", "Root", is_admin=True)
    await server.create_agent("ann@example.com", "Ann")
    page = await admin_page(browser, watch, server, "root@example.com")
    await expect(team_row(page, "Ann")).to_contain_text("All")

    await page.get_by_role("button", name="Manage Ann").click()
    await page.get_by_label("All departments").uncheck()
    await page.get_by_label("Billing").check()
    await page.get_by_role("button", name="Save departments").click()
    await expect(page.locator("#agent-dialog-status")).to_have_text("Serves Billing.")
    await expect(team_row(page, "Ann")).to_contain_text("Billing")

    await page.fill("#agent-password", "short")
    await page.get_by_role("button", name="Reset password").click()
    await expect(page.locator("#agent-dialog-error")).to_have_text(
        "The password must have at least 10 characters."
    )
    await page.fill("#agent-password", NEW_PASSWORD)
    await page.get_by_role("button", name="Reset password").click()
    await expect(page.locator("#agent-dialog-status")).to_contain_text(
        "Password reset."
    )
    assert await server.login("ann@example.com", NEW_PASSWORD)
    await expect(audit_cells(page, 0)).to_have_text(
        [re.compile("."), "Root", "Reset password", "Ann", ""]
    )
    await expect(audit_cells(page, 1).nth(4)).to_have_text("departments: Billing")


async def test_non_admin_sees_notice(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    await server.create_agent("ann@example.com", "Ann")
    page = await new_page(browser, watch, "admin")
    await page.goto(f"{server.url}/admin/")
    await page.fill("#email", "ann@example.com")
    await page.fill("#password", "not the password")
    await page.press("#password", "Enter")
    await expect(page.locator("#signin-error")).to_have_text(
        "Email or password is wrong."
    )
    await page.fill("#password", PASSWORD)
    await page.press("#password", "Enter")
    notice = page.locator("#not-admin-text")
    await expect(notice).to_have_text(
        re.compile("^The account Ann is not an admin, so it cannot manage the team")
    )
    await expect(page.locator("#app")).to_be_hidden()

    # The dashboard's stored token leads to the same notice after a reload.
    await page.reload()
    await expect(notice).to_have_text(re.compile("^This account is not an admin"))
    await page.get_by_role("button", name="Sign in with another account").click()
    await expect(page.locator("#signin-form")).to_be_visible()
    token = await page.evaluate("localStorage.getItem('sio-chat-agent:token')")
    assert token is None


async def test_supervision_shows_queue_and_watch(
    browser: Browser,
    watch: PageWatch,
    clients_on: Callable[..., Clients],
) -> None:
    clients = clients_on(CHAT_DEPARTMENTS="sales=Sales")
    server = clients.server
    agent, visitor, chat_id = await matched_pair(clients, first_message="Hello")
    # Alice takes one chat at a time, so this visitor stays in the queue.
    waiting = await clients.visitor(name="Quinn")
    joined = await waiting.call("join_queue", {"department": "sales"})
    assert joined["ok"], joined
    await server.create_agent("root@example.com", "Root", is_admin=True)
    page = await admin_page(browser, watch, server, "root@example.com")

    queue_row = page.locator("#queue-table tbody tr")
    await expect(queue_row).to_have_count(1)
    await expect(queue_row.locator("td")).to_have_text(
        ["1", "Sales", re.compile(r"^\d+ s$")]
    )
    chat_row = page.locator("#chats-table tbody tr")
    await expect(chat_row).to_have_count(1)
    await expect(chat_row.locator("td").nth(0)).to_have_text("Vera")
    await expect(chat_row.locator("td").nth(1)).to_have_text("Alice")
    await expect(chat_row.locator("td").nth(2)).to_have_text("General")
    load_row = page.locator("#load-table tbody tr").filter(has_text="Alice")
    await expect(load_row.locator("td")).to_have_text(
        ["Alice", "ready", "Yes", "1 / 1"]
    )

    await page.get_by_role("button", name="Watch the chat with Vera").click()
    log = page.locator("#watch-log")
    await expect(page.locator("#watch-title")).to_have_text("Watching Vera with Alice")
    await expect(log.locator(".msg .text")).to_have_text(["Hello"])
    assert await page.locator("#watch textarea, #watch input").count() == 0

    sent = await visitor.call(
        "message",
        {"chat_id": chat_id, "text": "Where is my parcel?", "client_id": "v-2"},
    )
    assert sent["ok"], sent
    await expect(log.locator(".msg .text")).to_have_text(
        ["Hello", "Where is my parcel?"]
    )
    replied = await agent.call(
        "message", {"chat_id": chat_id, "text": "Let me check.", "client_id": "a-1"}
    )
    assert replied["ok"], replied
    await expect(log.locator(".msg.agent .text")).to_have_text(["Let me check."])

    # The page polls every 3 seconds; a redraw keeps the watch view open.
    await page.wait_for_timeout(3500)
    await expect(log.locator(".msg .text")).to_have_count(3)

    await page.get_by_role("button", name="Stop watching").click()
    await expect(page.locator("#watch")).to_be_hidden()
    await expect(
        page.get_by_role("button", name="Watch the chat with Vera")
    ).to_be_focused()

    ended = await agent.call("end_chat", {"chat_id": chat_id})
    assert ended["ok"], ended
    # Alice is free again, so the matchmaker gives her the waiting chat.
    await expect(chat_row.locator("td").nth(0)).to_have_text("Quinn", timeout=8000)
    await expect(page.locator("#queue-empty")).to_be_visible()


async def test_watch_shows_notes_and_end(
    browser: Browser, watch: PageWatch, clients: Clients
) -> None:
    server = clients.server
    agent, _visitor, chat_id = await matched_pair(clients, first_message=HOSTILE_TEXT)
    noted = await agent.call(
        "note", {"chat_id": chat_id, "text": "Refund approved", "client_id": "n-1"}
    )
    assert noted["ok"], noted
    await server.create_agent("root@example.com", "Root", is_admin=True)
    page = await admin_page(browser, watch, server, "root@example.com")

    await page.get_by_role("button", name="Watch the chat with Vera").click()
    log = page.locator("#watch-log")
    await expect(log.locator(".msg.visitor .text")).to_have_text([HOSTILE_TEXT])
    assert await page.locator("img").count() == 0
    note = log.locator(".msg.note")
    await expect(note.locator(".text")).to_have_text("Refund approved")
    await expect(note.locator(".meta")).to_have_text(
        re.compile("^Internal note by Alice · ")
    )

    ended = await agent.call("end_chat", {"chat_id": chat_id})
    assert ended["ok"], ended
    await expect(log.locator(".msg.system")).to_have_text("The agent ended the chat.")
    await expect(page.locator("#watch-state")).to_have_text(
        "Read-only · General · ended"
    )
    await expect(page.locator("#chats-empty")).to_be_visible()
    await page.get_by_role("button", name="Stop watching").click()
    await expect(page.locator("#watch")).to_be_hidden()
    await expect(page.locator("#chats-title")).to_be_focused()


async def test_watch_resumes_after_reconnect(
    browser: Browser, watch: PageWatch, clients: Clients
) -> None:
    server = clients.server
    _agent, visitor, chat_id = await matched_pair(clients, first_message="Hello")
    await server.create_agent("root@example.com", "Root", is_admin=True)
    page = await admin_page(browser, watch, server, "root@example.com")
    await page.get_by_role("button", name="Watch the chat with Vera").click()
    log = page.locator("#watch-log")
    await expect(log.locator(".msg .text")).to_have_text(["Hello"])

    await page.context.set_offline(True)
    await expect(page.locator("#banner")).to_be_visible(timeout=30000)
    sent = await visitor.call(
        "message", {"chat_id": chat_id, "text": "While away", "client_id": "v-2"}
    )
    assert sent["ok"], sent
    await page.context.set_offline(False)
    await expect(page.locator("#banner")).to_be_hidden(timeout=30000)
    # The new socket sends watch_chat again, whose reply has the missed message.
    await expect(log.locator(".msg .text")).to_have_text(["Hello", "While away"])
    sent = await visitor.call(
        "message", {"chat_id": chat_id, "text": "Back again", "client_id": "v-3"}
    )
    assert sent["ok"], sent
    await expect(log.locator(".msg .text")).to_have_text(
        ["Hello", "While away", "Back again"]
    )


async def test_signed_out_returns_to_signin(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    await server.create_agent("root@example.com", "Root", is_admin=True)
    boss_id = await server.create_agent("boss@example.com", "Boss", is_admin=True)
    page = await admin_page(browser, watch, server, "boss@example.com")

    token = await server.login("root@example.com")
    status, body = await api(
        server, "PATCH", f"/api/admin/agents/{boss_id}", token, {"disabled": True}
    )
    assert status == 200, body
    await expect(page.locator("#signin-form")).to_be_visible()
    await expect(page.locator("#signin-error")).to_have_text(
        "An admin disabled this account."
    )
    await expect(page.locator("#app")).to_be_hidden()


async def test_dashboard_sign_out_reaches_admin_page(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    await server.create_agent("root@example.com", "Root", is_admin=True)
    page = await admin_page(browser, watch, server, "root@example.com")
    # A tab of the same browser shares localStorage, so it is signed in too.
    dashboard = watch.attach(await page.context.new_page(), "agent")
    await dashboard.goto(f"{server.url}/agent/")
    await expect(dashboard.locator("#app")).to_be_visible()
    await dashboard.get_by_role("link", name="Team administration").click()
    await expect(dashboard.locator("#admin-name")).to_have_text("Signed in as Root")
    await dashboard.goto(f"{server.url}/agent/")

    await dashboard.click("#signout")
    await expect(dashboard.locator("#signin")).to_be_visible()
    await expect(page.locator("#signin-error")).to_have_text(
        "This browser signed out in another tab. Sign in again."
    )
    await expect(page.locator("#app")).to_be_hidden()


async def test_audit_pages_older_entries(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    await server.create_agent("root@example.com", "Root", is_admin=True)
    ann_id = await server.create_agent("ann@example.com", "Ann")
    token = await server.login("root@example.com")
    for max_chats in range(1, 51):
        status, body = await api(
            server,
            "PATCH",
            f"/api/admin/agents/{ann_id}",
            token,
            {"max_chats": max_chats},
        )
        assert status == 200, body
    page = await admin_page(browser, watch, server, "root@example.com")

    rows = page.locator("#audit-table tbody tr")
    await expect(rows).to_have_count(50)
    await expect(rows.nth(0).locator("td").nth(4)).to_have_text("max chats: 50")
    older = page.get_by_role("button", name="Older entries")
    await older.click()
    await expect(rows).to_have_count(52)
    await expect(rows.nth(50).locator("td").nth(1)).to_have_text("command line")
    await expect(rows.nth(51).locator("td").nth(2)).to_have_text("Added agent")
    await expect(older).to_be_hidden()
