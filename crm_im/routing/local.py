# -*- test-case-name: tests.test_routing -*-
"""
L{LocalRouter}: where delivery fans out, in one process. An event is
encoded once, lazily (not at all if nobody is there), and its frames are
written to each recipient socket; a recipient that went away is skipped.
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol, Sequence

from zope.interface import implementer

from ..engineio.packet import Frame
from ..im.interfaces import IRouter
from ..presence import Presence
from ..socketio.packet import encodeEvent


class _Writable(Protocol):
    def sendFrames(self, frames: Sequence[Frame]) -> None: ...


@implementer(IRouter)
class LocalRouter:
    """
    Fan-out to the sockets of one Socket.IO namespace.
    """

    def __init__(self, sockets: dict[str, Any], presence: Presence, namespace: str = "/") -> None:
        """
        @param sockets: the namespace's live table of sockets by sid.
        @param presence: which devices each user has.
        """
        self._sockets = sockets
        self._presence = presence
        self._namespace = namespace
        self.disconnector: Any = None

    def _encode(self, event: str, payload: Any) -> list[Frame]:
        return encodeEvent(self._namespace, event, (payload,))

    def toUsers(self, userIds: Iterable[str], event: str, payload: Any, exceptDevice: str | None = None) -> int:
        """
        See L{IRouter.toUsers}.
        """
        devicesOf = self._presence.devicesOf
        sockets = self._sockets
        frames = None
        count = 0
        for userId in userIds:
            for sid in devicesOf(userId):
                if sid == exceptDevice:
                    continue
                socket = sockets.get(sid)
                if socket is None:
                    continue
                if frames is None:
                    frames = self._encode(event, payload)
                socket.sendFrames(frames)
                count += 1
        return count

    def toDevices(self, deviceIds: Iterable[str], event: str, payload: Any, exceptDevice: str | None = None) -> int:
        """
        See L{IRouter.toDevices}.
        """
        sockets = self._sockets
        frames = None
        count = 0
        for sid in deviceIds:
            if sid == exceptDevice:
                continue
            socket = sockets.get(sid)
            if socket is None:
                continue
            if frames is None:
                frames = self._encode(event, payload)
            socket.sendFrames(frames)
            count += 1
        return count

    def toEveryone(self, event: str, payload: Any, exceptDevice: str | None = None) -> int:
        """
        See L{IRouter.toEveryone}.
        """
        return self.toDevices(list(self._presence.allDevices()), event, payload, exceptDevice)

    def toConnected(self, event: str, payload: Any) -> None:
        """
        See L{IRouter.toConnected}.
        """
        self.toDevices(list(self._sockets), event, payload)

    def disconnect(self, device: str) -> None:
        """
        See L{IRouter.disconnect}: through the Socket.IO server, set by the
        wiring.
        """
        if self.disconnector is not None:
            self.disconnector(device)
