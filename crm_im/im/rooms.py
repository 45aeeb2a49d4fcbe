# -*- test-case-name: tests.test_im_rooms -*-
"""
Chat rooms (GROUPS.md): open, live conversations whose membership is per
socket. L{RoomPresence} is who is in which room now (pure state: a socket
enters and leaves; a user is in a room while any of their sockets is);
L{RoomHandlers} are the C{room:*} events on it. Room records are stored;
who is in a room is not.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, Iterable

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from ..presence import Presence
from ..serial import InFlight
from ..storage.interface import IConversationStore, IMessageStore, RoomRecord, roomConversation
from . import validation
from .errors import FORBIDDEN, NOT_FOUND, RATE_LIMITED, TOO_LARGE, IMError
from .interfaces import Caller, IRouter

#: Messages in a C{room:join} answer.
JOIN_HISTORY = 50
#: Public rooms listed at most.
MAX_LISTED = 1000


@attrs.frozen
class RoomLimits:
    """
    @ivar maxSockets: sockets in one room at once.
    @ivar maxRoomsPerUser: rooms one user may create (0: no limit).
    @ivar creators: when not empty, only these users may create rooms.
    """

    maxSockets: int = 10_000
    maxRoomsPerUser: int = 100
    creators: tuple[str, ...] = ()


class RoomPresence:
    """
    Which sockets, of which users, are in which room.
    """

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, str]] = {}
        self._ofSocket: dict[str, set[str]] = {}

    def contains(self, roomId: str, device: str) -> bool:
        """
        Is C{device} in C{roomId}?
        """
        return device in self._rooms.get(roomId, ())

    def devices(self, roomId: str) -> Iterable[str]:
        """
        The sockets in C{roomId}.
        """
        return self._rooms.get(roomId, {}).keys()

    def size(self, roomId: str) -> int:
        """
        How many sockets are in C{roomId}.
        """
        return len(self._rooms.get(roomId, ()))

    def users(self, roomId: str) -> list[str]:
        """
        The users with a socket in C{roomId}, in order of arrival.
        """
        return list(dict.fromkeys(self._rooms.get(roomId, {}).values()))

    def roomsOf(self, device: str) -> set[str]:
        """
        The rooms C{device} is in.
        """
        return set(self._ofSocket.get(device, ()))

    def enter(self, roomId: str, device: str, userId: str) -> bool:
        """
        C{device} (of C{userId}) enters C{roomId}.

        @return: whether it is the user's first socket in the room.
        """
        members = self._rooms.setdefault(roomId, {})
        first = userId not in members.values()
        members[device] = userId
        self._ofSocket.setdefault(device, set()).add(roomId)
        return first

    def leave(self, roomId: str, device: str) -> tuple[str, bool] | None:
        """
        C{device} leaves C{roomId}.

        @return: C{(userId, lastSocketOfUser)}, or L{None} if it was not in.
        """
        members = self._rooms.get(roomId)
        if members is None or device not in members:
            return None
        userId = members.pop(device)
        rooms = self._ofSocket.get(device)
        if rooms is not None:
            rooms.discard(roomId)
            if not rooms:
                del self._ofSocket[device]
        if not members:
            del self._rooms[roomId]
        return userId, userId not in members.values()

    def leaveAll(self, device: str) -> list[tuple[str, str, bool]]:
        """
        C{device} leaves every room (it disconnected or logged out).

        @return: C{(roomId, userId, lastSocketOfUser)} per room left.
        """
        left = []
        for roomId in sorted(self._ofSocket.get(device, ())):
            outcome = self.leave(roomId, device)
            if outcome is not None:
                left.append((roomId, outcome[0], outcome[1]))
        return left


class RoomHandlers:
    """
    The C{room:*} events, and what a socket's going means for its rooms.
    """

    def __init__(
        self,
        store: IConversationStore,
        messages: IMessageStore,
        rooms: RoomPresence,
        presence: Presence,
        router: IRouter,
        clock: IReactorTime,
        limits: RoomLimits | None = None,
        newId: Callable[[], str] = lambda: str(uuid.uuid4()),
        maxCachedRooms: int = 20_000,
    ) -> None:
        self.store = store
        self.messages = messages
        self.rooms = rooms
        self.presence = presence
        self.router = router
        self.clock = clock
        self.limits = limits if limits is not None else RoomLimits()
        self.newId = newId
        # Room records read or made here, the oldest dropped past
        # maxCachedRooms (one is read again when needed).
        self._records: dict[str, RoomRecord] = {}
        self.maxCachedRooms = maxCachedRooms
        #: users whose C{room:create} is being written on this node
        self.creating = InFlight()
        #: told of each room L{closed} here (a cluster tells the other
        #: nodes, which L{forgetRoom} it)
        self.closedListeners: list[Callable[[str], object]] = []
        #: told of each socket that entered or left a room through these
        #: handlers, with the rooms it is in now (connection recovery
        #: keeps them in the socket's record: a node killed writes nothing
        #: as its sockets go)
        self.socketRoomsListeners: list[Callable[[str, set[str]], object]] = []

    def forgetRoom(self, roomId: str) -> None:
        """
        Drop the cached record of C{roomId} (another node closed it).
        """
        self._records.pop(roomId, None)

    def record(self, roomId: str) -> Deferred[RoomRecord | None]:
        """
        The room C{roomId} (cached once read, at most C{maxCachedRooms};
        only the admin API deletes rooms, through L{closed}).
        """
        known = self._records.get(roomId)
        if known is not None:
            return succeed(known)

        def found(room: RoomRecord | None) -> RoomRecord | None:
            if room is not None:
                self._cache(room)
            return room

        return self.store.room(roomId).addCallback(found)

    def _cache(self, room: RoomRecord) -> None:
        records = self._records
        if room.id not in records and len(records) >= self.maxCachedRooms:
            del records[next(iter(records))]
        records[room.id] = room

    def wire(self, room: RoomRecord) -> dict[str, Any]:
        """
        The contract's Room object.
        """
        return {
            "id": room.id,
            "name": room.name,
            "topic": room.topic,
            "public": room.public,
            "createdBy": room.createdBy,
            "createdAt": room.createdAt,
            "onlineCount": len(self.rooms.users(room.id)),
        }

    def _userWire(self, userId: str) -> dict[str, Any]:
        user = self.presence.user(userId)
        if user is not None:
            return user.toWire()
        return {"id": userId, "name": userId, "avatar": "", "status": "offline"}

    async def create(self, caller: Caller, data: Any, privileged: bool = False) -> dict[str, Any]:
        """
        C{room:create}; C{privileged} (the admin API) skips the creator
        rules and limits.
        """
        request = validation.roomCreate(data)
        if not privileged and self.limits.creators and caller.userId not in self.limits.creators:
            raise IMError(FORBIDDEN, "only the configured users may create rooms")
        if request.clientId is not None:
            # A retry (its ack was lost) gets its room back, whatever the
            # limits say now.
            existing = await self.record(request.clientId)
            if existing is not None and existing.createdBy == caller.userId and existing.clientId == request.clientId:
                return self.wire(existing)
        limit = 0 if privileged else self.limits.maxRoomsPerUser
        # (counting the user's creations under way too: a burst of
        # room:create each read the stored count from before the others)
        if limit and await self.store.roomCount(caller.userId) + self.creating[caller.userId] >= limit:
            raise IMError(RATE_LIMITED, f"a user creates at most {limit} rooms")
        room = RoomRecord(
            id=request.clientId if request.clientId is not None else self.newId(),
            name=request.name,
            topic=request.topic,
            public=request.public,
            createdBy=caller.userId,
            clientId=request.clientId,
            createdAt=int(self.clock.seconds() * 1000),
        )
        with self.creating.holding([caller.userId]):
            room, _ = await self.store.createRoom(room)
        self._cache(room)
        return self.wire(room)

    async def listRooms(self, caller: Caller, data: Any) -> dict[str, Any]:
        """
        C{room:list}: the public rooms and the ones this socket is in.
        """
        listed = {room.id: room for room in await self.store.publicRooms(MAX_LISTED)}
        if caller.device is not None:
            for roomId in self.rooms.roomsOf(caller.device):
                if roomId not in listed:
                    room = await self.record(roomId)
                    if room is not None:
                        listed[roomId] = room
        return {"rooms": [self.wire(room) for room in listed.values()]}

    async def join(self, caller: Caller, data: Any) -> dict[str, Any]:
        """
        C{room:join}: this socket enters the room.
        """
        roomId = validation.roomId(data, "room:join")
        room = await self.record(roomId)
        if room is None or caller.device is None:
            raise IMError(NOT_FOUND, "no such room")
        if not self.rooms.contains(roomId, caller.device):
            if self.rooms.size(roomId) >= self.limits.maxSockets:
                raise IMError(TOO_LARGE, f"a room holds at most {self.limits.maxSockets} sockets")
            if self.rooms.enter(roomId, caller.device, caller.userId):
                self.router.toDevices(
                    list(self.rooms.devices(roomId)),
                    "room:joined",
                    {"roomId": roomId, "user": self._userWire(caller.userId)},
                    exceptDevice=caller.device,
                )
            self._socketRoomsChanged(caller.device)
        page = await self.messages.conversationHistory(roomConversation(roomId), JOIN_HISTORY, None, None)
        return {
            "room": self.wire(room),
            "members": [self._userWire(userId) for userId in self.rooms.users(roomId)],
            "messages": [self.messageWire(m) for m in page.messages],
        }

    #: signs a file message's links (FILES.md), set by L{IMCore.enableUploads}
    fileLinks: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def messageWire(self, message: Any) -> dict[str, Any]:
        """
        The wire form of a stored message, a file's links signed afresh.
        """
        wire: dict[str, Any] = message.toWire()
        if message.fileId is not None and self.fileLinks is not None:
            self.fileLinks(wire)
        return wire

    def _left(self, roomId: str, userId: str, last: bool) -> None:
        if last:
            self.router.toDevices(list(self.rooms.devices(roomId)), "room:left", {"roomId": roomId, "userId": userId})

    async def leave(self, caller: Caller, data: Any) -> dict[str, Any]:
        """
        C{room:leave}.
        """
        roomId = validation.roomId(data, "room:leave")
        outcome = None if caller.device is None else self.rooms.leave(roomId, caller.device)
        if outcome is not None:
            self._left(roomId, *outcome)
            assert caller.device is not None
            self._socketRoomsChanged(caller.device)
        return {"roomId": roomId, "left": outcome is not None}

    def _socketRoomsChanged(self, device: str) -> None:
        if self.socketRoomsListeners:
            rooms = self.rooms.roomsOf(device)
            for listener in self.socketRoomsListeners:
                listener(device, rooms)

    def closed(self, roomId: str) -> int:
        """
        The room C{roomId} was closed (deleted from the store): every
        socket in it gets C{room:left} C{{roomId, reason: "closed"}} and
        leaves it.

        @return: how many sockets were in it.
        """
        self._records.pop(roomId, None)
        for listener in self.closedListeners:
            listener(roomId)
        devices = list(self.rooms.devices(roomId))
        sent = self.router.toDevices(devices, "room:left", {"roomId": roomId, "reason": "closed"})
        for device in devices:
            self.rooms.leave(roomId, device)
            self._socketRoomsChanged(device)
        return sent

    def deviceGone(self, device: str) -> None:
        """
        C{device} disconnected or logged out: it leaves every room.
        """
        for roomId, userId, last in self.rooms.leaveAll(device):
            self._left(roomId, userId, last)
