# -*- test-case-name: tests.test_routing -*-
"""
L{LocalRouter}: where delivery fans out, in one process. An event is
encoded once, lazily (not at all if nobody is there), and its frames are
written to each recipient socket; a recipient that went away is skipped.

Announcements to everyone (presence changes, system notices) wait for the
end of the reactor turn and go out together, one write per device for all
of the turn's: in a login storm a turn handles tens of logins, each to be
told to every device. Each still reaches exactly the devices logged in
when it was made, and nothing routed to a device overtakes one meant for
it (see L{LocalRouter.toEveryone}).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Iterable, Protocol, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from ..engineio.packet import Frame, FrameBatch
from ..im.interfaces import IRouter
from ..presence import Presence
from ..socketio.packet import encodeEvent
from ..storage.interface import MessageOrder


#: The events of stored messages, which are followed by their offset when
#: connection state recovery is on (L{LocalRouter.offsets}).
OFFSET_EVENTS = frozenset(["message", "file_transfer"])

#: The event that follows a stored message's event with its offset,
#: C{recovery:offset "m<seq>"}. socket.io-client (4.6+) remembers the last
#: string argument of any event as the offset to recover from; the official
#: server appends it to the event itself, but an extra argument on
#: C{message} breaks clients of the old server whose handlers take exactly
#: one (python-socketio raises TypeError for C{def on_message(data)}),
#: while an event of its own is ignored by every client without a handler.
OFFSET_EVENT = "recovery:offset"


#: The most events L{LocalRouter.hold} keeps for a device; past it, they
#: are written at once (out of order, rather than without bound).
MAX_HELD = 256


def messageOffset(seq: int) -> str:
    """
    The recovery offset of the stored message C{seq}: a client that comes
    back with it missed the messages after C{seq}
    (L{crm_im.im.recovery.imOffset} reads it back).
    """
    return f"m{seq}"


class _Writable(Protocol):
    def sendFrames(self, frames: Sequence[Frame]) -> None: ...


@implementer(IRouter)
class LocalRouter:
    """
    Fan-out to the sockets of one Socket.IO namespace.
    """

    def __init__(self, sockets: dict[str, Any], presence: Presence, clock: IReactorTime, namespace: str = "/") -> None:
        """
        @param sockets: the namespace's live table of sockets by sid.
        @param presence: which devices each user has.
        @param clock: schedules the end of the turn's announcements.
        """
        self._sockets = sockets
        self._presence = presence
        self._clock = clock
        self._namespace = namespace
        # This turn's announcements to everyone, in order: the frame, the
        # device left out, and the last login serial when it was made.
        self._announcements: list[tuple[Frame, str | None, int]] = []
        self._announcing: IDelayedCall | None = None
        self.disconnector: Any = None
        #: Connection state recovery is on: a stored message's event
        #: (L{OFFSET_EVENTS}) is followed by its offset, C{"m<seq>"}
        #: (L{OFFSET_EVENT}), to the sockets that have a private session
        #: id, so that a client coming back says which message it got last.
        self.offsets = False
        # Devices whose missed messages are being read (a recovery replay,
        # the offline queue): the messages routed to them meanwhile, kept
        # to go after them.
        self._holding: dict[str, list[tuple[str, dict[str, Any]]]] = {}

    def _encode(self, event: str, payload: Any) -> list[Frame]:
        return encodeEvent(self._namespace, event, (payload,))

    def _offsetFrames(self, frames: list[Frame], event: str, payload: Any) -> list[Frame] | None:
        """
        The frames of C{event} followed by its offset (L{OFFSET_EVENT}), if
        it is a stored message's and offsets are on; else L{None}.
        """
        if not self.offsets or event not in OFFSET_EVENTS or not isinstance(payload, dict):
            return None
        seq = payload.get("seq")
        if type(seq) is not int:
            return None
        return [*frames, *encodeEvent(self._namespace, OFFSET_EVENT, (messageOffset(seq),))]

    def hold(self, device: str) -> None:
        """
        Keep the stored messages' events (L{OFFSET_EVENTS}) routed to
        C{device} until L{release}, at most L{MAX_HELD} (its missed
        messages are being read from the store: they go first, then
        these).
        """
        self._holding.setdefault(device, [])

    def release(self, device: str) -> list[tuple[str, dict[str, Any]]]:
        """
        Stop holding C{device}'s messages. @return: the held events and
        their payloads, in the order they came.
        """
        return self._holding.pop(device, [])

    def _write(self, socket: Any, sid: str, event: str, payload: Any, frames: list[Frame], offsetFrames: Any) -> None:
        holding = self._holding.get(sid)
        if holding is not None and event in OFFSET_EVENTS and len(holding) < MAX_HELD:
            holding.append((event, payload))
        elif offsetFrames is not None and socket.pid is not None:
            socket.sendFrames(offsetFrames)
        else:
            socket.sendFrames(frames)

    def toUsers(
        self,
        userIds: Iterable[str],
        event: str,
        payload: Any,
        exceptDevice: str | None = None,
        order: MessageOrder | None = None,
    ) -> int:
        """
        See L{IRouter.toUsers} (C{order} is not needed: in one
        process, messages are delivered in the order they were stored).
        """
        if self._announcements:
            self.announce()
        devicesOf = self._presence.devicesOf
        sockets = self._sockets
        frames = None
        # (only stored messages' events get an offset or are held: every
        # other event, presence above all, takes the plain write)
        special = (self.offsets or self._holding) and event in OFFSET_EVENTS
        offsetFrames = None
        count = 0
        for userId in userIds:
            # A copy: a write may close its session at once (its outgoing
            # buffer full), which logs the device out of this very set.
            for sid in tuple(devicesOf(userId)):
                if sid == exceptDevice:
                    continue
                socket = sockets.get(sid)
                if socket is None:
                    continue
                if frames is None:
                    frames = self._encode(event, payload)
                    if special:
                        offsetFrames = self._offsetFrames(frames, event, payload)
                if special:
                    self._write(socket, sid, event, payload, frames, offsetFrames)
                else:
                    socket.sendFrames(frames)
                count += 1
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
        if self._announcements:
            deviceIds = list(deviceIds)
            if self._announcedTo(deviceIds):
                self.announce()
        sockets = self._sockets
        frames = None
        special = (self.offsets or self._holding) and event in OFFSET_EVENTS
        offsetFrames = None
        count = 0
        for sid in deviceIds:
            if sid == exceptDevice:
                continue
            socket = sockets.get(sid)
            if socket is None:
                continue
            if frames is None:
                frames = self._encode(event, payload)
                if special:
                    offsetFrames = self._offsetFrames(frames, event, payload)
            if special:
                self._write(socket, sid, event, payload, frames, offsetFrames)
            else:
                socket.sendFrames(frames)
            count += 1
        return count

    def whenWritable(self, device: str) -> Deferred[bool]:
        """
        See L{IRouter.whenWritable}: when the socket's Engine.IO session
        has room (L{EngineIOSession.whenWritable}).
        """
        socket = self._sockets.get(device)
        if socket is None:
            return succeed(False)
        writable: Deferred[bool] = socket.session.whenWritable()
        return writable

    def toEveryone(self, event: str, payload: Any, exceptDevice: str | None = None) -> int:
        """
        See L{IRouter.toEveryone}: to the devices logged in now, at the end
        of this reactor turn (L{announce}), unless something else is routed
        to one of them first.

        @return: how many devices it goes to.
        """
        presence = self._presence
        if not presence.deviceCount():
            return 0
        frames = self._encode(event, payload)
        if len(frames) != 1 or frames[0].binary:
            # (binary attachments: sent now, after what waits)
            self.announce()
            return self.toDevices(list(presence.allDevices()), event, payload, exceptDevice)
        if not self._announcements:
            self._announcing = self._clock.callLater(0, self.announce)
        self._announcements.append((frames[0], exceptDevice, presence.lastLoginSerial))
        return presence.deviceCount() - (exceptDevice is not None and presence.loginSerial(exceptDevice) > 0)

    def toEveryoneHere(self, event: str, payload: Any) -> int:
        """
        See L{IRouter.toEveryoneHere}: L{toEveryone}, this router's
        devices being this node's.
        """
        return self.toEveryone(event, payload)

    def _announcedTo(self, deviceIds: list[str]) -> bool:
        """
        Whether an announcement waiting for the end of the turn is for one
        of C{deviceIds} (which then must get it first). A device that
        logged in after the last of them gets none (a device logging in
        gets its replies while the others' logins of the turn wait).
        """
        last = self._announcements[-1][2]
        serialOf = self._presence.loginSerial
        for sid in deviceIds:
            if 0 < serialOf(sid) <= last:
                return True
        return False

    def announce(self) -> None:
        """
        Send the announcements to everyone made so far in this turn: to
        each logged-in device, in one write, those made since it logged
        in, but its own.
        """
        if not self._announcements:
            return
        pending, self._announcements = self._announcements, []
        call, self._announcing = self._announcing, None
        if call is not None and call.active():
            call.cancel()
        frames = [frame for frame, _, _ in pending]
        serials = [serial for _, _, serial in pending]
        leftOut: dict[str, list[int]] = {}
        for index, (_, device, _) in enumerate(pending):
            if device is not None:
                leftOut.setdefault(device, []).append(index)
        everything: list[Frame] = [FrameBatch(frames) if len(frames) > 1 else frames[0]]
        first = serials[0]
        batches: dict[tuple[int, tuple[int, ...]], list[Frame]] = {}
        serialOf = self._presence.loginSerial
        sockets = self._sockets
        # A copy: a write may close its session at once (its outgoing
        # buffer full), which logs the device out.
        for sid in list(self._presence.allDevices()):
            socket = sockets.get(sid)
            if socket is None:
                continue
            serial = serialOf(sid)
            if serial <= first and sid not in leftOut:
                socket.sendFrames(everything)
                continue
            # the first one made since it logged in, and its own
            start = bisect_left(serials, serial)
            skipped = tuple(index for index in leftOut.get(sid, ()) if index >= start)
            key = (start, skipped)
            batch = batches.get(key)
            if batch is None:
                parts = [frames[index] for index in range(start, len(frames)) if index not in skipped]
                batch = batches[key] = [FrameBatch(parts) if len(parts) > 1 else parts[0]] if parts else []
            if batch:
                socket.sendFrames(batch)

    def toConnected(self, event: str, payload: Any) -> None:
        """
        See L{IRouter.toConnected}.
        """
        self.announce()
        self.toDevices(list(self._sockets), event, payload)

    def disconnect(self, device: str) -> None:
        """
        See L{IRouter.disconnect}: through the Socket.IO server, set by the
        wiring.
        """
        if self.disconnector is not None:
            self.disconnector(device)
