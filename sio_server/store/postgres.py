"""PostgreSQL backend on an asyncpg connection pool, for one or several servers.

Several server processes may share one database, so each method stays correct
when other processes call the same or other methods at the same moment. Every
method is one statement or one transaction at READ COMMITTED, where a row read
early in a transaction may change before the transaction writes, so the
methods follow these rules:

- A write that depends on a chat's state either locks the chat row first
  (`SELECT ... FOR UPDATE`) or puts that state into the WHERE clause of its
  UPDATE. After waiting for a concurrent writer, PostgreSQL evaluates such a
  condition again on the newest version of the row, so a chat is ended,
  rated, requeued or timed out at most once.
- A message takes its seq in the statement that locks the chat row, and a
  trigger advances `chats.last_seq`, so seqs neither repeat nor skip.
- The paths that read the queue or agents' loads and then assign or requeue
  chats (`assign_waiting`, both transfers, `requeue_agent_chats` and the
  three timeouts) take one transaction-level advisory lock first. It
  serialises them across every process: a chat never goes to two agents and
  an agent never goes over its `max_chats`. One lock is simpler to reason
  about than row locks on every agent and chat involved, and these paths are
  short. Transactions that do not take it lock at most one chat row, so
  their row locks cannot form a deadlock with each other or with it.
- A new chat joins the queue under a second advisory lock, held until
  commit, which takes its creation time and its queue rank. Queue order,
  creation times and commit order then agree, as with SQLite's single
  writer, so an assignment never sees a chat without the older ones.
- Migrations run under a third advisory lock, so processes that start at
  the same moment apply each migration once.

Times are ISO 8601 strings, as in the SQLite store, and text columns use the
"C" collation, so comparisons and sort orders match SQLite's. PostgreSQL text
cannot contain U+0000, which SQLite stores, so a codec on every connection
escapes it (see `_escape_text`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import urlsplit

import asyncpg

from .. import matchmaker
from ..errors import (
    ChatServerError,
    Forbidden,
    NotFound,
    TransferRejected,
    WrongState,
)
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

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

# Keys of the transaction-level advisory locks. Advisory locks belong to one
# database, so these need only differ from keys that other programs use in
# the same database.
MIGRATION_LOCK = 7_310_001
ASSIGNMENT_LOCK = 7_310_002
QUEUE_LOCK = 7_310_003

# Connections per server process. PostgreSQL allows 100 connections by
# default (max_connections), which leaves room for several processes.
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 10
# Max planning rounds in one `assign_waiting` call. Another round runs only
# when a planned chat left the queue while the plan was being applied.
ASSIGNMENT_ROUNDS = 5


class PostgresStore(Store):
    """Store backed by a PostgreSQL database that several server processes may share."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None

    # Connections and migrations

    async def open(self) -> None:
        try:
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=POOL_MIN_SIZE,
                max_size=POOL_MAX_SIZE,
                init=_set_text_codec,
                reset=_keep_session,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise ChatServerError(
                f"connecting to PostgreSQL at {describe_dsn(self._dsn)} failed: {exc}."
                " Check CHAT_DATABASE_URL and that the database server is running"
            ) from exc
        self._pool = pool
        try:
            await self._migrate()
        except BaseException:
            await self.close()
            raise

    async def _migrate(self) -> None:
        async with self._transaction() as db:
            # Held until commit: a process starting at the same moment waits
            # here and then finds every migration applied.
            await db.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                " applied_at TEXT NOT NULL)"
            )
            rows = await db.fetch("SELECT version FROM schema_migrations")
            applied = {row["version"] for row in rows}
            for version, name, sql in load_migrations("postgres"):
                if version in applied:
                    continue
                # Without arguments, execute() sends the whole file as one
                # simple query, which runs inside the open transaction.
                await db.execute(sql)
                await db.execute(
                    "INSERT INTO schema_migrations VALUES ($1, $2, $3)",
                    version,
                    name,
                    utc_now(),
                )
                logger.info("applied migration %s to %s", name, describe_dsn(self._dsn))

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def ping(self) -> None:
        await self._pool_or_raise().fetchval("SELECT 1")

    def _pool_or_raise(self) -> asyncpg.Pool[asyncpg.Record]:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    @asynccontextmanager
    async def _transaction(self, *, synced: bool = True) -> AsyncIterator[Connection]:
        """Run one READ COMMITTED transaction on a pooled connection.

        With `synced=False` the commit returns before the WAL reaches the
        disk. It suits state that a restart rebuilds or a client sends again,
        such as agents' status and connection flags. A crash of the database
        server may lose the last such commits but, as PostgreSQL's
        documentation of synchronous_commit states, leaves the data consistent.
        """
        async with (
            self._pool_or_raise().acquire() as db,
            db.transaction(isolation="read_committed"),
        ):
            if not synced:
                await db.execute("SET LOCAL synchronous_commit = off")
            yield db

    @asynccontextmanager
    async def _serialised(self) -> AsyncIterator[Connection]:
        """Run a transaction that holds the assignment lock from its start."""
        async with self._transaction() as db:
            await db.execute("SELECT pg_advisory_xact_lock($1)", ASSIGNMENT_LOCK)
            yield db

    async def _any(self, condition: str, *params: Any) -> bool:
        """Tell whether a chat matches `condition`, without a transaction or lock."""
        found = await self._pool_or_raise().fetchval(
            f"SELECT EXISTS (SELECT 1 FROM chats WHERE {condition})", *params
        )
        return bool(found)

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
                row = await db.fetchrow(
                    "INSERT INTO agents (id, email, name, password_hash, is_admin,"
                    f" created_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_AGENT}",
                    agent_id,
                    email,
                    name,
                    password_hash,
                    is_admin,
                    utc_now(),
                )
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name != "agents_email":
                    raise
                raise WrongState(f"an agent with email {email!r} exists") from exc
            details = {"email": email, "name": name, "is_admin": is_admin}
            await _audit(db, actor_id, "agent.create", agent_id, details)
        assert row is not None
        return _agent(row)

    async def update_agent(
        self, agent_id: str, changes: AgentChanges, actor_id: str | None
    ) -> Agent:
        serving = None
        if changes.set_departments and changes.departments is not None:
            serving = list(changes.departments)
        async with self._transaction() as db:
            # A disabled agent takes no chats until enabled and ready again.
            row = await db.fetchrow(
                "UPDATE agents SET name = COALESCE($1, name),"
                " is_admin = COALESCE($2, is_admin),"
                " disabled = COALESCE($3, disabled),"
                " status = CASE WHEN $3 THEN 'offline' ELSE status END,"
                " max_chats = COALESCE($4, max_chats),"
                " departments = CASE WHEN $5 THEN $6 ELSE departments END"
                f" WHERE id = $7 RETURNING {_AGENT}",
                changes.name,
                changes.is_admin,
                changes.disabled,
                changes.max_chats,
                changes.set_departments,
                serving,
                agent_id,
            )
            if row is None:
                raise NotFound(f"agent {agent_id!r} not found")
            await _audit(db, actor_id, "agent.update", agent_id, changes.to_details())
        return _agent(row)

    async def set_password(
        self, agent_id: str, password_hash: str, actor_id: str | None
    ) -> Agent:
        async with self._transaction() as db:
            row = await db.fetchrow(
                "UPDATE agents SET password_hash = $1,"
                f" token_version = token_version + 1 WHERE id = $2 RETURNING {_AGENT}",
                password_hash,
                agent_id,
            )
            if row is None:
                raise NotFound(f"agent {agent_id!r} not found")
            await _audit(db, actor_id, "agent.password", agent_id, {})
        return _agent(row)

    async def list_audit(self, limit: int, before_id: int | None) -> list[AuditEntry]:
        rows = await self._pool_or_raise().fetch(
            "SELECT id, at, actor_id, action, target_id, details FROM audit_log"
            " WHERE id < $1 ORDER BY id DESC LIMIT $2",
            before_id if before_id is not None else 2**62,
            limit,
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
        row = await self._pool_or_raise().fetchrow(
            f"SELECT {_AGENT} FROM agents WHERE id = $1", agent_id
        )
        return _agent(row) if row else None

    async def get_agent_by_email(self, email: str) -> Agent | None:
        # The same ASCII-only case folding as the unique index agents_email.
        row = await self._pool_or_raise().fetchrow(
            f"SELECT {_AGENT} FROM agents"
            ' WHERE lower(email) = lower($1::text COLLATE "C")',
            email,
        )
        return _agent(row) if row else None

    async def set_agent_status(
        self, agent_id: str, status: AgentStatus, max_chats: int | None = None
    ) -> Agent:
        async with self._transaction(synced=False) as db:
            row = await db.fetchrow(
                "UPDATE agents SET status = $1, max_chats = COALESCE($2, max_chats)"
                f" WHERE id = $3 RETURNING {_AGENT}",
                status,
                max_chats,
                agent_id,
            )
        if row is None:
            raise NotFound(f"agent {agent_id!r} not found")
        return _agent(row)

    async def set_agent_ready(
        self, agent_id: str, max_chats: int | None, departments: tuple[str, ...] | None
    ) -> Agent:
        serving = list(departments) if departments is not None else None
        async with self._transaction(synced=False) as db:
            row = await db.fetchrow(
                "UPDATE agents SET status = 'ready',"
                " max_chats = COALESCE($1, max_chats), departments = $2"
                f" WHERE id = $3 RETURNING {_AGENT}",
                max_chats,
                serving,
                agent_id,
            )
        if row is None:
            raise NotFound(f"agent {agent_id!r} not found")
        return _agent(row)

    async def list_agent_loads(self) -> list[AgentLoad]:
        rows = await self._pool_or_raise().fetch(
            _AGENT_LOAD_SELECT + " ORDER BY name, id"
        )
        return [_agent_load(row) for row in rows]

    async def set_agent_connected(self, agent_id: str, connected: bool) -> None:
        async with self._transaction(synced=False) as db:
            await db.execute(
                "UPDATE agents SET connected = $1 WHERE id = $2", connected, agent_id
            )

    async def agent_connected(self, agent_id: str, token_version: int) -> Agent | None:
        async with self._transaction(synced=False) as db:
            row = await db.fetchrow(
                "UPDATE agents SET connected = TRUE,"
                " status = CASE status WHEN 'offline' THEN 'away' ELSE status END"
                " WHERE id = $1 AND NOT disabled AND token_version = $2"
                f" RETURNING {_AGENT}",
                agent_id,
                token_version,
            )
        return _agent(row) if row else None

    async def reset_connections(self) -> None:
        # This also clears agents connected to other server processes on the
        # same database, so the service calls it only when no other is up.
        async with self._transaction(synced=False) as db:
            await db.execute("UPDATE agents SET connected = FALSE WHERE connected")

    async def available_agents(self) -> tuple[int, int]:
        row = await self._pool_or_raise().fetchrow(
            "SELECT COUNT(*), COALESCE(SUM(max_chats), 0) FROM agents"
            " WHERE status = 'ready' AND connected"
        )
        return (int(row[0]), int(row[1])) if row else (0, 0)

    # Visitors

    async def get_visitor(self, visitor_id: str) -> Visitor | None:
        row = await self._pool_or_raise().fetchrow(
            "SELECT id, name, email, created_at FROM visitors WHERE id = $1",
            visitor_id,
        )
        return Visitor(**dict(row)) if row else None

    async def update_visitor(
        self, visitor_id: str, name: str | None, email: str | None
    ) -> Visitor:
        row = await self._pool_or_raise().fetchrow(
            "UPDATE visitors SET name = COALESCE($1, name),"
            " email = COALESCE($2, email) WHERE id = $3"
            " RETURNING id, name, email, created_at",
            name,
            email,
            visitor_id,
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
            # The upsert locks the visitor's row until commit, so a concurrent
            # call for the same visitor waits here and then finds this chat.
            await _store_visitor(db, visitor)
            existing = await db.fetchrow(
                f"SELECT {CHAT_COLUMNS} {CHAT_FROM}"
                " WHERE c.visitor_id = $1 AND c.status IN ('queued', 'active')",
                visitor_id,
            )
            if existing is not None:
                return _chat(existing), False
            await db.execute("SELECT pg_advisory_xact_lock($1)", QUEUE_LOCK)
            chat_id, now = new_id(), utc_now()
            await db.execute(
                "INSERT INTO chats (id, visitor_id, status, department, metadata,"
                " queue_rank, created_at, queued_at)"
                " VALUES ($1, $2, 'queued', $3, $4, nextval('chats_queue_rank'),"
                " $5, $5)",
                chat_id,
                visitor_id,
                department,
                json.dumps(metadata) if metadata is not None else None,
                now,
            )
            if first_message is not None:
                text, client_id = first_message
                sender = Sender(role="visitor", id=visitor_id, name=visitor.name)
                await _insert_message(db, chat_id, 1, sender, text, client_id)
            (chat,) = await _fetch_chats(db, [chat_id])
        return chat, True

    async def get_chat(self, chat_id: str) -> Chat | None:
        row = await self._pool_or_raise().fetchrow(
            f"SELECT {CHAT_COLUMNS} {CHAT_FROM} WHERE c.id = $1", chat_id
        )
        return _chat(row) if row else None

    async def open_chat_of_visitor(self, visitor_id: str) -> Chat | None:
        row = await self._pool_or_raise().fetchrow(
            f"SELECT {CHAT_COLUMNS} {CHAT_FROM}"
            " WHERE c.visitor_id = $1 AND c.status IN ('queued', 'active')",
            visitor_id,
        )
        return _chat(row) if row else None

    async def active_chats_of_agent(self, agent_id: str) -> list[Chat]:
        rows = await self._pool_or_raise().fetch(
            f"SELECT {CHAT_COLUMNS} {CHAT_FROM}"
            " WHERE c.agent_id = $1 AND c.status = 'active'"
            " ORDER BY c.assigned_at, c.queue_rank, c.id",
            agent_id,
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
        conditions: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("c.status", status),
            ("c.agent_id", agent_id),
        ):
            if value is not None:
                params.append(value)
                conditions.append(f"{column} = ${len(params)}")
        if before is not None:
            params.append(before)
            conditions.append(f"c.created_at < ${len(params)}")
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        params.append(limit)
        rows = await self._pool_or_raise().fetch(
            f"SELECT {CHAT_COLUMNS} {CHAT_FROM} {where}"
            f" ORDER BY c.created_at DESC, c.id DESC LIMIT ${len(params)}",
            *params,
        )
        return [_chat(row) for row in rows]

    async def end_chat(
        self, chat_id: str, ended_by: SenderRole, reason: str | None
    ) -> Chat:
        async with self._transaction() as db:
            ended = await db.fetchval(
                "UPDATE chats SET status = 'ended', queue_rank = NULL, ended_at = $1,"
                " ended_by = $2, end_reason = $3 WHERE id = $4"
                " AND status IN ('queued', 'active') RETURNING id",
                utc_now(),
                ended_by,
                reason,
                chat_id,
            )
            row = await db.fetchrow(
                f"SELECT {CHAT_COLUMNS} {CHAT_FROM} WHERE c.id = $1", chat_id
            )
            if row is None:
                raise NotFound(f"chat {chat_id!r} not found")
            if ended is None:
                raise WrongState(f"chat {chat_id!r} has already ended")
        return _chat(row)

    async def requeue_agent_chats(self, agent_id: str) -> list[Chat]:
        async with self._serialised() as db:
            await db.execute(
                "UPDATE agents SET status = 'offline', connected = FALSE WHERE id = $1",
                agent_id,
            )
            rows = await db.fetch(
                # Chats assigned in one run share assigned_at; their old queue
                # rank, kept since then, orders them.
                "SELECT id FROM chats WHERE agent_id = $1 AND status = 'active'"
                " ORDER BY assigned_at, queue_rank, id FOR UPDATE",
                agent_id,
            )
            chat_ids = [row["id"] for row in rows]
            await _requeue_at_front(db, chat_ids, passed_by=None)
            return await _fetch_chats(db, chat_ids)

    async def assign_waiting(self) -> list[Chat]:
        # Most runs follow an agent's change while the queue is empty. Those
        # cost a read instead of a wait for the assignment lock.
        if not await self._any("status = 'queued'"):
            return []
        assigned: list[str] = []
        async with self._serialised() as db:
            for _ in range(ASSIGNMENT_ROUNDS):
                plan = await _plan_assignments(db)
                if not plan:
                    break
                moved = await _apply_assignments(db, plan)
                assigned += moved
                # A chat that its visitor ended or turned into a message since
                # the plan was made left a slot free, so plan again to fill it.
                if len(moved) == len(plan):
                    break
            return await _fetch_chats(db, assigned)

    async def transfer_to_agent(
        self, chat_id: str, from_agent_id: str, to_agent_id: str
    ) -> Chat:
        async with self._serialised() as db:
            chat = await _chat_of_agent(db, chat_id, from_agent_id)
            if to_agent_id == from_agent_id:
                raise TransferRejected(
                    "the chat is yours already: pick another agent", "same_agent"
                )
            row = await db.fetchrow(_AGENT_LOAD_SELECT + " WHERE id = $1", to_agent_id)
            if row is None:
                raise NotFound(f"agent {to_agent_id!r} not found")
            check_can_take(_agent_load(row), chat["department"])
            now = utc_now()
            await db.execute(
                "UPDATE chats SET agent_id = $1, assigned_at = $2,"
                " agent_replied_at = NULL WHERE id = $3",
                to_agent_id,
                now,
                chat_id,
            )
            await db.execute(
                "UPDATE agents SET last_assigned_at = $1 WHERE id = $2",
                now,
                to_agent_id,
            )
            (moved,) = await _fetch_chats(db, [chat_id])
        return moved

    async def transfer_to_queue(
        self, chat_id: str, from_agent_id: str, department: str | None
    ) -> Chat:
        async with self._serialised() as db:
            await _chat_of_agent(db, chat_id, from_agent_id)
            await db.execute(
                "UPDATE chats SET department = $1 WHERE id = $2", department, chat_id
            )
            await _requeue_at_front(db, [chat_id], passed_by=from_agent_id)
            (moved,) = await _fetch_chats(db, [chat_id])
        return moved

    async def requeue_unreplied(self, assigned_before: str) -> list[tuple[Chat, str]]:
        if not await self._any(_UNREPLIED, assigned_before):
            return []
        async with self._serialised() as db:
            # The lock makes a chat that changed meanwhile drop out, since the
            # condition is checked again on its newest version.
            rows = await db.fetch(
                f"SELECT id, agent_id FROM chats WHERE {_UNREPLIED}"
                " ORDER BY assigned_at, id FOR UPDATE",
                assigned_before,
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
        """Close the chats that `condition` finds due at `cutoff`, by the system.

        `condition` compares with `$1`, the cutoff. It sits in the UPDATE's own
        WHERE clause, so a chat that another process closed meanwhile fails it.
        """
        if not await self._any(condition, cutoff):
            return []
        async with self._serialised() as db:
            rows = await db.fetch(
                "UPDATE chats SET status = $2, queue_rank = NULL, ended_at = $3,"
                f" ended_by = 'system', end_reason = $4 WHERE {condition} RETURNING id",
                cutoff,
                status,
                utc_now(),
                reason,
            )
            return await _fetch_chats(db, [row["id"] for row in rows])

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
            # The upsert locks the visitor's row, so a retry sent to another
            # process at the same moment waits and then finds this chat.
            await _store_visitor(db, visitor)
            # A retry of the same message returns the chat it made.
            retried = await db.fetchval(
                "SELECT c.id FROM messages m JOIN chats c ON c.id = m.chat_id"
                " WHERE c.visitor_id = $1 AND m.sender_id = $1 AND m.client_id = $2"
                " AND c.status = 'missed'",
                visitor.id,
                client_id,
            )
            if retried is not None:
                (chat,) = await _fetch_chats(db, [retried])
                return chat
            now = utc_now()
            # Locked, so that an assignment cannot make it active meanwhile.
            row = await db.fetchrow(
                "SELECT id, status, last_seq FROM chats"
                " WHERE visitor_id = $1 AND status IN ('queued', 'active')"
                " FOR UPDATE",
                visitor.id,
            )
            if row is not None and row["status"] == "active":
                raise WrongState(
                    "you are in a chat with an agent: send the message there"
                )
            if row is not None:
                chat_id, seq = row["id"], int(row["last_seq"]) + 1
                await db.execute(
                    "UPDATE chats SET status = 'missed', queue_rank = NULL,"
                    " department = COALESCE($1, department), ended_at = $2,"
                    " ended_by = 'visitor', end_reason = 'left_message' WHERE id = $3",
                    department,
                    now,
                    chat_id,
                )
            else:
                chat_id, seq = new_id(), 1
                await db.execute(
                    "INSERT INTO chats (id, visitor_id, status, department,"
                    " created_at, ended_at, ended_by, end_reason)"
                    " VALUES ($1, $2, 'missed', $3, $4, $4, 'visitor', 'left_message')",
                    chat_id,
                    visitor.id,
                    department,
                    now,
                )
            await _insert_message(db, chat_id, seq, sender, text, client_id)
            (chat,) = await _fetch_chats(db, [chat_id])
        return chat

    async def reply_to_missed(
        self, chat_id: str, sender: Sender, text: str, client_id: str
    ) -> tuple[Message, bool]:
        async with self._transaction() as db:
            # The lock orders concurrent replies, so each takes the next seq.
            row = await db.fetchrow(
                "SELECT status, last_seq FROM chats WHERE id = $1 FOR UPDATE", chat_id
            )
            if row is None:
                raise NotFound(f"chat {chat_id!r} not found")
            if row["status"] != "missed":
                raise WrongState(
                    f"chat {chat_id!r} is {row['status']}: only missed chats are"
                    " replied to this way"
                )
            stored = await db.fetchrow(
                f"SELECT {MESSAGE_COLUMNS} FROM messages"
                " WHERE chat_id = $1 AND sender_id = $2 AND client_id = $3",
                chat_id,
                sender.id,
                client_id,
            )
            if stored is not None:
                return _message(stored), False
            await db.execute(
                "UPDATE chats SET agent_id = COALESCE(agent_id, $1) WHERE id = $2",
                sender.id,
                chat_id,
            )
            message = await _insert_message(
                db, chat_id, int(row["last_seq"]) + 1, sender, text, client_id
            )
        return message, True

    async def rate_chat(
        self, chat_id: str, visitor_id: str, score: int, comment: str | None
    ) -> Chat:
        async with self._transaction() as db:
            row = await db.fetchrow(
                "SELECT visitor_id, agent_id, status, rated_at FROM chats"
                " WHERE id = $1 FOR UPDATE",
                chat_id,
            )
            check_can_rate(row, chat_id, visitor_id)
            await db.execute(
                "UPDATE chats SET rating_score = $1, rating_comment = $2,"
                " rated_at = $3 WHERE id = $4",
                score,
                comment or None,
                utc_now(),
                chat_id,
            )
            (chat,) = await _fetch_chats(db, [chat_id])
        return chat

    async def recent_timings(self, limit: int) -> Timings:
        pool = self._pool_or_raise()
        waits = await pool.fetch(
            "SELECT queued_at, assigned_at FROM chats WHERE assigned_at IS NOT NULL"
            " AND queued_at IS NOT NULL ORDER BY assigned_at DESC LIMIT $1",
            limit,
        )
        durations = await pool.fetch(
            "SELECT assigned_at, ended_at FROM chats WHERE status = 'ended'"
            " AND assigned_at IS NOT NULL AND agent_id IS NOT NULL"
            " ORDER BY ended_at DESC LIMIT $1",
            limit,
        )
        return Timings(
            waits=[seconds_between(row[0], row[1]) for row in reversed(waits)],
            durations=[seconds_between(row[0], row[1]) for row in reversed(durations)],
        )

    async def queue_position(self, chat_id: str) -> int:
        # The chat's rank and department come from scalar subqueries, which
        # PostgreSQL runs once before the count. As a join, with statistics
        # that predate a burst of joins, it planned a nested loop that read
        # the queue once per queued chat: 271 ms instead of 0.5 ms at 2,000.
        position = await self._pool_or_raise().fetchval(
            "SELECT COUNT(*) FROM chats q WHERE q.status = 'queued'"
            " AND q.queue_rank <= (SELECT CASE WHEN status = 'queued'"
            "  THEN queue_rank END FROM chats WHERE id = $1)"
            " AND q.department IS NOT DISTINCT FROM"
            " (SELECT department FROM chats WHERE id = $1)",
            chat_id,
        )
        return int(position or 0)

    async def count_chats_by_status(self) -> dict[str, int]:
        rows = await self._pool_or_raise().fetch(
            "SELECT status, COUNT(*) FROM chats GROUP BY status"
        )
        return {row[0]: int(row[1]) for row in rows}

    async def count_queued(self) -> int:
        count = await self._pool_or_raise().fetchval(
            "SELECT COUNT(*) FROM chats WHERE status = 'queued'"
        )
        return int(count or 0)

    async def queue_entries(self) -> list[QueueEntry]:
        rows = await self._pool_or_raise().fetch(
            "SELECT id, visitor_id, queued_at, department FROM chats"
            " WHERE status = 'queued' ORDER BY queue_rank"
        )
        return [
            QueueEntry(chat_id=r[0], visitor_id=r[1], queued_at=r[2], department=r[3])
            for r in rows
        ]

    async def queue_counts(self) -> list[QueueCount]:
        rows = await self._pool_or_raise().fetch(QUEUE_COUNTS)
        return [QueueCount(r[0], r[1], r[2]) for r in rows]

    async def people_with_open_state(self) -> tuple[list[str], list[str]]:
        pool = self._pool_or_raise()
        visitors = await pool.fetch(
            "SELECT DISTINCT visitor_id FROM chats WHERE status IN ('queued', 'active')"
        )
        agents = await pool.fetch(
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
        seq = await self._pool_or_raise().fetchval(
            _INSERT_MESSAGE,
            message.id,
            chat_id,
            sender.role,
            sender.id,
            sender.name,
            text,
            client_id,
            message.created_at,
        )
        if seq is not None:
            return replace(message, seq=int(seq)), True
        return await self._message_not_added(chat_id, sender, client_id), False

    async def _message_not_added(
        self, chat_id: str, sender: Sender, client_id: str
    ) -> Message:
        """Explain why the INSERT added nothing: return the stored retry or raise."""
        pool = self._pool_or_raise()
        chat = await pool.fetchrow(
            "SELECT status, visitor_id, agent_id FROM chats WHERE id = $1", chat_id
        )
        if chat is None:
            raise NotFound(f"chat {chat_id!r} not found")
        owner = chat["visitor_id"] if sender.role == "visitor" else chat["agent_id"]
        if owner != sender.id:
            raise Forbidden(f"chat {chat_id!r} is not yours")
        existing = await pool.fetchrow(
            f"SELECT {MESSAGE_COLUMNS} FROM messages"
            " WHERE chat_id = $1 AND sender_id = $2 AND client_id = $3",
            chat_id,
            sender.id,
            client_id,
        )
        if existing is not None:
            return _message(existing)
        raise WrongState(f"chat {chat_id!r} has ended: start a new chat")

    async def list_messages(
        self, chat_id: str, *, after_seq: int = 0, limit: int = 100
    ) -> tuple[list[Message], bool]:
        rows = await self._pool_or_raise().fetch(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = $1 AND seq > $2"
            " ORDER BY seq LIMIT $3",
            chat_id,
            after_seq,
            limit + 1,
        )
        return [_message(row) for row in rows[:limit]], len(rows) > limit

    # Notes

    async def add_note(
        self, chat_id: str, author: Sender, text: str, client_id: str
    ) -> tuple[Note, bool]:
        async with self._transaction() as db:
            added = await db.fetchval(
                "INSERT INTO notes (id, chat_id, author_id, author_name, text,"
                " client_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                " ON CONFLICT (chat_id, author_id, client_id) DO NOTHING RETURNING id",
                new_id(),
                chat_id,
                author.id,
                author.name,
                text,
                client_id,
                utc_now(),
            )
            row = await db.fetchrow(
                f"SELECT {NOTE_COLUMNS} FROM notes"
                " WHERE chat_id = $1 AND author_id = $2 AND client_id = $3",
                chat_id,
                author.id,
                client_id,
            )
        assert row is not None
        return Note(**dict(row)), added is not None

    async def list_notes(self, chat_id: str) -> list[Note]:
        rows = await self._pool_or_raise().fetch(
            f"SELECT {NOTE_COLUMNS} FROM notes WHERE chat_id = $1"
            " ORDER BY created_at, insert_order",
            chat_id,
        )
        return [Note(**dict(row)) for row in rows]

    # Canned responses

    async def list_canned(self) -> list[CannedResponse]:
        rows = await self._pool_or_raise().fetch(
            f"SELECT {CANNED_COLUMNS} FROM canned_responses ORDER BY shortcut"
        )
        return [CannedResponse(**dict(row)) for row in rows]

    async def create_canned(
        self, shortcut: str, text: str, created_by: str
    ) -> CannedResponse:
        now = utc_now()
        try:
            row = await self._pool_or_raise().fetchrow(
                f"INSERT INTO canned_responses ({CANNED_COLUMNS})"
                f" VALUES ($1, $2, $3, $4, $5, $5) RETURNING {CANNED_COLUMNS}",
                new_id(),
                shortcut,
                text,
                created_by,
                now,
            )
        except asyncpg.UniqueViolationError as exc:
            raise WrongState(f"shortcut {shortcut!r} is taken") from exc
        assert row is not None
        return CannedResponse(**dict(row))

    async def update_canned(
        self, canned_id: str, shortcut: str, text: str
    ) -> CannedResponse:
        try:
            row = await self._pool_or_raise().fetchrow(
                "UPDATE canned_responses SET shortcut = $1, text = $2,"
                f" updated_at = $3 WHERE id = $4 RETURNING {CANNED_COLUMNS}",
                shortcut,
                text,
                utc_now(),
                canned_id,
            )
        except asyncpg.UniqueViolationError as exc:
            raise WrongState(f"shortcut {shortcut!r} is taken") from exc
        if row is None:
            raise NotFound(f"canned response {canned_id!r} not found")
        return CannedResponse(**dict(row))

    async def delete_canned(self, canned_id: str) -> None:
        deleted = await self._pool_or_raise().fetchval(
            "DELETE FROM canned_responses WHERE id = $1 RETURNING id", canned_id
        )
        if deleted is None:
            raise NotFound(f"canned response {canned_id!r} not found")

    # Read marks

    async def set_read_mark(
        self, chat_id: str, role: SenderRole, reader_id: str, seq: int
    ) -> int:
        async with self._transaction(synced=False) as db:
            mark = await db.fetchval(
                "INSERT INTO read_marks (chat_id, reader_role, reader_id, seq,"
                " updated_at) VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (chat_id, reader_role, reader_id) DO UPDATE"
                " SET seq = GREATEST(read_marks.seq, excluded.seq),"
                " updated_at = excluded.updated_at RETURNING seq",
                chat_id,
                role,
                reader_id,
                seq,
                utc_now(),
            )
        return int(mark)

    async def get_read_mark(
        self, chat_id: str, role: SenderRole, reader_id: str
    ) -> int:
        mark = await self._pool_or_raise().fetchval(
            "SELECT seq FROM read_marks WHERE chat_id = $1 AND reader_role = $2"
            " AND reader_id = $3",
            chat_id,
            role,
            reader_id,
        )
        return int(mark or 0)


def describe_dsn(dsn: str) -> str:
    """Return host, port and database of a PostgreSQL URL, without credentials."""
    parts = urlsplit(dsn)
    host = parts.hostname or "localhost"
    port = parts.port or 5432
    return f"{host}:{port}{parts.path or '/'}"


def _escape_text(value: str) -> str:
    """Write U+0000 as U+0001 U+0001 and U+0001 as U+0001 U+0002.

    PostgreSQL text cannot contain U+0000. The mapping is one to one and
    keeps byte order, since U+0001 sorts below every character but U+0000,
    so equality, ORDER BY and comparisons in SQL give the results that the
    unescaped strings would.
    """
    if "\x00" in value or "\x01" in value:
        return value.replace("\x01", "\x01\x02").replace("\x00", "\x01\x01")
    return value


def _unescape_text(value: str) -> str:
    if "\x01" in value:
        return value.replace("\x01\x01", "\x00").replace("\x01\x02", "\x01")
    return value


async def _set_text_codec(connection: asyncpg.Connection[asyncpg.Record]) -> None:
    """Escape text parameters and unescape text results on `connection`.

    NOTE: asyncpg applies the codec to scalar text only, not to elements of
    text[]. The arrays here carry ids and department names, which input
    validation keeps free of U+0000.
    """
    await connection.set_type_codec(
        "text",
        schema="pg_catalog",
        encoder=_escape_text,
        decoder=_unescape_text,
        format="text",
    )


async def _keep_session(connection: asyncpg.Connection[asyncpg.Record]) -> None:
    """Skip asyncpg's session reset when a connection returns to the pool.

    The store sets no session state, because its settings are `SET LOCAL` and
    its advisory locks end with the transaction. asyncpg still rolls back a
    transaction left open, so this saves one round trip per query.
    """


# One statement on the common path. It locks the chat row, which makes
# concurrent messages to one chat take consecutive seqs: a second INSERT waits
# for the lock and then reads the advanced last_seq. It also checks that the
# sender belongs to the open chat and skips a repeated client_id. A trigger
# advances chats.last_seq in the same transaction.
_INSERT_MESSAGE = f"""
    WITH chat AS (
        SELECT id, last_seq FROM chats
        WHERE id = $2 AND status IN ('queued', 'active')
        AND (CASE $3 WHEN 'visitor' THEN visitor_id ELSE agent_id END) = $4
        FOR UPDATE
    )
    INSERT INTO messages ({MESSAGE_COLUMNS})
    SELECT $1, chat.id, chat.last_seq + 1, $3, $4, $5, $6, $7, $8 FROM chat
    ON CONFLICT (chat_id, sender_id, client_id) DO NOTHING
    RETURNING seq
"""
# Chats due for a timeout, given the cutoff time as $1. The timer checks read
# these first, so a check that finds nothing takes no lock.
_UNREPLIED = "status = 'active' AND agent_replied_at IS NULL AND assigned_at < $1"
_WAITING_TOO_LONG = "status = 'queued' AND queued_at < $1"
_VISITOR_SILENT = (
    "status = 'active' AND GREATEST(assigned_at, COALESCE(visitor_active_at, '')) < $1"
)

_AGENT = ", ".join(AGENT_FIELDS)
_AGENT_LOAD_SELECT = (
    f"SELECT {_AGENT}, connected,"
    " (SELECT COUNT(*) FROM chats c WHERE c.agent_id = agents.id"
    "  AND c.status = 'active') AS load"
    " FROM agents"
)


def _chat(row: asyncpg.Record) -> Chat:
    return Chat(**dict(row))


def _message(row: asyncpg.Record) -> Message:
    return Message(**dict(row))


def _agent(row: asyncpg.Record) -> Agent:
    values = {key: row[key] for key in AGENT_FIELDS}
    if values["departments"] is not None:
        values["departments"] = tuple(values["departments"])
    return Agent(**values)


def _agent_load(row: asyncpg.Record) -> AgentLoad:
    return AgentLoad(
        agent=_agent(row), load=int(row["load"]), connected=row["connected"]
    )


async def _store_visitor(db: Connection, visitor: Visitor) -> None:
    """Insert the visitor, or update its name and, when given, its email."""
    await db.execute(
        "INSERT INTO visitors (id, name, email, created_at)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO UPDATE"
        " SET name = excluded.name,"
        " email = COALESCE(excluded.email, visitors.email)",
        visitor.id,
        visitor.name,
        visitor.email,
        visitor.created_at,
    )


async def _audit(
    db: Connection,
    actor_id: str | None,
    action: str,
    target_id: str | None,
    details: dict[str, Any],
) -> None:
    """Record an administrative change inside the transaction that makes it."""
    await db.execute(
        "INSERT INTO audit_log (at, actor_id, action, target_id, details)"
        " VALUES ($1, $2, $3, $4, $5)",
        utc_now(),
        actor_id,
        action,
        target_id,
        json.dumps(details),
    )


async def _chat_of_agent(db: Connection, chat_id: str, agent_id: str) -> asyncpg.Record:
    """Lock the active chat's row, checking that it is assigned to `agent_id`."""
    row = await db.fetchrow(
        "SELECT agent_id, status, department FROM chats WHERE id = $1 FOR UPDATE",
        chat_id,
    )
    return check_agent_chat(row, chat_id, agent_id)


async def _plan_assignments(db: Connection) -> list[matchmaker.Assignment]:
    """Read ready agents and the queue, and plan the next assignments.

    The caller holds the assignment lock, so no other process changes loads
    or the queue order until it commits.
    """
    agent_rows = await db.fetch(
        "SELECT a.id, a.max_chats, a.last_assigned_at, a.departments,"
        " (SELECT COUNT(*) FROM chats c WHERE c.agent_id = a.id"
        "  AND c.status = 'active') AS load"
        " FROM agents a WHERE a.status = 'ready' AND a.connected"
    )
    slots = [
        matchmaker.AgentSlot(
            agent_id=row["id"],
            load=row["load"],
            max_chats=row["max_chats"],
            last_assigned_at=row["last_assigned_at"],
            departments=(
                frozenset(row["departments"])
                if row["departments"] is not None
                else None
            ),
        )
        for row in agent_rows
    ]
    free = sum(max(slot.max_chats - slot.load, 0) for slot in slots)
    if free == 0:
        return []
    limit = None
    if all(slot.departments is None for slot in slots):
        # Every agent serves every chat, so only the oldest `free` chats can
        # be used, plus one for each chat that some agent may not take back.
        passed = await db.fetchval(
            "SELECT COUNT(*) FROM chats"
            " WHERE status = 'queued' AND passed_by IS NOT NULL"
        )
        limit = free + int(passed)
    queue_rows = await db.fetch(
        "SELECT id, department, passed_by FROM chats WHERE status = 'queued'"
        " ORDER BY queue_rank LIMIT $1",
        limit,
    )
    queue = [
        matchmaker.WaitingChat(
            chat_id=row["id"], department=row["department"], passed_by=row["passed_by"]
        )
        for row in queue_rows
    ]
    return matchmaker.plan_assignments(queue, slots)


async def _apply_assignments(
    db: Connection, plan: list[matchmaker.Assignment]
) -> list[str]:
    """Make the planned chats that are still queued active, and return their ids."""
    now = utc_now()
    rows = await db.fetch(
        "UPDATE chats SET status = 'active', agent_id = plan.agent_id,"
        " assigned_at = $1, passed_by = NULL, agent_replied_at = NULL"
        " FROM unnest($2::text[], $3::text[]) AS plan (chat_id, agent_id)"
        " WHERE chats.id = plan.chat_id AND chats.status = 'queued'"
        " RETURNING chats.id, chats.agent_id",
        now,
        [item.chat_id for item in plan],
        [item.agent_id for item in plan],
    )
    moved = {row["id"] for row in rows}
    await db.execute(
        "UPDATE agents SET last_assigned_at = $1 WHERE id = ANY($2::text[])",
        now,
        sorted({row["agent_id"] for row in rows}),
    )
    return [item.chat_id for item in plan if item.chat_id in moved]


async def _requeue_at_front(
    db: Connection, chat_ids: list[str], *, passed_by: str | None
) -> None:
    """Queue the chats ahead of every waiting one, keeping their order.

    The caller holds the assignment lock, so no other process reads the same
    front rank, and has locked the chats' rows.
    """
    if not chat_ids:
        return
    front = await db.fetchval(
        "SELECT COALESCE(MIN(queue_rank), 1) FROM chats WHERE status = 'queued'"
    )
    first_rank = int(front) - len(chat_ids)
    await db.execute(
        "UPDATE chats SET status = 'queued', agent_id = NULL, assigned_at = NULL,"
        " agent_replied_at = NULL, queue_rank = $1 + moved.position - 1,"
        " queued_at = $2, passed_by = $3"
        " FROM unnest($4::text[]) WITH ORDINALITY AS moved (id, position)"
        " WHERE chats.id = moved.id",
        first_rank,
        utc_now(),
        passed_by,
        chat_ids,
    )


async def _fetch_chats(db: Connection, chat_ids: list[str]) -> list[Chat]:
    if not chat_ids:
        return []
    rows = await db.fetch(
        f"SELECT {CHAT_COLUMNS} {CHAT_FROM} WHERE c.id = ANY($1::text[])", chat_ids
    )
    by_id = {row["id"]: _chat(row) for row in rows}
    return [by_id[chat_id] for chat_id in chat_ids]


async def _insert_message(
    db: Connection,
    chat_id: str,
    seq: int,
    sender: Sender,
    text: str,
    client_id: str,
) -> Message:
    """Insert a message with a known seq, in a chat that the caller locked or made."""
    message = new_message(chat_id, seq, sender, text, client_id)
    await db.execute(
        f"INSERT INTO messages ({MESSAGE_COLUMNS})"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        message.id,
        message.chat_id,
        message.seq,
        message.sender_role,
        message.sender_id,
        message.sender_name,
        message.text,
        message.client_id,
        message.created_at,
    )
    return message
