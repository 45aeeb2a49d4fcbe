# -*- test-case-name: tests.test_presence -*-
"""
Presence: who is logged in, on which devices, with which status.

This is the one place where presence changes. The Socket.IO application and
the HTTP status resources share one L{Presence}. It holds no sockets, only
device ids (Socket.IO sids), and it announces changes by return values and
one listener for offline transitions decided later (the grace period), so
it is tested without a network.

A user goes offline when the last device goes; with a grace period the
user stays listed for that long and a device that comes back in time makes
no change visible at all (mobile connections flap). Grace deadlines are
swept by one L{DeadlineWheel}, not one timer per user.
"""

from __future__ import annotations

from typing import Callable, Iterator

import attrs
import orjson
from twisted.internet.interfaces import IReactorTime

from ._json import dumpsToKeep
from .timers import DeadlineWheel

ONLINE = "online"
AWAY = "away"
BUSY = "busy"
INVISIBLE = "offline"

#: The statuses a user may choose; C{"offline"} means invisible.
STATUSES = frozenset([ONLINE, AWAY, BUSY, INVISIBLE])


@attrs.define(slots=True, eq=False)
class UserPresence:
    """
    One logged-in user.

    @ivar devices: the sids of the user's logged-in sockets.
    @ivar leaving: whether the last device went and the grace period (or
        a connection recovery's hold) runs.
    @ivar leftAt: when the last device went (clock seconds), if leaving.
    """

    id: str
    name: str
    avatar: str | None
    status: str = ONLINE
    devices: set[str] = attrs.Factory(set)
    leaving: bool = False
    leftAt: float = 0.0
    _json: orjson.Fragment | None = attrs.field(default=None, init=False)

    def toWire(self) -> dict[str, object]:
        """
        The contract's User.
        """
        # A user's avatar is a string on the wire ("" for none), as with
        # the original server.
        return {"id": self.id, "name": self.name, "avatar": self.avatar or "", "status": self.status}

    def wireJSON(self) -> orjson.Fragment:
        """
        L{toWire}, encoded once (until the user changes) as a fragment that
        orjson splices into any document.

        Why: every login sends C{online_users}, the whole list; encoding
        each user anew made a storm of N logins cost N² encodings. Kept
        for the user's whole session, so encoded at its real size (see
        L{dumpsToKeep}: 4 KiB per logged-in user otherwise).
        """
        encoded = self._json
        if encoded is None:
            encoded = self._json = orjson.Fragment(dumpsToKeep(self.toWire()))
        return encoded

    def changed(self) -> None:
        """
        Forget the encoded form after a change of name, avatar or status.
        """
        self._json = None

    @property
    def visible(self) -> bool:
        """
        Whether others see this user online (not invisible).
        """
        return self.status != INVISIBLE


@attrs.frozen
class Login:
    """
    The outcome of L{Presence.login}.

    @ivar firstDevice: this login made the user appear (announce online).
    """

    user: UserPresence
    firstDevice: bool


@attrs.frozen
class Logout:
    """
    The outcome of L{Presence.logout}.

    @ivar lastDevice: the user is gone now (announce offline, unless the
        user was invisible).
    @ivar wasVisible: whether others saw the user online until now.
    """

    user: UserPresence
    lastDevice: bool
    wasVisible: bool


class Presence:
    """
    The presence of every logged-in user.
    """

    def __init__(
        self,
        clock: IReactorTime,
        grace: float = 0.0,
        userLeft: Callable[[UserPresence], object] | None = None,
    ) -> None:
        """
        @param grace: seconds a user stays after the last device went.
        @param userLeft: called when a grace period ends with no device
            back (the caller announces offline then).
        """
        self._clock = clock
        self.grace = grace
        self.userLeft = userLeft
        self._users: dict[str, UserPresence] = {}
        self._userOfDevice: dict[str, UserPresence] = {}
        # When each device logged in, as a count of logins (see
        # loginSerial).
        self._serialOfDevice: dict[str, int] = {}
        self._lastSerial = 0
        self._wheel = DeadlineWheel(clock, self._graceEnded)

    def start(self) -> None:
        """
        Start sweeping grace deadlines.
        """
        self._wheel.start()

    def stop(self) -> None:
        """
        Stop sweeping.
        """
        self._wheel.stop()

    # ---- queries

    def user(self, userId: str) -> UserPresence | None:
        """
        The logged-in user C{userId}, if any.
        """
        return self._users.get(userId)

    def userOfDevice(self, sid: str) -> UserPresence | None:
        """
        The user a device is logged in as, if any.
        """
        return self._userOfDevice.get(sid)

    def devicesOf(self, userId: str) -> set[str]:
        """
        The device sids of C{userId} (empty if not logged in).
        """
        user = self._users.get(userId)
        return user.devices if user is not None else set()

    def hasDeviceHere(self, userId: str) -> bool:
        """
        Whether C{userId} has a device on this node (every device, on a
        single node): whose delivery this node may mark as done.
        """
        return bool(self.devicesOf(userId))

    def allDevices(self) -> Iterator[str]:
        """
        Every logged-in device.
        """
        return iter(self._userOfDevice)

    def deviceCount(self) -> int:
        """
        How many devices L{allDevices} gives.
        """
        return len(self._userOfDevice)

    def loginSerial(self, sid: str) -> int:
        """
        When device C{sid} logged in: a number that grows with every login
        of a device not logged in before (0 for a device not logged in).

        Why: an announcement to everyone that waits for the end of the
        reactor turn (L{crm_im.routing.local.LocalRouter.toEveryone}) goes
        to the devices logged in when it was made, which are those whose
        serial is not past L{lastLoginSerial} then.
        """
        return self._serialOfDevice.get(sid, 0)

    @property
    def lastLoginSerial(self) -> int:
        """
        The L{loginSerial} of the latest login.
        """
        return self._lastSerial

    def loggedInUsers(self) -> list[UserPresence]:
        """
        The users with a logged-in device (invisible ones included; in a
        cluster, on any node).
        """
        return [user for user in self._users.values() if user.devices]

    def onlineUsers(self) -> list[dict[str, object]]:
        """
        The contract's online list: every user not invisible.
        """
        return [user.toWire() for user in self._users.values() if user.visible]

    def onlineUsersJSON(self) -> list[orjson.Fragment]:
        """
        L{onlineUsers} with each user already encoded: the same JSON when
        serialised with orjson, without encoding every user again.
        """
        return [user.wireJSON() for user in self._users.values() if user.visible]

    def onlineCount(self) -> int:
        """
        How many users (not devices) are listed online.
        """
        return sum(1 for user in self._users.values() if user.visible)

    # ---- transitions

    def login(self, userId: str, sid: str, name: str, avatar: str | None) -> Login:
        """
        Bind device C{sid} to C{userId}.
        """
        user = self._users.get(userId)
        first = user is None
        if user is None:
            user = self._users[userId] = UserPresence(userId, name, avatar)
        else:
            user.name = name
            user.avatar = avatar
            user.changed()
            if user.leaving:
                # Back within the grace period: nobody was told it left.
                user.leaving = False
                self._wheel.cancel(userId)
        user.devices.add(sid)
        if self._userOfDevice.get(sid) is not user:
            self._lastSerial += 1
            self._serialOfDevice[sid] = self._lastSerial
        self._userOfDevice[sid] = user
        return Login(user, first)

    def logout(self, sid: str, hold: float = 0.0) -> Logout | None:
        """
        Unbind device C{sid} (logout or disconnect).

        @param hold: seconds the user stays online if this was the last
            device, when longer than the grace period (a connection that
            may be recovered).
        @return: C{None} if the device was not logged in.
        """
        user = self._userOfDevice.pop(sid, None)
        if user is None:
            return None
        del self._serialOfDevice[sid]
        user.devices.discard(sid)
        if user.devices:
            return Logout(user, False, user.visible)
        grace = max(self.grace, hold)
        if grace > 0:
            user.leaving = True
            user.leftAt = self._clock.seconds()
            self._wheel.set(user.id, grace)
            return Logout(user, False, user.visible)
        del self._users[user.id]
        return Logout(user, True, user.visible)

    def setStatus(self, userId: str, status: str) -> UserPresence:
        """
        Change a logged-in user's status.

        @raise ValueError: for a status not in L{STATUSES}.
        @raise KeyError: if the user is not logged in.
        """
        if status not in STATUSES:
            raise ValueError(status)
        user = self._users[userId]
        user.status = status
        user.changed()
        return user

    def graceLeft(self, user: UserPresence) -> float:
        """
        Seconds of the presence grace still to run for C{user}, who has no
        device left (0 once it is over, though a connection recovery may
        hold the user online longer: its socket is gone all the same).
        """
        return max(0.0, user.leftAt + self.grace - self._clock.seconds())

    def endHold(self, userId: str) -> None:
        """
        End at once the grace or recovery hold of C{userId}, if it has no
        device left (an administrator kicked or banned it while its socket
        was cut off: it must not look online until the hold ends).
        """
        user = self._users.get(userId)
        if user is None or not user.leaving or user.devices:
            return
        self._wheel.cancel(userId)
        self._graceEnded(userId)

    def _graceEnded(self, userId: object) -> None:
        user = self._users.get(str(userId))
        if user is None or not user.leaving or user.devices:
            return
        del self._users[user.id]
        if self.userLeft is not None:
            self.userLeft(user)
