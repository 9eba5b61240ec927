"""Take the README's screenshots: `python -m tests.screenshots docs/images`."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from playwright.async_api import expect

from tests.browser import Dashboard, PageWatch, Widget, launch_chromium, new_page
from tests.support import ServerProcess


async def take(folder: Path) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        server = ServerProcess(Path(data_dir), {})
        try:
            server.start()
            await server.create_agent("ann@example.com", "Ann")
            async with launch_chromium() as browser:
                watch = PageWatch()
                dashboard = Dashboard(
                    await new_page(
                        browser, watch, "agent", viewport={"width": 1200, "height": 720}
                    )
                )
                await dashboard.sign_in(server, "ann@example.com")
                await dashboard.go_ready(max_chats=2)

                chats = [
                    ("Maya", ["Hi! My order #4411 has not arrived yet."]),
                    ("Omar", ["Do you ship tents to Norway?"]),
                ]
                widgets = []
                for name, texts in chats:
                    page = await new_page(
                        browser, watch, name, viewport={"width": 1000, "height": 700}
                    )
                    widget = Widget(page)
                    await page.goto(server.url + "/")
                    await widget.open()
                    await page.evaluate(
                        "n => window.SioChat.identify({ name: n })", name
                    )
                    for text in texts:
                        await widget.send(text)
                    await expect(dashboard.pane(name)).to_be_visible()
                    widgets.append(widget)

                await dashboard.reply("Maya", "Hello Maya, I'm Ann. Let me look it up.")
                await dashboard.reply("Maya", "It left our warehouse this morning.")
                await widgets[0].send("Great, thank you!")
                await dashboard.pane("Omar").locator("textarea").fill("We do, in")
                await expect(widgets[0].message("Great, thank you!")).to_be_visible()
                await asyncio.sleep(0.5)
                await dashboard.page.screenshot(path=folder / "dashboard.png")
                await widgets[0].page.screenshot(path=folder / "widget.png")

                phone = await new_page(
                    browser,
                    watch,
                    "phone",
                    viewport={"width": 390, "height": 700},
                    is_mobile=True,
                )
                await phone.goto(server.url + "/")
                await Widget(phone).open()
                await phone.wait_for_timeout(500)
                await phone.screenshot(path=folder / "widget-phone.png")
        finally:
            server.stop()
            server.drop_database()


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images")
    target.mkdir(parents=True, exist_ok=True)
    asyncio.run(take(target))
