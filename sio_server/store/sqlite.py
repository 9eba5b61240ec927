"""SQLite backend: one writer connection, one reader connection, WAL journal.

Writes are serialised by an asyncio lock around `BEGIN IMMEDIATE ... COMMIT`, so
each store method that changes data is one transaction. Reads go through a
second connection and, thanks to WAL, see only committed data and do not block on
the writer.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiosqlite

from .. import matchmaker
from ..errors import Forbidden, NotFound, StoreInUse, TransferRejected, WrongState
from ..models import (
    Agent,
    AgentChanges,
    AgentLoad,
    AgentStatus,
    AuditEntry,
    CannedResponse,
    Chat,
    ChatStatus,
    Message,
    Note,
    QueueCount,
    QueueEntry,
    Sender,
    SenderRole,
    Timings,
    Visitor,
    new_id,
    utc_now,
)
from .base import Store
from .common import (
    AGENT_FIELDS,
    CANNED_COLUMNS,
    CHAT_COLUMNS,
    CHAT_FROM,
    MESSAGE_COLUMNS,
    NOTE_COLUMNS,
    QUEUE_COUNTS,
    check_agent_chat,
    check_can_rate,
    check_can_take,
    new_message,
    seconds_between,
)
from .migrations import load_migrations

logger = logging.getLogger("sio_server.store")

# How long a connection waits for another one to release the file.
BUSY_TIMEOUT_MS = 5000
# Pages in the write-ahead log that make the next commit copy them into the
# database file. Every message waiting on that commit waits for the copy too,
# so short, frequent copies keep the latency tail low. In alternating runs of
# the open-loop benchmark at 2,000 msg/s, 300 pages gave a p99 of 5.0 to 6.7 ms
# and SQLite's default of 1,000 gave 7.3 to 11.9 ms, for the same CPU per
# message.
CHECKPOINT_PAGES = 300


def _chat(row: sqlite3.Row) -> Chat:
    return Chat(**dict(row))


def _message(row: sqlite3.Row) -> Message:
    return Message(**dict(row))


def _agent(row: sqlite3.Row) -> Agent:
    values = {key: row[key] for key in AGENT_FIELDS}
    values["is_admin"] = bool(values["is_admin"])
    values["disabled"] = bool(values["disabled"])
    if values["departments"] is not None:
        values["departments"] = tuple(json.loads(values["departments"]))
    return Agent(**values)


def _note(row: sqlite3.Row) -> Note:
    return Note(**dict(row))


def _canned(row: sqlite3.Row) -> CannedResponse:
    return CannedResponse(**dict(row))


class SQLiteStore(Store):
    """Store backed by one SQLite file."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        # For lookups by key, on the event loop's thread; see `_read_key`.
        self._key_reader: sqlite3.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._pending_messages: list[
            tuple[dict[str, Any], asyncio.Future[list[Any]]]
        ] = []
        self._message_writer: asyncio.Task[None] | None = None
        # The open lock file of `claim_for_server`, locked until `close`.
        self._server_lock: int | None = None

    # Connections and migrations

    def claim_for_server(self) -> None:
        """Lock the database file for this server process, or raise `StoreInUse`.

        Two servers on one SQLite file would undo each other's state,
        because a server that starts marks every agent offline. Commands
        such as `create-agent` do not claim the file, so they run beside the
        server. The kernel drops the lock when the process exits, however it
        ends.
        """
        if self._server_lock is not None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self._path.with_name(self._path.name + ".lock")
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise StoreInUse(
                f"another server process is using {self._path}: stop it first,"
                " or give this one its own CHAT_DATA_DIR or CHAT_DATABASE_URL"
            ) from None
        except BaseException:
            os.close(descriptor)
            raise
        self._server_lock = descriptor

    async def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._connect()
        await self._use_write_ahead_log(self._writer)
        await self._writer.execute(f"PRAGMA wal_autocheckpoint = {CHECKPOINT_PAGES}")
        await self._migrate()
        self._reader = await self._connect()
        self._key_reader = sqlite3.connect(self._path, isolation_level=None)
        self._key_reader.row_factory = sqlite3.Row
        # A read that would wait for a lock goes to `_reader` instead.
        self._key_reader.execute("PRAGMA busy_timeout = 0")
        self._key_reader.execute("PRAGMA query_only = ON")

    async def _connect(self) -> aiosqlite.Connection:
        connection = await aiosqlite.connect(self._path, isolation_level=None)
        connection.row_factory = sqlite3.Row
        # FULL syncs the WAL on every commit, so a message acknowledged to its
        # sender survives a power cut as well as a crash of this process.
        for pragma in (
            "PRAGMA synchronous = FULL",
            "PRAGMA foreign_keys = ON",
            f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
        ):
            await connection.execute(pragma)
        return connection

    async def _use_write_ahead_log(self, connection: aiosqlite.Connection) -> None:
        """Switch the database file to WAL, retrying while another connection does.

        SQLite fails that switch at once with "database is locked", without
        waiting out the busy timeout, so the retries here last up to it.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                rows = await connection.execute_fetchall("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as error:
                busy = error.sqlite_errorcode == sqlite3.SQLITE_BUSY
                if not busy or loop.time() > give_up:
                    raise
            await asyncio.sleep(0.01)
        mode = next(iter(rows))[0]
        if mode != "wal":
            raise RuntimeError(
                f"failed to switch {self._path} to WAL: journal mode is still"
                f" {mode!r}. WAL needs a local file system, not a network share."
            )

    async def _migrate(self) -> None:
        assert self._writer is not None
        # A migration that rebuilds a table needs foreign keys off, and the
        # pragma has no effect inside a transaction; the check before the
        # commit makes up for it.
        await self._writer.execute("PRAGMA foreign_keys = OFF")
        try:
            await self._apply_migrations()
        finally:
            await self._writer.execute("PRAGMA foreign_keys = ON")

    async def _apply_migrations(self) -> None:
        async with self._transaction() as db:
            await db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                " applied_at TEXT NOT NULL)"
            )
            rows = await db.execute_fetchall("SELECT version FROM schema_migrations")
            applied = {row[0] for row in rows}
            for version, name, sql in load_migrations("sqlite"):
                if version in applied:
                    continue
                # executescript would commit the open transaction, so run the
                # statements one by one inside it.
                for statement in _split_sql(sql):
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                    (version, name, utc_now()),
                )
                logger.info("applied migration %s to %s", name, self._path)
            broken = list(await db.execute_fetchall("PRAGMA foreign_key_check"))
            if broken:
                raise RuntimeError(
                    f"migrations left {len(broken)} broken foreign keys,"
                    f" first in table {broken[0][0]}"
                )

    async def close(self) -> None:
        if self._message_writer is not None:
            # Messages already accepted are committed before the connections go.
            await asyncio.shield(self._message_writer)
        for connection in (self._reader, self._writer):
            if connection is not None:
                await connection.close()
        if self._key_reader is not None:
            self._key_reader.close()
        self._reader = self._writer = self._key_reader = None
        if self._server_lock is not None:
            os.close(self._server_lock)
            self._server_lock = None

    async def ping(self) -> None:
        await self._read_one("SELECT 1")

    @asynccontextmanager
    async def _transaction(
        self, *, synced: bool = True
    ) -> AsyncIterator[aiosqlite.Connection]:
        """Run one write transaction.

        With `synced=False` the commit skips the fsync. It suits state that
        a restart rebuilds or a client sends again, such as agents' status
        and connection flags, where a thousand agents reconnecting at once
        would otherwise wait for a thousand syncs. The next synced commit
        syncs the write-ahead log, these writes included, in order.
        """
        if self._writer is None:
            raise RuntimeError("store is not open")
        db = self._writer
        async with self._write_lock:
            if not synced:
                await db.execute("PRAGMA synchronous = NORMAL")
            try:
                await db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    await asyncio.shield(db.execute("ROLLBACK"))
                    raise
                await asyncio.shield(db.execute("COMMIT"))
            finally:
                if not synced:
                    await asyncio.shield(db.execute("PRAGMA synchronous = FULL"))

    async def _write_unsynced(
        self, sql: str, params: Iterable[Any] = ()
    ) -> list[sqlite3.Row]:
        """Run one statement as its own transaction without fsync, and return its rows.

        The same as one statement in `_transaction(synced=False)`, in one
        call on aiosqlite's thread instead of five. Agents' connection flags
        change on every connect and disconnect of an agent socket.
        """
        if self._writer is None:
            raise RuntimeError("store is not open")
        db = self._writer
        async with self._write_lock:
            # NOTE: aiosqlite 0.22 internals, as in `_insert_messages`. The
            # function runs to its end on the thread even if this task is
            # cancelled, and the thread runs the next writer's work after it.
            rows: list[sqlite3.Row] = await db._execute(  # type: ignore[no-untyped-call]
                _run_unsynced, db._conn, sql, tuple(params)
            )
        return rows

    async def _read_all(
        self, sql: str, params: Iterable[Any] = ()
    ) -> list[sqlite3.Row]:
        if self._reader is None:
            raise RuntimeError("store is not open")
        rows = await self._reader.execute_fetchall(sql, tuple(params))
        return list(rows)

    async def _read_key(
        self, sql: str, params: Iterable[Any] = ()
    ) -> list[sqlite3.Row]:
        """Run a lookup by key, which an index resolves at once, on the loop thread.

        Each hand-over to an aiosqlite thread and back costs tens of
        microseconds of switching between threads, far more than such a
        lookup, and an agent's connect makes several. Only reads that touch
        a few rows through an index may come here, because the event loop
        waits for them. One that finds the file locked, which WAL makes rare,
        runs on `_reader` instead of waiting here.
        """
        if self._key_reader is None:
            raise RuntimeError("store is not open")
        try:
            return self._key_reader.execute(sql, tuple(params)).fetchall()
        except sqlite3.OperationalError as error:
            # The extended codes of SQLITE_BUSY keep it in their low byte.
            if error.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
        return await self._read_all(sql, params)

    async def _any(self, condition: str, *params: Any) -> bool:
        """Tell whether a row matches, without taking the write lock."""
        return await self._read_one(f"SELECT 1 {condition} LIMIT 1", params) is not None

    async def _read_one(
        self, sql: str, params: Iterable[Any] = ()
    ) -> sqlite3.Row | None:
        rows = await self._read_all(sql, params)
        return rows[0] if rows else None

    # Agents

    async def create_agent(
        self,
        email: str,
        name: str,
        password_hash: str,
        *,
        is_admin: bool = False,
        actor_id: str | None = None,
    ) -> Agent:
        agent_id = new_id()
        async with self._transaction() as db:
            try:
                await db.execute(
                    "INSERT INTO agents (id, email, name, password_hash, is_admin,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (agent_id, email, name, password_hash, int(is_admin), utc_now()),
                )
            except sqlite3.IntegrityError as exc:
                raise WrongState(f"an agent with email {email!r} exists") from exc
            details = {"email": email, "name": name, "is_admin": is_admin}
            await _audit(db, actor_id, "agent.create", agent_id, details)
            row = await _fetch_one(db, _AGENT_SELECT + " WHERE id = ?", (agent_id,))
        assert row is not None
        return _agent(row)

    async def update_agent(
        self, agent_id: str, changes: AgentChanges, actor_id: str | None
    ) -> Agent:
        serving = None
        if changes.set_departments and changes.departments is not None:
            serving = json.dumps(list(changes.departments))
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE agents SET name = COALESCE(?, name),"
                " is_admin = COALESCE(?, is_admin), disabled = COALESCE(?, disabled),"
                " max_chats = COALESCE(?, max_chats),"
                " departments = CASE WHEN ? THEN ? ELSE departments END"
                " WHERE id = ?",
                (
                    changes.name,
                    None if changes.is_admin is None else int(changes.is_admin),
                    None if changes.disabled is None else int(changes.disabled),
                    changes.max_chats,
                    int(changes.set_departments),
                    serving,
                    agent_id,
                ),
            )
            if cursor.rowcount == 0:
                raise NotFound(f"agent {agent_id!r} not found")
            if changes.disabled:
                # A disabled agent takes no chats until enabled and ready again.
                await db.execute(
                    "UPDATE agents SET status = 'offline' WHERE id = ?", (agent_id,)
                )
            await _audit(db, actor_id, "agent.update", agent_id, changes.to_details())
            row = await _fetch_one(db, _AGENT_SELECT + " WHERE id = ?", (agent_id,))
        assert row is not None
        return _agent(row)

    async def set_password(
        self, agent_id: str, password_hash: str, actor_id: str | None
    ) -> Agent:
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE agents SET password_hash = ?,"
                " token_version = token_version + 1 WHERE id = ?",
                (password_hash, agent_id),
            )
            if cursor.rowcount == 0:
                raise NotFound(f"agent {agent_id!r} not found")
            await _audit(db, actor_id, "agent.password", agent_id, {})
            row = await _fetch_one(db, _AGENT_SELECT + " WHERE id = ?", (agent_id,))
        assert row is not None
        return _agent(row)

    async def list_audit(self, limit: int, before_id: int | None) -> list[AuditEntry]:
        rows = await self._read_all(
            "SELECT id, at, actor_id, action, target_id, details FROM audit_log"
            " WHERE id < ? ORDER BY id DESC LIMIT ?",
            (before_id if before_id is not None else 2**62, limit),
        )
        return [
            AuditEntry(
                id=row["id"],
                at=row["at"],
                actor_id=row["actor_id"],
                action=row["action"],
                target_id=row["target_id"],
                details=json.loads(row["details"]),
            )
            for row in rows
        ]

    async def get_agent(self, agent_id: str) -> Agent | None:
        rows = await self._read_key(_AGENT_SELECT + " WHERE id = ?", (agent_id,))
        return _agent(rows[0]) if rows else None

    async def get_agent_by_email(self, email: str) -> Agent | None:
        row = await self._read_one(_AGENT_SELECT + " WHERE email = ?", (email,))
        return _agent(row) if row else None

    async def set_agent_status(
        self, agent_id: str, status: AgentStatus, max_chats: int | None = None
    ) -> Agent:
        async with self._transaction(synced=False) as db:
            await db.execute(
                "UPDATE agents SET status = ?, max_chats = COALESCE(?, max_chats)"
                " WHERE id = ?",
                (status, max_chats, agent_id),
            )
            row = await _fetch_one(db, _AGENT_SELECT + " WHERE id = ?", (agent_id,))
        if row is None:
            raise NotFound(f"agent {agent_id!r} not found")
        return _agent(row)

    async def set_agent_ready(
        self, agent_id: str, max_chats: int | None, departments: tuple[str, ...] | None
    ) -> Agent:
        serving = json.dumps(list(departments)) if departments is not None else None
        async with self._transaction(synced=False) as db:
            await db.execute(
                "UPDATE agents SET status = 'ready',"
                " max_chats = COALESCE(?, max_chats), departments = ? WHERE id = ?",
                (max_chats, serving, agent_id),
            )
            row = await _fetch_one(db, _AGENT_SELECT + " WHERE id = ?", (agent_id,))
        if row is None:
            raise NotFound(f"agent {agent_id!r} not found")
        return _agent(row)

    async def list_agent_loads(self) -> list[AgentLoad]:
        rows = await self._read_all(_AGENT_LOAD_SELECT + " ORDER BY name, id")
        return [_agent_load(row) for row in rows]

    async def set_agent_connected(self, agent_id: str, connected: bool) -> None:
        await self._write_unsynced(
            "UPDATE agents SET connected = ? WHERE id = ?", (int(connected), agent_id)
        )

    async def agent_connected(self, agent_id: str, token_version: int) -> Agent | None:
        rows = await self._write_unsynced(_AGENT_CONNECTED, (agent_id, token_version))
        return _agent(rows[0]) if rows else None

    async def reset_connections(self) -> None:
        async with self._transaction(synced=False) as db:
            await db.execute("UPDATE agents SET connected = 0 WHERE connected != 0")

    async def available_agents(self) -> tuple[int, int]:
        row = await self._read_one(
            "SELECT COUNT(*), COALESCE(SUM(max_chats), 0) FROM agents"
            " WHERE status = 'ready' AND connected = 1"
        )
        return (int(row[0]), int(row[1])) if row else (0, 0)

    # Visitors

    async def get_visitor(self, visitor_id: str) -> Visitor | None:
        rows = await self._read_key(
            "SELECT id, name, email, created_at FROM visitors WHERE id = ?",
            (visitor_id,),
        )
        return Visitor(**dict(rows[0])) if rows else None

    async def update_visitor(
        self, visitor_id: str, name: str | None, email: str | None
    ) -> Visitor:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE visitors SET name = COALESCE(?, name),"
                " email = COALESCE(?, email) WHERE id = ?",
                (name, email, visitor_id),
            )
            row = await _fetch_one(
                db,
                "SELECT id, name, email, created_at FROM visitors WHERE id = ?",
                (visitor_id,),
            )
        if row is None:
            raise NotFound(f"visitor {visitor_id!r} not found")
        return Visitor(**dict(row))

    # Chats

    async def open_chat(
        self,
        visitor: Visitor,
        *,
        department: str | None,
        metadata: dict[str, Any] | None,
        first_message: tuple[str, str] | None,
    ) -> tuple[Chat, bool]:
        visitor_id = visitor.id
        async with self._transaction() as db:
            # Visitors are stored when they first join, not when they connect.
            await _store_visitor(db, visitor)
            existing = await _fetch_one(
                db,
                f"SELECT {CHAT_COLUMNS} {CHAT_FROM}"
                " WHERE c.visitor_id = ? AND c.status IN ('queued', 'active')",
                (visitor_id,),
            )
            if existing is not None:
                return _chat(existing), False
            chat_id, now = new_id(), utc_now()
            await db.execute(
                "INSERT INTO chats (id, visitor_id, status, department, metadata,"
                " queue_rank, created_at, queued_at)"
                " VALUES (?, ?, 'queued', ?, ?,"
                " (SELECT COALESCE(MAX(queue_rank), 0) + 1 FROM chats"
                "  WHERE status = 'queued'), ?, ?)",
                (
                    chat_id,
                    visitor_id,
                    department,
                    json.dumps(metadata) if metadata is not None else None,
                    now,
                    now,
                ),
            )
            if first_message is not None:
                text, client_id = first_message
                sender = Sender(role="visitor", id=visitor_id, name=visitor.name)
                await _insert_message(db, chat_id, 1, sender, text, client_id)
            row = await _fetch_one(
                db, f"SELECT {CHAT_COLUMNS} {CHAT_FROM} WHERE c.id = ?", (chat_id,)
            )
        assert row is not None
        return _chat(row), True

    async def get_chat(self, chat_id: str) -> Chat | None:
        rows = await self._read_key(
            f"SELECT {CHAT_COLUMNS} {CHAT_FROM} WHERE c.id = ?", (chat_id,)
        )
        return _chat(rows[0]) if rows else None

    async def open_chat_of_visitor(self, visitor_id: str) -> Chat | None:
        rows = await self._read_key(
            f"SELECT {CHAT_COLUMNS} {CHAT_FROM}"
            " WHERE c.visitor_id = ? AND c.status IN ('queued', 'active')",
            (visitor_id,),
        )
        return _chat(rows[0]) if rows else None

    async def active_chats_of_agent(self, agent_id: str) -> list[Chat]:
        # At most the agent's capacity of rows, through the index on agent_id.
        rows = await self._read_key(
            f"SELECT {CHAT_COLUMNS} {CHAT_FROM}"
            " WHERE c.agent_id = ? AND c.status = 'active'"
            " ORDER BY c.assigned_at, c.queue_rank, c.id",
            (agent_id,),
        )
        return [_chat(row) for row in rows]

    async def list_chats(
        self,
        *,
        status: ChatStatus | None = None,
        agent_id: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[Chat]:
        conditions, params = [], []
        for column, value in (
            ("c.status = ?", status),
            ("c.agent_id = ?", agent_id),
            ("c.created_at < ?", before),
        ):
            if value is not None:
                conditions.append(column)
                params.append(value)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = await self._read_all(
            f"SELECT {CHAT_COLUMNS} {CHAT_FROM} {where}"
            " ORDER BY c.created_at DESC, c.id DESC LIMIT ?",
            (*params, limit),
        )
        return [_chat(row) for row in rows]

    async def end_chat(
        self, chat_id: str, ended_by: SenderRole, reason: str | None
    ) -> Chat:
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE chats SET status = 'ended', queue_rank = NULL, ended_at = ?,"
                " ended_by = ?, end_reason = ? WHERE id = ?"
                " AND status IN ('queued', 'active')",
                (utc_now(), ended_by, reason, chat_id),
            )
            row = await _fetch_one(
                db, f"SELECT {CHAT_COLUMNS} {CHAT_FROM} WHERE c.id = ?", (chat_id,)
            )
            if row is None:
                raise NotFound(f"chat {chat_id!r} not found")
            if cursor.rowcount == 0:
                raise WrongState(f"chat {chat_id!r} has already ended")
        return _chat(row)

    async def requeue_agent_chats(self, agent_id: str) -> list[Chat]:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE agents SET status = 'offline', connected = 0 WHERE id = ?",
                (agent_id,),
            )
            rows = await db.execute_fetchall(
                # Chats assigned in one run share assigned_at; their old queue
                # rank, kept since then, orders them.
                "SELECT id FROM chats WHERE agent_id = ? AND status = 'active'"
                " ORDER BY assigned_at, queue_rank, id",
                (agent_id,),
            )
            chat_ids = [row[0] for row in rows]
            await _requeue_at_front(db, chat_ids, passed_by=None)
            chats = await _fetch_chats(db, chat_ids)
        return chats

    async def assign_waiting(self) -> list[Chat]:
        # Most runs follow an agent's change while the queue is empty. Those
        # cost a read instead of a write transaction that blocks other writes.
        if not await self._any("FROM chats WHERE status = 'queued'"):
            return []
        async with self._transaction() as db:
            agent_rows = await db.execute_fetchall(
                "SELECT a.id, a.max_chats, a.last_assigned_at, a.departments,"
                " (SELECT COUNT(*) FROM chats c WHERE c.agent_id = a.id"
                "  AND c.status = 'active') AS load"
                " FROM agents a WHERE a.status = 'ready' AND a.connected = 1"
            )
            slots = [
                matchmaker.AgentSlot(
                    agent_id=row["id"],
                    load=row["load"],
                    max_chats=row["max_chats"],
                    last_assigned_at=row["last_assigned_at"],
                    departments=(
                        frozenset(json.loads(row["departments"]))
                        if row["departments"] is not None
                        else None
                    ),
                )
                for row in agent_rows
            ]
            free = sum(max(slot.max_chats - slot.load, 0) for slot in slots)
            if free == 0:
                return []
            limit = -1
            if all(slot.departments is None for slot in slots):
                # Every agent serves every chat, so only the oldest `free`
                # chats can be used, plus one for each chat that some agent
                # may not take back.
                passed = await _fetch_one(
                    db,
                    "SELECT COUNT(*) FROM chats"
                    " WHERE status = 'queued' AND passed_by IS NOT NULL",
                )
                assert passed is not None
                limit = free + int(passed[0])
            queue_rows = await db.execute_fetchall(
                "SELECT id, department, passed_by FROM chats WHERE status = 'queued'"
                " ORDER BY queue_rank LIMIT ?",
                (limit,),
            )
            queue = [
                matchmaker.WaitingChat(
                    chat_id=row["id"],
                    department=row["department"],
                    passed_by=row["passed_by"],
                )
                for row in queue_rows
            ]
            plan = matchmaker.plan_assignments(queue, slots)
            now = utc_now()
            for assignment in plan:
                await db.execute(
                    "UPDATE chats SET status = 'active', agent_id = ?, assigned_at = ?,"
                    " passed_by = NULL, agent_replied_at = NULL"
                    " WHERE id = ? AND status = 'queued'",
                    (assignment.agent_id, now, assignment.chat_id),
                )
                await db.execute(
                    "UPDATE agents SET last_assigned_at = ? WHERE id = ?",
                    (now, assignment.agent_id),
                )
            chats = await _fetch_chats(db, [item.chat_id for item in plan])
        return chats

    async def transfer_to_agent(
        self, chat_id: str, from_agent_id: str, to_agent_id: str
    ) -> Chat:
        async with self._transaction() as db:
            chat = await _chat_of_agent(db, chat_id, from_agent_id)
            if to_agent_id == from_agent_id:
                raise TransferRejected(
                    "the chat is yours already: pick another agent", "same_agent"
                )
            row = await _fetch_one(
                db, _AGENT_LOAD_SELECT + " WHERE id = ?", (to_agent_id,)
            )
            if row is None:
                raise NotFound(f"agent {to_agent_id!r} not found")
            check_can_take(_agent_load(row), chat["department"])
            now = utc_now()
            await db.execute(
                "UPDATE chats SET agent_id = ?, assigned_at = ?,"
                " agent_replied_at = NULL WHERE id = ?",
                (to_agent_id, now, chat_id),
            )
            await db.execute(
                "UPDATE agents SET last_assigned_at = ? WHERE id = ?",
                (now, to_agent_id),
            )
            (moved,) = await _fetch_chats(db, [chat_id])
        return moved

    async def transfer_to_queue(
        self, chat_id: str, from_agent_id: str, department: str | None
    ) -> Chat:
        async with self._transaction() as db:
            await _chat_of_agent(db, chat_id, from_agent_id)
            await db.execute(
                "UPDATE chats SET department = ? WHERE id = ?", (department, chat_id)
            )
            await _requeue_at_front(db, [chat_id], passed_by=from_agent_id)
            (moved,) = await _fetch_chats(db, [chat_id])
        return moved

    async def requeue_unreplied(self, assigned_before: str) -> list[tuple[Chat, str]]:
        if not await self._any(_UNREPLIED, assigned_before):
            return []
        async with self._transaction() as db:
            rows = await db.execute_fetchall(
                f"SELECT id, agent_id {_UNREPLIED} ORDER BY assigned_at, id",
                (assigned_before,),
            )
            if not rows:
                return []
            left = {row["id"]: row["agent_id"] for row in rows}
            # Each chat is passed by its own agent, so one UPDATE per chat.
            for chat_id, agent_id in left.items():
                await _requeue_at_front(db, [chat_id], passed_by=agent_id)
            chats = await _fetch_chats(db, list(left))
        return [(chat, left[chat.id]) for chat in chats]

    async def miss_waiting(self, queued_before: str) -> list[Chat]:
        return await self._close_due(
            _WAITING_TOO_LONG, queued_before, "missed", "queue_timeout"
        )

    async def end_inactive(self, active_before: str) -> list[Chat]:
        return await self._close_due(
            _VISITOR_SILENT, active_before, "ended", "inactive"
        )

    async def _close_due(
        self, condition: str, cutoff: str, status: ChatStatus, reason: str
    ) -> list[Chat]:
        """Close the chats that `condition` finds due at `cutoff`, by the system."""
        if not await self._any(condition, cutoff):
            return []
        async with self._transaction() as db:
            rows = await db.execute_fetchall(
                "UPDATE chats SET status = ?, queue_rank = NULL, ended_at = ?,"
                " ended_by = 'system', end_reason = ?"
                f" WHERE id IN (SELECT id {condition}) RETURNING id",
                (status, utc_now(), reason, cutoff),
            )
            chats = await _fetch_chats(db, [row[0] for row in rows])
        return chats

    async def leave_message(
        self,
        visitor: Visitor,
        *,
        department: str | None,
        text: str,
        client_id: str,
    ) -> Chat:
        sender = Sender(role="visitor", id=visitor.id, name=visitor.name)
        async with self._transaction() as db:
            await _store_visitor(db, visitor)
            # A retry of the same message returns the chat it made.
            retried = await _fetch_one(
                db,
                "SELECT c.id FROM messages m JOIN chats c ON c.id = m.chat_id"
                " WHERE c.visitor_id = ? AND m.sender_id = ? AND m.client_id = ?"
                " AND c.status = 'missed'",
                (visitor.id, visitor.id, client_id),
            )
            if retried is not None:
                (chat,) = await _fetch_chats(db, [retried[0]])
                return chat
            now = utc_now()
            row = await _fetch_one(
                db,
                "SELECT id, status, last_seq FROM chats"
                " WHERE visitor_id = ? AND status IN ('queued', 'active')",
                (visitor.id,),
            )
            if row is not None and row["status"] == "active":
                raise WrongState(
                    "you are in a chat with an agent: send the message there"
                )
            if row is not None:
                chat_id, seq = row["id"], int(row["last_seq"]) + 1
                await db.execute(
                    "UPDATE chats SET status = 'missed', queue_rank = NULL,"
                    " department = COALESCE(?, department), ended_at = ?,"
                    " ended_by = 'visitor', end_reason = 'left_message' WHERE id = ?",
                    (department, now, chat_id),
                )
            else:
                chat_id, seq = new_id(), 1
                await db.execute(
                    "INSERT INTO chats (id, visitor_id, status, department,"
                    " created_at, ended_at, ended_by, end_reason)"
                    " VALUES (?, ?, 'missed', ?, ?, ?, 'visitor', 'left_message')",
                    (chat_id, visitor.id, department, now, now),
                )
            await _insert_message(db, chat_id, seq, sender, text, client_id)
            (chat,) = await _fetch_chats(db, [chat_id])
        return chat

    async def reply_to_missed(
        self, chat_id: str, sender: Sender, text: str, client_id: str
    ) -> tuple[Message, bool]:
        async with self._transaction() as db:
            row = await _fetch_one(
                db, "SELECT status, last_seq FROM chats WHERE id = ?", (chat_id,)
            )
            if row is None:
                raise NotFound(f"chat {chat_id!r} not found")
            if row["status"] != "missed":
                raise WrongState(
                    f"chat {chat_id!r} is {row['status']}: only missed chats are"
                    " replied to this way"
                )
            stored = await _fetch_one(
                db,
                f"SELECT {MESSAGE_COLUMNS} FROM messages"
                " WHERE chat_id = ? AND sender_id = ? AND client_id = ?",
                (chat_id, sender.id, client_id),
            )
            if stored is not None:
                return _message(stored), False
            await db.execute(
                "UPDATE chats SET agent_id = COALESCE(agent_id, ?) WHERE id = ?",
                (sender.id, chat_id),
            )
            message = await _insert_message(
                db, chat_id, int(row["last_seq"]) + 1, sender, text, client_id
            )
        return message, True

    async def rate_chat(
        self, chat_id: str, visitor_id: str, score: int, comment: str | None
    ) -> Chat:
        async with self._transaction() as db:
            row = await _fetch_one(
                db,
                "SELECT visitor_id, agent_id, status, rated_at FROM chats WHERE id = ?",
                (chat_id,),
            )
            check_can_rate(row, chat_id, visitor_id)
            await db.execute(
                "UPDATE chats SET rating_score = ?, rating_comment = ?, rated_at = ?"
                " WHERE id = ?",
                (score, comment or None, utc_now(), chat_id),
            )
            (chat,) = await _fetch_chats(db, [chat_id])
        return chat

    async def recent_timings(self, limit: int) -> Timings:
        waits = await self._read_all(
            "SELECT queued_at, assigned_at FROM chats WHERE assigned_at IS NOT NULL"
            " AND queued_at IS NOT NULL ORDER BY assigned_at DESC LIMIT ?",
            (limit,),
        )
        durations = await self._read_all(
            "SELECT assigned_at, ended_at FROM chats WHERE status = 'ended'"
            " AND assigned_at IS NOT NULL AND agent_id IS NOT NULL"
            " ORDER BY ended_at DESC LIMIT ?",
            (limit,),
        )
        return Timings(
            waits=[seconds_between(row[0], row[1]) for row in reversed(waits)],
            durations=[seconds_between(row[0], row[1]) for row in reversed(durations)],
        )

    async def queue_position(self, chat_id: str) -> int:
        row = await self._read_one(
            "SELECT COUNT(*) FROM chats q,"
            " (SELECT queue_rank, department FROM chats"
            "  WHERE id = ? AND status = 'queued') me"
            " WHERE q.status = 'queued' AND q.department IS me.department"
            " AND q.queue_rank <= me.queue_rank",
            (chat_id,),
        )
        return int(row[0]) if row else 0

    async def count_chats_by_status(self) -> dict[str, int]:
        rows = await self._read_all(
            "SELECT status, COUNT(*) FROM chats GROUP BY status"
        )
        return {row[0]: int(row[1]) for row in rows}

    async def count_queued(self) -> int:
        row = await self._read_one("SELECT COUNT(*) FROM chats WHERE status = 'queued'")
        return int(row[0]) if row else 0

    async def queue_entries(self) -> list[QueueEntry]:
        rows = await self._read_all(
            "SELECT id, visitor_id, queued_at, department FROM chats"
            " WHERE status = 'queued' ORDER BY queue_rank"
        )
        return [
            QueueEntry(chat_id=r[0], visitor_id=r[1], queued_at=r[2], department=r[3])
            for r in rows
        ]

    async def queue_counts(self) -> list[QueueCount]:
        rows = await self._read_all(QUEUE_COUNTS)
        return [QueueCount(r[0], r[1], r[2]) for r in rows]

    async def people_with_open_state(self) -> tuple[list[str], list[str]]:
        visitors = await self._read_all(
            "SELECT DISTINCT visitor_id FROM chats WHERE status IN ('queued', 'active')"
        )
        agents = await self._read_all(
            "SELECT id FROM agents WHERE status != 'offline' UNION"
            " SELECT agent_id FROM chats WHERE status = 'active'"
        )
        return [row[0] for row in visitors], [row[0] for row in agents]

    # Messages

    async def add_message(
        self, chat_id: str, sender: Sender, text: str, client_id: str
    ) -> tuple[Message, bool]:
        # The seq is known only once the INSERT has run.
        message = new_message(chat_id, 0, sender, text, client_id)
        params = {
            "id": message.id,
            "chat_id": chat_id,
            "role": sender.role,
            "sender_id": sender.id,
            "name": sender.name,
            "text": text,
            "client_id": client_id,
            "created_at": message.created_at,
        }
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending_messages.append((params, future))
        if self._message_writer is None or self._message_writer.done():
            self._message_writer = asyncio.create_task(self._write_messages())
        rows = await future
        if rows:
            return replace(message, seq=int(rows[0][0])), True
        return await self._message_not_added(chat_id, sender, client_id), False

    async def _write_messages(self) -> None:
        """Commit pending messages in batches, one transaction and fsync each.

        Messages that arrive while a batch commits wait for the next one, so
        the cost of the sync spreads over every message sent meanwhile. Each
        sender still gets its reply only after its own row is committed.
        """
        while self._pending_messages:
            batch = self._pending_messages[:MESSAGE_BATCH]
            del self._pending_messages[:MESSAGE_BATCH]
            try:
                results = await self._insert_messages([params for params, _ in batch])
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, future), rows in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(rows)

    async def _insert_messages(
        self, batch: list[dict[str, Any]]
    ) -> list[list[sqlite3.Row]]:
        """Insert a batch of messages in one synced transaction.

        The whole transaction runs as one call on aiosqlite's thread: one
        hand-over between threads per batch instead of one per statement.
        """
        if self._writer is None:
            raise RuntimeError("store is not open")
        db = self._writer
        async with self._write_lock:
            # NOTE: `_execute` (run a function on the connection's thread)
            # and `_conn` are aiosqlite 0.22 internals with no public
            # equivalent.
            results: list[list[sqlite3.Row]] = await db._execute(  # type: ignore[no-untyped-call]
                _insert_batch, db._conn, batch
            )
        return results

    async def _message_not_added(
        self, chat_id: str, sender: Sender, client_id: str
    ) -> Message:
        """Explain why the INSERT added nothing: return the stored retry or raise."""
        chat = await self._read_one(
            "SELECT status, visitor_id, agent_id FROM chats WHERE id = ?", (chat_id,)
        )
        if chat is None:
            raise NotFound(f"chat {chat_id!r} not found")
        owner = chat["visitor_id"] if sender.role == "visitor" else chat["agent_id"]
        if owner != sender.id:
            raise Forbidden(f"chat {chat_id!r} is not yours")
        existing = await self._read_one(
            f"SELECT {MESSAGE_COLUMNS} FROM messages"
            " WHERE chat_id = ? AND sender_id = ? AND client_id = ?",
            (chat_id, sender.id, client_id),
        )
        if existing is not None:
            return _message(existing)
        raise WrongState(f"chat {chat_id!r} has ended: start a new chat")

    async def list_messages(
        self, chat_id: str, *, after_seq: int = 0, limit: int = 100
    ) -> tuple[list[Message], bool]:
        rows = await self._read_all(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = ? AND seq > ?"
            " ORDER BY seq LIMIT ?",
            (chat_id, after_seq, limit + 1),
        )
        return [_message(row) for row in rows[:limit]], len(rows) > limit

    # Notes

    async def add_note(
        self, chat_id: str, author: Sender, text: str, client_id: str
    ) -> tuple[Note, bool]:
        note_id = new_id()
        async with self._transaction() as db:
            cursor = await db.execute(
                "INSERT INTO notes (id, chat_id, author_id, author_name, text,"
                " client_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (chat_id, author_id, client_id) DO NOTHING",
                (note_id, chat_id, author.id, author.name, text, client_id, utc_now()),
            )
            created = cursor.rowcount == 1
            row = await _fetch_one(
                db,
                f"SELECT {NOTE_COLUMNS} FROM notes"
                " WHERE chat_id = ? AND author_id = ? AND client_id = ?",
                (chat_id, author.id, client_id),
            )
        assert row is not None
        return _note(row), created

    async def list_notes(self, chat_id: str) -> list[Note]:
        rows = await self._read_all(
            f"SELECT {NOTE_COLUMNS} FROM notes WHERE chat_id = ?"
            " ORDER BY created_at, rowid",
            (chat_id,),
        )
        return [_note(row) for row in rows]

    # Canned responses

    async def list_canned(self) -> list[CannedResponse]:
        rows = await self._read_all(
            f"SELECT {CANNED_COLUMNS} FROM canned_responses ORDER BY shortcut"
        )
        return [_canned(row) for row in rows]

    async def create_canned(
        self, shortcut: str, text: str, created_by: str
    ) -> CannedResponse:
        canned_id, now = new_id(), utc_now()
        async with self._transaction() as db:
            try:
                await db.execute(
                    f"INSERT INTO canned_responses ({CANNED_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (canned_id, shortcut, text, created_by, now, now),
                )
            except sqlite3.IntegrityError as exc:
                raise WrongState(f"shortcut {shortcut!r} is taken") from exc
            row = await _fetch_one(
                db,
                f"SELECT {CANNED_COLUMNS} FROM canned_responses WHERE id = ?",
                (canned_id,),
            )
        assert row is not None
        return _canned(row)

    async def update_canned(
        self, canned_id: str, shortcut: str, text: str
    ) -> CannedResponse:
        async with self._transaction() as db:
            try:
                cursor = await db.execute(
                    "UPDATE canned_responses SET shortcut = ?, text = ?,"
                    " updated_at = ? WHERE id = ?",
                    (shortcut, text, utc_now(), canned_id),
                )
            except sqlite3.IntegrityError as exc:
                raise WrongState(f"shortcut {shortcut!r} is taken") from exc
            if cursor.rowcount == 0:
                raise NotFound(f"canned response {canned_id!r} not found")
            row = await _fetch_one(
                db,
                f"SELECT {CANNED_COLUMNS} FROM canned_responses WHERE id = ?",
                (canned_id,),
            )
        assert row is not None
        return _canned(row)

    async def delete_canned(self, canned_id: str) -> None:
        async with self._transaction() as db:
            cursor = await db.execute(
                "DELETE FROM canned_responses WHERE id = ?", (canned_id,)
            )
            if cursor.rowcount == 0:
                raise NotFound(f"canned response {canned_id!r} not found")

    # Read marks

    async def set_read_mark(
        self, chat_id: str, role: SenderRole, reader_id: str, seq: int
    ) -> int:
        async with self._transaction(synced=False) as db:
            await db.execute(
                "INSERT INTO read_marks (chat_id, reader_role, reader_id, seq,"
                " updated_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (chat_id, reader_role, reader_id) DO UPDATE"
                " SET seq = MAX(seq, excluded.seq), updated_at = excluded.updated_at",
                (chat_id, role, reader_id, seq, utc_now()),
            )
            row = await _fetch_one(
                db,
                "SELECT seq FROM read_marks WHERE chat_id = ? AND reader_role = ?"
                " AND reader_id = ?",
                (chat_id, role, reader_id),
            )
        assert row is not None
        return int(row[0])

    async def get_read_mark(
        self, chat_id: str, role: SenderRole, reader_id: str
    ) -> int:
        rows = await self._read_key(
            "SELECT seq FROM read_marks WHERE chat_id = ? AND reader_role = ?"
            " AND reader_id = ?",
            (chat_id, role, reader_id),
        )
        return int(rows[0][0]) if rows else 0


# One statement on the common path: it checks that the sender belongs to the
# open chat, takes the next seq and skips a repeated client_id. A trigger
# advances chats.last_seq in the same transaction.
_INSERT_MESSAGE = (
    "INSERT INTO messages (id, chat_id, seq, sender_role, sender_id,"
    " sender_name, text, client_id, created_at)"
    " SELECT :id, c.id, c.last_seq + 1, :role, :sender_id, :name, :text,"
    " :client_id, :created_at FROM chats c"
    " WHERE c.id = :chat_id AND c.status IN ('queued', 'active')"
    " AND (CASE :role WHEN 'visitor' THEN c.visitor_id"
    " ELSE c.agent_id END) = :sender_id"
    " ON CONFLICT (chat_id, sender_id, client_id) DO NOTHING"
    " RETURNING seq"
)
# Chats due for a timeout, given the cutoff time. The timer checks read these
# first, so a check that finds nothing costs no write transaction.
_UNREPLIED = (
    "FROM chats WHERE status = 'active' AND agent_replied_at IS NULL"
    " AND assigned_at < ?"
)
_WAITING_TOO_LONG = "FROM chats WHERE status = 'queued' AND queued_at < ?"
_VISITOR_SILENT = (
    "FROM chats WHERE status = 'active'"
    " AND MAX(assigned_at, COALESCE(visitor_active_at, '')) < ?"
)


def _insert_batch(
    connection: sqlite3.Connection, batch: list[dict[str, Any]]
) -> list[list[sqlite3.Row]]:
    """Run `_INSERT_MESSAGE` for each item in one transaction, on the writer thread."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        results = [
            connection.execute(_INSERT_MESSAGE, params).fetchall() for params in batch
        ]
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
    return results


def _run_unsynced(
    connection: sqlite3.Connection, sql: str, params: tuple[Any, ...]
) -> list[sqlite3.Row]:
    """Run `sql` in a transaction committed without fsync, on the writer thread."""
    connection.execute("PRAGMA synchronous = NORMAL")
    try:
        connection.execute("BEGIN IMMEDIATE")
        try:
            rows = connection.execute(sql, params).fetchall()
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
    finally:
        connection.execute("PRAGMA synchronous = FULL")
    return rows


# Messages committed together at most; a bound keeps one slow batch short.
MESSAGE_BATCH = 256

_AGENT_SELECT = f"SELECT {', '.join(AGENT_FIELDS)} FROM agents"
_AGENT_CONNECTED = (
    "UPDATE agents SET connected = 1,"
    " status = CASE status WHEN 'offline' THEN 'away' ELSE status END"
    " WHERE id = ? AND NOT disabled AND token_version = ?"
    f" RETURNING {', '.join(AGENT_FIELDS)}"
)
_AGENT_LOAD_SELECT = (
    f"SELECT {', '.join(AGENT_FIELDS)}, connected,"
    " (SELECT COUNT(*) FROM chats c WHERE c.agent_id = agents.id"
    "  AND c.status = 'active') AS load"
    " FROM agents"
)


async def _store_visitor(db: aiosqlite.Connection, visitor: Visitor) -> None:
    """Insert the visitor, or update its name and, when given, its email."""
    await db.execute(
        "INSERT INTO visitors (id, name, email, created_at)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE"
        " SET name = excluded.name,"
        " email = COALESCE(excluded.email, visitors.email)",
        (visitor.id, visitor.name, visitor.email, visitor.created_at),
    )


async def _audit(
    db: aiosqlite.Connection,
    actor_id: str | None,
    action: str,
    target_id: str | None,
    details: dict[str, Any],
) -> None:
    """Record an administrative change inside the transaction that makes it."""
    await db.execute(
        "INSERT INTO audit_log (at, actor_id, action, target_id, details)"
        " VALUES (?, ?, ?, ?, ?)",
        (utc_now(), actor_id, action, target_id, json.dumps(details)),
    )


def _agent_load(row: sqlite3.Row) -> AgentLoad:
    return AgentLoad(
        agent=_agent(row), load=int(row["load"]), connected=bool(row["connected"])
    )


async def _chat_of_agent(
    db: aiosqlite.Connection, chat_id: str, agent_id: str
) -> sqlite3.Row:
    """Return the active chat's row, checking that it is assigned to `agent_id`."""
    row = await _fetch_one(
        db, "SELECT agent_id, status, department FROM chats WHERE id = ?", (chat_id,)
    )
    return check_agent_chat(row, chat_id, agent_id)


async def _requeue_at_front(
    db: aiosqlite.Connection, chat_ids: list[str], *, passed_by: str | None
) -> None:
    """Queue the chats ahead of every waiting one, keeping their order."""
    if not chat_ids:
        return
    front = await _fetch_one(
        db, "SELECT COALESCE(MIN(queue_rank), 1) FROM chats WHERE status = 'queued'"
    )
    assert front is not None
    first_rank, now = int(front[0]) - len(chat_ids), utc_now()
    for offset, chat_id in enumerate(chat_ids):
        await db.execute(
            "UPDATE chats SET status = 'queued', agent_id = NULL, assigned_at = NULL,"
            " agent_replied_at = NULL, queue_rank = ?, queued_at = ?, passed_by = ?"
            " WHERE id = ?",
            (first_rank + offset, now, passed_by, chat_id),
        )


async def _fetch_one(
    db: aiosqlite.Connection, sql: str, params: Iterable[Any] = ()
) -> sqlite3.Row | None:
    async with db.execute(sql, tuple(params)) as cursor:
        row = await cursor.fetchone()
    return row


async def _fetch_chats(db: aiosqlite.Connection, chat_ids: list[str]) -> list[Chat]:
    if not chat_ids:
        return []
    marks = ", ".join("?" for _ in chat_ids)
    rows = await db.execute_fetchall(
        f"SELECT {CHAT_COLUMNS} {CHAT_FROM} WHERE c.id IN ({marks})", chat_ids
    )
    by_id = {row["id"]: _chat(row) for row in rows}
    return [by_id[chat_id] for chat_id in chat_ids]


async def _insert_message(
    db: aiosqlite.Connection,
    chat_id: str,
    seq: int,
    sender: Sender,
    text: str,
    client_id: str,
) -> Message:
    message = new_message(chat_id, seq, sender, text, client_id)
    await db.execute(
        f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            message.id,
            message.chat_id,
            message.seq,
            message.sender_role,
            message.sender_id,
            message.sender_name,
            message.text,
            message.client_id,
            message.created_at,
        ),
    )
    return message


def _split_sql(script: str) -> list[str]:
    """Split a migration into complete statements, triggers included."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        if not current and (not line.strip() or line.lstrip().startswith("--")):
            continue
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        raise ValueError(f"migration ends inside a statement: {current.strip()[:80]!r}")
    return statements
