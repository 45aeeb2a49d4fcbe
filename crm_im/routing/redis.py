# -*- test-case-name: tests.test_cluster -*-
"""
L{RedisRouter}: delivery across the nodes of a cluster, targeted per node.

A recipient's devices, and the node holding each, come from the cluster
presence (this node's mirror of the registrations in Redis). Devices of
this node are written to at once through the L{LocalRouter}; for each
other node with recipients the event is encoded once and published once,
on that node's own channel, with the recipients named (users, or devices).
No node receives what is not for it; a group message crosses Redis once
per node with members online there.

Order: everything one node sends to another goes through one Redis
connection and one channel, both FIFO, so messages of one conversation
from one node arrive in the order they were sent (their C{seq} order).
Messages of one conversation from two nodes can overtake each other
(each node delivers its own sender's message at once, the other's is
still crossing): a new stored message travels with its place in its
conversation (L{MessageOrder}, linked by the store), and every node,
for its own messages and the ones that crossed, lets it through its
L{ConversationOrder} gate, which holds a message until its predecessor
has passed (bounded). A node message is C{[kind, targets, except, body]}
or, for such a message, C{[kind, targets, except, body, order]}.

What crosses is the event and its payload (msgpack), delivered on the
receiving node through its L{LocalRouter}, so that what the local router
adds there (a stored message's recovery offset, messages held while a
recovered socket's missed ones are replayed) applies to messages from
other nodes too; a payload msgpack cannot carry crosses as encoded frames.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import msgpack
from twisted.internet.defer import Deferred
from zope.interface import implementer

from ..cluster.presence import ClusterPresence
from ..engineio.packet import Frame
from ..im.interfaces import IRouter
from ..socketio.packet import encodeEvent
from ..storage.interface import MessageOrder
from .local import LocalRouter
from .order import ConversationOrder

#: Kinds of node-channel messages.
TO_USERS = "u"
TO_DEVICES = "d"
TO_EVERYONE = "e"
DISCONNECT = "k"

#: The events of a stored 1:1 message, which the node that writes one to a
#: device of its recipient marks delivered.
DIRECT_EVENTS = frozenset({"message", "file_transfer"})

Publish = Callable[[str, bytes], object]


def packFrames(frames: Sequence[Frame]) -> list[list[object]]:
    """
    Encoded packets as msgpack values.
    """
    return [[frame.data, frame.binary] for frame in frames]


def unpackFrames(value: Any) -> list[Frame]:
    """
    The inverse of L{packFrames}.

    @raise ValueError: if malformed.
    """
    frames = []
    for item in value:
        data, binary = item
        if not isinstance(data, bytes):
            raise ValueError("frame data must be bytes")
        frames.append(Frame(data, bool(binary)))
    return frames


@implementer(IRouter)
class RedisRouter:
    """
    The cluster's L{IRouter}.

    @ivar sentToNodes: messages published to other nodes (for tests and
        metrics).
    """

    def __init__(
        self,
        local: LocalRouter,
        presence: ClusterPresence,
        sockets: dict[str, Any],
        publish: Publish,
        order: ConversationOrder,
    ) -> None:
        """
        @param local: delivery to this node's sockets.
        @param presence: the cluster presence (devices and their nodes).
        @param sockets: this node's live table of sockets by sid.
        @param publish: C{publish(node, message)} sends to another node's
            channel (fire and forget; nothing is sent while Redis is down).
        @param order: the gate that puts each conversation's messages back
            in seq order before this node's devices see them.
        """
        self.order = order
        self.local = local
        self.presence = presence
        self.sockets = sockets
        self.publish = publish
        self.nodeId = presence.nodeId
        self.sentToNodes = 0
        #: told the payload of another node's stored 1:1 message
        #: (C{message}, C{file_transfer}) written here to a device of its
        #: C{toId}: this node marks it delivered
        #: (L{crm_im.im.messaging.Messaging.routedHere}).
        self.directDelivered: Callable[[dict[str, Any]], object] = lambda payload: None

    # ---- connection state recovery (the recovered socket is local)

    @property
    def offsets(self) -> bool:
        """
        See L{LocalRouter.offsets}: a stored message's event carries its
        offset, here and on the other nodes (whose local routers do the
        same).
        """
        return bool(self.local.offsets)

    @offsets.setter
    def offsets(self, value: bool) -> None:
        self.local.offsets = value

    def hold(self, device: str) -> None:
        """
        See L{LocalRouter.hold} (messages from other nodes are held too:
        they are delivered through the local router).
        """
        self.local.hold(device)

    def release(self, device: str) -> list[tuple[str, dict[str, Any]]]:
        """
        See L{LocalRouter.release}.
        """
        return self.local.release(device)

    def _send(
        self,
        node: str,
        kind: str,
        targets: list[str] | None,
        exceptDevice: str | None,
        body: bytes,
        order: MessageOrder | None = None,
    ) -> None:
        self.sentToNodes += 1
        message: list[object] = [kind, targets, exceptDevice, msgpack.ExtType(1, body)]
        if order is not None:
            message.append(order.toList())
        self.publish(node, msgpack.packb(message))

    def _body(self, event: str, payload: Any) -> bytes:
        """
        What crosses to other nodes: C{[event, payload]}, or the encoded
        frames if msgpack cannot carry the payload.
        """
        try:
            return msgpack.packb([event, payload])
        except (TypeError, ValueError, OverflowError):
            return msgpack.packb(packFrames(encodeEvent("/", event, (payload,))))

    def toUsers(
        self,
        userIds: Iterable[str],
        event: str,
        payload: Any,
        exceptDevice: str | None = None,
        order: MessageOrder | None = None,
    ) -> int:
        """
        See L{IRouter.toUsers}.
        """
        me = self.nodeId
        count = 0
        localUsers: list[str] = []
        remote: dict[str, list[str]] = {}
        for userId in userIds:
            for node, sids in self.presence.nodesOf(userId).items():
                if node == me:
                    localUsers.append(userId)
                    if order is not None:
                        count += len(sids) - (exceptDevice in sids)
                    continue
                reached = len(sids) - (exceptDevice in sids)
                if reached > 0:
                    count += reached
                    remote.setdefault(node, []).append(userId)
        if localUsers:
            if order is None:
                count += self.local.toUsers(localUsers, event, payload, exceptDevice)
            else:
                self.order.admit(order, lambda: self.local.toUsers(localUsers, event, payload, exceptDevice))
        if remote:
            body = self._body(event, payload)
            for node, users in remote.items():
                self._send(node, TO_USERS, users, exceptDevice, body, order)
        return count

    def toDevices(
        self,
        deviceIds: Iterable[str],
        event: str,
        payload: Any,
        exceptDevice: str | None = None,
        order: MessageOrder | None = None,
    ) -> int:
        """
        See L{IRouter.toDevices}.
        """
        me = self.nodeId
        nodeOf = self.presence.nodeOf
        mine: list[str] = []
        remote: dict[str, list[str]] = {}
        for sid in deviceIds:
            if sid == exceptDevice:
                continue
            node = nodeOf(sid)
            if node is None or node == me:
                mine.append(sid)
            elif self.presence.peersReachable:
                remote.setdefault(node, []).append(sid)
        count = 0
        if mine:
            if order is None:
                count = self.local.toDevices(mine, event, payload)
            else:
                count = sum(1 for sid in mine if sid in self.sockets)
                self.order.admit(order, lambda: self.local.toDevices(mine, event, payload))
        if remote:
            body = self._body(event, payload)
            for node, sids in remote.items():
                count += len(sids)
                self._send(node, TO_DEVICES, sids, None, body, order)
        return count

    def whenWritable(self, device: str) -> Deferred[bool]:
        """
        See L{IRouter.whenWritable}: a device of this node's.
        """
        return self.local.whenWritable(device)

    def toEveryoneHere(self, event: str, payload: Any) -> int:
        """
        See L{IRouter.toEveryoneHere}: this node's devices only, batched
        by the local router.
        """
        return self.local.toEveryone(event, payload)

    def toEveryone(self, event: str, payload: Any, exceptDevice: str | None = None) -> int:
        """
        See L{IRouter.toEveryone}: every node once.
        """
        count = self.local.toEveryone(event, payload, exceptDevice)
        if self.presence.peersReachable:
            body = None
            for node in self.presence.nodes():
                if node == self.nodeId:
                    continue
                devices = self.presence.devicesOn(node)
                reached = len(devices) - (exceptDevice in devices)
                if reached <= 0:
                    continue
                if body is None:
                    body = self._body(event, payload)
                count += reached
                self._send(node, TO_EVERYONE, None, exceptDevice, body)
        return count

    def toConnected(self, event: str, payload: Any) -> None:
        """
        See L{IRouter.toConnected}: this node's sockets (C{server:shutdown}
        is said by the node stopping).
        """
        self.local.toConnected(event, payload)

    def disconnect(self, device: str) -> None:
        """
        See L{IRouter.disconnect}, on whichever node holds C{device}.
        """
        node = self.presence.nodeOf(device)
        if node is None or node == self.nodeId:
            self.local.disconnect(device)
        else:
            self.sentToNodes += 1
            self.publish(node, msgpack.packb([DISCONNECT, [device], None, None]))

    # ---- what other nodes sent here

    def received(self, message: bytes) -> int:
        """
        Deliver a message another node published on this node's channel.

        @return: how many local sockets were written to.
        @raise ValueError: if malformed.
        """
        try:
            kind, targets, exceptDevice, packed, *rest = msgpack.unpackb(message)
            order = MessageOrder.fromList(rest[0]) if rest else None
            if kind == DISCONNECT:
                for sid in targets:
                    self.local.disconnect(sid)
                return 0
            if not isinstance(packed, msgpack.ExtType) or packed.code != 1:
                raise ValueError("no body")
            body = msgpack.unpackb(packed.data)
            event = body[0] if len(body) == 2 and isinstance(body[0], str) else None
        except Exception as error:
            raise ValueError(f"bad node message: {error}")
        if event is not None:
            return self._deliver(kind, targets, exceptDevice, event, body[1], order)
        frames = unpackFrames(body)
        sockets = self.sockets
        if kind == TO_USERS:
            sids: Iterable[str] = [
                sid for userId in targets for sid in self.presence.devicesOf(userId) if self.presence.nodeOf(sid) == self.nodeId
            ]
        elif kind == TO_DEVICES:
            sids = targets
        elif kind == TO_EVERYONE:
            sids = list(self.presence.localDevices())
        else:
            raise ValueError(f"unknown node message kind {kind!r}")
        # (after the announcements waiting for the end of the turn)
        self.local.announce()
        count = 0
        for sid in sids:
            if sid == exceptDevice:
                continue
            socket = sockets.get(sid)
            if socket is not None:
                socket.sendFrames(frames)
                count += 1
        return count

    def _deliver(
        self,
        kind: str,
        targets: Any,
        exceptDevice: str | None,
        event: str,
        payload: Any,
        order: MessageOrder | None = None,
    ) -> int:
        """
        An event from another node, to this node's sockets through the
        local router (and the order gate, for a new stored message).
        """
        local, me = self.local, self.nodeId
        if kind == TO_USERS:
            nodeOf = self.presence.nodeOf
            sids = [sid for userId in targets for sid in self.presence.devicesOf(userId) if nodeOf(sid) == me]
        elif kind == TO_DEVICES:
            sids = list(targets)
        elif kind == TO_EVERYONE:
            if order is None:
                # (batched with this turn's other announcements)
                return local.toEveryone(event, payload, exceptDevice)
            sids = list(self.presence.localDevices())
        else:
            raise ValueError(f"unknown node message kind {kind!r}")
        direct = kind == TO_USERS and event in DIRECT_EVENTS and isinstance(payload, dict) and payload.get("toId") in targets
        if order is None:
            count = local.toDevices(sids, event, payload, exceptDevice)
            if direct:
                self._deliveredDirect(payload, sids, exceptDevice)
            return count

        def admitted() -> None:
            local.toDevices(sids, event, payload, exceptDevice)
            if direct:
                self._deliveredDirect(payload, sids, exceptDevice)

        self.order.admit(order, admitted)
        return sum(1 for sid in sids if sid != exceptDevice and sid in self.sockets)

    def _deliveredDirect(self, payload: dict[str, Any], sids: list[str], exceptDevice: str | None) -> None:
        """
        Tell L{directDelivered} if a 1:1 message routed here reached a
        device of its recipient (not only the sender's other devices).
        """
        recipient = self.presence.userOfDevice
        toId = payload["toId"]
        for sid in sids:
            if sid != exceptDevice and sid in self.sockets:
                user = recipient(sid)
                if user is not None and user.id == toId:
                    self.directDelivered(payload)
                    return
