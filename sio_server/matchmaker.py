"""Assignment policy: which waiting chat goes to which free agent.

The functions here are pure: they take a snapshot of the queue and of the agents
and return a plan. The store applies the plan inside the same transaction that
read the snapshot, which is what makes an assignment atomic.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WaitingChat:
    """A queued chat, listed in queue order by the caller."""

    chat_id: str
    department: str | None = None
    # The agent who handed this chat back to the queue, and who does not get
    # it again while it waits.
    passed_by: str | None = None


@dataclass(frozen=True, slots=True)
class AgentSlot:
    """An agent who is ready and connected, with its count of open chats."""

    agent_id: str
    load: int
    max_chats: int
    # Time of the agent's last assignment as sortable text; `""` for never.
    last_assigned_at: str = ""
    # `None` serves every department.
    departments: frozenset[str] | None = None

    def serves(self, department: str | None) -> bool:
        """Tell whether the agent takes chats of `department`.

        Chats without a department go to any agent.
        """
        return (
            self.departments is None
            or department is None
            or (department in self.departments)
        )

    def can_take(self, chat: WaitingChat) -> bool:
        return self.serves(chat.department) and chat.passed_by != self.agent_id


@dataclass(frozen=True, slots=True)
class Assignment:
    chat_id: str
    agent_id: str


def plan_assignments(
    queue: Sequence[WaitingChat], agents: Sequence[AgentSlot]
) -> list[Assignment]:
    """Pair waiting chats with agents: oldest chat first, least busy agent first.

    The queue is walked in order, whatever the departments, so across
    departments the chat that has waited longest is served first. A chat goes
    to an agent who serves its department and did not pass it back. Among
    those with a free slot, the one with the fewest open chats wins, and a tie
    goes to the agent whose last assignment is the oldest. No agent is given
    more than `max_chats` chats in total. A chat that no free agent can take
    keeps its place, and the chats behind it are still served.
    """
    # Agents with a free slot, least busy first, then longest idle, then by
    # id, as a heap: a burst of thousands of chats and agents costs
    # O(chats * log agents) instead of a scan of every agent per chat.
    heap = [
        (agent.load, agent.last_assigned_at, agent.agent_id, agent)
        for agent in agents
        if agent.load < agent.max_chats
    ]
    heapq.heapify(heap)
    plan: list[Assignment] = []
    for chat in queue:
        if not heap:
            break
        # Agents that cannot take this chat wait aside and go back after it.
        passed_over = []
        chosen = None
        while heap:
            entry = heapq.heappop(heap)
            if entry[3].can_take(chat):
                chosen = entry
                break
            passed_over.append(entry)
        for entry in passed_over:
            heapq.heappush(heap, entry)
        if chosen is None:
            continue
        load, _, agent_id, agent = chosen
        plan.append(Assignment(chat_id=chat.chat_id, agent_id=agent_id))
        if load + 1 < agent.max_chats:
            # A later pick in the same plan counts as more recent than any
            # stored time.
            recent = "~" + str(len(plan)).zfill(8)
            heapq.heappush(heap, (load + 1, recent, agent_id, agent))
    return plan
