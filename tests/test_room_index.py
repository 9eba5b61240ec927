"""The client manager's index of rooms per socket, against python-socketio's.

The same random sequence of connects, room changes and disconnects runs on
`ChatManager` and on python-socketio's own `AsyncManager`. After every step,
both must hold the same rooms and report the same rooms for every socket.
A move of one room's members into or out of another is done socket by socket
on python-socketio's manager.
"""

from __future__ import annotations

import itertools
import random
from types import SimpleNamespace

import pytest
import socketio

from sio_server.cluster import ChatRedisManager
from sio_server.socket_server import ChatManager

NAMESPACE = "/"
ROOMS = ["agents", "chat:1", "chat:2", "visitor:1"]


def attach(manager: socketio.AsyncManager) -> socketio.AsyncManager:
    counter = itertools.count()
    # The managers need only ids and a JSON codec from their server.
    server = SimpleNamespace(
        eio=SimpleNamespace(generate_id=lambda: f"s{next(counter)}"),
        packet_class=socketio.packet.Packet,
    )
    manager.set_server(server)
    return manager


@pytest.mark.parametrize("seed", range(20))
async def test_rooms_match_python_socketio(seed: int) -> None:
    ours = attach(ChatManager())
    reference = attach(socketio.AsyncManager())
    assert isinstance(ours, ChatManager)
    choose = random.Random(seed)
    sids: list[str] = []
    for step in range(300):
        action = choose.choice(
            ["connect", "enter", "enter", "leave", "close", "drop", "move"]
        )
        if action == "connect" or not sids:
            eio_sid = f"e{step}"
            sid = await ours.pre_connect(eio_sid, NAMESPACE)
            assert sid == await reference.pre_connect(eio_sid, NAMESPACE)
            await ours.connect(sid, NAMESPACE)
            await reference.connect(sid, NAMESPACE)
            sids.append(sid)
        elif action == "enter":
            sid, room = choose.choice(sids), choose.choice(ROOMS)
            await ours.enter_room(sid, NAMESPACE, room)
            await reference.enter_room(sid, NAMESPACE, room)
        elif action == "leave":
            sid, room = choose.choice(sids), choose.choice(ROOMS)
            await ours.leave_room(sid, NAMESPACE, room)
            await reference.leave_room(sid, NAMESPACE, room)
        elif action == "move":
            members, room = choose.sample(ROOMS, 2)
            enter = choose.random() < 0.5
            moving = [sid for sid, _ in reference.get_participants(NAMESPACE, members)]
            if enter:
                await ours.move_in(members, room, NAMESPACE)
            else:
                await ours.move_out(members, room, NAMESPACE)
            for sid in moving:
                if enter:
                    await reference.enter_room(sid, NAMESPACE, room)
                else:
                    await reference.leave_room(sid, NAMESPACE, room)
        elif action == "close":
            room = choose.choice(ROOMS)
            await ours.close_room(room, NAMESPACE)
            await reference.close_room(room, NAMESPACE)
        else:
            sid = sids.pop(choose.randrange(len(sids)))
            await ours.disconnect(sid, NAMESPACE)
            await reference.disconnect(sid, NAMESPACE)
        assert ours.rooms == reference.rooms
        for sid in sids:
            assert sorted(ours.get_rooms(sid, NAMESPACE)) == sorted(
                reference.get_rooms(sid, NAMESPACE)
            )
    for sid in sids:
        await ours.disconnect(sid, NAMESPACE)
    assert ours.rooms == {}
    assert ours.room_entries() == 0


async def test_invalid_published_moves_ignored() -> None:
    """A published move or disconnect with invalid members or room changes nothing.

    Other nodes publish these messages, so no client can send one, but a
    wrong one must not take sockets out of the namespace or raise.
    """
    manager = attach(ChatRedisManager("redis://127.0.0.1:6379/0", "test"))
    assert isinstance(manager, ChatRedisManager)
    sid = await manager.pre_connect("e1", NAMESPACE)
    await manager.connect(sid, NAMESPACE)
    manager.basic_enter_room(sid, NAMESPACE, "agent:1")
    before = {room: dict(sids) for room, sids in manager.rooms[NAMESPACE].items()}

    invalid = [
        {"members": {}, "room": "chat:1"},
        {"members": [], "room": "chat:1"},
        {"members": "agent:1", "room": ["chat:1"]},
        {"members": "agent:1"},
    ]
    for fields in invalid:
        common = {"sid": None, "namespace": NAMESPACE, **fields}
        await manager._handle_leave_room({"method": "leave_room", **common})
        await manager._handle_enter_room({"method": "enter_room", **common})
    await manager._handle_disconnect(
        {"method": "disconnect", "sid": None, "namespace": NAMESPACE, "members": {}}
    )

    after = {room: dict(sids) for room, sids in manager.rooms[NAMESPACE].items()}
    assert after == before
    assert manager.is_connected(sid, NAMESPACE)
