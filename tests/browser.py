"""Helpers for the browser tests: Debian's Chromium driven by Playwright."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from playwright.async_api import (
    Browser,
    Dialog,
    Locator,
    Page,
    async_playwright,
    expect,
)

from tests.support import PASSWORD, ServerProcess

CHROMIUM = Path("/usr/bin/chromium")
# Flags for a root user on a machine with no outside network: no sandbox, and
# none of the background requests Chromium makes at start.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@asynccontextmanager
async def launch_chromium() -> AsyncIterator[Browser]:
    if not await asyncio.to_thread(CHROMIUM.exists):
        raise RuntimeError(
            f"{CHROMIUM} is missing: `make test` installs it with apt-get"
        )
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


# Confirmations the pages ask for themselves; tests accept them. Any other
# dialog (an alert from injected script, say) is recorded and fails the test.
OWN_CONFIRMS = ("End the chat with ", "chats are still open")


class PageWatch:
    """Record script errors and dialogs of every page, so tests can assert none."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.confirms: list[str] = []

    def attach(self, page: Page, label: str) -> Page:
        page.on("pageerror", lambda error: self.errors.append(f"{label}: {error}"))
        page.on("dialog", self._on_dialog(label))
        return page

    def _on_dialog(self, label: str) -> Callable[[Dialog], Awaitable[None]]:
        async def handle(dialog: Dialog) -> None:
            own = dialog.type == "confirm" and any(
                text in dialog.message for text in OWN_CONFIRMS
            )
            if own:
                self.confirms.append(f"{label}: {dialog.message}")
                await dialog.accept()
                return
            self.dialogs.append(f"{label}: {dialog.type} {dialog.message}")
            await dialog.dismiss()

        return handle


class Widget:
    """The visitor widget on a page; its elements sit in an open shadow root."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.launcher = page.locator("[data-sio-chat] button.launcher")
        self.panel = page.locator("[data-sio-chat] .panel")
        self.text = page.locator("[data-sio-chat] #sio-chat-text")
        self.status = page.locator("[data-sio-chat] .status")
        self.agents = page.locator("[data-sio-chat] .agents")
        self.banner = page.locator("[data-sio-chat] .banner")
        self.typing = page.locator("[data-sio-chat] .typing")
        self.stored = page.locator("[data-sio-chat] .msg[data-seq]:not([data-seq=''])")
        self.again = page.locator("[data-sio-chat] button.again")
        self.log = page.locator("[data-sio-chat] .log")
        self.department = page.locator("[data-sio-chat] #sio-chat-department")
        self.offer = page.locator("[data-sio-chat] .offer")
        self.leave = page.locator("[data-sio-chat] form.leave")
        self.ended = page.locator("[data-sio-chat] .ended")
        self.ended_text = page.locator("[data-sio-chat] .ended-text")
        self.rating = page.locator("[data-sio-chat] form.rating")
        self.rating_result = page.locator("[data-sio-chat] .rating-result")

    async def open(self) -> None:
        await self.launcher.click()
        await expect(self.panel).to_be_visible()

    async def send(self, text: str) -> None:
        await self.text.fill(text)
        await self.text.press("Enter")

    def message(self, text: str) -> Locator:
        return self.page.locator("[data-sio-chat] .msg").filter(
            has=self.page.locator(
                ".text", has_text=re.compile("^" + re.escape(text) + "$")
            )
        )

    async def texts(self) -> list[str]:
        return await self.stored.locator(".text").all_text_contents()

    def system(self, text: str) -> Locator:
        """A system line in the log, such as a transfer notice."""
        return self.page.locator("[data-sio-chat] .msg.system", has_text=text)

    def star(self, score: int) -> Locator:
        return self.rating.locator(f"button.star[data-score='{score}']")

    async def leave_message(self, email: str, text: str, name: str = "") -> None:
        """Fill and send the "Leave a message" form, which must be open."""
        await self.leave.get_by_label("Email").fill(email)
        await self.leave.get_by_label("Name").fill(name)
        await self.leave.get_by_label("Message", exact=True).fill(text)
        await self.leave.locator("button.leave-send").click()


class Dashboard:
    """The agent dashboard on a page."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.status = page.locator("#status-toggle")
        self.queue = page.locator("#queue-info")
        self.banner = page.locator("#banner")
        self.chat_list = page.locator("#chat-list li")
        self.notice = page.locator("#notice")
        self.missed = page.locator("#missed-list .missed-item")
        self.history = page.locator("#history-list .history-item")
        self.canned = page.locator("#canned-list li")

    async def sign_in(self, server: ServerProcess, email: str) -> None:
        await self.page.goto(f"{server.url}/agent/")
        await self.page.fill("#email", email)
        await self.page.fill("#password", PASSWORD)
        await self.page.click("#signin-form button[type=submit]")
        await expect(self.page.locator("#app")).to_be_visible()
        # The name comes with the session event, which also sets the capacity
        # field, so a test that edits the field must wait for it first.
        await expect(self.page.locator("#agent-name")).not_to_be_empty()
        await expect(self.queue).not_to_be_empty()

    async def go_ready(self, max_chats: int = 1) -> None:
        await self.page.fill("#max-chats", str(max_chats))
        await self.status.click()
        await expect(self.status).to_have_attribute("aria-pressed", "true")

    def pane(self, visitor_name: str) -> Locator:
        return self.page.locator(".pane").filter(
            has=self.page.locator("h3.visitor", has_text=visitor_name)
        )

    async def reply(self, visitor_name: str, text: str) -> None:
        pane = self.pane(visitor_name)
        await pane.locator("textarea").fill(text)
        await pane.locator("textarea").press("Enter")

    def message(self, visitor_name: str, text: str) -> Locator:
        return self.pane(visitor_name).locator(
            ".msg .text", has_text=re.compile("^" + re.escape(text) + "$")
        )

    async def check_departments(self, *labels: str) -> None:
        for label in labels:
            await self.page.locator("#departments").get_by_label(label).check()

    async def write_note(self, visitor_name: str, text: str) -> None:
        pane = self.pane(visitor_name)
        await pane.locator("input.note-toggle").check()
        await pane.locator("textarea").fill(text)
        await pane.locator("textarea").press("Enter")
        await pane.locator("input.note-toggle").uncheck()

    def note(self, visitor_name: str, text: str) -> Locator:
        return (
            self.pane(visitor_name)
            .locator(".msg.note")
            .filter(has=self.page.locator(".text", has_text=text))
        )

    async def transfer(self, visitor_name: str, target_value: str) -> None:
        """Transfer a chat to the picker's `target_value`.

        That is `agent:ID`, `department:ID`, or `department:` for the general queue.
        """
        pane = self.pane(visitor_name)
        await pane.locator("button.transfer").click()
        target = pane.locator("select.transfer-target")
        await expect(target.locator(f"option[value='{target_value}']")).to_be_attached()
        await target.select_option(target_value)
        await pane.locator("button.transfer-send").click()

    async def show(self, view: str) -> None:
        """Switch the main area to `chats`, `missed`, `history` or `canned`."""
        await self.page.click(f"#view-{view}")
        await expect(self.page.locator(f"#view-{view}")).to_have_attribute(
            "aria-pressed", "true"
        )

    async def add_canned(self, shortcut: str, text: str) -> None:
        await self.show("canned")
        await self.page.fill("#canned-shortcut", shortcut)
        await self.page.fill("#canned-text", text)
        await self.page.click("#canned-form button[type=submit]")


async def new_page(
    browser: Browser, watch: PageWatch, label: str, **options: Any
) -> Page:
    """Open a page in a fresh context, so each person has their own storage."""
    context = await browser.new_context(**options)
    return watch.attach(await context.new_page(), label)
