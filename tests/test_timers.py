"""Shared timers for each socket's next PING and the deadline of its PONG."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sio_server.socket_server import CoarseTimers


async def test_timers_run_callbacks_in_order() -> None:
    timers = CoarseTimers(resolution_s=0.05)
    loop = asyncio.get_running_loop()
    start = loop.time()
    ran: list[tuple[str, float]] = []

    def note(name: str) -> None:
        ran.append((name, loop.time() - start))

    timers.call_later(0.2, note, "late")
    timers.call_later(0.05, note, "early")
    timers.call_later(0.05, note, "early too")
    assert timers.pending() == 3
    await asyncio.sleep(0.4)

    assert [name for name, _ in ran] == ["early", "early too", "late"]
    for (_, at), delay in zip(ran, (0.05, 0.05, 0.2), strict=True):
        # Not early, within the loop's millisecond clock. Late by at most the
        # resolution, plus slack for a busy machine.
        assert delay - 0.002 <= at < delay + 0.05 + 0.1, (delay, at)
    assert timers.pending() == 0


async def test_timers_share_one_loop_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timers = CoarseTimers(resolution_s=10.0)
    loop = asyncio.get_running_loop()
    scheduled: list[float] = []
    call_at = loop.call_at

    def counting_call_at(when: float, *args: object) -> asyncio.TimerHandle:
        scheduled.append(when)
        return call_at(when, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    later: list[int] = []
    for n in range(100):
        timers.call_later(30.0, later.append, n)

    # The 100 callbacks fall in one slot, or two if the slot's edge fell
    # between the first call and the last.
    assert 1 <= len(scheduled) <= 2, scheduled
    assert timers.pending() == 100


async def test_timers_survive_failing_callback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    timers = CoarseTimers(resolution_s=0.05)
    ran: list[int] = []

    def fail() -> None:
        raise RuntimeError("broken on purpose")

    timers.call_later(0.01, ran.append, 1)
    timers.call_later(0.01, fail)
    timers.call_later(0.01, ran.append, 2)
    with caplog.at_level(logging.ERROR, logger="sio_server.events"):
        await asyncio.sleep(0.2)

    assert ran == [1, 2]
    assert "broken on purpose" in caplog.text
