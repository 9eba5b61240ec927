"""The SQLite store on a real file: migrations, messages, queue order."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sio_server.errors import Forbidden, NotFound, WrongState
from sio_server.models import Sender, Visitor, new_id, utc_now
from sio_server.store import SQLiteStore
from sio_server.store.sqlite import _split_sql, load_migrations


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "chat.sqlite3")
    await opened.open()
    yield opened
    await opened.close()


async def test_migrations_recorded_once(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    for _ in range(2):
        store = SQLiteStore(path)
        await store.open()
        await store.close()
    versions = sqlite3.connect(path).execute(
        "SELECT version FROM schema_migrations ORDER BY version"
    )
    assert [row[0] for row in versions] == [v for v, _, _ in load_migrations("sqlite")]


def test_split_sql_keeps_trigger_whole() -> None:
    script = (
        "-- comment\nCREATE TABLE t (x);\n\n"
        "CREATE TRIGGER g AFTER INSERT ON t\nBEGIN\n  SELECT 1;\n  SELECT 2;\nEND;\n"
    )
    statements = _split_sql(script)
    assert len(statements) == 2
    assert statements[1].startswith("CREATE TRIGGER g")
    assert statements[1].endswith("END;")


async def test_wal_mode(store: SQLiteStore, tmp_path: Path) -> None:
    mode = sqlite3.connect(tmp_path / "chat.sqlite3").execute("PRAGMA journal_mode")
    assert mode.fetchone()[0] == "wal"


async def active_chat(store: SQLiteStore) -> tuple[str, Sender, Sender]:
    agent = await store.create_agent("ann@example.com", "Ann", "hash")
    await store.set_agent_status(agent.id, "ready", 1)
    await store.set_agent_connected(agent.id, True)
    visitor = Visitor(id=new_id(), name="Vera", email=None, created_at=utc_now())
    chat, created = await store.open_chat(
        visitor, department=None, metadata=None, first_message=("hi", "c0")
    )
    assert created
    assigned = await store.assign_waiting()
    assert [c.id for c in assigned] == [chat.id]
    return (
        chat.id,
        Sender("visitor", visitor.id, "Vera"),
        Sender("agent", agent.id, "Ann"),
    )


async def test_message_seq_and_last_seq(store: SQLiteStore) -> None:
    chat_id, visitor, agent = await active_chat(store)
    first, created = await store.add_message(chat_id, agent, "hello", "a1")
    second, _ = await store.add_message(chat_id, visitor, "thanks", "v1")
    assert created
    assert (first.seq, second.seq) == (2, 3)
    chat = await store.get_chat(chat_id)
    assert chat is not None
    assert chat.last_seq == 3


async def test_message_retry_returns_stored(store: SQLiteStore) -> None:
    chat_id, visitor, _ = await active_chat(store)
    first, _ = await store.add_message(chat_id, visitor, "once", "same")
    again, created = await store.add_message(chat_id, visitor, "twice", "same")
    assert created is False
    assert again == first


async def test_message_errors(store: SQLiteStore) -> None:
    chat_id, visitor, agent = await active_chat(store)
    stranger = Sender("visitor", "someone-else", "Eve")
    with pytest.raises(NotFound):
        await store.add_message("no-such-chat", visitor, "x", "1")
    with pytest.raises(Forbidden):
        await store.add_message(chat_id, stranger, "x", "1")
    await store.end_chat(chat_id, "agent", None)
    with pytest.raises(WrongState):
        await store.add_message(chat_id, agent, "x", "late")
    messages, _ = await store.list_messages(chat_id)
    assert [m.text for m in messages] == ["hi"]


async def test_requeue_goes_to_front_in_order(store: SQLiteStore) -> None:
    agent = await store.create_agent("ann@example.com", "Ann", "hash")
    await store.set_agent_status(agent.id, "ready", 2)
    await store.set_agent_connected(agent.id, True)
    chat_ids = []
    for name in ("A", "B", "C"):
        visitor = Visitor(id=new_id(), name=name, email=None, created_at=utc_now())
        chat, _ = await store.open_chat(
            visitor, department=None, metadata=None, first_message=None
        )
        chat_ids.append(chat.id)
    assigned = await store.assign_waiting()
    assert [c.id for c in assigned] == chat_ids[:2]

    requeued = await store.requeue_agent_chats(agent.id)
    assert [c.id for c in requeued] == chat_ids[:2]
    queue = await store.queue_entries()
    assert [entry.chat_id for entry in queue] == [chat_ids[0], chat_ids[1], chat_ids[2]]
    stored = await store.get_agent(agent.id)
    assert stored is not None
    assert stored.status == "offline"


async def test_read_mark_only_rises(store: SQLiteStore) -> None:
    chat_id, visitor, _ = await active_chat(store)
    assert await store.set_read_mark(chat_id, "visitor", visitor.id, 3) == 3
    assert await store.set_read_mark(chat_id, "visitor", visitor.id, 1) == 3
    assert await store.get_read_mark(chat_id, "visitor", visitor.id) == 3
    assert await store.get_read_mark(chat_id, "agent", "nobody") == 0
