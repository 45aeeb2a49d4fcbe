"""
Tests for connection state recovery: L{crm_im.socketio.recovery} and its use
by L{SocketIOServer}, driven by fake WebSockets and a L{Clock}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from crm_im._json import dumps, loads
from crm_im.socketio import SocketIOConfig, SocketIOServer
from crm_im.socketio.recovery import IConnectionRecovery, RecoveryLog
from crm_im.socketio.server import HELD_RELEASE_DELAY

from .test_sio_server import Client

WINDOW = 120_000


class RecoveryTests(SynchronousTestCase):
    """
    A socket that loses its connection comes back with its sid, rooms and
    data, and gets the events it missed, in order.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.sio = SocketIOServer(self.clock, config=SocketIOConfig(recoveryWindow=WINDOW))
        self.auths: list[Any] = []
        self.disconnects: list[tuple[str, str]] = []

        def connect(sid: str, auth: Any) -> None:
            self.auths.append(auth)
            socket = self.sio.getSocket(sid)
            assert socket is not None
            if not socket.recovered:
                socket.data = {"user": auth.get("user")}

        self.sio.on("connect", connect)
        self.sio.on("disconnect", lambda sid, reason: self.disconnects.append((sid, reason)))

    def tearDown(self) -> None:
        self.sio.stop()

    def connect(self, auth: dict[str, Any]) -> tuple[Client, dict[str, Any]]:
        """
        A new client session that connects to C{/} with C{auth}; the
        CONNECT answer.
        """
        client = Client(self.sio)
        client.send(b"0" + dumps(auth))
        answer = client.received()[0]
        self.assertTrue(answer.startswith(b"0{"), answer)
        return client, loads(answer[1:])  # type: ignore[no-any-return]

    def events(self, client: Client) -> list[Any]:
        """
        The events received since last asked, decoded.
        """
        result = []
        for data in client.received():
            self.assertTrue(data.startswith(b"2"), data)
            result.append(loads(data[1:]))
        return result

    def cut(self, client: Client) -> None:
        """
        The client's transport breaks.
        """
        client.session.channelClosed(client.channel)

    def test_pidAndOffsets(self) -> None:
        """
        The CONNECT answer carries a private session id besides the sid;
        every event emitted without an ack (to a socket, a room, everyone)
        carries a growing offset as its last argument; one with an ack
        does not.
        """
        client, answer = self.connect({"user": "u1"})
        self.assertEqual(sorted(answer), ["pid", "sid"])
        self.assertNotEqual(answer["pid"], answer["sid"])
        sid = answer["sid"]
        self.sio.enterRoom(sid, "r")
        self.sio.emit("a", 1, to=sid)
        self.sio.emit("b", to="r")
        self.sio.emit("c", {"x": 1})
        socket = self.sio.getSocket(sid)
        assert socket is not None
        socket.emit("d", 2)
        socket.emit("e", callback=lambda *args: None)
        self.assertEqual(
            client.received(),
            [b'2["a",1,"1"]', b'2["b","2"]', b'2["c",{"x":1},"3"]', b'2["d",2,"4"]', b'20["e"]'],
        )

    def test_recovered(self) -> None:
        """
        A client that lost its connection and sends its pid and last
        offset gets the same sid, its rooms and data back, and the events
        it missed (only those meant for it, in order) right after the
        CONNECT; the connect handler sees the rest of its auth.
        """
        client, answer = self.connect({"user": "u1"})
        sid, pid = answer["sid"], answer["pid"]
        self.sio.enterRoom(sid, "r")
        self.sio.emit("seen", to=sid)
        self.assertEqual(self.events(client), [["seen", "1"]])
        self.sio.emit("inFlight", to="r")
        self.cut(client)
        self.assertEqual(self.disconnects, [(sid, "transport close")])
        self.sio.emit("toSid", 1, to=sid)
        self.sio.emit("toOther", to="other")
        self.sio.emit("toEveryone")
        self.sio.emit("skipped", to="r", skipSid=sid)
        self.clock.advance(60)
        again, answer = self.connect({"pid": pid, "offset": "1", "token": "t"})
        self.assertEqual(answer, {"sid": sid, "pid": pid})
        self.assertEqual(self.auths[-1], {"token": "t"})
        socket = self.sio.getSocket(sid)
        assert socket is not None
        self.assertTrue(socket.recovered)
        self.assertEqual(socket.data, {"user": "u1"})
        self.assertEqual(self.sio.rooms(sid), {sid, "r"})
        self.sio.emit("new", to="r")
        self.clock.advance(HELD_RELEASE_DELAY)
        self.assertEqual(
            [event[0] for event in self.events(again)], ["inFlight", "toSid", "toEveryone", "new"]
        )

    def test_noOffsetMeansEverything(self) -> None:
        """
        A client that got no event at all (no offset) gets every event sent
        to it since it connected.
        """
        self.sio.emit("beforeItConnected")
        client, answer = self.connect({})
        self.sio.emit("lost", to=answer["sid"])
        self.cut(client)
        again, restored = self.connect({"pid": answer["pid"]})
        self.assertEqual(restored["sid"], answer["sid"])
        self.clock.advance(HELD_RELEASE_DELAY)
        self.assertEqual(self.events(again), [["lost", "2"]])

    def test_notRecovered(self) -> None:
        """
        A new socket (new sid, not recovered) is made instead when the pid
        is unknown, the window has passed, or the offset is malformed or
        unknown.
        """
        client, answer = self.connect({})
        self.cut(client)
        cases: list[dict[str, Any]] = [
            {"pid": "nope"},
            {"pid": answer["pid"], "offset": "x1"},
            {"pid": answer["pid"], "offset": "99"},
            {"pid": answer["pid"], "offset": 1},
        ]
        for auth in cases:
            _, other = self.connect(auth)
            self.assertNotEqual(other["sid"], answer["sid"], auth)
        _, restored = self.connect({"pid": answer["pid"]})
        self.assertEqual(restored["sid"], answer["sid"])

        late, answer = self.connect({})
        self.cut(late)
        self.clock.advance(WINDOW / 1000)
        _, expired = self.connect({"pid": answer["pid"]})
        self.assertNotEqual(expired["sid"], answer["sid"])

    def test_backBeforeTheCutIsNoticed(self) -> None:
        """
        A client back with its pid while its old connection still looks
        open takes its socket over: the old session is closed and the
        socket restored on the new one, with what was sent to the old one
        since the client's offset.
        """
        client, answer = self.connect({})
        sid = answer["sid"]
        self.sio.emit("seen", to=sid)
        self.assertEqual(self.events(client), [["seen", "1"]])
        self.sio.emit("lostOnTheOldConnection", to=sid)
        again, restored = self.connect({"pid": answer["pid"], "offset": "1"})
        self.assertEqual(restored["sid"], sid)
        self.assertFalse(client.open)
        self.assertEqual(self.disconnects, [(sid, "transport close")])
        self.clock.advance(HELD_RELEASE_DELAY)
        self.assertEqual(self.events(again), [["lostOnTheOldConnection", "2"]])

    def test_eventFramesForApplications(self) -> None:
        """
        An application that writes frames itself (encoded once with
        L{SocketIOServer.eventFrames}, sent with C{sendFrames}) gets the
        same offsets and recovery as L{SocketIOServer.emit}.
        """
        client, answer = self.connect({})
        sid = answer["sid"]
        socket = self.sio.getSocket(sid)
        assert socket is not None
        frames = self.sio.eventFrames("message", {"id": "m1"}, to=[sid, "nobody"])
        socket.sendFrames(frames)
        self.assertEqual(self.events(client), [["message", {"id": "m1"}, "1"]])
        self.cut(client)
        self.sio.eventFrames("message", {"id": "m2"}, to=[sid])
        again, restored = self.connect({"pid": answer["pid"], "offset": "1"})
        self.assertEqual(restored["sid"], sid)
        self.clock.advance(HELD_RELEASE_DELAY)
        self.assertEqual(self.events(again), [["message", {"id": "m2"}, "2"]])

    def test_deliberateDisconnectNotRecoverable(self) -> None:
        """
        A socket the client or the server disconnected on purpose is not
        kept for recovery.
        """
        client, answer = self.connect({})
        client.send(b"1")
        _, other = self.connect({"pid": answer["pid"]})
        self.assertNotEqual(other["sid"], answer["sid"])
        self.sio.disconnect(other["sid"])
        _, third = self.connect({"pid": other["pid"]})
        self.assertNotEqual(third["sid"], other["sid"])

    def test_off(self) -> None:
        """
        With recovery off (the default) there is no pid and no offset.
        """
        sio = SocketIOServer(self.clock)
        self.assertIsNone(sio.recovery)
        client = Client(sio)
        sid = client.connect()
        self.assertEqual(client.received(), [])
        sio.emit("a", 1, to=sid)
        self.assertEqual(client.received(), [b'2["a",1]'])
        sio.stop()


class RecoveryLogTests(SynchronousTestCase):
    """
    L{RecoveryLog} on its own: what it keeps, and for how long.
    """

    def test_interface(self) -> None:
        """
        L{RecoveryLog} provides L{IConnectionRecovery}.
        """
        self.assertTrue(verifyObject(IConnectionRecovery, RecoveryLog(Clock(), 1.0)))

    def test_boundedEvents(self) -> None:
        """
        Past C{maxEntries} the oldest events go, and a client whose offset
        is older than what is kept is not recovered.
        """
        clock = Clock()
        log = RecoveryLog(clock, 10.0, maxEntries=3)
        log.detach("p", "s", "/", [], None, firstOffset=0)
        for _ in range(5):
            offset = log.nextOffset()
            log.record(offset, "/", "s", None, [offset])
        self.assertEqual(len(log), 3)
        self.assertIsNone(log.restore("p", "/", "1"))
        restored = log.restore("p", "/", "2")
        assert restored is not None
        self.assertEqual(restored.missed, [[3], [4], [5]])

    def test_eventsExpire(self) -> None:
        """
        Events older than the window are dropped as new ones come.
        """
        clock = Clock()
        log = RecoveryLog(clock, 10.0)
        log.record(log.nextOffset(), "/", None, None, [])
        clock.advance(11)
        log.record(log.nextOffset(), "/", None, None, [])
        self.assertEqual(len(log), 1)

    def test_expireWhenQuiet(self) -> None:
        """
        With no new event, what the window ends for is dropped all the same,
        at most a quarter window later (its timer): a quiet server keeps
        neither the last events' frames nor its detached sockets. Once
        nothing is kept, no timer is left.
        """
        clock = Clock()
        log = RecoveryLog(clock, 10.0)
        log.record(log.nextOffset(), "/", None, None, [b"frame"])
        clock.advance(4)
        log.detach("p", "s", "/", [], None, firstOffset=0)
        log.record(log.nextOffset(), "/", None, None, [b"frame"])
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.assertFalse(log.isEmpty)
        # a quarter window (2.5 s) after the first event's end...
        clock.advance(8.4)
        self.assertEqual(len(log), 2)
        clock.advance(0.1)
        self.assertEqual(len(log), 1)
        # ...and after the detached socket's and the second event's
        clock.advance(4)
        self.assertEqual(len(log), 0)
        self.assertIsNone(log.restore("p", "/", None))
        self.assertTrue(log.isEmpty)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_busyLogFewTimers(self) -> None:
        """
        Events coming all the time fire the timer at most about four times
        a window, not once per event.
        """
        clock = Clock()
        log = RecoveryLog(clock, 10.0)
        fired = 0
        due = log._expiryDue

        def counting() -> None:
            nonlocal fired
            fired += 1
            due()

        log._expiryDue = counting  # type: ignore[method-assign]
        for _ in range(10_000):
            log.record(log.nextOffset(), "/", None, None, [])
            clock.advance(0.01)
        # 100 s of events, 100 a second
        self.assertLessEqual(fired, 40)
        self.assertLessEqual(len(log), 1250)

    def test_stopLeavesNoTimer(self) -> None:
        """
        C{stop} cancels the timer and keeps the entries; C{start} arms it
        again.
        """
        clock = Clock()
        log = RecoveryLog(clock, 10.0)
        log.record(log.nextOffset(), "/", None, None, [])
        log.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
        log.record(log.nextOffset(), "/", None, None, [])
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(len(log), 2)
        log.start()
        clock.advance(12.5)
        self.assertEqual(len(log), 0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_otherNamespace(self) -> None:
        """
        A pid is only restored in its own namespace.
        """
        log = RecoveryLog(Clock(), 10.0)
        log.detach("p", "s", "/a", ["r"], None, firstOffset=0)
        self.assertIsNone(log.restore("p", "/b", None))
        restored = log.restore("p", "/a", None)
        assert restored is not None
        self.assertEqual(restored.socket.rooms, frozenset(["r"]))
        self.assertIsNone(log.restore("p", "/a", None), "restored once")
