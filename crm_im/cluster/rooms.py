# -*- test-case-name: tests.test_cluster_service -*-
"""
Chat rooms across the nodes of a cluster: a L{RoomPresence} holding this
node's sockets and a mirror of the other nodes' ones.

A room's membership is per socket and a socket lives on one node, so each
node owns the entries of its own sockets: a local C{enter}/C{leave} is
told to L{ClusterRoomPresence.published} (the node registers the socket's
rooms with its device record in Redis and says so on the presence
channel), and the other nodes' entries arrive as L{remoteSet} calls (an
event, or a snapshot read at (re)connection) and L{remoteGone} (their
device logged out, or their node died). The room handlers need no change:
C{room:joined}, C{room:left} and room messages go to every socket in the
room through the cluster router, which sends each node its own sockets'
share once.

Who tells what: the node where a socket enters or leaves announces it to
the whole room (through the router); a node that dies announces nothing,
so every other node tells its own sockets of the users it took out of
the room (L{remoteGone}'s return value).
"""

from __future__ import annotations

from typing import Callable, Iterable

from ..im.rooms import RoomPresence


class ClusterRoomPresence(RoomPresence):
    """
    Room membership of every node's sockets, as this node sees it.

    @ivar isLocal: whether a device is one of this node's.
    @ivar published: told of a local device whose rooms changed.
    """

    def __init__(self, isLocal: Callable[[str], bool]) -> None:
        super().__init__()
        self.isLocal = isLocal
        self.published: Callable[[str], object] | None = None

    def enter(self, roomId: str, device: str, userId: str) -> bool:
        """
        See L{RoomPresence.enter}; a local device's change is published.
        """
        first = super().enter(roomId, device, userId)
        self._changed(device)
        return first

    def leave(self, roomId: str, device: str) -> tuple[str, bool] | None:
        """
        See L{RoomPresence.leave}; a local device's change is published.
        """
        outcome = super().leave(roomId, device)
        if outcome is not None:
            self._changed(device)
        return outcome

    def leaveAll(self, device: str) -> list[tuple[str, str, bool]]:
        """
        See L{RoomPresence.leaveAll}: one publication, not one per room.
        """
        published, self.published = self.published, None
        try:
            left = super().leaveAll(device)
        finally:
            self.published = published
        if left:
            self._changed(device)
        return left

    def _changed(self, device: str) -> None:
        if self.published is not None and self.isLocal(device):
            self.published(device)

    # ---- the other nodes' sockets

    def remoteSet(self, device: str, userId: str, rooms: Iterable[str]) -> list[tuple[str, str, bool]]:
        """
        Another node's C{device} (of C{userId}) is in exactly C{rooms}
        now. Nothing is published or announced: its node did.

        @return: the rooms it left, as L{RoomPresence.leaveAll} says.
        """
        wanted = set(rooms)
        current = self.roomsOf(device)
        left = []
        for roomId in sorted(current - wanted):
            outcome = RoomPresence.leave(self, roomId, device)
            if outcome is not None:
                left.append((roomId, outcome[0], outcome[1]))
        for roomId in sorted(wanted - current):
            RoomPresence.enter(self, roomId, device, userId)
        return left

    def remoteGone(self, device: str) -> list[tuple[str, str, bool]]:
        """
        Another node's C{device} is gone from the cluster (logged out,
        disconnected, or its node died).

        @return: C{(roomId, userId, lastSocketOfUser)} per room left.
        """
        return RoomPresence.leaveAll(self, device)

    def localDevices(self, roomId: str) -> list[str]:
        """
        This node's sockets in C{roomId}.
        """
        return [device for device in self.devices(roomId) if self.isLocal(device)]
