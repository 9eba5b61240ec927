"""The assignment policy alone, without sockets or SQL."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sio_server.matchmaker import AgentSlot, Assignment, WaitingChat, plan_assignments


def queue(*chat_ids: str) -> list[WaitingChat]:
    return [WaitingChat(chat_id) for chat_id in chat_ids]


def test_empty_queue_plans_nothing() -> None:
    assert plan_assignments([], [AgentSlot("a", load=0, max_chats=1)]) == []


def test_no_agents_plans_nothing() -> None:
    assert plan_assignments(queue("c1"), []) == []


def test_oldest_chat_first() -> None:
    plan = plan_assignments(queue("c1", "c2"), [AgentSlot("a", load=0, max_chats=1)])
    assert plan == [Assignment("c1", "a")]


def test_capacity_never_exceeded() -> None:
    agents = [AgentSlot("a", load=1, max_chats=3), AgentSlot("b", load=0, max_chats=1)]
    plan = plan_assignments(queue(*(f"c{n}" for n in range(10))), agents)
    per_agent = {"a": 0, "b": 0}
    for item in plan:
        per_agent[item.agent_id] += 1
    assert per_agent == {"a": 2, "b": 1}
    assert [item.chat_id for item in plan] == ["c0", "c1", "c2"]


def test_full_agent_gets_nothing() -> None:
    plan = plan_assignments(queue("c1"), [AgentSlot("a", load=2, max_chats=2)])
    assert plan == []


def test_least_busy_agent_first() -> None:
    agents = [AgentSlot("a", load=2, max_chats=5), AgentSlot("b", load=1, max_chats=5)]
    plan = plan_assignments(queue("c1"), agents)
    assert plan == [Assignment("c1", "b")]


def test_tie_goes_to_longest_idle() -> None:
    agents = [
        AgentSlot("a", load=0, max_chats=2, last_assigned_at="2026-01-01T10:00:00Z"),
        AgentSlot("b", load=0, max_chats=2, last_assigned_at="2026-01-01T09:00:00Z"),
    ]
    plan = plan_assignments(queue("c1"), agents)
    assert plan == [Assignment("c1", "b")]


def test_never_assigned_agent_counts_as_idlest() -> None:
    agents = [
        AgentSlot("a", load=0, max_chats=1, last_assigned_at="2026-01-01T10:00:00Z"),
        AgentSlot("b", load=0, max_chats=1),
    ]
    assert plan_assignments(queue("c1"), agents) == [Assignment("c1", "b")]


def test_spreads_burst_evenly() -> None:
    agents = [AgentSlot("a", load=0, max_chats=3), AgentSlot("b", load=0, max_chats=3)]
    plan = plan_assignments(queue("c1", "c2", "c3", "c4"), agents)
    assert [item.agent_id for item in plan] == ["a", "b", "a", "b"]


def test_each_chat_assigned_once() -> None:
    agents = [AgentSlot(f"a{n}", load=0, max_chats=5) for n in range(4)]
    plan = plan_assignments(queue(*(f"c{n}" for n in range(30))), agents)
    chat_ids = [item.chat_id for item in plan]
    assert len(chat_ids) == 20
    assert len(set(chat_ids)) == 20


def test_department_filter() -> None:
    agents = [
        AgentSlot("sales", load=0, max_chats=1, departments=frozenset({"sales"})),
        AgentSlot("any", load=0, max_chats=1),
    ]
    waiting = [WaitingChat("c1", "billing"), WaitingChat("c2", "sales")]
    plan = plan_assignments(waiting, agents)
    assert plan == [Assignment("c1", "any"), Assignment("c2", "sales")]


def test_unserved_department_keeps_its_place() -> None:
    agents = [AgentSlot("sales", load=0, max_chats=2, departments=frozenset({"sales"}))]
    waiting = [WaitingChat("c1", "billing"), WaitingChat("c2", "sales")]
    assert plan_assignments(waiting, agents) == [Assignment("c2", "sales")]


def test_longest_waiting_first_across_departments() -> None:
    agents = [AgentSlot("both", load=0, max_chats=1)]
    waiting = [WaitingChat("old", "billing"), WaitingChat("new", "sales")]
    assert plan_assignments(waiting, agents) == [Assignment("old", "both")]


def test_passing_agent_does_not_get_chat_back() -> None:
    agents = [AgentSlot("a", load=0, max_chats=2), AgentSlot("b", load=1, max_chats=2)]
    waiting = [WaitingChat("c1", passed_by="a"), WaitingChat("c2")]
    plan = plan_assignments(waiting, agents)
    assert plan == [Assignment("c1", "b"), Assignment("c2", "a")]


def test_passed_chat_skips_its_agent() -> None:
    agents = [AgentSlot("a", load=0, max_chats=1)]
    waiting = [WaitingChat("c1", passed_by="a"), WaitingChat("c2")]
    assert plan_assignments(waiting, agents) == [Assignment("c2", "a")]


def reference_plan(
    queue: list[WaitingChat], agents: list[AgentSlot]
) -> list[Assignment]:
    """The policy written plainly: scan every agent for every chat."""
    load = {agent.agent_id: agent.load for agent in agents}
    last = {agent.agent_id: agent.last_assigned_at for agent in agents}
    plan: list[Assignment] = []
    for chat in queue:
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
        last[chosen.agent_id] = "~" + str(len(plan) + 1).zfill(8)
        plan.append(Assignment(chat.chat_id, chosen.agent_id))
    return plan


departments = st.sampled_from([None, "sales", "billing"])
agent_slots = st.lists(
    st.builds(
        AgentSlot,
        agent_id=st.sampled_from([f"a{n}" for n in range(6)]),
        load=st.integers(min_value=0, max_value=3),
        max_chats=st.integers(min_value=1, max_value=3),
        last_assigned_at=st.sampled_from(["", "2026-01-01", "2026-02-01"]),
        departments=st.none() | st.frozensets(st.sampled_from(["sales", "billing"])),
    ),
    max_size=6,
    unique_by=lambda agent: agent.agent_id,
)
waiting_chats = st.lists(
    st.builds(
        WaitingChat,
        chat_id=st.uuids().map(str),
        department=departments,
        passed_by=st.none() | st.sampled_from(["a0", "a1"]),
    ),
    max_size=12,
)


@settings(max_examples=300, database=None)
@given(waiting_chats, agent_slots)
def test_plan_matches_the_plain_policy(
    queue: list[WaitingChat], agents: list[AgentSlot]
) -> None:
    plan = plan_assignments(queue, agents)
    assert plan == reference_plan(queue, agents)
    # Capacity holds for every agent.
    for agent in agents:
        given_now = sum(1 for item in plan if item.agent_id == agent.agent_id)
        assert agent.load + given_now <= max(agent.max_chats, agent.load)
