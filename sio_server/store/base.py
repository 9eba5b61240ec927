"""The storage interface that the chat service and the HTTP routes use.

It contains everything that must survive a restart (visitors, agents, chats,
messages, read marks) and everything the matchmaker decides on (queue order,
agent status, connection and load, assignments). A backend for several server
processes implements the same methods with its own transactions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

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
)


class Store(ABC):
    """Durable state of the chat server."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and apply pending schema migrations."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections; safe to call twice."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise when a trivial query on the database fails."""

    def claim_for_server(self) -> None:
        """Raise `StoreInUse` if another server process serves this store.

        A database that several servers share, such as PostgreSQL, takes no
        claim, so this does nothing unless a backend overrides it.
        """
        return

    # Agents

    @abstractmethod
    async def create_agent(
        self,
        email: str,
        name: str,
        password_hash: str,
        *,
        is_admin: bool = False,
        actor_id: str | None = None,
    ) -> Agent:
        """Insert an agent and audit it; raise `WrongState` when the email is taken.

        `actor_id` is the admin who made the change, `None` for the command line.
        """

    @abstractmethod
    async def update_agent(
        self, agent_id: str, changes: AgentChanges, actor_id: str | None
    ) -> Agent:
        """Apply an admin's changes and audit them; raise `NotFound` for no agent."""

    @abstractmethod
    async def set_password(
        self, agent_id: str, password_hash: str, actor_id: str | None
    ) -> Agent:
        """Replace the password hash, revoke older tokens and audit the change."""

    @abstractmethod
    async def list_audit(self, limit: int, before_id: int | None) -> list[AuditEntry]:
        """Return audit entries newest first, older than `before_id` when given."""

    @abstractmethod
    async def get_agent(self, agent_id: str) -> Agent | None: ...

    @abstractmethod
    async def get_agent_by_email(self, email: str) -> Agent | None: ...

    @abstractmethod
    async def set_agent_status(
        self, agent_id: str, status: AgentStatus, max_chats: int | None = None
    ) -> Agent:
        """Set status and, when given, capacity; raise `NotFound` for no such agent."""

    @abstractmethod
    async def set_agent_ready(
        self, agent_id: str, max_chats: int | None, departments: tuple[str, ...] | None
    ) -> Agent:
        """Mark the agent ready, serving `departments` (`None`: every one)."""

    @abstractmethod
    async def list_agent_loads(self) -> list[AgentLoad]:
        """Return every agent with its count of active chats, by name."""

    @abstractmethod
    async def set_agent_connected(self, agent_id: str, connected: bool) -> None:
        """Record whether the agent has at least one connected socket."""

    @abstractmethod
    async def agent_connected(self, agent_id: str, token_version: int) -> Agent | None:
        """Mark an agent connected, and away if it was offline, in one write.

        Only an agent that exists, is not disabled and still has
        `token_version` is changed. Return it as changed, or `None` when it
        was not.
        """

    @abstractmethod
    async def reset_connections(self) -> None:
        """Mark every agent disconnected, as after a start with no sockets yet."""

    @abstractmethod
    async def available_agents(self) -> tuple[int, int]:
        """Count agents who are ready and connected, and sum their `max_chats`."""

    # Visitors

    @abstractmethod
    async def get_visitor(self, visitor_id: str) -> Visitor | None: ...

    @abstractmethod
    async def update_visitor(
        self, visitor_id: str, name: str | None, email: str | None
    ) -> Visitor:
        """Set the fields that are not `None`; the chats' visitor names follow."""

    # Chats

    @abstractmethod
    async def open_chat(
        self,
        visitor: Visitor,
        *,
        department: str | None,
        metadata: dict[str, Any] | None,
        first_message: tuple[str, str] | None,
    ) -> tuple[Chat, bool]:
        """Queue a new chat for the visitor, or return its open one.

        The visitor's row is stored or updated in the same transaction, since
        visitors who never join a queue are never stored.

        `first_message` is `(text, client_id)`, stored as seq 1 of a new chat and
        ignored for an existing one. The flag is true when a chat was created.
        """

    @abstractmethod
    async def get_chat(self, chat_id: str) -> Chat | None: ...

    @abstractmethod
    async def open_chat_of_visitor(self, visitor_id: str) -> Chat | None:
        """Return the visitor's queued or active chat, if any."""

    @abstractmethod
    async def active_chats_of_agent(self, agent_id: str) -> list[Chat]: ...

    @abstractmethod
    async def list_chats(
        self,
        *,
        status: ChatStatus | None = None,
        agent_id: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[Chat]:
        """List chats newest first; `before` is a `created_at` for paging."""

    @abstractmethod
    async def end_chat(
        self, chat_id: str, ended_by: SenderRole, reason: str | None
    ) -> Chat:
        """End a queued or active chat; raise `WrongState` when it has ended."""

    @abstractmethod
    async def requeue_agent_chats(self, agent_id: str) -> list[Chat]:
        """Set the agent offline and put its active chats at the front of the queue.

        The chats keep their relative order: the one assigned first ends up first.
        """

    @abstractmethod
    async def assign_waiting(self) -> list[Chat]:
        """Assign queued chats to ready, connected agents in one transaction.

        The agent that passed a chat back to the queue is not given it again.
        """

    @abstractmethod
    async def transfer_to_agent(
        self, chat_id: str, from_agent_id: str, to_agent_id: str
    ) -> Chat:
        """Give an active chat of `from_agent_id` to another agent.

        The checks and the change happen in one transaction. Raise `NotFound`
        for an unknown chat or target, `Forbidden` when the chat is not the
        caller's, and `WrongState` when it is not active. Raise
        `TransferRejected` when the target is the caller, offline, away or full,
        or does not serve the chat's department.
        """

    @abstractmethod
    async def transfer_to_queue(
        self, chat_id: str, from_agent_id: str, department: str | None
    ) -> Chat:
        """Put an active chat of `from_agent_id` at the front of a queue.

        The chat takes `department`; its agent will not get it back while it
        waits. Errors as in `transfer_to_agent`.
        """

    @abstractmethod
    async def requeue_unreplied(self, assigned_before: str) -> list[tuple[Chat, str]]:
        """Requeue active chats whose agent has not replied since `assigned_before`.

        Each goes to the front of the queue and its agent will not get it back
        while it waits. Return each chat with the agent it left.
        """

    @abstractmethod
    async def miss_waiting(self, queued_before: str) -> list[Chat]:
        """Turn chats queued since before `queued_before` into `missed` chats."""

    @abstractmethod
    async def end_inactive(self, active_before: str) -> list[Chat]:
        """End active chats whose visitor has been silent since `active_before`."""

    @abstractmethod
    async def leave_message(
        self,
        visitor: Visitor,
        *,
        department: str | None,
        text: str,
        client_id: str,
    ) -> Chat:
        """Store a message for agents to reply to later, as a `missed` chat.

        The visitor's queued chat becomes that chat; otherwise a new one is
        made. Raise `WrongState` when the visitor has an active chat.
        """

    @abstractmethod
    async def reply_to_missed(
        self, chat_id: str, sender: Sender, text: str, client_id: str
    ) -> tuple[Message, bool]:
        """Store an agent's reply to a missed chat; the chat keeps its status.

        A chat without agent takes the replying one. Raise `NotFound` or
        `WrongState` for a chat that is not missed. The flag is false for a
        repeated `client_id`.
        """

    @abstractmethod
    async def rate_chat(
        self, chat_id: str, visitor_id: str, score: int, comment: str | None
    ) -> Chat:
        """Store the visitor's rating of an ended chat, once."""

    @abstractmethod
    async def recent_timings(self, limit: int) -> Timings:
        """Return waits and durations of the latest chats, for the wait estimate."""

    @abstractmethod
    async def queue_position(self, chat_id: str) -> int:
        """Return the chat's place in its department's queue (1 = next).

        Chats without a department form a queue of their own. Return 0 when the
        chat is not queued.
        """

    @abstractmethod
    async def count_chats_by_status(self) -> dict[str, int]:
        """Count chats per status; statuses without chats may be left out."""

    @abstractmethod
    async def count_queued(self) -> int:
        """Count the chats waiting in every queue."""

    @abstractmethod
    async def queue_entries(self) -> list[QueueEntry]:
        """Return the queued chats in queue order."""

    @abstractmethod
    async def queue_counts(self) -> list[QueueCount]:
        """Count the queued chats by department, the departments in queue order."""

    @abstractmethod
    async def people_with_open_state(self) -> tuple[list[str], list[str]]:
        """Return visitor ids with open chats and agent ids not offline or busy.

        A server starting up gives each of them a grace period to reconnect.
        """

    # Messages

    @abstractmethod
    async def add_message(
        self, chat_id: str, sender: Sender, text: str, client_id: str
    ) -> tuple[Message, bool]:
        """Store a message with the chat's next seq and commit before returning.

        A repeated `client_id` from the same sender returns the stored message
        and `False`. Raise `NotFound` for no such chat, `Forbidden` when the
        sender is not the chat's visitor or current agent, and `WrongState`
        when the chat has ended.
        """

    @abstractmethod
    async def list_messages(
        self, chat_id: str, *, after_seq: int = 0, limit: int = 100
    ) -> tuple[list[Message], bool]:
        """Return messages after `after_seq`, oldest first, and whether more follow."""

    # Notes

    @abstractmethod
    async def add_note(
        self, chat_id: str, author: Sender, text: str, client_id: str
    ) -> tuple[Note, bool]:
        """Store a note; a repeated `client_id` returns the stored one and False."""

    @abstractmethod
    async def list_notes(self, chat_id: str) -> list[Note]:
        """Return the chat's notes, oldest first."""

    # Canned responses

    @abstractmethod
    async def list_canned(self) -> list[CannedResponse]:
        """Return every canned response, by shortcut."""

    @abstractmethod
    async def create_canned(
        self, shortcut: str, text: str, created_by: str
    ) -> CannedResponse:
        """Insert a canned response; raise `WrongState` when the shortcut is taken."""

    @abstractmethod
    async def update_canned(
        self, canned_id: str, shortcut: str, text: str
    ) -> CannedResponse:
        """Replace shortcut and text; raise `NotFound` or `WrongState` (taken)."""

    @abstractmethod
    async def delete_canned(self, canned_id: str) -> None:
        """Delete a canned response; raise `NotFound` when there is none."""

    # Read marks

    @abstractmethod
    async def set_read_mark(
        self, chat_id: str, role: SenderRole, reader_id: str, seq: int
    ) -> int:
        """Raise the reader's mark to `seq` (never lower it) and return the mark."""

    @abstractmethod
    async def get_read_mark(
        self, chat_id: str, role: SenderRole, reader_id: str
    ) -> int:
        """Return the reader's mark in a chat, 0 when none is stored."""
