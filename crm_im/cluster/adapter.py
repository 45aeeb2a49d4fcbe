# -*- test-case-name: tests.test_cluster -*-
"""
Broadcasts in the official Socket.IO Redis adapter's format, as
C{@socket.io/redis-emitter} publishes them: msgpack
C{[uid, packet, {rooms, except, flags}]} on C{<prefix>#<nsp>#} (no room or
several) or C{<prefix>#<nsp>#<room>#} (one room). Each node delivers to
its matching local sockets.

Rooms are resolved when a broadcast arrives, from the IM's own state, so
that no socket has to be kept in a room: C{user:<id>} is every logged-in
socket of the user, C{group:<id>} its members' sockets, C{room:<id>} the
chat room's sockets; any other name is a Socket.IO room (or a socket id).
The IM's own server -> client events are refused: a back end cannot forge
a chat message.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Iterable

import msgpack
from twisted.logger import Logger

from ..im.reserved import reservedEvent
from ..socketio.packet import encodeEvent

#: Socket.IO's EVENT and BINARY_EVENT packet types.
_EVENT_TYPES = (2, 5)



def adapterPattern(prefix: str, namespace: str = "/") -> str:
    """
    The PSUBSCRIBE pattern of every broadcast channel of C{namespace}.
    """
    return f"{prefix}#{namespace}#*"


class Broadcast:
    """
    One decoded broadcast.
    """

    __slots__ = ("uid", "event", "args", "rooms", "excepted")

    def __init__(self, uid: str, event: str, args: list[Any], rooms: list[str], excepted: list[str]) -> None:
        self.uid = uid
        self.event = event
        self.args = args
        self.rooms = rooms
        self.excepted = excepted


def decodeBroadcast(data: bytes, namespace: str = "/") -> Broadcast | None:
    """
    Decode an adapter message; L{None} if it is not an event broadcast to
    C{namespace} (requests of other adapters, other namespaces).

    @raise ValueError: if malformed.
    """
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as error:
        raise ValueError(f"not msgpack: {error}")
    if not isinstance(value, list) or len(value) < 2:
        raise ValueError("not [uid, packet, opts]")
    uid, packet = value[0], value[1]
    opts = value[2] if len(value) > 2 and isinstance(value[2], dict) else {}
    if not isinstance(packet, dict) or packet.get("type") not in _EVENT_TYPES:
        return None
    if packet.get("nsp", "/") != namespace:
        return None
    data_ = packet.get("data")
    if not isinstance(data_, list) or not data_ or not isinstance(data_[0], str):
        raise ValueError("packet data must be [event, ...args]")
    rooms = [str(room) for room in opts.get("rooms") or ()]
    excepted = [str(room) for room in opts.get("except") or ()]
    return Broadcast(str(uid), data_[0], data_[1:], rooms, excepted)


class AdapterListener:
    """
    Delivers adapter broadcasts to this node's sockets.

    @ivar delivered: sockets written to, in total. @ivar refused:
        broadcasts refused (reserved event names).
    """

    log = Logger()

    def __init__(
        self,
        sockets: dict[str, Any],
        rooms: dict[str, set[Any]],
        userDevices: Callable[[str], Iterable[str]],
        groupMembers: Callable[[str], Awaitable[Iterable[str] | None]],
        roomDevices: Callable[[str], Iterable[str]],
    ) -> None:
        """
        @param sockets: the namespace's sockets by sid.
        @param rooms: the namespace's Socket.IO rooms.
        @param userDevices: a user's logged-in devices on this node.
        @param groupMembers: a group's member ids (L{None}: no such group).
        @param roomDevices: a chat room's sockets on this node.
        """
        self.sockets = sockets
        self.rooms = rooms
        self.userDevices = userDevices
        self.groupMembers = groupMembers
        self.roomDevices = roomDevices
        self.delivered = 0
        self.refused = 0

    async def resolve(self, room: str) -> set[str]:
        """
        The local socket ids in C{room}.
        """
        kind, _, id = room.partition(":")
        if id:
            if kind == "user":
                return set(self.userDevices(id))
            if kind == "group":
                members = await self.groupMembers(id)
                return {sid for userId in members or () for sid in self.userDevices(userId)}
            if kind == "room":
                return set(self.roomDevices(id))
        if room in self.sockets:
            return {room}
        return {socket.sid for socket in self.rooms.get(room, ())}

    async def handle(self, data: bytes) -> int:
        """
        Deliver one broadcast; return how many local sockets got it.
        """
        try:
            broadcast = decodeBroadcast(data)
        except ValueError as error:
            self.log.warn("ignoring a malformed adapter broadcast: {error}", error=str(error))
            return 0
        if broadcast is None:
            return 0
        if reservedEvent(broadcast.event):
            self.refused += 1
            self.log.warn("refused a published {event!r}: an IM event name", event=broadcast.event)
            return 0
        if broadcast.rooms:
            targets: set[str] = set()
            for room in broadcast.rooms:
                targets |= await self.resolve(room)
        else:
            targets = set(self.sockets)
        for room in broadcast.excepted:
            targets -= await self.resolve(room)
        if not targets:
            return 0
        frames = encodeEvent("/", broadcast.event, broadcast.args)
        count = 0
        for sid in targets:
            socket = self.sockets.get(sid)
            if socket is not None:
                socket.sendFrames(frames)
                count += 1
        self.delivered += count
        return count
