"""A whole chat over real sockets: join, match, messages both ways, read, end."""

from __future__ import annotations

from tests.support import Clients, matched_pair


async def test_visitor_session_has_token(clients: Clients) -> None:
    visitor = clients.client({"role": "visitor", "token": None, "name": "Vera"})
    session = await visitor.connect()
    assert session["role"] == "visitor"
    assert session["visitor_id"]
    assert session["token"]
    assert session["chat"] is None


async def test_agent_session_starts_away(clients: Clients) -> None:
    agent = await clients.agent()
    session = agent.received[0][1]
    assert agent.received[0][0] == "session"
    assert session["role"] == "agent"
    assert session["name"] == "Alice"
    assert session["status"] == "away"
    assert session["chats"] == []


async def test_whole_chat_flow(clients: Clients) -> None:
    agent = await clients.agent(ready=True)
    visitor = await clients.visitor(name="Vera")

    joined = await visitor.call("join_queue", {"message": "My order is late"})
    assert joined["ok"] is True
    assert joined["chat"]["status"] == "queued"
    assert joined["position"] == 1
    assert joined["agents_online"] == 1
    assert "estimated_wait_s" in joined
    chat_id = joined["chat"]["id"]

    for side in (visitor, agent):
        started = await side.next("chat_started")
        assert started["chat"]["id"] == chat_id
        assert started["chat"]["status"] == "active"
        assert started["chat"]["agent"]["name"] == "Alice"
        assert started["chat"]["visitor"]["name"] == "Vera"
        assert [m["seq"] for m in started["messages"]] == [1]
        assert started["messages"][0]["text"] == "My order is late"

    sent = await agent.call(
        "message", {"chat_id": chat_id, "text": "Let me check", "client_id": "a-1"}
    )
    assert sent["ok"] is True
    assert sent["message"]["seq"] == 2
    assert sent["message"]["sender"]["role"] == "agent"
    received = await visitor.next("message")
    assert received == sent["message"]

    sent = await visitor.call(
        "message", {"chat_id": chat_id, "text": "Thanks", "client_id": "v-1"}
    )
    assert sent["message"]["seq"] == 3
    assert (await agent.next("message"))["text"] == "Thanks"

    typing = await visitor.call("typing", {"chat_id": chat_id, "typing": True})
    assert typing == {"ok": True}
    assert await agent.next("typing") == {
        "chat_id": chat_id,
        "role": "visitor",
        "typing": True,
    }

    read = await agent.call("read", {"chat_id": chat_id, "seq": 3})
    assert read["ok"] is True
    assert await visitor.next("read") == {"chat_id": chat_id, "role": "agent", "seq": 3}

    ended = await visitor.call("end_chat", {"chat_id": chat_id, "reason": "resolved"})
    assert ended["ok"] is True
    for side in (visitor, agent):
        assert await side.next("chat_ended") == {
            "chat_id": chat_id,
            "ended_by": "visitor",
            "reason": "resolved",
        }

    late = await agent.call(
        "message", {"chat_id": chat_id, "text": "Still there?", "client_id": "a-2"}
    )
    assert late["ok"] is False
    assert late["error"]["code"] == "wrong_state"


async def test_sender_gets_no_echo(clients: Clients) -> None:
    agent, visitor, chat_id = await matched_pair(clients)
    await visitor.call("message", {"chat_id": chat_id, "text": "hi", "client_id": "1"})
    await agent.next("message")
    await visitor.no_more("message")


async def test_ended_chat_frees_agent_slot(clients: Clients) -> None:
    agent, first, chat_id = await matched_pair(clients)
    second = await clients.visitor()
    joined = await second.call("join_queue", {})
    assert joined["position"] == 1
    await agent.call("end_chat", {"chat_id": chat_id})
    started = await second.next("chat_started")
    assert started["chat"]["id"] == joined["chat"]["id"]
    assert (await first.next("chat_ended"))["ended_by"] == "agent"


async def test_join_twice_returns_same_chat(clients: Clients) -> None:
    visitor = await clients.visitor()
    first = await visitor.call("join_queue", {"message": "one"})
    retry = await visitor.call("join_queue", {"message": "one"})
    assert retry["chat"]["id"] == first["chat"]["id"]
    assert retry["message"] == first["message"]
    history = await visitor.call("history", {"chat_id": first["chat"]["id"]})
    assert [m["text"] for m in history["messages"]] == ["one"]


async def test_rejoin_resends_position(clients: Clients) -> None:
    visitor = await clients.visitor()
    joined = await visitor.call("join_queue", {})
    assert (await visitor.next("queue_update"))["position"] == 1
    await visitor.no_more("queue_update", within=0.5)
    rejoined = await visitor.call("join_queue", {})
    assert rejoined["chat"]["id"] == joined["chat"]["id"]
    assert (await visitor.next("queue_update"))["position"] == 1


async def test_join_again_stores_new_message(clients: Clients) -> None:
    visitor = await clients.visitor()
    first = await visitor.call("join_queue", {"message": "one", "client_id": "c1"})
    again = await visitor.call("join_queue", {"message": "two", "client_id": "c2"})
    assert again["chat"]["id"] == first["chat"]["id"]
    assert again["message"]["seq"] == 2
    history = await visitor.call("history", {"chat_id": first["chat"]["id"]})
    assert [m["text"] for m in history["messages"]] == ["one", "two"]


async def test_visitor_sends_while_queued(clients: Clients) -> None:
    visitor = await clients.visitor()
    joined = await visitor.call("join_queue", {})
    chat_id = joined["chat"]["id"]
    for n in range(3):
        sent = await visitor.call(
            "message", {"chat_id": chat_id, "text": f"m{n}", "client_id": f"c{n}"}
        )
        assert sent["message"]["seq"] == n + 1
    agent = await clients.agent(ready=True)
    started = await agent.next("chat_started")
    assert [m["text"] for m in started["messages"]] == ["m0", "m1", "m2"]


async def test_agent_session_lists_open_chats(clients: Clients) -> None:
    agent, _, chat_id = await matched_pair(clients)
    second_tab = await clients.agent()
    session = second_tab.received[0][1]
    assert [chat["id"] for chat in session["chats"]] == [chat_id]
    assert session["status"] == "ready"
    await second_tab.call(
        "message", {"chat_id": chat_id, "text": "from tab 2", "client_id": "t2"}
    )
    assert (await agent.next("message"))["text"] == "from tab 2"


async def test_agent_away_gets_no_new_chats(clients: Clients) -> None:
    agent = await clients.agent(ready=True)
    away = await agent.call("agent_away", {})
    assert away == {"ok": True, "status": "away"}
    visitor = await clients.visitor()
    await visitor.call("join_queue", {})
    await agent.no_more("chat_started")
    ready = await agent.call("agent_ready")
    assert ready["status"] == "ready"
    await agent.next("chat_started")


async def test_queue_update_on_position_change(clients: Clients) -> None:
    first = await clients.visitor()
    second = await clients.visitor()
    await first.call("join_queue", {})
    joined = await second.call("join_queue", {})
    assert joined["position"] == 2
    assert joined["agents_online"] == 0
    # Every tab of the joining visitor hears the position once.
    assert (await second.next("queue_update"))["position"] == 2
    await first.call(
        "end_chat", {"chat_id": (await first.call("join_queue"))["chat"]["id"]}
    )
    update = await second.next("queue_update")
    assert update["chat_id"] == joined["chat"]["id"]
    assert update["position"] == 1
    assert update["agents_online"] == 0
    assert "estimated_wait_s" in update


async def test_queue_update_on_agents_online(clients: Clients) -> None:
    agent = await clients.agent(max_chats=1, ready=True)
    holder = await clients.visitor()
    await holder.call("join_queue", {})
    await holder.next("chat_started")
    waiting = await clients.visitor()
    joined = await waiting.call("join_queue", {})
    assert joined["agents_online"] == 1
    assert (await waiting.next("queue_update"))["agents_online"] == 1
    await agent.call("agent_away", {})
    update = await waiting.next("queue_update")
    assert update["agents_online"] == 0
    assert update["position"] == 1


async def test_agents_get_queue_changed(clients: Clients) -> None:
    agent = await clients.agent()
    visitor = await clients.visitor()
    await visitor.call("join_queue", {})
    changed = await agent.next("queue_changed")
    assert changed["queued"] == 1
    assert changed["oldest_wait_s"] >= 0
