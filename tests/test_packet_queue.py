"""The per-socket outgoing queue that replaces asyncio.Queue in python-engineio."""

from __future__ import annotations

import asyncio

import pytest

from sio_server.socket_server import PacketQueue


async def test_fifo_and_empty() -> None:
    queue = PacketQueue()
    assert queue.empty()
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()
    for item in ("a", "b", None):
        await queue.put(item)
    assert queue.qsize() == 3
    assert [await queue.get(), queue.get_nowait(), await queue.get()] == [
        "a",
        "b",
        None,
    ]
    assert queue.empty()


async def test_get_waits_for_put() -> None:
    queue = PacketQueue()
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    queue.put_nowait("late")
    assert await getter == "late"


async def test_timed_out_get_loses_nothing() -> None:
    queue = PacketQueue()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(queue.get(), 0.01)
    queue.put_nowait("kept")
    assert await asyncio.wait_for(queue.get(), 1) == "kept"


async def test_each_item_goes_to_one_getter() -> None:
    queue = PacketQueue()
    getters = [asyncio.create_task(queue.get()) for _ in range(3)]
    await asyncio.sleep(0)
    getters[0].cancel()
    for item in ("x", "y"):
        queue.put_nowait(item)
    results = await asyncio.gather(*getters, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert sorted(results[1:]) == ["x", "y"]  # type: ignore[type-var]


async def test_join_waits_for_task_done() -> None:
    queue = PacketQueue()
    await queue.join()
    queue.put_nowait(1)
    queue.put_nowait(2)
    joiner = asyncio.create_task(queue.join())
    queue.get_nowait()
    queue.task_done()
    await asyncio.sleep(0)
    assert not joiner.done()
    queue.get_nowait()
    queue.task_done()
    await asyncio.wait_for(joiner, 1)
    with pytest.raises(ValueError):
        queue.task_done()


async def test_put_sends_now_past_empty_queue() -> None:
    queue = PacketQueue()
    sent: list[str] = []

    async def send_now(item: str, target: PacketQueue) -> None:
        assert target is queue
        sent.append(item)

    queue.send_now = send_now
    await queue.put("first")
    assert sent == ["first"]
    assert queue.empty()

    # A packet already waiting keeps its place: later ones queue behind it.
    queue.put_nowait("waiting")
    await queue.put("behind")
    assert sent == ["first"]
    assert [queue.get_nowait(), queue.get_nowait()] == ["waiting", "behind"]

    # The end mark always goes through the queue, for the writer to see.
    await queue.put(None)
    assert sent == ["first"]
    assert queue.get_nowait() is None


async def test_put_calls_on_put_without_getter() -> None:
    queue = PacketQueue()
    calls: list[int] = []
    queue.on_put = lambda: calls.append(queue.qsize())
    queue.put_nowait("a")
    await queue.put("b")
    assert calls == [1, 2]

    # A task waiting in get takes the item, and on_put is not called.
    queue.get_nowait()
    queue.get_nowait()
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("c")
    assert await getter == "c"
    assert calls == [1, 2]
