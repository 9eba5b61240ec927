"""Routing features in the widget and the dashboard, in headless Chromium.

Transfers, departments, internal notes, canned responses, ratings and messages
left while no agent is online, each against a real server subprocess. Also how
both pages handle the server's timeouts, rate limits and admin changes.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, expect

from tests.browser import Dashboard, PageWatch, Widget, launch_chromium, new_page
from tests.support import Clients, ServerProcess, free_port

DEPARTMENTS = "sales=Sales,billing=Billing and invoices"
HOSTILE = "<img src=x onerror=alert(1)>"
# Check the timeouts every 0.2 s, so a 1 s timeout fires within a test's wait.
FAST_TIMERS = {"CHAT_TIMER_INTERVAL_S": "0.2"}


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


async def signed_in(
    browser: Browser,
    watch: PageWatch,
    server: ServerProcess,
    name: str,
) -> tuple[Dashboard, str]:
    """Create an agent, sign it in on its own page, and return the page and the id."""
    email = f"{name.lower()}@example.com"
    agent_id = await server.create_agent(email, name)
    dashboard = Dashboard(await new_page(browser, watch, name))
    await dashboard.sign_in(server, email)
    return dashboard, agent_id


async def visitor(
    browser: Browser, watch: PageWatch, server: ServerProcess, name: str
) -> Widget:
    widget = Widget(await new_page(browser, watch, name))
    await widget.page.goto(server.url + "/")
    await widget.open()
    await widget.page.evaluate("name => window.SioChat.identify({ name })", name)
    return widget


async def chatting(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> tuple[Dashboard, Widget]:
    """Return Ann's dashboard and Vera's widget in an active chat."""
    ann, _ = await signed_in(browser, watch, server, "Ann")
    await ann.go_ready()
    vera = await visitor(browser, watch, server, "Vera")
    await expect(vera.agents).to_have_text("1 agent online")
    await vera.send("My stove leaks")
    await expect(ann.message("Vera", "My stove leaks")).to_be_visible()
    await expect(vera.status).to_have_text("You are chatting with Ann.")
    return ann, vera


async def test_transfer_to_agent(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    ann, vera = await chatting(browser, watch, server)
    await ann.reply("Vera", "Let me find our stove expert")
    await expect(vera.message("Let me find our stove expert")).to_be_visible()
    await ann.write_note("Vera", "Model X200, bought in May")
    await expect(ann.note("Vera", "Model X200, bought in May")).to_be_visible()
    bea, bea_id = await signed_in(browser, watch, server, "Bea")
    await bea.go_ready()

    await ann.transfer("Vera", f"agent:{bea_id}")
    await expect(ann.pane("Vera")).to_have_count(0)
    await expect(ann.chat_list).to_have_count(0)
    await expect(ann.notice).to_have_text("The chat with Vera was transferred to Bea.")

    await expect(bea.pane("Vera").locator(".origin")).to_have_text(
        "Transferred from Ann"
    )
    await expect(bea.message("Vera", "My stove leaks")).to_be_visible()
    await expect(bea.message("Vera", "Let me find our stove expert")).to_be_visible()
    await expect(bea.note("Vera", "Model X200, bought in May")).to_be_visible()
    await expect(vera.system("You are now chatting with Bea.")).to_be_visible()
    await expect(vera.status).to_have_text("You are chatting with Bea.")

    await vera.send("Is it the valve?")
    await expect(bea.message("Vera", "Is it the valve?")).to_be_visible()
    await bea.reply("Vera", "Yes, the valve")
    await expect(vera.message("Yes, the valve")).to_be_visible()
    assert await vera.texts() == [
        "My stove leaks",
        "Let me find our stove expert",
        "Is it the valve?",
        "Yes, the valve",
    ]
    await expect(ann.page.locator(".pane")).to_have_count(0)


async def test_transfer_by_keyboard(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    ann, vera = await chatting(browser, watch, server)
    bea, _ = await signed_in(browser, watch, server, "Bea")
    await bea.go_ready()
    keyboard = ann.page.keyboard
    pane = ann.pane("Vera")

    await pane.locator("button.transfer").focus()
    await keyboard.press("Enter")
    target = pane.locator("select.transfer-target")
    await expect(target).to_be_focused()
    await expect(target.locator("option", has_text="Bea")).to_be_enabled()
    await keyboard.press("ArrowDown")
    await expect(target.locator("option:checked")).to_have_text(
        "Bea (ready, 0 of 1 chats)"
    )
    await keyboard.press("Tab")
    await keyboard.press("Enter")
    await expect(vera.system("You are now chatting with Bea.")).to_be_visible()
    await expect(ann.notice).to_be_focused()
    await expect(bea.message("Vera", "My stove leaks")).to_be_visible()


async def test_transfer_picker_marks_full_agent(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    ann, _ = await chatting(browser, watch, server)
    bea, bea_id = await signed_in(browser, watch, server, "Bea")
    await bea.go_ready()
    omar = await visitor(browser, watch, server, "Omar")
    await omar.send("Omar here")
    await expect(bea.message("Omar", "Omar here")).to_be_visible()

    pane = ann.pane("Vera")
    await pane.locator("button.transfer").click()
    target = pane.locator("select.transfer-target")
    option = target.locator(f"option[value='agent:{bea_id}']")
    await expect(option).to_have_text("Bea (full, 1 of 1 chats)")
    await expect(option).to_be_disabled()
    await expect(target).to_be_focused()
    await pane.locator("button.transfer-send").click()
    await expect(pane.locator(".transfer-error")).to_have_text(
        "Choose an agent or a department first."
    )


async def test_transfer_error_shown_inline(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    ann, vera = await chatting(browser, watch, server)
    bea, bea_id = await signed_in(browser, watch, server, "Bea")
    await bea.go_ready()
    pane = ann.pane("Vera")
    await pane.locator("button.transfer").click()
    target = pane.locator("select.transfer-target")
    await expect(target.locator(f"option[value='agent:{bea_id}']")).to_be_enabled()
    await target.select_option(f"agent:{bea_id}")

    # Bea fills her only slot while Ann's list still shows her free.
    omar = await visitor(browser, watch, server, "Omar")
    await omar.send("Omar here")
    await expect(bea.message("Omar", "Omar here")).to_be_visible()
    await pane.locator("button.transfer-send").click()

    error = pane.locator(".transfer-error")
    await expect(error).to_have_text("Bea has 1 of 1 chats open")
    await expect(error).to_have_attribute("role", "alert")
    await expect(ann.message("Vera", "My stove leaks")).to_be_visible()
    await expect(bea.pane("Vera")).to_have_count(0)
    await ann.reply("Vera", "Still here")
    await expect(vera.message("Still here")).to_be_visible()


async def test_transfer_to_department(
    browser: Browser,
    watch: PageWatch,
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(CHAT_DEPARTMENTS=DEPARTMENTS)
    ann, vera = await chatting(browser, watch, server)
    bea, _ = await signed_in(browser, watch, server, "Bea")
    await bea.check_departments("Billing and invoices")
    await bea.go_ready()

    await ann.transfer("Vera", "department:billing")
    await expect(ann.pane("Vera")).to_have_count(0)
    await expect(ann.notice).to_have_text(
        "The chat with Vera went back to the queue for another agent."
    )
    await expect(vera.system("Waiting for another agent…")).to_be_visible()
    await expect(bea.message("Vera", "My stove leaks")).to_be_visible()
    await expect(vera.system("You are now chatting with Bea.")).to_be_visible()
    await expect(vera.status).to_have_text("You are chatting with Bea.")


async def test_transfer_to_general_queue(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    ann, vera = await chatting(browser, watch, server)
    bea, _ = await signed_in(browser, watch, server, "Bea")
    await bea.go_ready()

    await ann.transfer("Vera", "department:")
    await expect(ann.pane("Vera")).to_have_count(0)
    await expect(vera.system("Waiting for another agent…")).to_be_visible()
    await expect(bea.message("Vera", "My stove leaks")).to_be_visible()
    await expect(vera.status).to_have_text("You are chatting with Bea.")


async def test_department_picker_routes_chat(
    browser: Browser,
    watch: PageWatch,
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(CHAT_DEPARTMENTS=DEPARTMENTS)
    ann, _ = await signed_in(browser, watch, server, "Ann")
    await ann.check_departments("Billing and invoices")
    await ann.go_ready()

    vera = await visitor(browser, watch, server, "Vera")
    await expect(vera.department.locator("option")).to_have_text(
        ["General", "Sales", "Billing and invoices"]
    )
    await expect(vera.department).to_have_value("")
    await vera.department.select_option("billing")
    await vera.send("A question about my invoice")
    await expect(ann.message("Vera", "A question about my invoice")).to_be_visible()
    await expect(vera.department).to_be_hidden()

    omar = await visitor(browser, watch, server, "Omar")
    await omar.department.select_option("sales")
    await omar.send("Do you ship to Norway?")
    await expect(omar.status).to_contain_text("You are number 1 in the queue.")
    await expect(ann.pane("Omar")).to_have_count(0)
    await expect(ann.queue).to_have_text(
        re.compile(r"^1 waiting · longest \d+ s \(Sales 1\)$")
    )

    await ann.page.reload()
    boxes = ann.page.locator("#departments")
    await expect(boxes.get_by_label("Billing and invoices")).to_be_checked()
    await expect(boxes.get_by_label("Sales")).not_to_be_checked()


async def test_rating_reaches_agent(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    ann, vera = await chatting(browser, watch, server)
    await ann.pane("Vera").locator("button.end").click()
    await expect(vera.rating).to_be_visible()
    await expect(vera.rating.locator("h3")).to_have_text("How was your chat with Ann?")

    await vera.star(4).click()
    await expect(vera.star(4)).to_have_attribute("aria-pressed", "true")
    await vera.rating.get_by_label("Comment").fill("Quick and kind")
    await vera.rating.locator("button.rating-send").click()
    await expect(vera.rating_result).to_have_text("Thank you for rating this chat!")
    await expect(vera.rating).to_be_hidden()
    await expect(ann.pane("Vera").locator(".rating")).to_have_text(
        "Rated ★★★★☆ 4 of 5: “Quick and kind”"
    )

    await vera.page.reload()
    await vera.open()
    await vera.page.wait_for_timeout(500)
    await expect(vera.rating).to_be_hidden()


async def test_history_keeps_ended_chat(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    ann, vera = await chatting(browser, watch, server)
    await ann.reply("Vera", "Screw the valve in tight")
    await expect(vera.message("Screw the valve in tight")).to_be_visible()
    await ann.pane("Vera").locator("button.end").click()
    await vera.star(5).click()
    await vera.rating.get_by_label("Comment").fill("Fixed it")
    await vera.rating.locator("button.rating-send").click()
    await expect(ann.pane("Vera").locator(".rating")).to_contain_text("5 of 5")

    # An ended chat leaves the chat list with a reload, and stays in History.
    await ann.page.reload()
    await expect(ann.queue).not_to_be_empty()
    await expect(ann.chat_list).to_have_count(0)
    await ann.show("history")
    item = ann.history.filter(has_text="Vera")
    await expect(item).to_have_count(1)
    meta = item.locator(".missed-meta")
    await expect(meta).to_contain_text("You ended the chat.")
    await expect(meta).to_contain_text("Rated 5 of 5")
    await expect(item.locator(".rating-comment")).to_have_text("“Fixed it”")
    await expect(ann.page.locator("#history-more")).to_be_hidden()

    await item.locator("summary").click()
    lines = item.locator(".thread .msg .text")
    await expect(lines).to_have_text(["My stove leaks", "Screw the valve in tight"])


async def test_history_pages_older_chats(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    # One page is 25 chats, so the 26th shows only after "Show older chats".
    clients = Clients(server)
    try:
        agent = await clients.agent("ann@example.com", ready=True)
        for n in range(26):
            guest = await clients.visitor(name=f"Guest {n:02}")
            joined = await guest.call("join_queue", {})
            assert joined["ok"], joined
            await agent.next("chat_started")
            ended = await agent.call("end_chat", {"chat_id": joined["chat"]["id"]})
            assert ended["ok"], ended
            await guest.disconnect()
    finally:
        await clients.close()

    ann = Dashboard(await new_page(browser, watch, "Ann"))
    await ann.sign_in(server, "ann@example.com")
    await ann.show("history")
    await expect(ann.history).to_have_count(25)
    await expect(ann.history.first.locator("h3")).to_have_text("Guest 25")
    more = ann.page.locator("#history-more")
    await more.click()
    await expect(ann.history).to_have_count(26)
    await expect(ann.history.last.locator("h3")).to_have_text("Guest 00")
    await expect(more).to_be_hidden()


async def test_rating_by_keyboard(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    ann, vera = await chatting(browser, watch, server)
    await vera.page.locator("[data-sio-chat] button.end").click()
    await expect(vera.star(1)).to_be_visible()

    keyboard = vera.page.keyboard
    await vera.star(1).focus()
    await keyboard.press("Enter")
    await keyboard.press("ArrowRight")
    await keyboard.press("ArrowRight")
    await expect(vera.star(3)).to_be_focused()
    await expect(vera.star(3)).to_have_attribute("aria-pressed", "true")
    for _ in range(3):
        await keyboard.press("Tab")
    await expect(vera.rating.get_by_label("Comment")).to_be_focused()
    await keyboard.type("Fine")
    await keyboard.press("Tab")
    await keyboard.press("Enter")
    await expect(vera.rating_result).to_have_text("Thank you for rating this chat!")
    await expect(ann.pane("Vera").locator(".rating")).to_have_text(
        "Rated ★★★☆☆ 3 of 5: “Fine”"
    )


async def test_rating_asked_after_reconnect(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    ann, vera = await chatting(browser, watch, server)
    await vera.page.context.set_offline(True)
    await expect(vera.banner).to_be_visible()
    await ann.pane("Vera").locator("button.end").click()
    await expect(ann.pane("Vera").locator(".state")).to_have_text("You ended the chat.")
    await vera.page.context.set_offline(False)
    await expect(vera.banner).to_be_hidden(timeout=15000)
    await expect(vera.rating).to_be_visible()
    await vera.star(5).click()
    await vera.rating.locator("button.rating-send").click()
    await expect(vera.rating_result).to_have_text("Thank you for rating this chat!")
    await expect(ann.pane("Vera").locator(".rating")).to_have_text("Rated ★★★★★ 5 of 5")


async def test_rating_asked_on_return(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    ann, vera = await chatting(browser, watch, server)
    await vera.page.goto("about:blank")
    await ann.pane("Vera").locator("button.end").click()
    await expect(ann.pane("Vera").locator(".state")).to_have_text("You ended the chat.")

    await vera.page.goto(server.url + "/")
    await vera.open()
    await expect(vera.rating).to_be_visible()
    await expect(vera.ended_text).to_have_text("Your last chat has ended.")
    await vera.star(5).click()
    await vera.rating.locator("button.rating-send").click()
    await expect(vera.rating_result).to_have_text("Thank you for rating this chat!")
    await expect(ann.pane("Vera").locator(".rating")).to_have_text("Rated ★★★★★ 5 of 5")
    await vera.again.click()
    await expect(vera.ended).to_be_hidden()
    await expect(vera.text).to_be_focused()


async def test_leave_message_answered_from_missed(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    vera = await visitor(browser, watch, server, "Vera")
    await expect(vera.agents).to_have_text("No agents are online right now.")
    await expect(vera.offer).to_be_visible()
    await vera.offer.get_by_role("button", name="Leave a message").click()
    await expect(vera.leave).to_be_visible()

    await vera.leave_message("not an email", "Is the red tent back in stock?")
    await expect(vera.leave.locator(".leave-error")).to_have_text(
        "Enter your email address, so that the team can contact you."
    )
    await vera.leave_message(
        "vera@example.com", "Is the red tent back in stock?", name="Vera V."
    )
    await expect(vera.ended_text).to_have_text(
        "Thank you! We got your message from vera@example.com."
        " An agent's reply will appear on this page."
    )
    await expect(vera.leave).to_be_hidden()
    await expect(vera.message("Is the red tent back in stock?")).to_be_visible()

    ann, _ = await signed_in(browser, watch, server, "Ann")
    await expect(ann.page.locator("#missed-count")).to_have_text("1")
    await ann.show("missed")
    item = ann.missed.filter(has_text="Is the red tent back in stock?")
    await expect(item.locator(".missed-meta")).to_contain_text("vera@example.com")
    await item.get_by_label("Reply to vera@example.com").fill("Yes, since Monday.")
    await item.get_by_role("button", name="Send reply").click()
    await expect(item.locator(".reply-result")).to_have_text(
        re.compile(r"^Reply saved")
    )
    await expect(item.locator(".msg.agent .text")).to_have_text("Yes, since Monday.")
    await expect(vera.message("Yes, since Monday.")).to_be_visible()

    await ann.page.click("#missed-refresh")
    await expect(item.locator(".missed-meta")).to_contain_text("answered by Ann")


async def test_queue_timeout_offers_message(
    browser: Browser,
    watch: PageWatch,
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(CHAT_QUEUE_TIMEOUT_S="1", **FAST_TIMERS)
    vera = await visitor(browser, watch, server, "Vera")
    await vera.send("Anyone there?")
    await expect(vera.ended_text).to_have_text(
        "No agent was free to answer in time.", timeout=10000
    )
    await vera.ended.get_by_role("button", name="Leave a message").click()
    await expect(vera.leave.get_by_label("Message", exact=True)).to_have_value(
        "Anyone there?"
    )
    await vera.leave.get_by_label("Email").fill("vera@example.com")
    await vera.leave.locator("button.leave-send").click()
    await expect(vera.ended_text).to_have_text(
        "Thank you! We got your message from vera@example.com."
        " An agent's reply will appear on this page."
    )
    await expect(vera.rating).to_be_hidden()


async def test_note_stays_with_agents(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    ann, vera = await chatting(browser, watch, server)
    second_tab = Dashboard(await ann.page.context.new_page())
    watch.attach(second_tab.page, "Ann tab 2")
    await second_tab.page.goto(f"{server.url}/agent/")
    await expect(second_tab.message("Vera", "My stove leaks")).to_be_visible()

    await ann.write_note("Vera", "Regular customer, offer the spare valve")
    note = ann.note("Vera", "Regular customer, offer the spare valve")
    await expect(note).to_be_visible()
    await expect(note.locator(".note-label")).to_have_text("Internal note")
    await expect(
        second_tab.note("Vera", "Regular customer, offer the spare valve")
    ).to_be_visible()

    await ann.reply("Vera", "We can send a spare valve")
    await expect(vera.message("We can send a spare valve")).to_be_visible()
    await expect(vera.log).not_to_contain_text("Regular customer")
    assert await vera.texts() == ["My stove leaks", "We can send a spare valve"]
    await vera.page.reload()
    await vera.open()
    await expect(vera.stored).to_have_count(2)
    await expect(vera.log).not_to_contain_text("Regular customer")

    await ann.page.reload()
    await expect(ann.note("Vera", "Regular customer")).to_be_visible()


async def test_canned_response_by_shortcut(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    ann, vera = await chatting(browser, watch, server)
    await ann.add_canned("hours", "We are open 9 to 5.")
    await expect(ann.canned).to_have_count(1)
    await expect(ann.canned.locator(".shortcut")).to_have_text("/hours")
    await ann.add_canned("hours", "Another text")
    await expect(ann.page.locator("#canned-error")).to_have_text(re.compile(r"\S"))
    await expect(ann.canned).to_have_count(1)

    hours = "We are open 9 to 5, Monday to Friday."
    await ann.page.fill("#canned-shortcut", "")
    await ann.canned.get_by_role("button", name="Edit /hours").click()
    await expect(ann.page.locator("#canned-shortcut")).to_have_value("hours")
    await ann.page.fill("#canned-text", hours)
    await ann.page.click("#canned-submit")
    await expect(ann.canned.locator(".canned-text")).to_have_text(hours)
    await expect(ann.page.locator("#canned-submit")).to_have_text("Add canned response")

    await ann.show("chats")
    textarea = ann.pane("Vera").locator("textarea")
    await textarea.click()
    await textarea.press_sequentially("Hi! /hou")
    suggestions = ann.pane("Vera").locator(".suggestions li")
    await expect(suggestions).to_have_count(1)
    await expect(suggestions.locator("strong")).to_have_text("/hours")
    await textarea.press("Tab")
    await expect(textarea).to_have_value("Hi! " + hours)
    await expect(textarea).to_be_focused()
    await textarea.press("Enter")
    await expect(vera.message("Hi! " + hours)).to_be_visible()

    await ann.show("canned")
    await ann.canned.get_by_role("button", name="Delete /hours").click()
    await expect(ann.canned).to_have_count(0)


async def test_new_forms_fit_phone(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    page = await new_page(
        browser, watch, "phone", viewport={"width": 375, "height": 667}, is_mobile=True
    )
    widget = Widget(page)
    await page.goto(server.url + "/")
    await widget.open()
    await widget.offer.get_by_role("button", name="Leave a message").click()
    await expect(widget.leave).to_be_visible()
    for label in ("Email", "Name", "Message"):
        field = widget.leave.get_by_label(label, exact=label == "Message")
        box = await field.bounding_box()
        assert box is not None, label
        assert box["x"] >= 0, label
        assert box["x"] + box["width"] <= 375, label
    send = await widget.leave.locator("button.leave-send").bounding_box()
    assert send is not None
    assert send["y"] + send["height"] <= 667


async def test_leave_message_while_queued(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    vera = await visitor(browser, watch, server, "Vera")
    await vera.send("Hello, anyone?")
    await expect(vera.status).to_contain_text("You are number 1 in the queue.")
    await vera.offer.get_by_role("button", name="Leave a message").click()
    await expect(vera.department).to_be_hidden()
    await vera.leave_message("vera@example.com", "Please call me back")
    await expect(vera.ended_text).to_have_text(
        "Thank you! We got your message from vera@example.com."
        " An agent's reply will appear on this page."
    )
    await expect(vera.stored).to_have_count(2)
    assert await vera.texts() == ["Hello, anyone?", "Please call me back"]
    await expect(vera.status).to_be_hidden()


async def test_agent_arrival_closes_leave_form(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    vera = await visitor(browser, watch, server, "Vera")
    await vera.send("Hello, anyone?")
    await vera.offer.get_by_role("button", name="Leave a message").click()
    await expect(vera.leave).to_be_visible()

    ann, _ = await signed_in(browser, watch, server, "Ann")
    await ann.go_ready()
    await expect(vera.status).to_have_text("You are chatting with Ann.")
    await expect(vera.leave).to_be_hidden()
    await expect(vera.text).to_be_visible()


async def test_no_reply_requeues_chat(
    browser: Browser,
    watch: PageWatch,
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(CHAT_AGENT_REPLY_TIMEOUT_S="1", **FAST_TIMERS)
    ann, vera = await chatting(browser, watch, server)
    await expect(ann.pane("Vera")).to_have_count(0, timeout=10000)
    await expect(ann.notice).to_have_text(
        "The chat with Vera went back to the queue: it had no reply in time."
    )
    await expect(vera.system("Waiting for another agent…")).to_be_visible()


async def test_idle_visitor_asked_to_rate(
    browser: Browser,
    watch: PageWatch,
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(CHAT_VISITOR_IDLE_TIMEOUT_S="1", **FAST_TIMERS)
    ann, vera = await chatting(browser, watch, server)
    await expect(vera.rating).to_be_visible(timeout=10000)
    await expect(vera.ended_text).to_have_text("This chat has ended.")
    await expect(ann.pane("Vera").locator(".state")).to_have_text(
        "The visitor was idle, so the chat ended."
    )
    await vera.rating.get_by_role("button", name="No thanks").click()
    await expect(vera.rating).to_be_hidden()
    await expect(vera.again).to_be_focused()


async def test_estimated_wait_shown(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    clients = Clients(server)
    try:
        # Five short chats give the server the durations an estimate needs.
        agent = await clients.agent(ready=True)
        for number in range(5):
            guest = await clients.visitor(name=f"Guest {number}")
            joined = await guest.call("join_queue", {"message": "hi"})
            assert joined["ok"], joined
            started = await agent.next("chat_started")
            ended = await agent.call("end_chat", {"chat_id": started["chat"]["id"]})
            assert ended["ok"], ended
        busy = await clients.visitor(name="Busy")
        joined = await busy.call("join_queue", {"message": "hold on"})
        assert joined["ok"], joined
        await agent.next("chat_started")

        vera = await visitor(browser, watch, server, "Vera")
        await vera.send("How long?")
        await expect(vera.status).to_have_text(
            "You are number 1 in the queue. Estimated wait: under a minute."
        )
    finally:
        await clients.close()


async def test_hostile_text_in_new_views(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    vera = await visitor(browser, watch, server, HOSTILE)
    await vera.offer.get_by_role("button", name="Leave a message").click()
    await vera.leave_message("vera@example.com", HOSTILE + " message", name=HOSTILE)
    await expect(vera.ended_text).to_contain_text("vera@example.com")

    ann, _ = await signed_in(browser, watch, server, "Ann")
    await ann.show("missed")
    item = ann.missed.filter(has_text=HOSTILE + " message")
    await expect(item.locator("h3")).to_have_text(HOSTILE)
    await ann.add_canned("x", HOSTILE + " canned")
    await expect(ann.canned.locator(".canned-text")).to_have_text(HOSTILE + " canned")

    await ann.show("chats")
    await ann.go_ready()
    omar = await visitor(browser, watch, server, "Omar")
    await omar.send("hi")
    await expect(ann.message("Omar", "hi")).to_be_visible()
    await ann.write_note("Omar", HOSTILE + " note")
    await expect(ann.note("Omar", HOSTILE + " note")).to_be_visible()
    await ann.pane("Omar").locator("button.end").click()
    await omar.star(2).click()
    await omar.rating.get_by_label("Comment").fill(HOSTILE)
    await omar.rating.locator("button.rating-send").click()
    await expect(ann.pane("Omar").locator(".rating")).to_have_text(
        f"Rated ★★☆☆☆ 2 of 5: “{HOSTILE}”"
    )

    for page in (vera.page, omar.page, ann.page):
        assert await page.locator("img").count() == 0
    # The watch fixture fails the test if any dialog opened.


async def test_leave_message_shows_server_error(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    vera = await visitor(browser, watch, server, "Vera")
    await vera.offer.get_by_role("button", name="Leave a message").click()
    # Past the field's maxlength, which only limits typing: the server rejects it.
    too_long = "v" * 250 + "@example.com"
    await vera.leave.get_by_label("Email").evaluate(
        "(field, value) => { field.value = value; }", too_long
    )
    await vera.leave.get_by_label("Message", exact=True).fill("Hello")
    await vera.leave.locator("button.leave-send").click()
    error = vera.leave.locator(".leave-error")
    await expect(error).to_have_text(re.compile(r"email", re.IGNORECASE))
    await expect(error).to_have_attribute("role", "alert")
    await expect(vera.leave).to_be_visible()
    await expect(vera.leave.get_by_label("Message", exact=True)).to_have_value("Hello")


async def test_rate_limited_messages_retried(
    browser: Browser,
    watch: PageWatch,
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(CHAT_LIMIT_MESSAGES_PER_VISITOR="1/second")
    ann, vera = await chatting(browser, watch, server)
    texts = ["My stove leaks", "second", "third"]
    for text in texts[1:]:
        await vera.send(text)
    for text in texts:
        await expect(ann.message("Vera", text)).to_be_visible(timeout=10000)
    await expect(vera.stored).to_have_count(3)
    assert await vera.texts() == texts
    assert "event=message rejected: rate_limited" in server.log()


async def test_rate_limited_replies_retried(
    browser: Browser,
    watch: PageWatch,
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(CHAT_LIMIT_EVENTS_PER_SOCKET="3/second")
    ann, vera = await chatting(browser, watch, server)
    replies = [f"reply {number}" for number in range(1, 6)]
    for text in replies:
        await ann.reply("Vera", text)
    for text in replies:
        await expect(vera.message(text)).to_be_visible(timeout=15000)
    assert await vera.texts() == ["My stove leaks", *replies]
    await expect(ann.pane("Vera").locator(".msg.system")).to_have_count(0)


async def test_refused_tab_connects_later(
    browser: Browser,
    watch: PageWatch,
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(CHAT_MAX_SOCKETS_PER_VISITOR="1")
    first = await visitor(browser, watch, server, "Vera")
    await first.send("from the first tab")
    await expect(first.message("from the first tab")).to_be_visible()

    second = Widget(await first.page.context.new_page())
    watch.attach(second.page, "Vera tab 2")
    await second.page.goto(server.url + "/")
    await second.open()
    await expect(second.status).to_have_text(
        "The chat is busy, or too many chat windows are open. Trying again shortly."
    )
    await first.page.close()
    # The refusal sets retry_after_s to 10, so the next try comes within 20 s.
    await expect(second.message("from the first tab")).to_be_visible(timeout=20000)
    await expect(second.status).to_contain_text("in the queue")


@pytest.fixture
async def shop() -> AsyncIterator[tuple[str, Callable[[ServerProcess], str]]]:
    """Serve a shop page on another loopback port that embeds the widget.

    Yield the shop's origin and a function that returns the page's URL for a
    chat server.
    """
    html = ""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()

    def publish(server: ServerProcess) -> str:
        nonlocal html
        html = (
            "<!doctype html><html><head><title>Shop</title></head><body>"
            f'<script async src="{server.url}/widget.js"></script></body></html>'
        )
        return f"http://127.0.0.1:{port}/"

    yield f"http://127.0.0.1:{port}", publish
    await runner.cleanup()


async def test_rating_on_return_other_origin(
    browser: Browser,
    watch: PageWatch,
    server_factory: Callable[..., ServerProcess],
    shop: tuple[str, Callable[[ServerProcess], str]],
) -> None:
    origin, publish = shop
    server = server_factory(CHAT_CORS_ORIGINS=origin)
    ann, _ = await signed_in(browser, watch, server, "Ann")
    await ann.go_ready()
    vera = Widget(await new_page(browser, watch, "Vera"))
    await vera.page.goto(publish(server))
    await vera.open()
    await vera.page.evaluate("() => window.SioChat.identify({ name: 'Vera' })")
    await vera.send("Hello from the shop")
    await expect(ann.message("Vera", "Hello from the shop")).to_be_visible()

    await vera.page.goto("about:blank")
    await ann.pane("Vera").locator("button.end").click()
    await expect(ann.pane("Vera").locator(".state")).to_have_text("You ended the chat.")
    # The widget reads the closed chat over HTTP, a cross-origin request here.
    await vera.page.goto(publish(server))
    await vera.open()
    await expect(vera.rating).to_be_visible()


async def admin_patch(
    server: ServerProcess, agent_id: str, change: dict[str, object]
) -> None:
    """Change an agent over the admin API, as a separate admin account."""
    await server.create_agent("root@example.com", "Root", is_admin=True)
    token = await server.login("root@example.com")
    async with aiohttp.ClientSession() as http:
        response = await http.patch(
            f"{server.url}/api/admin/agents/{agent_id}",
            json=change,
            headers={"Authorization": f"Bearer {token}"},
        )
        body = await response.json()
    assert response.status == 200, body


async def test_admin_changes_reach_dashboard(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    ann, ann_id = await signed_in(browser, watch, server, "Ann")
    await admin_patch(server, ann_id, {"name": "Ann Berg", "max_chats": 3})
    await expect(ann.page.locator("#agent-name")).to_have_text("Ann Berg")
    await expect(ann.page.locator("#max-chats")).to_have_value("3")


async def test_disabled_agent_signed_out(
    browser: Browser, watch: PageWatch, server: ServerProcess
) -> None:
    ann, ann_id = await signed_in(browser, watch, server, "Ann")
    await admin_patch(server, ann_id, {"disabled": True})
    await expect(ann.page.locator("#signin")).to_be_visible()
    await expect(ann.page.locator("#signin-error")).to_have_text(
        "An administrator disabled this account."
    )
    await expect(ann.page.locator("#app")).to_be_hidden()
