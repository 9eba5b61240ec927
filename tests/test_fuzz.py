"""Random and malformed payloads at every event, from several clients at once.

Hypothesis generates batches of events; each batch goes out concurrently from
three clients: a queued visitor, a visitor in a chat and that chat's agent.
Meanwhile an unrelated visitor and agent keep chatting. After every batch:
every reply is a well-formed `ok` or error reply with a client error code,
and a batch whose every reply was an error left the database as it was. At
the end the unrelated pair is still connected and got every message.

`FUZZ_EXAMPLES` sets the number of batches (`make fuzz` runs a long form).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.database import fetch_many, run_sync
from tests.support import ChatClient, Clients, ServerProcess, matched_pair

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
CLIENT_CODES = {
    "invalid_payload",
    "not_found",
    "forbidden",
    "wrong_state",
    "rate_limited",
    "payload_too_large",
}
EVENTS = [
    "join_queue",
    "leave_message",
    "rate_chat",
    "agent_ready",
    "agent_away",
    "transfer_chat",
    "note",
    "list_notes",
    "message",
    "typing",
    "read",
    "history",
    "end_chat",
]
FIELDS = [
    "chat_id",
    "text",
    "client_id",
    "seq",
    "after_seq",
    "limit",
    "typing",
    "reason",
    "department",
    "message",
    "metadata",
    "max_chats",
    "departments",
    "agent_id",
    "score",
    "comment",
    "email",
    "name",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def payloads(ids: list[str]) -> st.SearchStrategy[Any]:
    """Objects with the protocol's field names and nearly valid values, or junk."""
    near_valid = st.one_of(
        st.sampled_from(ids),
        st.sampled_from(["", " ", "x" * 4001, "\ud800", "sales", "a@b.co", "hi"]),
        st.integers(min_value=-2, max_value=60),
        st.booleans(),
        json_values,
    )
    fields = st.dictionaries(st.sampled_from(FIELDS), near_valid, max_size=5)
    return st.one_of(fields, json_values)


def snapshot(database_url: str, skip_chat: str) -> list[Any]:
    """Return every stored row except those of the unrelated chat, which grows."""
    queries: list[tuple[str, tuple[str, ...]]] = [
        (f"SELECT * FROM {table} WHERE {condition} ORDER BY 1, 2", (skip_chat,))
        for table, condition in (
            ("chats", "id != $1"),
            ("messages", "chat_id != $1"),
            ("read_marks", "chat_id != $1"),
            ("notes", "chat_id != $1"),
        )
    ]
    for table in ("visitors", "agents", "canned_responses", "audit_log"):
        queries.append((f"SELECT * FROM {table} ORDER BY 1", ()))
    return list(run_sync(fetch_many(database_url, queries)))


def settle(database_url: str, skip_chat: str, last: list[Any]) -> list[Any]:
    """Return a snapshot once two reads 50 ms apart agree, within 2 seconds."""
    for _ in range(40):
        time.sleep(0.05)
        current = snapshot(database_url, skip_chat)
        if current == last:
            break
        last = current
    return last


async def chat_steadily(
    visitor: ChatClient, chat_id: str, stop: asyncio.Event, sent: list[str]
) -> None:
    """Send a message every 20 ms; each must be acknowledged."""
    n = 0
    while not stop.is_set():
        n += 1
        text = f"steady {n}"
        reply = await visitor.call(
            "message", {"chat_id": chat_id, "text": text, "client_id": text}
        )
        assert reply["ok"], reply
        sent.append(text)
        await asyncio.sleep(0.02)


def test_fuzz_events(server: ServerProcess) -> None:
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(run_fuzz(server, loop))
    finally:
        loop.close()


async def run_fuzz(server: ServerProcess, loop: asyncio.AbstractEventLoop) -> None:
    clients = Clients(server)
    bystander_agent, bystander, bystander_chat = await matched_pair(clients)
    # A full bystander agent, so a fuzzed transfer cannot hand it a chat.
    fuzz_agent = await clients.agent("fuzz@example.com", ready=True, max_chats=1)
    in_chat = await clients.visitor()
    await in_chat.call("join_queue", {"message": "hello"})
    fuzz_chat = (await in_chat.next("chat_started"))["chat"]["id"]
    queued = await clients.visitor()
    queued_chat = (await queued.call("join_queue"))["chat"]["id"]
    fuzzers = [queued, in_chat, fuzz_agent]
    ids = [bystander_chat, fuzz_chat, queued_chat, "no-such-chat"]
    ids += [str(client.auth.get("token", ""))[:20] for client in fuzzers]

    stop = asyncio.Event()
    sent: list[str] = []
    steady = loop.create_task(chat_steadily(bystander, bystander_chat, stop, sent))
    database_url = server.database_url
    outcomes = {"accepted": 0, "rejected": 0}
    # Accepted replies counted when the stored rows last stopped changing.
    settled_after = {"accepted": 0}
    batch = st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=2),
            st.sampled_from(EVENTS) | st.text(max_size=12),
            payloads(ids),
        ),
        min_size=1,
        max_size=4,
    )

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(batch)
    def check(calls: list[tuple[int, str, Any]]) -> None:
        before = snapshot(database_url, bystander_chat)
        if outcomes["accepted"] > settled_after["accepted"]:
            # An accepted call may have started a background match, which
            # must not count against this batch.
            before = settle(database_url, bystander_chat, before)
            settled_after["accepted"] = outcomes["accepted"]
        replies = asyncio.run_coroutine_threadsafe(
            send_batch(fuzzers, calls), loop
        ).result(30)
        for (_, event, payload), reply in zip(calls, replies, strict=True):
            assert isinstance(reply, dict), (event, payload, reply)
            assert isinstance(reply.get("ok"), bool), (event, payload, reply)
            if not reply["ok"]:
                code = reply["error"]["code"]
                assert code in CLIENT_CODES, (event, payload, reply)
                assert reply["error"]["message"], (event, payload, reply)
        for reply in replies:
            outcomes["accepted" if reply["ok"] else "rejected"] += 1
        if not any(reply["ok"] for reply in replies):
            assert snapshot(database_url, bystander_chat) == before, calls

    # Hypothesis runs the examples in a thread while this loop serves the
    # clients.
    await asyncio.to_thread(check)
    stop.set()
    await steady
    # Both kinds of reply occurred, or the checks above proved little.
    assert outcomes["accepted"] > 0, outcomes
    assert outcomes["rejected"] > outcomes["accepted"], outcomes

    assert bystander.sio.connected
    assert bystander_agent.sio.connected
    received = []
    while len(received) < len(sent):
        received.append((await bystander_agent.next("message", timeout=5))["text"])
    assert received == sent
    await clients.close()


async def send_batch(
    fuzzers: list[ChatClient], calls: list[tuple[int, str, Any]]
) -> list[Any]:
    async def one(index: int, event: str, payload: Any) -> Any:
        if event in ("connect", "disconnect", "connect_error", "message_ack"):
            # Reserved by Socket.IO: python-socketio refuses to send them.
            return {"ok": False, "error": {"code": "invalid_payload", "message": "-"}}
        return await fuzzers[index].call(event, payload, timeout=10)

    return list(await asyncio.gather(*(one(*call) for call in calls)))
