"""
Tests for L{crm_im.routing.local.LocalRouter}: where delivery fans out in
one process. An event is encoded once for all its recipients (and not at
all without one), sockets that went away and the excepted device are
skipped, and each call says how many devices it reached.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from crm_im._json import loads
from crm_im.engineio.packet import Frame, FrameBatch
from crm_im.im.interfaces import IRouter
from crm_im.presence import Presence
from crm_im.routing import local
from crm_im.routing.local import MAX_HELD, LocalRouter


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
        return [
            tuple(loads(part.data[2:]))  # type: ignore[misc]
            for frames in self.sent
            for frame in frames
            for part in (frame.parts if isinstance(frame, FrameBatch) else (frame,))
        ]

    def writes(self) -> list[list[str]]:
        """
        The events of each write, in order (a batch is one write).
        """
        return [
            [
                bytes(part.data)
                if part.binary
                else loads(part.data[part.data.index(b"[") :])[0]
                for frame in frames
                for part in (frame.parts if isinstance(frame, FrameBatch) else (frame,))
            ]
            for frames in self.sent
        ]


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
        self.clock = Clock()
        self.presence = Presence(self.clock)
        self.sockets: dict[str, Any] = {}
        for userId, sids in (("alice", ("a1", "a2")), ("bob", ("b1",)), ("carol", ("c1",))):
            for sid in sids:
                self.sockets[sid] = RecordingSocket(sid)
                self.presence.login(userId, sid, userId.title(), None)
        self.sockets["x1"] = RecordingSocket("x1")
        self.router = LocalRouter(self.sockets, self.presence, self.clock)
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

    def test_whenWritable(self) -> None:
        """
        C{whenWritable} is the socket's session's; a device with no socket
        here is not writable.
        """
        waiting: Deferred[bool] = Deferred()

        class Session:
            def whenWritable(self) -> Deferred[bool]:
                return waiting

        self.sockets["a1"].session = Session()
        self.assertIs(self.router.whenWritable("a1"), waiting)
        self.assertIs(self.successResultOf(self.router.whenWritable("gone")), False)

    def test_holdBounded(self) -> None:
        """
        A held device keeps its stored messages' events (not the others)
        until released, at most L{MAX_HELD}; past it they are written at
        once rather than kept without bound.
        """
        self.router.hold("a1")
        for seq in range(MAX_HELD + 2):
            self.router.toUsers(["alice"], "message", {"content": "hi", "seq": seq})
        self.router.toUsers(["alice"], "status_change", {"status": "away"})
        self.assertEqual(len(self.sockets["a1"].sent), 3)
        self.assertEqual(len(self.sockets["a2"].sent), MAX_HELD + 3)
        held = self.router.release("a1")
        self.assertEqual([payload["seq"] for _, payload in held], list(range(MAX_HELD)))
        self.router.toUsers(["alice"], "message", {"content": "hi", "seq": 0})
        self.assertEqual(len(self.sockets["a1"].sent), 4)
        self.assertEqual(self.router.release("a1"), [])

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
        self.clock.advance(0)
        self.assertSharedFrames(["a1", "a2", "c1"])
        self.assertEqual(set(self.received()), {"a1", "a2", "c1"})

    def test_announcementsWaitForTheTurnsEnd(self) -> None:
        """
        Announcements to everyone go out at the end of the reactor turn,
        all of the turn's in one write per device, in the order they were
        made, each device's own left out; the batch is built once for the
        devices that get the same.
        """
        self.router.toEveryone("status_change", {"n": 1}, exceptDevice="b1")
        self.router.toEveryone("status_change", {"n": 2})
        self.router.toEveryone("system:notice", {"n": 3}, exceptDevice="a1")
        self.assertEqual(self.received(), {})
        self.clock.advance(0)
        self.assertEqual(
            {sid: socket.writes() for sid, socket in self.sockets.items()},
            {
                "a1": [["status_change", "status_change"]],
                "a2": [["status_change", "status_change", "system:notice"]],
                "b1": [["status_change", "system:notice"]],
                "c1": [["status_change", "status_change", "system:notice"]],
                "x1": [],
            },
        )
        self.assertIs(self.sockets["a2"].sent[0], self.sockets["c1"].sent[0])
        self.assertEqual(self.sockets["a1"].events(), [("status_change", {"n": 1}), ("status_change", {"n": 2})])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(0)
        self.assertEqual([len(socket.sent) for socket in self.sockets.values()], [1, 1, 1, 1, 0])

    def test_announcementsToThoseLoggedInThen(self) -> None:
        """
        An announcement goes to the devices logged in when it was made: a
        device that logs in later in the turn gets only those made after,
        and its replies go at once, before the others are told anything.
        """
        self.router.toEveryone("status_change", {"n": 1})
        self.sockets["d1"] = RecordingSocket("d1")
        self.presence.login("dave", "d1", "Dave", None)
        self.router.toDevices(["d1"], "online_users", [])
        self.assertEqual(self.received(), {"d1": [("online_users", [])]})
        self.router.toEveryone("status_change", {"n": 2}, exceptDevice="d1")
        self.router.toEveryone("status_change", {"n": 3})
        self.clock.advance(0)
        self.assertEqual(self.sockets["d1"].events(), [("online_users", []), ("status_change", {"n": 3})])
        self.assertEqual([n["n"] for _, n in self.sockets["b1"].events()], [1, 2, 3])

    def test_announcementGoesFirst(self) -> None:
        """
        An event routed to a device that has an announcement waiting sends
        the waiting announcements first, so that nothing overtakes them;
        the end of the turn has nothing left to do.
        """
        self.router.toEveryone("status_change", {"userId": "carol"}, exceptDevice="c1")
        self.router.toUsers(["bob"], "message", {"from": "carol"})
        self.assertEqual(self.sockets["b1"].writes(), [["status_change"], ["message"]])
        self.assertEqual(self.sockets["a1"].writes(), [["status_change"]])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.router.toEveryone("status_change", {"userId": "dave"})
        self.router.toDevices(["c1"], "typing", {})
        self.router.toEveryone("status_change", {"userId": "erin"})
        self.router.toConnected("server:shutdown", {})
        self.assertEqual(
            self.sockets["c1"].writes(), [["status_change"], ["typing"], ["status_change"], ["server:shutdown"]]
        )

    def test_announcementMissesThoseGone(self) -> None:
        """
        A device logged out before the end of the turn is not written to.
        """
        self.router.toEveryone("status_change", {"userId": "carol"})
        self.presence.logout("b1")
        self.clock.advance(0)
        self.assertNotIn("b1", self.received())
        self.assertEqual(set(self.received()), {"a1", "a2", "c1"})

    def test_binaryAnnouncementAtOnce(self) -> None:
        """
        An announcement with binary attachments is not batched: it goes at
        once, after those waiting.
        """
        self.router.toEveryone("status_change", {"n": 1})
        self.router.toEveryone("system:notice", {"data": b"\x00"})
        self.assertEqual(self.sockets["c1"].writes(), [["status_change"], ["system:notice", b"\x00"]])
        self.assertEqual(self.clock.getDelayedCalls(), [])

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
        router = LocalRouter(self.sockets, self.presence, self.clock, "/chat")
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
