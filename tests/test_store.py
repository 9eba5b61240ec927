"""Both stores on real databases: migrations, messages, queue order, concurrency.

Each test runs on SQLite and on PostgreSQL. The concurrency tests open several
stores on one database, as several server processes sharing it would, and
call them at the same moment.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from sio_server.errors import Forbidden, NotFound, TransferRejected, WrongState
from sio_server.models import AgentChanges, Chat, Sender, Visitor, new_id, utc_now
from sio_server.store import PostgresStore, SQLiteStore, Store, create_store
from sio_server.store.migrations import load_migrations
from sio_server.store.postgres import _escape_text, _unescape_text
from sio_server.store.sqlite import CHECKPOINT_PAGES, _split_sql
from tests.database import (
    BACKENDS,
    create_postgres_database,
    drop_postgres_database,
    fetch_rows,
)

T = TypeVar("T")

# Stores on one database in the concurrency tests, one per simulated process.
PROCESSES = 4
LATER = "9999-12-31T00:00:00.000Z"


@pytest.fixture(params=BACKENDS)
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[str]:
    """An empty database: an SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'chat.sqlite3'}"
        return
    url = await create_postgres_database()
    try:
        yield url
    finally:
        await drop_postgres_database(url)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = create_store(database_url)
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def stores(database_url: str) -> AsyncIterator[list[Store]]:
    """Stores with connections of their own on one database."""
    opened: list[Store] = []
    try:
        for _ in range(PROCESSES):
            store = create_store(database_url)
            await store.open()
            opened.append(store)
        yield opened
    finally:
        for store in opened:
            await store.close()


def dialect(database_url: str) -> str:
    return "sqlite" if database_url.startswith("sqlite:") else "postgres"


async def outcomes(calls: list[Awaitable[T]]) -> list[T | BaseException]:
    """Run the calls at the same moment and return each result or exception."""
    return await asyncio.gather(*calls, return_exceptions=True)


def new_visitor(name: str = "Vera") -> Visitor:
    return Visitor(id=new_id(), name=name, email=None, created_at=utc_now())


async def ready_agent(store: Store, email: str, max_chats: int = 1) -> str:
    agent = await store.create_agent(email, email.split("@")[0].title(), "hash")
    await store.set_agent_status(agent.id, "ready", max_chats)
    await store.set_agent_connected(agent.id, True)
    return agent.id


async def active_chat(store: Store) -> tuple[str, Sender, Sender]:
    agent_id = await ready_agent(store, "ann@example.com")
    visitor = new_visitor()
    chat, created = await store.open_chat(
        visitor, department=None, metadata=None, first_message=("hi", "c0")
    )
    assert created
    assigned = await store.assign_waiting()
    assert [c.id for c in assigned] == [chat.id]
    return (
        chat.id,
        Sender("visitor", visitor.id, "Vera"),
        Sender("agent", agent_id, "Ann"),
    )


async def queue_chats(store: Store, count: int) -> list[str]:
    chat_ids = []
    for n in range(count):
        chat, _ = await store.open_chat(
            new_visitor(f"V{n}"), department=None, metadata=None, first_message=None
        )
        chat_ids.append(chat.id)
    return chat_ids


# Migrations


async def test_migrations_recorded_once(database_url: str) -> None:
    for _ in range(2):
        store = create_store(database_url)
        await store.open()
        await store.close()
    rows = await fetch_rows(
        database_url, "SELECT version FROM schema_migrations ORDER BY version"
    )
    expected = [v for v, _, _ in load_migrations(dialect(database_url))]
    assert [row[0] for row in rows] == expected


async def test_simultaneous_starts_migrate_once(database_url: str) -> None:
    starting = [create_store(database_url) for _ in range(PROCESSES)]
    results = await outcomes([store.open() for store in starting])
    for store in starting:
        await store.close()
    assert results == [None] * PROCESSES
    rows = await fetch_rows(database_url, "SELECT version FROM schema_migrations")
    expected = [v for v, _, _ in load_migrations(dialect(database_url))]
    assert sorted(row[0] for row in rows) == expected


async def test_simultaneous_first_opens_of_new_files(tmp_path: Path) -> None:
    """Stores that open a new SQLite file at once all switch it to WAL.

    SQLite rejects such a switch at once, without the busy timeout. A single
    round rarely shows the race, so the test runs many.
    """
    for round_ in range(40):
        url = f"sqlite:///{tmp_path / f'chat-{round_}.sqlite3'}"
        starting = [create_store(url) for _ in range(PROCESSES)]
        results = await outcomes([store.open() for store in starting])
        for store in starting:
            await store.close()
        assert results == [None] * PROCESSES, f"round {round_}"


def test_migration_names_match() -> None:
    """Both dialects have the same migrations, so versions mean the same schema."""
    sqlite_names = [name for _, name, _ in load_migrations("sqlite")]
    postgres_names = [name for _, name, _ in load_migrations("postgres")]
    assert sqlite_names == postgres_names


def test_new_ids_are_time_ordered_uuids() -> None:
    """Ids are distinct UUIDs of version 7 that sort by creation time."""
    earlier = [new_id() for _ in range(1000)]
    time.sleep(0.002)
    later = [new_id() for _ in range(1000)]
    assert len(set(earlier + later)) == 2000
    assert max(earlier) < min(later)
    for value in earlier + later:
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
    created_ms = uuid.UUID(later[0]).int >> 80
    assert abs(created_ms - time.time() * 1000) < 5000


def test_split_sql_keeps_trigger_whole() -> None:
    script = (
        "-- comment\nCREATE TABLE t (x);\n\n"
        "CREATE TRIGGER g AFTER INSERT ON t\nBEGIN\n  SELECT 1;\n  SELECT 2;\nEND;\n"
    )
    statements = _split_sql(script)
    assert len(statements) == 2
    assert statements[1].startswith("CREATE TRIGGER g")
    assert statements[1].endswith("END;")


async def test_wal_mode(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "chat.sqlite3")
    await store.open()
    await store.close()
    mode = sqlite3.connect(tmp_path / "chat.sqlite3").execute("PRAGMA journal_mode")
    assert mode.fetchone()[0] == "wal"


async def test_sqlite_upgrade_keeps_chats_and_messages(tmp_path: Path) -> None:
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
        await check_upgraded(store)
    finally:
        await store.close()
    check = sqlite3.connect(path).execute("PRAGMA foreign_key_check").fetchall()
    assert check == []


async def test_postgres_upgrade_keeps_chats_and_messages() -> None:
    """The same upgrade on PostgreSQL, from the first two migrations."""
    url = await create_postgres_database()
    try:
        db = await asyncpg.connect(url)
        try:
            await db.execute(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            for version, name, sql in load_migrations("postgres")[:2]:
                await db.execute(sql)
                await db.execute(
                    "INSERT INTO schema_migrations VALUES ($1, $2, $3)",
                    version,
                    name,
                    utc_now(),
                )
            now = utc_now()
            await db.execute(
                "INSERT INTO visitors VALUES ('v1', 'Vera', NULL, $1)", now
            )
            await db.execute(
                "INSERT INTO chats (id, visitor_id, status, queue_rank, created_at,"
                " queued_at) VALUES ('c1', 'v1', 'queued', 1, $1, $1)",
                now,
            )
            await db.execute(
                "INSERT INTO messages VALUES ('m1', 'c1', 1, 'visitor', 'v1', 'Vera',"
                " 'hello', 'x1', $1)",
                now,
            )
        finally:
            await db.close()

        store = PostgresStore(url)
        await store.open()
        try:
            await check_upgraded(store)
        finally:
            await store.close()
    finally:
        await drop_postgres_database(url)


async def check_upgraded(store: Store) -> None:
    """Check the chat that the upgrade tests stored before the last migrations."""
    chat = await store.get_chat("c1")
    assert chat is not None
    assert (chat.status, chat.last_seq) == ("queued", 1)
    messages, _ = await store.list_messages("c1")
    assert [m.text for m in messages] == ["hello"]
    # The upgraded schema still advances last_seq and takes new statuses.
    visitor = Sender("visitor", "v1", "Vera")
    message, _ = await store.add_message("c1", visitor, "again", "x2")
    assert message.seq == 2
    missed = await store.miss_waiting(utc_now())
    assert [c.status for c in missed] == ["missed"]


# One store


async def test_sqlite_write_ahead_log_stays_small(tmp_path: Path) -> None:
    """Commits copy the log into the database every CHECKPOINT_PAGES pages.

    The log file keeps its largest size, so its size shows how long the log
    grew between two copies.
    """
    path = tmp_path / "chat.sqlite3"
    store = SQLiteStore(path)
    await store.open()
    try:
        chat_id, visitor, _ = await active_chat(store)
        for batch in range(300):
            await asyncio.gather(
                *(
                    store.add_message(chat_id, visitor, "x" * 200, f"{batch}-{n}")
                    for n in range(10)
                )
            )
        # Closing the last connection deletes the log, so measure it first.
        wal_bytes = (tmp_path / "chat.sqlite3-wal").stat().st_size
    finally:
        await store.close()
    with closing(sqlite3.connect(path)) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    wal_pages = wal_bytes // page_size
    assert wal_pages > CHECKPOINT_PAGES / 2
    assert wal_pages < CHECKPOINT_PAGES * 1.5


async def test_message_seq_and_last_seq(store: Store) -> None:
    chat_id, visitor, agent = await active_chat(store)
    first, created = await store.add_message(chat_id, agent, "hello", "a1")
    second, _ = await store.add_message(chat_id, visitor, "thanks", "v1")
    assert created
    assert (first.seq, second.seq) == (2, 3)
    chat = await store.get_chat(chat_id)
    assert chat is not None
    assert chat.last_seq == 3


async def test_message_retry_returns_stored(store: Store) -> None:
    chat_id, visitor, _ = await active_chat(store)
    first, _ = await store.add_message(chat_id, visitor, "once", "same")
    again, created = await store.add_message(chat_id, visitor, "twice", "same")
    assert created is False
    assert again == first


async def test_message_errors(store: Store) -> None:
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


async def test_requeue_goes_to_front_in_order(store: Store) -> None:
    agent_id = await ready_agent(store, "ann@example.com", max_chats=2)
    chat_ids = await queue_chats(store, 3)
    assigned = await store.assign_waiting()
    assert [c.id for c in assigned] == chat_ids[:2]

    requeued = await store.requeue_agent_chats(agent_id)
    assert [c.id for c in requeued] == chat_ids[:2]
    queue = await store.queue_entries()
    assert [entry.chat_id for entry in queue] == [chat_ids[0], chat_ids[1], chat_ids[2]]
    assert [await store.queue_position(chat_id) for chat_id in chat_ids] == [1, 2, 3]
    stored = await store.get_agent(agent_id)
    assert stored is not None
    assert stored.status == "offline"


async def test_queue_counts_by_department(store: Store) -> None:
    assert await store.queue_counts() == []
    agent_id = await ready_agent(store, "ann@example.com")
    departments = [None, "sales", None, "billing", "sales", "sales"]
    for department in departments:
        await store.open_chat(
            new_visitor(), department=department, metadata=None, first_message=None
        )
    # The first chat, of the general queue, leaves it for the agent.
    assigned = await store.assign_waiting()
    assert [chat.agent_id for chat in assigned] == [agent_id]

    entries = await store.queue_entries()
    counts = await store.queue_counts()
    assert [(count.department, count.queued) for count in counts] == [
        ("sales", 3),
        (None, 1),
        ("billing", 1),
    ]
    for count in counts:
        times = [e.queued_at for e in entries if e.department == count.department]
        assert count.oldest_queued_at == min(times)


async def test_read_mark_only_rises(store: Store) -> None:
    chat_id, visitor, _ = await active_chat(store)
    assert await store.set_read_mark(chat_id, "visitor", visitor.id, 3) == 3
    assert await store.set_read_mark(chat_id, "visitor", visitor.id, 1) == 3
    assert await store.get_read_mark(chat_id, "visitor", visitor.id) == 3
    assert await store.get_read_mark(chat_id, "agent", "nobody") == 0


async def test_chat_carries_read_marks(store: Store) -> None:
    chat_id, visitor, agent = await active_chat(store)
    fresh = await store.get_chat(chat_id)
    assert fresh is not None
    assert fresh.to_wire()["read"] == {"visitor": 0, "agent": 0}

    await store.add_message(chat_id, agent, "hello", "a1")
    await store.set_read_mark(chat_id, "visitor", visitor.id, 2)
    await store.set_read_mark(chat_id, "agent", agent.id, 1)
    # A mark of someone who is not the chat's agent is not the agent's.
    await store.set_read_mark(chat_id, "agent", "another-agent", 2)
    read = await store.get_chat(chat_id)
    assert read is not None
    assert read.to_wire()["read"] == {"visitor": 2, "agent": 1}
    listed = await store.active_chats_of_agent(agent.id)
    assert [chat.to_wire()["read"] for chat in listed] == [{"visitor": 2, "agent": 1}]


async def test_timeouts_fire_once(store: Store) -> None:
    chat_id, visitor, agent = await active_chat(store)
    requeued = await store.requeue_unreplied(LATER)
    assert [(chat.id, left) for chat, left in requeued] == [(chat_id, agent.id)]
    assert await store.requeue_unreplied(LATER) == []
    # The agent who let it go does not get it back.
    assert await store.assign_waiting() == []
    assert [c.id for c in await store.miss_waiting(LATER)] == [chat_id]
    assert await store.miss_waiting(LATER) == []
    with pytest.raises(WrongState):
        await store.add_message(chat_id, visitor, "late", "v9")


async def test_reply_keeps_the_chat(store: Store) -> None:
    chat_id, _, agent = await active_chat(store)
    await store.add_message(chat_id, agent, "hello", "a1")
    assert await store.requeue_unreplied(LATER) == []
    # The visitor spoke before the assignment only, so inactivity ends it.
    ended = await store.end_inactive(LATER)
    assert [(c.id, c.end_reason) for c in ended] == [(chat_id, "inactive")]
    assert await store.end_inactive(LATER) == []


async def test_email_ignores_ascii_case(store: Store) -> None:
    agent = await store.create_agent("Ann@Example.com", "Ann", "hash")
    found = await store.get_agent_by_email("ann@example.COM")
    assert found is not None
    assert found.id == agent.id
    with pytest.raises(WrongState):
        await store.create_agent("ANN@example.com", "Ann again", "hash")


async def test_agents_listed_in_byte_order(store: Store) -> None:
    for name in ("alice", "Bob", "Émile", "carol"):
        await store.create_agent(f"{new_id()}@example.com", name, "hash")
    loads = await store.list_agent_loads()
    assert [load.agent.name for load in loads] == ["Bob", "alice", "carol", "Émile"]


async def test_notes_keep_insertion_order(store: Store) -> None:
    chat_id, _, agent = await active_chat(store)
    for n in range(20):
        await store.add_note(chat_id, agent, f"note {n}", f"n{n}")
    notes = await store.list_notes(chat_id)
    assert [note.text for note in notes] == [f"note {n}" for n in range(20)]


# Several stores on one database


async def test_concurrent_messages_take_consecutive_seqs(
    stores: list[Store],
) -> None:
    chat_id, visitor, agent = await active_chat(stores[0])
    calls = [
        stores[n % PROCESSES].add_message(
            chat_id, visitor if n % 2 else agent, f"text {n}", f"c{n}"
        )
        for n in range(40)
    ]
    results = await outcomes(calls)
    seqs = sorted(message.seq for message, _ in results)  # type: ignore[misc]
    assert seqs == list(range(2, 42))
    chat = await stores[1].get_chat(chat_id)
    assert chat is not None
    assert chat.last_seq == 41
    messages, more = await stores[2].list_messages(chat_id, limit=100)
    assert [m.seq for m in messages] == list(range(1, 42))
    assert more is False


async def test_concurrent_retries_store_once(stores: list[Store]) -> None:
    chat_id, visitor, _ = await active_chat(stores[0])
    calls = [
        store.add_message(chat_id, visitor, "same text", "same id")
        for store in stores * 2
    ]
    results = await outcomes(calls)
    created = [flag for _, flag in results]  # type: ignore[misc]
    assert created.count(True) == 1
    assert len({message for message, _ in results}) == 1  # type: ignore[misc]
    messages, _ = await stores[0].list_messages(chat_id)
    assert [m.seq for m in messages] == [1, 2]


async def test_concurrent_ends_act_once(stores: list[Store]) -> None:
    chat_id, _, _ = await active_chat(stores[0])
    results = await outcomes(
        [store.end_chat(chat_id, "visitor", None) for store in stores]
    )
    ended = [result for result in results if isinstance(result, Chat)]
    assert len(ended) == 1
    assert all(isinstance(r, WrongState) for r in results if r not in ended)


async def test_concurrent_opens_make_one_chat(stores: list[Store]) -> None:
    visitor = new_visitor()
    results = await outcomes(
        [
            store.open_chat(
                visitor, department=None, metadata=None, first_message=("hi", "c0")
            )
            for store in stores
        ]
    )
    created = [flag for _, flag in results]  # type: ignore[misc]
    assert created.count(True) == 1
    assert len({chat.id for chat, _ in results}) == 1  # type: ignore[misc]
    assert await stores[0].count_queued() == 1


async def test_concurrent_joins_queue_in_time_order(stores: list[Store]) -> None:
    await outcomes(
        [
            stores[n % PROCESSES].open_chat(
                new_visitor(), department=None, metadata=None, first_message=None
            )
            for n in range(24)
        ]
    )
    times = [entry.queued_at for entry in await stores[0].queue_entries()]
    assert len(times) == 24
    assert times == sorted(times)


async def test_assignment_bursts_respect_capacity(stores: list[Store]) -> None:
    """Joins and assignments from every store at once: no chat twice, no agent full."""
    agent_ids = [
        await ready_agent(stores[0], f"agent{n}@example.com", max_chats=2)
        for n in range(3)
    ]

    async def join_and_assign(store: Store, name: str) -> list[Chat]:
        await store.open_chat(
            new_visitor(name), department=None, metadata=None, first_message=None
        )
        return await store.assign_waiting()

    results = await outcomes(
        [join_and_assign(stores[n % PROCESSES], f"V{n}") for n in range(12)]
        + [store.assign_waiting() for store in stores]
    )
    assigned = [chat for chats in results for chat in chats]  # type: ignore[union-attr]
    counts = Counter(chat.id for chat in assigned)
    assert all(count == 1 for count in counts.values()), counts
    assert len(counts) == 6
    loads = {load.agent.id: load.load for load in await stores[0].list_agent_loads()}
    assert loads == {agent_id: 2 for agent_id in agent_ids}
    assert await stores[0].count_queued() == 6


async def test_concurrent_transfers_respect_capacity(stores: list[Store]) -> None:
    store = stores[0]
    chats = []
    for n in range(3):
        agent_id = await ready_agent(store, f"from{n}@example.com")
        chat, _ = await store.open_chat(
            new_visitor(), department=None, metadata=None, first_message=None
        )
        assert [c.id for c in await store.assign_waiting()] == [chat.id]
        chats.append((chat.id, agent_id))
    target = await ready_agent(store, "target@example.com", max_chats=1)
    results = await outcomes(
        [
            stores[n].transfer_to_agent(chat_id, agent_id, target)
            for n, (chat_id, agent_id) in enumerate(chats)
        ]
    )
    moved = [result for result in results if isinstance(result, Chat)]
    assert len(moved) == 1
    assert moved[0].agent_id == target
    reasons = [r.reason for r in results if isinstance(r, TransferRejected)]
    assert reasons == ["agent_full", "agent_full"]


async def test_concurrent_timeouts_act_once(stores: list[Store]) -> None:
    chat_ids = await queue_chats(stores[0], 5)
    results = await outcomes([store.miss_waiting(LATER) for store in stores])
    missed = [chat.id for chats in results for chat in chats]  # type: ignore[union-attr]
    assert sorted(missed) == sorted(chat_ids)


async def test_concurrent_unreplied_requeue_once(stores: list[Store]) -> None:
    chat_id, _, agent = await active_chat(stores[0])
    results = await outcomes([store.requeue_unreplied(LATER) for store in stores])
    requeued = [pair for pairs in results for pair in pairs]  # type: ignore[union-attr]
    assert [(chat.id, left) for chat, left in requeued] == [(chat_id, agent.id)]
    assert [entry.chat_id for entry in await stores[0].queue_entries()] == [chat_id]


async def test_concurrent_inactivity_ends_once(stores: list[Store]) -> None:
    chat_id, _, _ = await active_chat(stores[0])
    results = await outcomes([store.end_inactive(LATER) for store in stores])
    ended = [chat.id for chats in results for chat in chats]  # type: ignore[union-attr]
    assert ended == [chat_id]


async def test_concurrent_agent_requeues_act_once(stores: list[Store]) -> None:
    chat_id, _, agent = await active_chat(stores[0])
    results = await outcomes([store.requeue_agent_chats(agent.id) for store in stores])
    requeued = [chat.id for chats in results for chat in chats]  # type: ignore[union-attr]
    assert requeued == [chat_id]


async def test_concurrent_ratings_store_one(stores: list[Store]) -> None:
    chat_id, visitor, _ = await active_chat(stores[0])
    await stores[0].end_chat(chat_id, "visitor", None)
    results = await outcomes(
        [
            store.rate_chat(chat_id, visitor.id, score, None)
            for score, store in enumerate(stores, start=1)
        ]
    )
    rated = [result for result in results if isinstance(result, Chat)]
    assert len(rated) == 1
    assert all(isinstance(r, WrongState) for r in results if r not in rated)
    stored = await stores[0].get_chat(chat_id)
    assert stored is not None
    assert stored.rating_score == rated[0].rating_score


async def test_leave_message_races_assignment(stores: list[Store]) -> None:
    """A queued chat either gets its agent or becomes missed, never both."""
    agent_id = await ready_agent(stores[0], "ann@example.com")
    await stores[0].set_agent_connected(agent_id, False)
    visitor = new_visitor()
    chat, _ = await stores[0].open_chat(
        visitor, department=None, metadata=None, first_message=None
    )
    await stores[0].set_agent_connected(agent_id, True)
    results: list[Any] = await outcomes(
        [
            stores[1].assign_waiting(),
            stores[2].leave_message(
                visitor, department=None, text="call me", client_id="m1"
            ),
        ]
    )
    stored = await stores[0].get_chat(chat.id)
    assert stored is not None
    if isinstance(results[1], WrongState):
        assert [c.id for c in results[0]] == [chat.id]
        assert stored.status == "active"
    else:
        assert results[0] == []
        assert stored.status == "missed"


async def test_control_characters_round_trip(store: Store) -> None:
    """U+0000 and U+0001, which PostgreSQL stores escaped, come back as sent."""
    chat_id, visitor, agent = await active_chat(store)
    texts = ["a\x00b", "\x01", "\x01\x01", "\x00\x01\x02", "x\x01\x02y"]
    for n, text in enumerate(texts):
        message, created = await store.add_message(chat_id, visitor, text, f"c\x00{n}")
        assert created
        assert message.text == text
    again, created = await store.add_message(chat_id, visitor, "other", "c\x001")
    assert created is False
    assert again.text == texts[1]
    messages, _ = await store.list_messages(chat_id)
    assert [m.text for m in messages[1:]] == texts
    await store.add_note(chat_id, agent, "note\x00", "n\x01")
    notes = await store.list_notes(chat_id)
    assert [(n.text, n.client_id) for n in notes] == [("note\x00", "n\x01")]
    with pytest.raises(NotFound):
        await store.add_message("chat\x00", visitor, "x", "y")
    assert await store.get_chat("\x00") is None


@pytest.mark.parametrize(
    "strings",
    [
        ["", "\x00", "\x01", "\x02", "a"],
        ["\x00\x00", "\x00\x01", "\x01\x00", "\x01\x01", "\x01\x02"],
        ["a\x00", "a\x00b", "a\x01", "ab", "\x7f", "é"],
    ],
)
def test_text_escape_keeps_order(strings: list[str]) -> None:
    assert sorted(strings) == strings
    escaped = [_escape_text(value) for value in strings]
    assert all("\x00" not in value for value in escaped)
    assert [_unescape_text(value) for value in escaped] == strings
    assert sorted(escaped, key=lambda v: v.encode()) == escaped


async def connected_flags(store: Store) -> dict[str, bool]:
    return {load.agent.id: load.connected for load in await store.list_agent_loads()}


async def test_agent_connected_marks_valid_agents_only(store: Store) -> None:
    """One write marks the agent connected and offline agents away, if still valid."""
    agent = await store.create_agent("ann@example.com", "Ann", "hash")
    assert agent.status == "offline"

    marked = await store.agent_connected(agent.id, agent.token_version)
    assert marked is not None
    assert (marked.id, marked.status) == (agent.id, "away")
    assert (await connected_flags(store))[agent.id] is True

    # A ready agent stays ready when another of its sockets connects.
    await store.set_agent_status(agent.id, "ready")
    await store.set_agent_connected(agent.id, False)
    marked = await store.agent_connected(agent.id, agent.token_version)
    assert marked is not None
    assert marked.status == "ready"
    assert await store.available_agents() == (1, marked.max_chats)

    # An outdated token, a disabled agent and an unknown one change nothing.
    await store.set_agent_connected(agent.id, False)
    changed = await store.set_password(agent.id, "new hash", None)
    assert await store.agent_connected(agent.id, agent.token_version) is None
    await store.update_agent(agent.id, AgentChanges(disabled=True), None)
    assert await store.agent_connected(agent.id, changed.token_version) is None
    assert await store.agent_connected("no-such-agent", 0) is None
    assert (await connected_flags(store))[agent.id] is False


async def test_sqlite_locked_lookup_moves_to_reader_thread(tmp_path: Path) -> None:
    """A lookup by key that finds its file locked is run on the reader thread.

    WAL readers meet a lock only in rare moments, such as recovery after a
    crash, so the test points the loop-thread reader at a second file that a
    rollback-journal transaction keeps locked.
    """
    store = SQLiteStore(tmp_path / "chat.sqlite3")
    await store.open()
    locked_path = tmp_path / "locked.sqlite3"
    holder = sqlite3.connect(locked_path, isolation_level=None)
    try:
        agent = await store.create_agent("ann@example.com", "Ann", "hash")
        holder.execute("CREATE TABLE agents (id TEXT)")
        holder.execute("BEGIN EXCLUSIVE")
        assert store._key_reader is not None
        store._key_reader.close()
        store._key_reader = sqlite3.connect(locked_path, isolation_level=None)
        store._key_reader.execute("PRAGMA busy_timeout = 0")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            store._key_reader.execute("SELECT 1 FROM agents").fetchall()

        found = await store.get_agent(agent.id)
        assert found is not None
        assert found.name == "Ann"
    finally:
        holder.close()
        await store.close()
