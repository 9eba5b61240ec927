"""The widget and the agent dashboard in headless Chromium, against a real server."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from playwright.async_api import Browser, expect

from tests.browser import Dashboard, PageWatch, Widget, launch_chromium, new_page
from tests.support import PASSWORD, ServerProcess, free_port

HOSTILE_NAME = "<img src=x onerror=alert(1)>"
HOSTILE_TEXTS = [
    "<script>alert(2)</script>",
    '<a href="javascript:alert(3)">click me</a>',
    "<img src=x onerror=alert(4)>",
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with launch_chromium() as chromium:
        yield chromium


@pytest.fixture
def watch() -> PageWatch:
    """Collect script errors and dialogs; any of them fails the test."""
    pages = PageWatch()
    yield pages  # type: ignore[misc]
    assert pages.dialogs == []
    assert pages.errors == []


async def agent_page(
    browser: Browser, watch: PageWatch, server: ServerProcess, max_chats: int = 1
) -> Dashboard:
    await server.create_agent("ann@example.com", "Ann")
    dashboard = Dashboard(await new_page(browser, watch, "agent"))
    await dashboard.sign_in(server, "ann@example.com")
    await dashboard.go_ready(max_chats)
    return dashboard


async def visitor_page(
    browser: Browser, watch: PageWatch, server: ServerProcess, label: str = "visitor"
) -> Widget:
    widget = Widget(await new_page(browser, watch, label))
    await widget.page.goto(server.url + "/")
    await widget.open()
    return widget


async def identify(widget: Widget, name: str) -> None:
    await widget.page.evaluate("name => window.SioChat.identify({ name })", name)


async def test_visitor_and_agent_chat(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    dashboard = await agent_page(browser, watch, server)
    widget = await visitor_page(browser, watch, server)
    await identify(widget, "Vera")
    await expect(widget.agents).to_have_text("1 agent online")

    await widget.send("My tent has a hole")
    await expect(dashboard.message("Vera", "My tent has a hole")).to_be_visible()
    await expect(widget.status).to_have_text("You are chatting with Ann.")
    await expect(widget.message("My tent has a hole").locator(".meta")).to_have_text(
        "Read"
    )

    await dashboard.pane("Vera").locator("textarea").fill("Which model")
    await expect(widget.typing).to_have_text("Ann is typing…")
    await dashboard.reply("Vera", "Which model is it?")
    await expect(widget.message("Which model is it?")).to_be_visible()
    await expect(widget.typing).to_have_text("")

    await widget.send("The Trail tent")
    await expect(dashboard.message("Vera", "The Trail tent")).to_be_visible()
    reply_meta = dashboard.pane("Vera").locator(".msg.agent .meta")
    await expect(reply_meta).to_have_text("Read")

    await dashboard.pane("Vera").locator("button.end").click()
    await expect(widget.again).to_be_visible()
    assert watch.confirms == ["agent: End the chat with Vera?"]
    await expect(dashboard.pane("Vera").locator(".state")).to_have_text(
        "You ended the chat."
    )

    await widget.again.click()
    await widget.send("One more question")
    await expect(dashboard.page.locator(".pane")).to_have_count(2)
    assert await widget.texts() == ["One more question"]


async def test_visitor_reload_keeps_transcript(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    dashboard = await agent_page(browser, watch, server)
    widget = await visitor_page(browser, watch, server)
    await identify(widget, "Vera")
    await widget.send("first")
    await expect(dashboard.message("Vera", "first")).to_be_visible()
    await dashboard.reply("Vera", "second")
    await expect(widget.message("second")).to_be_visible()
    await widget.send("third")
    await expect(dashboard.message("Vera", "third")).to_be_visible()

    await widget.page.reload()
    await widget.open()
    await expect(widget.stored).to_have_count(3)
    assert await widget.texts() == ["first", "second", "third"]

    await dashboard.reply("Vera", "fourth")
    await expect(widget.stored).to_have_count(4)
    assert await widget.texts() == ["first", "second", "third", "fourth"]


async def test_reload_keeps_read_marks(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    dashboard = await agent_page(browser, watch, server)
    widget = await visitor_page(browser, watch, server)
    await identify(widget, "Vera")
    await widget.send("first")
    await expect(dashboard.message("Vera", "first")).to_be_visible()
    await dashboard.pane("Vera").locator("textarea").click()
    await dashboard.reply("Vera", "second")
    await expect(widget.message("second")).to_be_visible()
    # Each side has read the other's message.
    await expect(widget.message("first").locator(".meta")).to_contain_text("Read")
    agent_reply = dashboard.pane("Vera").locator(".msg.agent .meta")
    await expect(agent_reply).to_contain_text("Read")

    await widget.page.reload()
    await dashboard.page.reload()
    await expect(dashboard.pane("Vera")).to_be_visible()
    await expect(
        dashboard.chat_list.filter(has_text="Vera").locator(".unread")
    ).to_have_count(0)
    await expect(agent_reply).to_contain_text("Read")
    await expect(widget.page.locator("[data-sio-chat] .badge")).to_be_hidden()
    await widget.open()
    await expect(widget.message("first").locator(".meta")).to_contain_text("Read")


async def test_offline_messages_arrive_once(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    dashboard = await agent_page(browser, watch, server)
    widget = await visitor_page(browser, watch, server)
    await identify(widget, "Vera")
    await widget.send("before the drop")
    await expect(dashboard.message("Vera", "before the drop")).to_be_visible()

    await widget.page.context.set_offline(True)
    await expect(widget.banner).to_be_visible()
    await widget.send("sent while offline 1")
    await widget.send("sent while offline 2")
    await expect(widget.message("sent while offline 2").locator(".meta")).to_have_text(
        "Sending…"
    )
    await dashboard.reply("Vera", "agent wrote during the drop")

    await widget.page.context.set_offline(False)
    await expect(widget.banner).to_be_hidden(timeout=15000)
    await expect(dashboard.message("Vera", "sent while offline 2")).to_be_visible()
    await expect(widget.stored).to_have_count(4)
    assert await widget.texts() == [
        "before the drop",
        "agent wrote during the drop",
        "sent while offline 1",
        "sent while offline 2",
    ]
    transcript = dashboard.pane("Vera").locator(".msg .text")
    await expect(transcript).to_have_count(4)
    for text in ("sent while offline 1", "sent while offline 2"):
        await expect(dashboard.message("Vera", text)).to_have_count(1)


async def test_agent_holds_two_chats(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    dashboard = await agent_page(browser, watch, server, max_chats=2)
    vera = await visitor_page(browser, watch, server, "vera")
    await identify(vera, "Vera")
    omar = await visitor_page(browser, watch, server, "omar")
    await identify(omar, "Omar")

    await vera.send("Vera here")
    await omar.send("Omar here")
    await expect(dashboard.page.locator(".pane")).to_have_count(2)
    await expect(dashboard.message("Vera", "Vera here")).to_be_visible()
    await expect(dashboard.message("Omar", "Omar here")).to_be_visible()

    await dashboard.reply("Omar", "Hello Omar")
    await dashboard.reply("Vera", "Hello Vera")
    await expect(omar.message("Hello Omar")).to_be_visible()
    await expect(vera.message("Hello Vera")).to_be_visible()
    assert await omar.texts() == ["Omar here", "Hello Omar"]
    assert await vera.texts() == ["Vera here", "Hello Vera"]


async def test_unread_counts_and_title(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    dashboard = await agent_page(browser, watch, server, max_chats=2)
    vera = await visitor_page(browser, watch, server, "vera")
    await identify(vera, "Vera")
    await vera.send("Vera here")
    await expect(dashboard.pane("Vera")).to_be_visible()
    omar = await visitor_page(browser, watch, server, "omar")
    await identify(omar, "Omar")
    await omar.send("Omar here")
    await expect(dashboard.pane("Omar")).to_be_visible()

    await dashboard.pane("Vera").locator("textarea").click()
    await omar.send("Are you there?")
    omar_entry = dashboard.chat_list.filter(has_text="Omar")
    await expect(omar_entry.locator(".unread")).to_have_text("2")
    await expect(dashboard.page).to_have_title(re.compile(r"^\(\d+\) Agent dashboard$"))

    await omar_entry.locator("button").click()
    await expect(omar_entry.locator(".unread")).to_have_count(0)


async def test_dashboard_reconnects_after_drop(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    dashboard = await agent_page(browser, watch, server)
    widget = await visitor_page(browser, watch, server)
    await identify(widget, "Vera")
    await widget.send("hello")
    await expect(dashboard.message("Vera", "hello")).to_be_visible()

    await dashboard.page.context.set_offline(True)
    await expect(dashboard.banner).to_be_visible()
    await widget.send("while the agent was away")
    await dashboard.page.context.set_offline(False)
    await expect(dashboard.banner).to_be_hidden(timeout=15000)
    await expect(dashboard.message("Vera", "while the agent was away")).to_have_count(1)
    await dashboard.reply("Vera", "back again")
    await expect(widget.message("back again")).to_be_visible()


async def test_hostile_text_runs_no_script(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    dashboard = await agent_page(browser, watch, server)
    widget = await visitor_page(browser, watch, server)
    await identify(widget, HOSTILE_NAME)
    for text in HOSTILE_TEXTS:
        await widget.send(text)
    for text in HOSTILE_TEXTS:
        await expect(dashboard.message(HOSTILE_NAME, text)).to_be_visible()
    await expect(dashboard.pane(HOSTILE_NAME).locator("h3.visitor")).to_have_text(
        HOSTILE_NAME
    )
    for text in HOSTILE_TEXTS:
        await dashboard.reply(HOSTILE_NAME, text)
    await expect(widget.stored).to_have_count(6)
    assert await widget.texts() == HOSTILE_TEXTS * 2

    for page in (widget.page, dashboard.page):
        assert await page.locator("img").count() == 0
        assert await page.locator("a[href^='javascript']").count() == 0
    # The watch fixture fails the test if any dialog opened.


async def test_widget_keyboard_only(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    dashboard = await agent_page(browser, watch, server)
    page = await new_page(browser, watch, "visitor")
    widget = Widget(page)
    await page.goto(server.url + "/")
    await expect(widget.launcher).to_be_attached()
    await widget.launcher.focus()
    await page.keyboard.press("Enter")
    await expect(widget.panel).to_be_visible()
    await expect(widget.text).to_be_focused()
    await page.keyboard.type("typed with the keyboard")
    await page.keyboard.press("Enter")
    await expect(dashboard.page.locator(".pane .msg.visitor .text")).to_have_text(
        "typed with the keyboard"
    )
    await page.keyboard.press("Escape")
    await expect(widget.panel).to_be_hidden()
    await expect(widget.launcher).to_be_focused()
    await expect(widget.launcher).to_have_attribute("aria-label", "Open chat")


async def test_widget_fills_phone_screen(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    page = await new_page(
        browser, watch, "phone", viewport={"width": 375, "height": 667}, is_mobile=True
    )
    widget = Widget(page)
    await page.goto(server.url + "/")
    await widget.open()
    box = await widget.panel.bounding_box()
    assert box is not None
    assert box["width"] == 375
    assert box["height"] == 667
    await expect(page.locator("[data-sio-chat] label[for=sio-chat-text]")).to_have_text(
        "Message"
    )


async def test_queue_position_shown(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    await server.create_agent("ann@example.com", "Ann")
    dashboard = Dashboard(await new_page(browser, watch, "agent"))
    await dashboard.sign_in(server, "ann@example.com")
    widget = await visitor_page(browser, watch, server)
    await expect(widget.agents).to_have_text("No agents are online right now.")
    await widget.send("anyone?")
    await expect(widget.status).to_have_text(
        "You are number 1 in the queue. You stay in the queue until an agent"
        " comes online."
    )
    await expect(dashboard.queue).to_have_text(
        re.compile(r"^1 waiting · longest \d+ s$")
    )

    await dashboard.go_ready()
    await expect(widget.status).to_have_text("You are chatting with Ann.")
    await expect(dashboard.queue).to_have_text("Queue empty")


async def test_sign_in_wrong_password(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    await server.create_agent("ann@example.com", "Ann")
    page = await new_page(browser, watch, "agent")
    await page.goto(f"{server.url}/agent/")
    await page.fill("#email", "ann@example.com")
    await page.fill("#password", "not the password")
    await page.click("#signin-form button[type=submit]")
    await expect(page.locator("#signin-error")).to_have_text(
        "Email or password is wrong."
    )
    await expect(page.locator("#app")).to_be_hidden()


async def test_admin_link_only_for_admins(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    await server.create_agent("ann@example.com", "Ann")
    await server.create_agent("root@example.com", "Root", is_admin=True)
    ann = Dashboard(await new_page(browser, watch, "ann"))
    await ann.sign_in(server, "ann@example.com")
    root = Dashboard(await new_page(browser, watch, "root"))
    await root.sign_in(server, "root@example.com")
    await expect(ann.page.locator("#admin-link")).to_be_hidden()
    await expect(root.page.locator("#admin-link")).to_be_visible()

    # After a reload the page reads the role from the session event alone.
    for dashboard in (ann, root):
        await dashboard.page.reload()
        await expect(dashboard.page.locator("#agent-name")).not_to_be_empty()
    await expect(ann.page.locator("#admin-link")).to_be_hidden()
    await expect(root.page.locator("#admin-link")).to_be_visible()


@pytest.fixture
async def other_origin() -> AsyncIterator[Callable[[str], str]]:
    """Serve a host page on another port; return a function that builds its URL."""
    pages: dict[str, str] = {}

    async def host_page(request: web.Request) -> web.Response:
        html = pages.get(request.match_info["name"])
        if html is None:
            raise web.HTTPNotFound()
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/{name}", host_page)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()

    def publish(html: str) -> str:
        name = f"page{len(pages)}.html"
        pages[name] = html
        return f"http://127.0.0.1:{port}/{name}"

    publish.origin = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    yield publish
    await runner.cleanup()


def host_html(server: ServerProcess) -> str:
    return f"""<!doctype html><html><head><title>Another shop</title></head>
<body><h1>Another shop</h1>
<script>
  window.SioChat = window.SioChat || function () {{
    (window.SioChat.q = window.SioChat.q || []).push(arguments);
  }};
  SioChat("identify", {{ name: "Remote Rita" }});
</script>
<script async src="{server.url}/widget.js" data-title="Help desk"
        data-color="#7c3aed"></script>
</body></html>"""


async def test_widget_on_other_origin(
    browser: Browser,
    watch: PageWatch,
    server_factory: Callable[..., ServerProcess],
    other_origin: Callable[[str], str],
) -> None:
    server = server_factory(CHAT_CORS_ORIGINS=other_origin.origin)  # type: ignore[attr-defined]
    dashboard = await agent_page(browser, watch, server)
    page = await new_page(browser, watch, "visitor")
    await page.goto(other_origin(host_html(server)))
    widget = Widget(page)
    await widget.open()
    await expect(page.locator("[data-sio-chat] .title")).to_have_text("Help desk")
    await widget.send("Hello from another site")
    await expect(
        dashboard.message("Remote Rita", "Hello from another site")
    ).to_be_visible()
    await dashboard.reply("Remote Rita", "Hello back")
    await expect(widget.message("Hello back")).to_be_visible()


async def test_widget_origin_not_allowed(
    browser: Browser,
    watch: PageWatch,
    server: ServerProcess,
    other_origin: Callable[[str], str],
) -> None:
    page = await new_page(browser, watch, "visitor")
    await page.goto(other_origin(host_html(server)))
    widget = Widget(page)
    await widget.open()
    await page.wait_for_timeout(1500)
    await expect(widget.status).to_have_text("Connecting…")
    log = server.log()
    assert "is not an accepted origin" in log
    assert "connect sid=" not in log


async def test_visitor_ends_chat(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    dashboard = await agent_page(browser, watch, server)
    widget = await visitor_page(browser, watch, server)
    await identify(widget, "Vera")
    await widget.send("never mind")
    await expect(dashboard.message("Vera", "never mind")).to_be_visible()
    await widget.page.locator("[data-sio-chat] button.end").click()
    await expect(widget.again).to_be_visible()
    await expect(dashboard.pane("Vera").locator(".state")).to_have_text(
        "The visitor ended the chat."
    )


async def test_reset_ends_open_chat(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    dashboard = await agent_page(browser, watch, server)
    widget = await visitor_page(browser, watch, server)
    await identify(widget, "Vera")
    await widget.send("logging out soon")
    await expect(dashboard.message("Vera", "logging out soon")).to_be_visible()
    await widget.page.evaluate("() => window.SioChat.reset()")
    await expect(dashboard.pane("Vera").locator(".state")).to_have_text(
        "The visitor ended the chat."
    )
    await expect(widget.stored).to_have_count(0)


async def test_second_tab_sees_queued_chat(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    first = await visitor_page(browser, watch, server, "tab1")
    second = Widget(await first.page.context.new_page())
    watch.attach(second.page, "tab2")
    await second.page.goto(server.url + "/")
    await second.open()
    await first.send("asked in tab 1")
    await expect(second.message("asked in tab 1")).to_be_visible()
    await expect(second.status).to_contain_text("You are number 1 in the queue.")


async def test_dashboard_keyboard_only(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    await server.create_agent("ann@example.com", "Ann")
    page = await new_page(browser, watch, "agent")
    await page.goto(f"{server.url}/agent/")
    await page.locator("#email").focus()
    await page.keyboard.type("ann@example.com")
    await page.keyboard.press("Tab")
    await page.keyboard.type(PASSWORD)
    await page.keyboard.press("Enter")
    dashboard = Dashboard(page)
    await expect(page.locator("#app")).to_be_visible()

    await dashboard.status.focus()
    await page.keyboard.press("Enter")
    await expect(dashboard.status).to_have_attribute("aria-pressed", "true")

    widget = await visitor_page(browser, watch, server)
    await identify(widget, "Vera")
    await widget.send("hello by keyboard")
    await expect(dashboard.message("Vera", "hello by keyboard")).to_be_visible()
    await dashboard.chat_list.filter(has_text="Vera").locator("button").focus()
    await page.keyboard.press("Enter")
    await expect(dashboard.pane("Vera").locator("textarea")).to_be_focused()
    await page.keyboard.type("answered by keyboard")
    await page.keyboard.press("Enter")
    await expect(widget.message("answered by keyboard")).to_be_visible()
