"""Pieces that the SQLite and PostgreSQL stores share: column lists and checks.

The column lists name the same columns in both schemas, in the order of the
model fields they fill.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from ..errors import Forbidden, NotFound, TransferRejected, WrongState
from ..models import AgentLoad, Message, Sender, new_id, parse_time, utc_now


class Row(Protocol):
    """A result row read by column name: `sqlite3.Row` or `asyncpg.Record`."""

    def __getitem__(self, key: str, /) -> Any: ...


RowT = TypeVar("RowT", bound=Row)


CHAT_COLUMNS = """
    c.id, c.status, c.visitor_id, v.name AS visitor_name, c.agent_id,
    a.name AS agent_name, c.department, c.created_at, c.queued_at, c.assigned_at,
    c.ended_at, c.ended_by, c.end_reason, c.last_seq, v.email AS visitor_email,
    c.rating_score, c.rating_comment, c.rated_at,
    COALESCE(rv.seq, 0) AS visitor_read_seq, COALESCE(ra.seq, 0) AS agent_read_seq
"""
# The read marks are the visitor's and the current agent's, so that a page
# loaded again shows what each side has read.
CHAT_FROM = """
    FROM chats c
    JOIN visitors v ON v.id = c.visitor_id
    LEFT JOIN agents a ON a.id = c.agent_id
    LEFT JOIN read_marks rv ON rv.chat_id = c.id AND rv.reader_role = 'visitor'
        AND rv.reader_id = c.visitor_id
    LEFT JOIN read_marks ra ON ra.chat_id = c.id AND ra.reader_role = 'agent'
        AND ra.reader_id = c.agent_id
"""
MESSAGE_COLUMNS = (
    "id, chat_id, seq, sender_role, sender_id, sender_name, text, client_id, created_at"
)
AGENT_FIELDS = (
    "id",
    "email",
    "name",
    "password_hash",
    "is_admin",
    "status",
    "max_chats",
    "created_at",
    "departments",
    "disabled",
    "token_version",
)
NOTE_COLUMNS = "id, chat_id, author_id, author_name, text, client_id, created_at"
# Times are stored as fixed-width ISO 8601 text, so the smallest is the oldest.
# The index on status limits the scan to queued chats.
QUEUE_COUNTS = (
    "SELECT department, COUNT(*), MIN(queued_at) FROM chats WHERE status = 'queued'"
    " GROUP BY department ORDER BY MIN(queue_rank)"
)
CANNED_COLUMNS = "id, shortcut, text, created_by, created_at, updated_at"


def check_can_take(target: AgentLoad, department: str | None) -> None:
    """Raise `TransferRejected` when `target` cannot take a chat right now."""
    agent = target.agent
    if not target.connected:
        raise TransferRejected(f"{agent.name} is offline", "agent_offline")
    if agent.status != "ready":
        raise TransferRejected(f"{agent.name} is away", "agent_away")
    if target.load >= agent.max_chats:
        raise TransferRejected(
            f"{agent.name} has {target.load} of {agent.max_chats} chats open",
            "agent_full",
        )
    if (
        department is not None
        and agent.departments is not None
        and department not in agent.departments
    ):
        raise TransferRejected(
            f"{agent.name} does not serve department {department!r}", "department"
        )


def check_agent_chat(row: RowT | None, chat_id: str, agent_id: str) -> RowT:
    """Return the chat's row, checking that it is active and `agent_id`'s.

    `row` has the chat's `agent_id` and `status`, or is `None` for no chat.
    """
    if row is None:
        raise NotFound(f"chat {chat_id!r} not found")
    if row["agent_id"] != agent_id:
        raise Forbidden(f"chat {chat_id!r} is not yours")
    if row["status"] != "active":
        raise WrongState(f"chat {chat_id!r} is {row['status']}, not active")
    return row


def check_can_rate(row: Row | None, chat_id: str, visitor_id: str) -> None:
    """Raise unless `visitor_id` may rate the chat whose row is `row`.

    `row` has the chat's `visitor_id`, `agent_id`, `status` and `rated_at`,
    or is `None` for no chat.
    """
    if row is None:
        raise NotFound(f"chat {chat_id!r} not found")
    if row["visitor_id"] != visitor_id:
        raise Forbidden(f"chat {chat_id!r} is not yours")
    if row["status"] != "ended" or row["agent_id"] is None:
        raise WrongState("only a chat with an agent that has ended can be rated")
    if row["rated_at"] is not None:
        raise WrongState(f"chat {chat_id!r} is rated already")


def new_message(
    chat_id: str, seq: int, sender: Sender, text: str, client_id: str
) -> Message:
    return Message(
        id=new_id(),
        chat_id=chat_id,
        seq=seq,
        sender_role=sender.role,
        sender_id=sender.id,
        sender_name=sender.name,
        text=text,
        client_id=client_id,
        created_at=utc_now(),
    )


def seconds_between(start: str, end: str) -> float:
    return (parse_time(end) - parse_time(start)).total_seconds()
