"""Internal notes: agent-only, on every agent tab, never on a visitor socket."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.support import ChatClient, Clients, http_json, ready_agent, session_of

NOTE_TEXTS = ["VIP customer, order 4411", "asked for a refund twice"]


async def chat_with_tabs(
    clients: Clients,
) -> tuple[ChatClient, ChatClient, ChatClient, ChatClient, str]:
    """Return two agent tabs and two visitor tabs in one active chat, and its id."""
    agent = await ready_agent(clients, "alice@example.com")
    agent_tab = await clients.agent("alice@example.com")
    visitor = await clients.visitor(name="Vera")
    visitor_tab = await clients.visitor(token=visitor.auth["token"])
    joined = await visitor.call("join_queue", {"message": "hello"})
    chat_id = str(joined["chat"]["id"])
    started = await agent.next("chat_started")
    assert started["notes"] == []
    await visitor.next("chat_started")
    return agent, agent_tab, visitor, visitor_tab, chat_id


def assert_no_note_reached(visitor: ChatClient) -> None:
    """Check every event the visitor socket recorded for a note or its text."""
    for event, data in visitor.received:
        assert event != "note", data
        dumped = json.dumps(data)
        for text in NOTE_TEXTS:
            assert text not in dumped, (event, data)


async def test_notes_reach_agent_tabs_only(clients: Clients) -> None:
    agent, agent_tab, visitor, visitor_tab, chat_id = await chat_with_tabs(clients)
    notes = []
    for n, text in enumerate(NOTE_TEXTS):
        added = await agent.call(
            "note", {"chat_id": chat_id, "text": text, "client_id": f"n-{n}"}
        )
        assert added["ok"], added
        note = added["note"]
        assert note["chat_id"] == chat_id
        assert note["text"] == text
        assert note["client_id"] == f"n-{n}"
        assert note["author"] == {"id": session_of(agent)["agent_id"], "name": "Alice"}
        assert note["id"]
        assert note["created_at"]
        assert await agent_tab.next("note") == note
        notes.append(note)
    await agent.no_more("note", within=0.3)

    listed = await agent_tab.call("list_notes", {"chat_id": chat_id})
    assert listed["ok"], listed
    assert listed["notes"] == notes

    # Messages still flow, and the visitor's view never includes the notes.
    sent = await agent.call(
        "message", {"chat_id": chat_id, "text": "one moment", "client_id": "a-1"}
    )
    assert sent["ok"], sent
    await visitor.next("message")
    history = await visitor.call("history", {"chat_id": chat_id})
    assert [m["text"] for m in history["messages"]] == ["hello", "one moment"]
    status, body = await http_json(
        clients.server,
        "GET",
        f"/api/chats/{chat_id}/messages",
        token=visitor.auth["token"],
    )
    assert status == 200, body
    assert all(text not in json.dumps(body) for text in NOTE_TEXTS), body
    late_tab = await clients.visitor(token=visitor.auth["token"])
    await asyncio.sleep(0.3)
    for socket in (visitor, visitor_tab, late_tab):
        assert_no_note_reached(socket)


async def test_note_retry_returns_stored(clients: Clients) -> None:
    agent, agent_tab, visitor, visitor_tab, chat_id = await chat_with_tabs(clients)
    payload = {"chat_id": chat_id, "text": NOTE_TEXTS[0], "client_id": "n-1"}
    first = await agent.call("note", payload)
    assert first["ok"], first
    again = await agent.call("note", payload)
    assert again["ok"], again
    assert again["note"] == first["note"]
    assert await agent_tab.next("note") == first["note"]
    await agent_tab.no_more("note", within=0.3)
    listed = await agent.call("list_notes", {"chat_id": chat_id})
    assert listed["notes"] == [first["note"]]
    assert_no_note_reached(visitor)
    assert_no_note_reached(visitor_tab)


async def test_visitor_cannot_use_notes(clients: Clients) -> None:
    agent, _agent_tab, visitor, visitor_tab, chat_id = await chat_with_tabs(clients)
    added = await agent.call(
        "note", {"chat_id": chat_id, "text": NOTE_TEXTS[0], "client_id": "n-1"}
    )
    assert added["ok"], added
    rejected = await visitor.call(
        "note", {"chat_id": chat_id, "text": "sneaky", "client_id": "v-1"}
    )
    assert rejected["ok"] is False, rejected
    assert rejected["error"]["code"] == "forbidden", rejected
    rejected = await visitor_tab.call("list_notes", {"chat_id": chat_id})
    assert rejected["ok"] is False, rejected
    assert rejected["error"]["code"] == "forbidden", rejected
    assert NOTE_TEXTS[0] not in json.dumps(rejected)
    listed = await agent.call("list_notes", {"chat_id": chat_id})
    assert [note["text"] for note in listed["notes"]] == [NOTE_TEXTS[0]]
    assert_no_note_reached(visitor)
    assert_no_note_reached(visitor_tab)


async def test_other_agent_cannot_use_notes(clients: Clients) -> None:
    _agent, _agent_tab, _visitor, _visitor_tab, chat_id = await chat_with_tabs(clients)
    bob = await clients.agent("bob@example.com")
    rejected = await bob.call(
        "note", {"chat_id": chat_id, "text": "not mine", "client_id": "b-1"}
    )
    assert rejected["ok"] is False, rejected
    assert rejected["error"]["code"] == "forbidden", rejected
    rejected = await bob.call("list_notes", {"chat_id": chat_id})
    assert rejected["ok"] is False, rejected
    assert rejected["error"]["code"] == "forbidden", rejected


async def test_note_bad_payload(clients: Clients) -> None:
    agent, _agent_tab, _visitor, _visitor_tab, chat_id = await chat_with_tabs(clients)
    bad: list[dict[str, Any]] = [
        {"chat_id": chat_id, "text": "", "client_id": "n"},
        {"chat_id": chat_id, "text": 5, "client_id": "n"},
        {"chat_id": chat_id, "text": "fine"},
        {"text": "fine", "client_id": "n"},
    ]
    for payload in bad:
        rejected = await agent.call("note", payload)
        assert rejected["ok"] is False, (payload, rejected)
        assert rejected["error"]["code"] == "invalid_payload", (payload, rejected)
    rejected = await agent.call(
        "note",
        {
            "chat_id": "00000000-0000-4000-8000-000000000000",
            "text": "x",
            "client_id": "n",
        },
    )
    assert rejected["error"]["code"] == "not_found", rejected


async def test_note_on_ended_chat(clients: Clients) -> None:
    agent, _agent_tab, visitor, visitor_tab, chat_id = await chat_with_tabs(clients)
    assert (await visitor.call("end_chat", {"chat_id": chat_id}))["ok"]
    added = await agent.call(
        "note", {"chat_id": chat_id, "text": NOTE_TEXTS[1], "client_id": "n-1"}
    )
    assert added["ok"], added
    listed = await agent.call("list_notes", {"chat_id": chat_id})
    assert listed["notes"] == [added["note"]]
    await asyncio.sleep(0.3)
    assert_no_note_reached(visitor)
    assert_no_note_reached(visitor_tab)


async def test_notes_survive_transfer(clients: Clients) -> None:
    alice, alice_tab, visitor, visitor_tab, chat_id = await chat_with_tabs(clients)
    first = await alice.call(
        "note", {"chat_id": chat_id, "text": NOTE_TEXTS[0], "client_id": "n-1"}
    )
    assert first["ok"], first
    bob = await ready_agent(clients, "bob@example.com")
    moved = await alice.call(
        "transfer_chat",
        {"chat_id": chat_id, "agent_id": session_of(bob)["agent_id"]},
    )
    assert moved["ok"], moved
    started = await bob.next("chat_started")
    assert started["notes"] == [first["note"]]

    second = await bob.call(
        "note", {"chat_id": chat_id, "text": NOTE_TEXTS[1], "client_id": "n-2"}
    )
    assert second["ok"], second
    assert second["note"]["author"]["name"] == "Bob"
    listed = await bob.call("list_notes", {"chat_id": chat_id})
    assert listed["notes"] == [first["note"], second["note"]]

    # The old agent lost access, and the new note reached none of her tabs.
    for tab in (alice, alice_tab):
        rejected = await tab.call("list_notes", {"chat_id": chat_id})
        assert rejected["error"]["code"] == "forbidden", rejected
    await asyncio.sleep(0.3)
    assert all(
        data["id"] != second["note"]["id"]
        for event, data in alice_tab.received
        if event == "note"
    )
    assert_no_note_reached(visitor)
    assert_no_note_reached(visitor_tab)


async def test_notes_during_transfer(clients: Clients) -> None:
    """Every note stored around a transfer shows up in the new agent's view."""
    alice, _alice_tab, visitor, visitor_tab, chat_id = await chat_with_tabs(clients)
    bob = await ready_agent(clients, "bob@example.com")
    acked: list[dict[str, Any]] = []
    transfer_sent = asyncio.Event()

    async def add_notes() -> None:
        for n in range(40):
            if n == 10:
                transfer_sent.set()
            added = await alice.call(
                "note", {"chat_id": chat_id, "text": f"note {n}", "client_id": f"{n}"}
            )
            if not added["ok"]:
                assert added["error"]["code"] == "forbidden", added
                return
            acked.append(added["note"])

    async def transfer() -> dict[str, Any]:
        await transfer_sent.wait()
        moved: dict[str, Any] = await alice.call(
            "transfer_chat",
            {"chat_id": chat_id, "agent_id": session_of(bob)["agent_id"]},
        )
        return moved

    _, moved = await asyncio.gather(add_notes(), transfer())
    assert moved["ok"], moved
    await asyncio.sleep(0.3)

    started = await bob.next("chat_started")
    live = [data for event, data in bob.received if event == "note"]
    seen_by_bob = started["notes"] + live
    listed = await bob.call("list_notes", {"chat_id": chat_id})
    assert listed["notes"] == acked
    seen_ids = {note["id"] for note in seen_by_bob}
    unseen = [note["text"] for note in acked if note["id"] not in seen_ids]
    assert unseen == [], (len(started["notes"]), len(live), len(acked))
    assert [note["id"] for note in seen_by_bob] == [note["id"] for note in acked]
    assert_no_note_reached(visitor)
    assert_no_note_reached(visitor_tab)


async def test_notes_of_unknown_chat(clients: Clients) -> None:
    agent = await clients.agent()
    rejected = await agent.call(
        "list_notes", {"chat_id": "00000000-0000-4000-8000-000000000000"}
    )
    assert rejected["ok"] is False, rejected
    assert rejected["error"]["code"] == "not_found", rejected
