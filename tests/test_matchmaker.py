"""The assignment policy alone, without sockets or SQL."""

from __future__ import annotations

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


def test_passed_chat_waits_when_only_its_agent_is_free() -> None:
    agents = [AgentSlot("a", load=0, max_chats=1)]
    waiting = [WaitingChat("c1", passed_by="a"), WaitingChat("c2")]
    assert plan_assignments(waiting, agents) == [Assignment("c2", "a")]
