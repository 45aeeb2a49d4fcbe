# -*- test-case-name: tests.test_cluster -*-
"""
Cluster-wide presence: a L{Presence} whose users' device sets span every
node. Local transitions (C{login}, C{logout}, C{setStatus}) are published
through L{ClusterPresence.published} by the node (L{crm_im.cluster.node});
the other nodes' transitions arrive as C{remote*} calls, and a node's
whole registration as L{ClusterPresence.replaceNode} (a snapshot read
from Redis, a node that restarted, a node that died: an empty one).

Every node derives what its own clients are told from its own view:
status changes are announced by each node to its local devices only, so
no announcement crosses Redis and every node agrees once the events have
arrived. A user left with no device anywhere goes offline only after a
settling delay (L{ClusterPresence.settle}, at least the presence grace):
a user moving from a phone on node A to a PC on node B, whose login may
reach A just after A saw the phone go, does not flap.

Everything here is pure state on an injected clock (the settling delay
is the grace wheel of L{Presence}); nothing touches the network.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import attrs
from twisted.internet.interfaces import IReactorTime

from ..presence import Login, Logout, Presence, UserPresence

#: Seconds a user without devices stays listed before going offline, in a
#: cluster (the time presence events take to cross Redis, with margin).
DEFAULT_SETTLE = 1.0


@attrs.frozen
class DeviceRecord:
    """
    One logged-in device as a node registers it in Redis.
    """

    userId: str
    name: str
    avatar: str | None
    status: str
    #: the chat rooms the device is in (cluster-wide rooms,
    #: L{crm_im.cluster.rooms})
    rooms: tuple[str, ...] = ()

    def pack(self) -> list[object]:
        """
        The wire form (a msgpack list).
        """
        return [self.userId, self.name, self.avatar, self.status, list(self.rooms)]

    @classmethod
    def unpack(cls, value: object) -> "DeviceRecord | None":
        """
        From L{pack}'s form (without the rooms, as an earlier version
        wrote it); L{None} if malformed.
        """
        if not isinstance(value, (list, tuple)) or len(value) not in (4, 5):
            return None
        userId, name, avatar, status = value[:4]
        rooms = value[4] if len(value) == 5 else []
        if not isinstance(userId, str) or not isinstance(name, str) or not isinstance(status, str):
            return None
        if avatar is not None and not isinstance(avatar, str):
            return None
        if not isinstance(rooms, (list, tuple)) or not all(isinstance(room, str) for room in rooms):
            return None
        return cls(userId, name, avatar, status, tuple(rooms))


class ClusterPresence(Presence):
    """
    The presence of every logged-in user on every node, as this node sees
    it.

    @ivar nodeId: this node.
    @ivar peersReachable: whether the other nodes' registrations are
        current (Redis is up); while not, L{devicesOf} answers this node's
        devices only, so that nothing is counted as delivered to a node we
        cannot reach (it stays in the offline queue).
    @ivar published: told of each local transition as a tuple
        (C{("login", sid, record)}, C{("logout", sid, hold)},
        C{("status", userId, status, sids)}), for the node to register
        and publish.
    @ivar appeared: told of a user who appeared through another node's
        login (this node announces C{status_change online} to its devices).
    @ivar statusChanged: told of a user whose status another node changed.
    """

    def __init__(
        self,
        clock: IReactorTime,
        nodeId: str,
        grace: float = 0.0,
        settle: float = DEFAULT_SETTLE,
        userLeft: Callable[[UserPresence], object] | None = None,
    ) -> None:
        super().__init__(clock, max(grace, settle), userLeft)
        self.nodeId = nodeId
        self.settle = settle
        self.peersReachable = True
        self._nodeOf: dict[str, str] = {}
        self._byNode: dict[str, set[str]] = {nodeId: set()}
        self.published: Callable[[tuple[object, ...]], object] | None = None
        self.appeared: Callable[[UserPresence], object] | None = None
        self.statusChanged: Callable[[UserPresence], object] | None = None
        #: the chat rooms of a local device, registered with it
        self.roomsOf: Callable[[str], Iterable[str]] = lambda sid: ()
        #: told of another node's device as registered (at its login, in
        #: a snapshot) and of one dropped (L{None}): the rooms mirror
        self.remoteDevice: Callable[[str, DeviceRecord | None], object] | None = None

    # ---- queries

    def nodeOf(self, sid: str) -> str | None:
        """
        The node holding device C{sid}, if known.
        """
        return self._nodeOf.get(sid)

    def nodes(self) -> list[str]:
        """
        The nodes with devices (this one always).
        """
        return list(self._byNode)

    def devicesOn(self, node: str) -> set[str]:
        """
        The devices registered by C{node}.
        """
        return set(self._byNode.get(node, ()))

    def localDevices(self) -> Iterator[str]:
        """
        This node's logged-in devices.
        """
        return iter(self._byNode[self.nodeId])

    def allDevices(self) -> Iterator[str]:
        """
        This node's logged-in devices only: what L{Presence} callers
        broadcast to by hand (the offline announcements, decided by every
        node from its own view and told to its own devices; the admin
        API's device list of this node).
        """
        return iter(list(self._byNode[self.nodeId]))

    def deviceCount(self) -> int:
        """
        How many devices L{allDevices} gives: this node's.
        """
        return len(self._byNode[self.nodeId])

    def devicesOf(self, userId: str) -> set[str]:
        """
        The devices of C{userId} on every reachable node.
        """
        devices = super().devicesOf(userId)
        if self.peersReachable or not devices:
            return devices
        nodeOf, me = self._nodeOf, self.nodeId
        return {sid for sid in devices if nodeOf.get(sid) == me}

    def hasDeviceHere(self, userId: str) -> bool:
        """
        Whether C{userId} has a device on this node. A delivery to a device
        on another node is marked done by that node as it writes it: this
        node cannot know that node is alive (its devices stay listed until
        its heartbeat expires), and a mark here would take a message out
        of the offline queue that no device was sent.
        """
        nodeOf, me = self._nodeOf, self.nodeId
        return any(nodeOf.get(sid) == me for sid in super().devicesOf(userId))

    def nodesOf(self, userId: str) -> dict[str, list[str]]:
        """
        C{userId}'s devices grouped by node (reachable ones only).
        """
        grouped: dict[str, list[str]] = {}
        nodeOf = self._nodeOf
        for sid in self.devicesOf(userId):
            node = nodeOf.get(sid)
            if node is not None:
                grouped.setdefault(node, []).append(sid)
        return grouped

    def record(self, sid: str) -> DeviceRecord | None:
        """
        What a node registers for device C{sid}.
        """
        user = self.userOfDevice(sid)
        if user is None:
            return None
        return DeviceRecord(user.id, user.name, user.avatar, user.status, tuple(sorted(self.roomsOf(sid))))

    # ---- local transitions (published)

    def login(self, userId: str, sid: str, name: str, avatar: str | None) -> Login:
        """
        A device of this node logs in.
        """
        result = self._add(self.nodeId, userId, sid, name, avatar, None)
        if self.published is not None:
            record = self.record(sid)
            assert record is not None
            self.published(("login", sid, record))
        return result

    def logout(self, sid: str, hold: float = 0.0) -> Logout | None:
        """
        A device of this node logs out or disconnects (C{hold}: see
        L{Presence.logout}; the settling delay applies in any case).
        """
        if self._nodeOf.get(sid) != self.nodeId:
            return None
        outcome = self._remove(sid, hold)
        if outcome is not None and self.published is not None:
            self.published(("logout", sid, hold))
        return outcome

    def setStatus(self, userId: str, status: str) -> UserPresence:
        """
        A user of this node changes status.
        """
        user = super().setStatus(userId, status)
        if self.published is not None:
            mine = [sid for sid in user.devices if self._nodeOf.get(sid) == self.nodeId]
            self.published(("status", userId, status, mine))
        return user

    # ---- the other nodes' transitions

    def remoteLogin(self, node: str, sid: str, record: DeviceRecord, announce: bool = True) -> Login | None:
        """
        Device C{sid} of another node logged in; L{None} if already known.

        @param announce: tell C{appeared} if the user was not listed
            before. Not for a login heard as it happened: the node where
            it happened announced it to every node (the router's
            C{toEveryone}); for a user found in a snapshot (a node that
            joined again after an outage) this node announces to its own
            devices.
        """
        if node == self.nodeId or self._nodeOf.get(sid) == node:
            return None
        result = self._add(node, record.userId, sid, record.name, record.avatar, record.status)
        if self.remoteDevice is not None:
            self.remoteDevice(sid, record)
        if announce and result.firstDevice and self.appeared is not None and result.user.visible:
            self.appeared(result.user)
        return result

    def remoteLogout(self, node: str, sid: str, hold: float = 0.0) -> Logout | None:
        """
        Device C{sid} of another node logged out or disconnected.

        @param hold: as that node's L{logout}'s: a socket that may be
            recovered holds its user online on every node, not only on its
            own (the others showed the user offline meanwhile, and said so
            to their devices, while its node listed it online).
        """
        if node == self.nodeId or self._nodeOf.get(sid) != node:
            return None
        return self._remove(sid, hold)

    def remoteStatus(self, userId: str, status: str) -> UserPresence | None:
        """
        Another node changed C{userId}'s status.
        """
        user = self.user(userId)
        if user is None or user.status == status:
            return None
        user.status = status
        user.changed()
        if self.statusChanged is not None:
            self.statusChanged(user)
        return user

    def replaceNode(self, node: str, devices: dict[str, DeviceRecord], announce: bool = True) -> tuple[int, int]:
        """
        Make C{node}'s registrations exactly C{devices} (a snapshot read
        from Redis; empty for a node that died or restarted).

        @return: how many devices were added and removed.
        """
        if node == self.nodeId:
            return (0, 0)
        current = self._byNode.get(node, set())
        gone = [sid for sid in current if sid not in devices]
        for sid in gone:
            self._remove(sid)
        added = 0
        for sid, record in devices.items():
            if self._nodeOf.get(sid) != node:
                if self.remoteLogin(node, sid, record, announce) is not None:
                    added += 1
            elif self.remoteDevice is not None:
                # known: its rooms as registered now (an event missed)
                self.remoteDevice(sid, record)
        if not self._byNode.get(node):
            self._byNode.pop(node, None)
        return (added, len(gone))

    def forgetNodes(self, keep: Iterable[str]) -> list[str]:
        """
        Drop the registrations of every other node not in C{keep}.

        @return: the nodes dropped.
        """
        keep = set(keep)
        dropped = [node for node in self._byNode if node != self.nodeId and node not in keep]
        for node in dropped:
            self.replaceNode(node, {})
        return dropped

    # ---- internals

    def _add(self, node: str, userId: str, sid: str, name: str, avatar: str | None, status: str | None) -> Login:
        previous = self._nodeOf.get(sid)
        if previous is not None and previous != node:
            self._remove(sid)
        result = super().login(userId, sid, name, avatar)
        if status is not None and result.firstDevice:
            result.user.status = status
            result.user.changed()
        self._nodeOf[sid] = node
        self._byNode.setdefault(node, set()).add(sid)
        return result

    def _remove(self, sid: str, hold: float = 0.0) -> Logout | None:
        node = self._nodeOf.pop(sid, None)
        if node is not None:
            devices = self._byNode.get(node)
            if devices is not None:
                devices.discard(sid)
            if node != self.nodeId and self.remoteDevice is not None:
                self.remoteDevice(sid, None)
        return super().logout(sid, hold)
