"""Message storage and delivery: seq order, retries, tabs, history."""

from __future__ import annotations

import asyncio

from tests.support import Clients, matched_pair


async def test_retry_same_client_id(clients: Clients) -> None:
    agent, visitor, chat_id = await matched_pair(clients)
    payload = {"chat_id": chat_id, "text": "once", "client_id": "retry-1"}
    first = await visitor.call("message", payload)
    second = await visitor.call("message", {**payload, "text": "changed"})
    assert second["ok"] is True
    assert second["message"] == first["message"]
    assert (await agent.next("message"))["id"] == first["message"]["id"]
    await agent.no_more("message")
    history = await agent.call("history", {"chat_id": chat_id})
    assert [m["client_id"] for m in history["messages"]] == ["retry-1"]


async def test_same_client_id_other_sender(clients: Clients) -> None:
    agent, visitor, chat_id = await matched_pair(clients)
    a = await agent.call("message", {"chat_id": chat_id, "text": "a", "client_id": "x"})
    v = await visitor.call(
        "message", {"chat_id": chat_id, "text": "v", "client_id": "x"}
    )
    assert a["message"]["seq"] == 1
    assert v["message"]["seq"] == 2


async def test_concurrent_sends_keep_order(clients: Clients) -> None:
    """Events sent back to back are stored and delivered in arrival order."""
    agent, visitor, chat_id = await matched_pair(clients)
    count = 60
    replies = await asyncio.gather(
        *(
            visitor.call(
                "message", {"chat_id": chat_id, "text": f"m{n}", "client_id": f"c{n}"}
            )
            for n in range(count)
        )
    )
    seq_by_text = {r["message"]["text"]: r["message"]["seq"] for r in replies}
    assert [seq_by_text[f"m{n}"] for n in range(count)] == list(range(1, count + 1))
    delivered = [(await agent.next("message"))["seq"] for _ in range(count)]
    assert delivered == list(range(1, count + 1))


async def test_both_sides_concurrent_no_gaps(clients: Clients) -> None:
    agent, visitor, chat_id = await matched_pair(clients)

    async def send(side: str, client, n: int) -> int:
        reply = await client.call(
            "message", {"chat_id": chat_id, "text": f"{side}{n}", "client_id": f"{n}"}
        )
        return int(reply["message"]["seq"])

    seqs = await asyncio.gather(
        *(send("a", agent, n) for n in range(20)),
        *(send("v", visitor, n) for n in range(20)),
    )
    assert sorted(seqs) == list(range(1, 41))
    history = await agent.call("history", {"chat_id": chat_id, "limit": 500})
    assert [m["seq"] for m in history["messages"]] == list(range(1, 41))


async def test_visitor_two_tabs_one_chat(clients: Clients) -> None:
    agent = await clients.agent(ready=True)
    tab1 = await clients.visitor(name="Tab")
    tab2 = await clients.visitor(token=tab1.auth["token"])
    assert tab2.received[0][1]["visitor_id"] == tab1.received[0][1]["visitor_id"]

    joined1 = await tab1.call("join_queue", {})
    joined2 = await tab2.call("join_queue", {})
    assert joined1["chat"]["id"] == joined2["chat"]["id"]
    chat_id = joined1["chat"]["id"]
    for tab in (tab1, tab2):
        assert (await tab.next("chat_started"))["chat"]["id"] == chat_id
    await agent.next("chat_started")
    await agent.no_more("chat_started")

    await tab1.call("message", {"chat_id": chat_id, "text": "from 1", "client_id": "1"})
    assert (await tab2.next("message"))["text"] == "from 1"
    assert (await agent.next("message"))["text"] == "from 1"
    await agent.call(
        "message", {"chat_id": chat_id, "text": "to all", "client_id": "a"}
    )
    for tab in (tab1, tab2):
        assert (await tab.next("message"))["text"] == "to all"


async def test_closing_one_tab_keeps_chat(clients: Clients) -> None:
    agent = await clients.agent(ready=True)
    tab1 = await clients.visitor()
    tab2 = await clients.visitor(token=tab1.auth["token"])
    chat_id = (await tab1.call("join_queue", {}))["chat"]["id"]
    await agent.next("chat_started")
    await tab1.disconnect()
    sent = await agent.call(
        "message", {"chat_id": chat_id, "text": "still here", "client_id": "1"}
    )
    assert sent["ok"]
    assert (await tab2.next("message"))["text"] == "still here"
    await agent.no_more("chat_ended")


async def test_history_paging(clients: Clients) -> None:
    agent, visitor, chat_id = await matched_pair(clients)
    for n in range(7):
        await visitor.call(
            "message", {"chat_id": chat_id, "text": f"m{n}", "client_id": f"{n}"}
        )
    page = await agent.call("history", {"chat_id": chat_id, "limit": 3})
    assert [m["seq"] for m in page["messages"]] == [1, 2, 3]
    assert page["has_more"] is True
    page = await agent.call("history", {"chat_id": chat_id, "after_seq": 3, "limit": 4})
    assert [m["seq"] for m in page["messages"]] == [4, 5, 6, 7]
    assert page["has_more"] is False


async def test_non_ascii_text_round_trip(clients: Clients) -> None:
    agent, visitor, chat_id = await matched_pair(clients)
    texts = [
        "Grüße aus Köln",
        "日本語のテキスト",
        "emoji 👩🏽‍💻🎉",
        "עברית",
        "a\u0000b",
        "x" * 4000,
    ]
    for n, text in enumerate(texts):
        sent = await visitor.call(
            "message", {"chat_id": chat_id, "text": text, "client_id": f"u{n}"}
        )
        assert sent["ok"] is True, sent
        assert (await agent.next("message"))["text"] == text
    history = await agent.call("history", {"chat_id": chat_id})
    assert [m["text"] for m in history["messages"]] == texts


async def test_read_mark_never_lowers(clients: Clients) -> None:
    agent, visitor, chat_id = await matched_pair(clients)
    for n in range(3):
        await visitor.call(
            "message", {"chat_id": chat_id, "text": f"m{n}", "client_id": f"{n}"}
        )
    assert (await agent.call("read", {"chat_id": chat_id, "seq": 3}))["seq"] == 3
    assert (await agent.call("read", {"chat_id": chat_id, "seq": 1}))["seq"] == 3
    beyond = await agent.call("read", {"chat_id": chat_id, "seq": 4})
    assert beyond["error"]["code"] == "invalid_payload"
