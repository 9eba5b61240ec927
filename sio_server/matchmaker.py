"""Assignment policy: which waiting chat goes to which free agent.

The functions here are pure: they take a snapshot of the queue and of the agents
and return a plan. The store applies the plan inside the same transaction that
read the snapshot, which is what makes an assignment atomic.
"""

from __future__ import annotations

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
    load = {agent.agent_id: agent.load for agent in agents}
    last = {agent.agent_id: agent.last_assigned_at for agent in agents}
    plan: list[Assignment] = []
    free = sum(max(agent.max_chats - agent.load, 0) for agent in agents)
    for chat in queue:
        if free <= 0:
            break
        candidates = [
            agent
            for agent in agents
            if load[agent.agent_id] < agent.max_chats and agent.can_take(chat)
        ]
        if not candidates:
            continue
        chosen = min(
            candidates,
            key=lambda agent: (
                load[agent.agent_id],
                last[agent.agent_id],
                agent.agent_id,
            ),
        )
        load[chosen.agent_id] += 1
        # A later pick in the same plan counts as more recent than any stored time.
        last[chosen.agent_id] = "~" + str(len(plan)).zfill(8)
        free -= 1
        plan.append(Assignment(chat_id=chat.chat_id, agent_id=chosen.agent_id))
    return plan
