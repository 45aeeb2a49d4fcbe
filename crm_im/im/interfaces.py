"""
The seams of the IM core: who is calling (L{Caller}) and how events reach
devices (L{IRouter}).

Handlers take a L{Caller} and a request, decide, store, and deliver through
an L{IRouter}; they never see a socket, a frame or a namespace. The local
router (L{crm_im.routing.local}) writes to this process's sockets; a
cluster router implements the same interface across nodes.
"""

from __future__ import annotations

from typing import Any, Iterable

from twisted.internet.defer import Deferred
from zope.interface import Interface

from ..storage.interface import MessageOrder


class Caller:
    """
    Who a handler acts for: a logged-in user, on one device.

    @ivar device: the device (socket id) the request came from, or L{None}
        for callers without one (the admin API, tests).
    @ivar userId: the logged-in user.
    @ivar name: their display name.
    @ivar avatar: their avatar, if any.
    """

    __slots__ = ("device", "userId", "name", "avatar")

    def __init__(self, device: str | None, userId: str, name: str, avatar: str | None = None) -> None:
        self.device = device
        self.userId = userId
        self.name = name
        self.avatar = avatar

    def __repr__(self) -> str:
        return f"<Caller {self.userId} on {self.device}>"


class IRouter(Interface):
    """
    Delivery of server events to users and devices. Each call encodes its
    event once, whatever the number of recipients; a recipient that went
    away is skipped, never an error.
    """

    def toUsers(
        userIds: Iterable[str],
        event: str,
        payload: Any,
        exceptDevice: str | None = None,
        order: MessageOrder | None = None,
    ) -> int:
        """
        Send C{event} to every device of each of C{userIds} but
        C{exceptDevice}.

        @param order: a new stored message's place in its conversation, if
            its store linked it: a router whose deliveries can overtake
            each other (across nodes) delivers in this order; one process
            needs nothing of it.
        @return: how many devices it was, or is about to be, sent to.
        """

    def toDevices(
        deviceIds: Iterable[str],
        event: str,
        payload: Any,
        exceptDevice: str | None = None,
        order: MessageOrder | None = None,
    ) -> int:
        """
        Send C{event} to each of C{deviceIds} but C{exceptDevice}.

        @param order: see L{toUsers}.
        @return: how many devices it was, or is about to be, sent to.
        """

    def whenWritable(device: str) -> "Deferred[bool]":
        """
        Pace a long run of events to C{device} (its offline queue) on its
        client's reading, where sending them all at once would pass its
        connection's buffer bounds and close it.

        @return: a L{Deferred} firing with C{True} at once if C{device}
            can take more now, else when it can; with C{False} if it is
            gone (or goes first), or is not connected to this node.
        """

    def hold(device: str) -> None:
        """
        Keep the stored messages' events routed to C{device}, from this
        node or another, until L{release}: what it missed is being read
        from the store (a recovery replay, the offline queue), and goes
        first. A router keeps a bounded number; past it, they go at once.
        """

    def release(device: str) -> list[tuple[str, dict[str, Any]]]:
        """
        Stop holding C{device}'s messages (L{hold}).

        @return: the held events and their payloads, in the order they
            came, for the caller to send after what it read.
        """

    def toEveryone(event: str, payload: Any, exceptDevice: str | None = None) -> int:
        """
        Send C{event} to every logged-in device but C{exceptDevice}.

        @return: how many devices it was sent to.
        """

    def toEveryoneHere(event: str, payload: Any) -> int:
        """
        Send C{event} to every logged-in device of this node: what each
        node announces to its own devices because every node sees it
        happen (a user gone from the whole cluster). In one process, the
        same as L{toEveryone}.

        @return: how many devices it was, or is about to be, sent to.
        """

    def toConnected(event: str, payload: Any) -> None:
        """
        Send C{event} to every connected socket, logged in or not
        (C{server:shutdown}).
        """

    def disconnect(device: str) -> None:
        """
        Close the connection of C{device}.
        """
