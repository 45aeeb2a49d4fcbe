"""
Tests for L{crm_im.routing.local.LocalRouter}: where delivery fans out in
one process. An event is encoded once for all its recipients (and not at
all without one), sockets that went away and the excepted device are
skipped, and each call says how many devices it reached.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from crm_im._json import loads
from crm_im.engineio.packet import Frame
from crm_im.im.interfaces import IRouter
from crm_im.presence import Presence
from crm_im.routing import local
from crm_im.routing.local import LocalRouter


class RecordingSocket:
    """
    Stands in for a connected socket: keeps each list of frames it is sent
    (the very object, so that sharing can be checked).
    """

    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.sent: list[Sequence[Frame]] = []

    def sendFrames(self, frames: Sequence[Frame]) -> None:
        """
        Record C{frames}.
        """
        self.sent.append(frames)

    def events(self) -> list[tuple[str, Any]]:
        """
        The events sent, decoded.
        """
        return [tuple(loads(frame.data[2:])) for frames in self.sent for frame in frames]  # type: ignore[misc]


class LocalRouterTests(SynchronousTestCase):
    """
    L{LocalRouter} over a table of recording sockets and a L{Presence}:
    alice on a1 and a2, bob on b1, carol on c1; and a connected socket
    x1 that is not logged in.
    """

    def setUp(self) -> None:
        """
        Log the users in and count the encodings.
        """
        self.presence = Presence(Clock())
        self.sockets: dict[str, Any] = {}
        for userId, sids in (("alice", ("a1", "a2")), ("bob", ("b1",)), ("carol", ("c1",))):
            for sid in sids:
                self.sockets[sid] = RecordingSocket(sid)
                self.presence.login(userId, sid, userId.title(), None)
        self.sockets["x1"] = RecordingSocket("x1")
        self.router = LocalRouter(self.sockets, self.presence)
        self.encoded: list[tuple[str, Any]] = []
        realEncode = local.encodeEvent

        def countingEncode(namespace: str, event: str, args: Any) -> list[Frame]:
            self.encoded.append((event, args))
            return realEncode(namespace, event, args)

        self.patch(local, "encodeEvent", countingEncode)

    def received(self) -> dict[str, list[tuple[str, Any]]]:
        """
        The decoded events each socket got, for those that got any.
        """
        return {sid: socket.events() for sid, socket in self.sockets.items() if socket.sent}

    def assertSharedFrames(self, sids: Sequence[str]) -> None:
        """
        Each of C{sids} was sent exactly one list of frames, the same object
        for all.
        """
        sent = [self.sockets[sid].sent for sid in sids]
        self.assertEqual([len(s) for s in sent], [1] * len(sids))
        first = sent[0][0]
        for s in sent[1:]:
            self.assertIs(s[0], first)

    def test_interface(self) -> None:
        """
        L{LocalRouter} provides L{IRouter}.
        """
        self.assertTrue(verifyObject(IRouter, self.router))

    def test_toUsersEncodesOnce(self) -> None:
        """
        An event to several users is encoded once and the same frames go to
        every device of each of them; the count is the number of devices.
        """
        count = self.router.toUsers(["alice", "bob"], "message", {"content": "hi"})
        self.assertEqual(count, 3)
        self.assertEqual(len(self.encoded), 1)
        self.assertSharedFrames(["a1", "a2", "b1"])
        self.assertEqual(
            self.received(),
            {sid: [("message", {"content": "hi"})] for sid in ("a1", "a2", "b1")},
        )

    def test_toUsersExceptDevice(self) -> None:
        """
        C{exceptDevice} is skipped (the sender's socket), the user's other
        devices are not, and the count leaves it out.
        """
        count = self.router.toUsers(["alice", "bob"], "message", {}, exceptDevice="a1")
        self.assertEqual(count, 2)
        self.assertEqual(sorted(self.received()), ["a2", "b1"])

    def test_toUsersSkipsSocketsGone(self) -> None:
        """
        A device presence still lists but whose socket is gone from the
        table is skipped without an error and not counted.
        """
        del self.sockets["a2"]
        count = self.router.toUsers(["alice", "carol"], "message", {})
        self.assertEqual(count, 2)
        self.assertEqual(sorted(self.received()), ["a1", "c1"])

    def test_toUsersDeviceGoneDuringFanOut(self) -> None:
        """
        A write that closes its session (its outgoing buffer was full) logs
        the device out of presence in the middle of the fan-out: the other
        devices of that user, and the users after it, still get the event
        (the fan-out iterated the live set of devices, and raised
        C{RuntimeError: Set changed size during iteration}: the sender got
        C{INTERNAL} for a stored message, found by C{bench/slow_readers.py}).
        """
        presence = self.presence

        class OverflowingSocket(RecordingSocket):
            def sendFrames(self, frames: Sequence[Frame]) -> None:
                # what the gateway does when the session closes at once
                presence.logout(self.sid)

        first = next(iter(presence.devicesOf("alice")))
        self.sockets[first] = OverflowingSocket(first)
        count = self.router.toUsers(["alice", "carol"], "message", {})
        self.assertEqual(count, 3)
        other = ({"a1", "a2"} - {first}).pop()
        self.assertEqual(sorted(self.received()), sorted([other, "c1"]))
        self.assertEqual(presence.devicesOf("alice"), {other})

    def test_toUsersOffline(self) -> None:
        """
        Users with no device (or unknown) get nothing, and nothing is
        encoded.
        """
        self.assertEqual(self.router.toUsers(["nobody", "ghost"], "message", {}), 0)
        self.assertEqual(self.router.toUsers(["alice"], "message", {}, exceptDevice="a1"), 1)
        del self.sockets["b1"]
        self.encoded.clear()
        self.assertEqual(self.router.toUsers(["bob"], "message", {}), 0)
        self.assertEqual(self.encoded, [])

    def test_toUsersNobody(self) -> None:
        """
        When the only device of the only recipient is the excepted one,
        nothing is encoded or sent.
        """
        self.assertEqual(self.router.toUsers(["bob"], "message", {}, exceptDevice="b1"), 0)
        self.assertEqual(self.encoded, [])
        self.assertEqual(self.received(), {})

    def test_toDevices(self) -> None:
        """
        L{LocalRouter.toDevices} encodes once, skips C{exceptDevice} and
        unknown sids, and counts the sockets written to.
        """
        count = self.router.toDevices(["a1", "b1", "gone", "c1"], "typing", {"isTyping": True}, exceptDevice="b1")
        self.assertEqual(count, 2)
        self.assertEqual(len(self.encoded), 1)
        self.assertSharedFrames(["a1", "c1"])
        self.assertEqual(sorted(self.received()), ["a1", "c1"])

    def test_toDevicesNobody(self) -> None:
        """
        No recipient: nothing encoded, count 0.
        """
        self.assertEqual(self.router.toDevices([], "typing", {}), 0)
        self.assertEqual(self.router.toDevices(["gone", "a1"], "typing", {}, exceptDevice="a1"), 0)
        self.assertEqual(self.encoded, [])

    def test_toEveryone(self) -> None:
        """
        Every logged-in device but the excepted one, not the socket that
        is connected but not logged in; encoded once.
        """
        count = self.router.toEveryone("status_change", {"userId": "bob"}, exceptDevice="b1")
        self.assertEqual(count, 3)
        self.assertEqual(len(self.encoded), 1)
        self.assertSharedFrames(["a1", "a2", "c1"])
        self.assertNotIn("x1", self.received())

    def test_toConnected(self) -> None:
        """
        Every connected socket, logged in or not, gets the same frames.
        """
        self.router.toConnected("server:shutdown", {"message": "bye"})
        self.assertEqual(len(self.encoded), 1)
        self.assertSharedFrames(["a1", "a2", "b1", "c1", "x1"])

    def test_namespace(self) -> None:
        """
        Events are encoded for the router's namespace.
        """
        router = LocalRouter(self.sockets, self.presence, "/chat")
        router.toDevices(["c1"], "typing", {})
        (frames,) = self.sockets["c1"].sent
        self.assertTrue(bytes(frames[0].data).startswith(b"42/chat,"), frames[0].data)

    def test_disconnect(self) -> None:
        """
        L{LocalRouter.disconnect} goes through the disconnector the wiring
        set, and is a no-op without one.
        """
        self.router.disconnect("a1")
        closed: list[str] = []
        self.router.disconnector = closed.append
        self.router.disconnect("a1")
        self.assertEqual(closed, ["a1"])
