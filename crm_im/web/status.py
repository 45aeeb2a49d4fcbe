# -*- test-case-name: tests.test_web -*-
"""
C{GET /} and C{GET /api/online-users} (contract section 9), served from the
same L{Presence} as the Socket.IO application.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from .. import __version__
from ..http.cors import CORSPolicy
from ..presence import Presence
from .json import JSONResource


def isoTimestamp(seconds: float) -> str:
    """
    ISO-8601 UTC with milliseconds and C{Z}, as JavaScript's
    C{toISOString()}.
    """
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (moment.microsecond // 1000)


class ServerStatusResource(JSONResource):
    """
    C{GET /}: the server is running, and how many users are online.
    """

    def __init__(self, presence: Presence, clock: IReactorTime, cors: CORSPolicy) -> None:
        super().__init__(cors)
        self.presence = presence
        self.clock = clock

    def value(self, request: IRequest) -> Any:
        return {
            "status": "running",
            "message": "CRM IM WebSocket Server",
            "version": __version__,
            "onlineUsers": self.presence.onlineCount(),
            "timestamp": isoTimestamp(self.clock.seconds()),
        }


class OnlineUsersResource(JSONResource):
    """
    C{GET /api/online-users}: every user shown online.
    """

    def __init__(self, presence: Presence, cors: CORSPolicy) -> None:
        super().__init__(cors)
        self.presence = presence

    def value(self, request: IRequest) -> Any:
        return {"users": self.presence.onlineUsersJSON()}
