"""Chat ratings: who may rate, when, how often, and where the rating shows."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support import ChatClient, Clients, http_json, matched_pair

UNKNOWN_CHAT_ID = "00000000-0000-4000-8000-000000000000"


async def ended_pair(clients: Clients) -> tuple[ChatClient, ChatClient, str]:
    agent, visitor, chat_id = await matched_pair(clients)
    ended = await visitor.call("end_chat", {"chat_id": chat_id})
    assert ended["ok"], ended
    return agent, visitor, chat_id


async def listed_chat(clients: Clients, token: str, chat_id: str) -> dict[str, Any]:
    status, body = await http_json(
        clients.server, "GET", "/api/chats?status=ended", token=token
    )
    assert status == 200, body
    matches = [chat for chat in body["chats"] if chat["id"] == chat_id]
    assert len(matches) == 1, body
    return dict(matches[0])


async def test_rate_ended_chat(clients: Clients) -> None:
    agent, visitor, chat_id = await ended_pair(clients)
    assert (await listed_chat(clients, agent.auth["token"], chat_id))["rating"] is None

    rated = await visitor.call(
        "rate_chat", {"chat_id": chat_id, "score": 5, "comment": "Quick and kind"}
    )
    assert rated["ok"], rated
    rating = rated["rating"]
    assert rating["score"] == 5
    assert rating["comment"] == "Quick and kind"
    assert rating["created_at"]
    assert await agent.next("chat_rated") == {"chat_id": chat_id, "rating": rating}

    listed = await listed_chat(clients, agent.auth["token"], chat_id)
    assert listed["rating"] == rating

    again = await visitor.call("rate_chat", {"chat_id": chat_id, "score": 1})
    assert again["ok"] is False, again
    assert again["error"]["code"] == "wrong_state", again
    listed = await listed_chat(clients, agent.auth["token"], chat_id)
    assert listed["rating"] == rating
    await agent.no_more("chat_rated", within=0.3)


async def test_rate_without_comment(clients: Clients) -> None:
    agent, visitor, chat_id = await ended_pair(clients)
    rated = await visitor.call("rate_chat", {"chat_id": chat_id, "score": 1})
    assert rated["ok"], rated
    assert rated["rating"]["score"] == 1
    assert rated["rating"]["comment"] is None
    assert (await agent.next("chat_rated"))["rating"] == rated["rating"]


async def test_rate_open_chats_rejected(clients: Clients) -> None:
    agent, visitor, active_chat = await matched_pair(clients)
    waiting = await clients.visitor()
    queued_chat = (await waiting.call("join_queue", {}))["chat"]["id"]
    leaver = await clients.visitor()
    left = await leaver.call(
        "leave_message", {"text": "Call me", "email": "leo@example.com"}
    )
    assert left["ok"], left

    cases = [
        (visitor, active_chat),
        (waiting, queued_chat),
        (leaver, left["chat"]["id"]),
    ]
    for caller, chat_id in cases:
        rejected = await caller.call("rate_chat", {"chat_id": chat_id, "score": 4})
        assert rejected["ok"] is False, rejected
        assert rejected["error"]["code"] == "wrong_state", rejected
    await agent.no_more("chat_rated", within=0.3)


async def test_rate_by_others_rejected(clients: Clients) -> None:
    agent, _visitor, chat_id = await ended_pair(clients)
    stranger = await clients.visitor()
    await stranger.call("join_queue", {})
    for caller in (stranger, agent):
        rejected = await caller.call("rate_chat", {"chat_id": chat_id, "score": 4})
        assert rejected["ok"] is False, rejected
        assert rejected["error"]["code"] == "forbidden", rejected

    rejected = await stranger.call(
        "rate_chat", {"chat_id": UNKNOWN_CHAT_ID, "score": 4}
    )
    assert rejected["ok"] is False, rejected
    assert rejected["error"]["code"] == "not_found", rejected
    assert (await listed_chat(clients, agent.auth["token"], chat_id))["rating"] is None


BAD_RATINGS: list[dict[str, Any]] = [
    {"score": 0},
    {"score": 6},
    {"score": -1},
    {"score": 2.5},
    {"score": 4.0},
    {"score": "5"},
    {"score": True},
    {"score": None},
    {},
    {"score": 3, "comment": 5},
]


async def test_rate_bad_payload(clients: Clients) -> None:
    agent, visitor, chat_id = await ended_pair(clients)
    for fields in BAD_RATINGS:
        rejected = await visitor.call("rate_chat", {"chat_id": chat_id, **fields})
        assert rejected["ok"] is False, (fields, rejected)
        assert rejected["error"]["code"] == "invalid_payload", (fields, rejected)
    too_long = {"chat_id": chat_id, "score": 3, "comment": "x" * 1001}
    rejected = await visitor.call("rate_chat", too_long)
    assert rejected["ok"] is False, rejected
    assert rejected["error"]["code"] in ("invalid_payload", "payload_too_large")
    await agent.no_more("chat_rated", within=0.3)

    # The rejected calls did not use up the visitor's one rating.
    rated = await visitor.call(
        "rate_chat", {"chat_id": chat_id, "score": 3, "comment": "x" * 1000}
    )
    assert rated["ok"], rated
    assert (await agent.next("chat_rated"))["rating"]["score"] == 3


async def test_rate_from_two_tabs_at_once(clients: Clients) -> None:
    agent, visitor, chat_id = await ended_pair(clients)
    tabs = [visitor] + [
        await clients.visitor(token=visitor.auth["token"]) for _ in range(3)
    ]
    replies = await asyncio.gather(
        *(
            tab.call("rate_chat", {"chat_id": chat_id, "score": n + 1})
            for n, tab in enumerate(tabs)
        )
    )
    accepted = [reply for reply in replies if reply["ok"]]
    assert len(accepted) == 1, replies
    for reply in replies:
        if not reply["ok"]:
            assert reply["error"]["code"] == "wrong_state", reply
    rating = accepted[0]["rating"]
    assert await agent.next("chat_rated") == {"chat_id": chat_id, "rating": rating}
    await agent.no_more("chat_rated", within=0.3)
    assert (await listed_chat(clients, agent.auth["token"], chat_id))[
        "rating"
    ] == rating


async def test_rate_active_chat_of_other(clients: Clients) -> None:
    """Another visitor gets `forbidden` for a chat that is still open."""
    agent, _visitor, chat_id = await matched_pair(clients)
    stranger = await clients.visitor()
    rejected = await stranger.call("rate_chat", {"chat_id": chat_id, "score": 4})
    assert rejected["ok"] is False, rejected
    assert rejected["error"]["code"] == "forbidden", rejected
    rejected = await agent.call("rate_chat", {"chat_id": chat_id, "score": 4})
    assert rejected["error"]["code"] == "forbidden", rejected


async def test_rating_goes_to_current_agent(clients: Clients) -> None:
    alice, visitor, chat_id = await matched_pair(clients)
    bob = await clients.agent("bob@example.com")
    assert (await bob.call("agent_ready", {}))["ok"]
    bob_id = bob.received[0][1]["agent_id"]
    moved = await alice.call("transfer_chat", {"chat_id": chat_id, "agent_id": bob_id})
    assert moved["ok"], moved
    await bob.next("chat_started")
    assert (await bob.call("end_chat", {"chat_id": chat_id}))["ok"]

    rated = await visitor.call("rate_chat", {"chat_id": chat_id, "score": 2})
    assert rated["ok"], rated
    assert await bob.next("chat_rated") == {
        "chat_id": chat_id,
        "rating": rated["rating"],
    }
    await alice.no_more("chat_rated", within=0.3)


async def test_rate_chat_ended_while_queued(clients: Clients) -> None:
    """A chat the visitor ended before any agent took it cannot be rated."""
    visitor = await clients.visitor()
    chat_id = (await visitor.call("join_queue", {}))["chat"]["id"]
    ended = await visitor.call("end_chat", {"chat_id": chat_id})
    assert ended["ok"], ended
    assert ended["chat"]["status"] == "ended"
    rated = await visitor.call("rate_chat", {"chat_id": chat_id, "score": 3})
    assert rated["error"]["code"] == "wrong_state", rated
