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


async def test_upgrade_keeps_chats_and_messages(tmp_path: Path) -> None:
    """A database made by the first two migrations keeps its data on upgrade."""
    path = tmp_path / "chat.sqlite3"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
        " name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    for version, name, sql in load_migrations("sqlite")[:2]:
        for statement in _split_sql(sql):
            db.execute(statement)
        db.execute(
            "INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, utc_now())
        )
    now = utc_now()
    db.execute("INSERT INTO visitors VALUES ('v1', 'Vera', NULL, ?)", (now,))
    db.execute(
        "INSERT INTO chats (id, visitor_id, status, queue_rank, created_at,"
        " queued_at) VALUES ('c1', 'v1', 'queued', 1, ?, ?)",
        (now, now),
    )
    db.execute(
        "INSERT INTO messages VALUES ('m1', 'c1', 1, 'visitor', 'v1', 'Vera',"
        " 'hello', 'x1', ?)",
        (now,),
    )
    db.commit()
    db.close()

    store = SQLiteStore(path)
    await store.open()
    try:
        chat = await store.get_chat("c1")
        assert chat is not None
        assert (chat.status, chat.last_seq) == ("queued", 1)
        messages, _ = await store.list_messages("c1")
        assert [m.text for m in messages] == ["hello"]
        # The rebuilt table still advances last_seq and takes new statuses.
        visitor = Sender("visitor", "v1", "Vera")
        message, _ = await store.add_message("c1", visitor, "again", "x2")
        assert message.seq == 2
        missed = await store.miss_waiting(utc_now())
        assert [c.status for c in missed] == ["missed"]
    finally:
        await store.close()
    check = sqlite3.connect(path).execute("PRAGMA foreign_key_check").fetchall()
    assert check == []


async def test_timeouts_fire_once(store: SQLiteStore) -> None:
    chat_id, visitor, agent = await active_chat(store)
    later = "9999-12-31T00:00:00.000Z"
    requeued = await store.requeue_unreplied(later)
    assert [(chat.id, left) for chat, left in requeued] == [(chat_id, agent.id)]
    assert await store.requeue_unreplied(later) == []
    # The agent who let it go does not get it back.
    assert await store.assign_waiting() == []
    assert [c.id for c in await store.miss_waiting(later)] == [chat_id]
    assert await store.miss_waiting(later) == []
    with pytest.raises(WrongState):
        await store.add_message(chat_id, visitor, "late", "v9")


async def test_reply_keeps_the_chat(store: SQLiteStore) -> None:
    chat_id, _, agent = await active_chat(store)
    await store.add_message(chat_id, agent, "hello", "a1")
    assert await store.requeue_unreplied("9999-12-31T00:00:00.000Z") == []
    # The visitor spoke before the assignment only, so inactivity ends it.
    ended = await store.end_inactive("9999-12-31T00:00:00.000Z")
    assert [(c.id, c.end_reason) for c in ended] == [(chat_id, "inactive")]
    assert await store.end_inactive("9999-12-31T00:00:00.000Z") == []
