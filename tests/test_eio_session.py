"""
Tests for L{crm_im.engineio.session} and L{crm_im.engineio.server}: the
Engine.IO session state machine, driven by fake transports and a
L{task.Clock} that runs L{EngineIOServer.start}'s deadline wheel.
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from crm_im._json import loads
from crm_im.engineio import packet
from crm_im.engineio.config import EngineIOConfig
from crm_im.engineio.interfaces import IEngineIOApplication, IPollRequest, IWebSocketChannel
from crm_im.engineio.packet import Frame, messageFrame
from crm_im.engineio.server import EngineIOError, EngineIOServer
from crm_im.engineio.session import CLOSED, CLOSING, OPEN, EngineIOSession


@implementer(IEngineIOApplication)
class RecordingApp:
    """
    An Engine.IO application that records what happens to its sessions.
    """

    def __init__(self) -> None:
        self.opened: list[EngineIOSession] = []
        self.messages: list[tuple[EngineIOSession, bytes, bool]] = []
        self.closed: list[tuple[EngineIOSession, str]] = []

    def sessionOpened(self, session: EngineIOSession) -> None:
        self.opened.append(session)

    def messageReceived(self, session: EngineIOSession, data: bytes, binary: bool) -> None:
        self.messages.append((session, data, binary))

    def sessionClosed(self, session: EngineIOSession, reason: str) -> None:
        self.closed.append((session, reason))


@implementer(IPollRequest)
class FakePoll:
    """
    A held long-polling GET that records its answer.
    """

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def respond(self, body: bytes) -> None:
        self.bodies.append(body)

    @property
    def answered(self) -> bool:
        """
        Whether the GET was answered.
        """
        return bool(self.bodies)


@implementer(IWebSocketChannel)
class FakeChannel:
    """
    A WebSocket channel that records the frames written to it.
    """

    name = "websocket"

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.closed = False
        self.reading = True
        self.flushes = 0

    def writeFrame(self, frame: Frame) -> None:
        assert not self.closed, "write on a closed channel"
        self.frames.append(frame)

    def flushWrites(self) -> None:
        self.flushes += 1

    def pauseReading(self) -> None:
        self.reading = False

    def resumeReading(self) -> None:
        self.reading = True

    def closeChannel(self) -> None:
        self.closed = True

    def data(self) -> list[bytes]:
        """
        The bytes of the frames written so far.
        """
        return [frame.data for frame in self.frames]


def sequentialSids() -> Any:
    """
    A session id factory giving C{sid1}, C{sid2}, ...
    """
    counter = itertools.count(1)
    return lambda: "sid%d" % (next(counter),)


class EngineTestMixin:
    """
    An L{EngineIOServer} with a L{RecordingApp} on a started L{Clock}.
    """

    config = EngineIOConfig()

    def setUp(self) -> None:
        self.clock = Clock()
        self.app = RecordingApp()
        self.server = EngineIOServer(self.app, self.clock, self.config, newSid=sequentialSids())
        self.server.start()

    def pollingSession(self) -> EngineIOSession:
        """
        A polling session whose OPEN packet the client has collected.
        """
        session = self.server.handshake("polling", "127.0.0.1")
        poll = FakePoll()
        session.pollArrived(poll)
        assert poll.bodies and poll.bodies[0][:1] == b"0", poll.bodies
        return session

    def webSocketSession(self) -> tuple[EngineIOSession, FakeChannel]:
        """
        A session opened directly over WebSocket, and its channel.
        """
        channel = FakeChannel()
        session = self.server.handshake("websocket", "127.0.0.1", channel=channel)
        return session, channel

    def advance(self, seconds: float) -> None:
        """
        Advance the clock in quarter-second steps (the wheel's resolution).
        """
        steps = int(seconds / 0.25)
        self.clock.pump([0.25] * steps)
        rest = seconds - steps * 0.25
        if rest > 0:
            self.clock.advance(rest)


class HandshakeTests(EngineTestMixin, SynchronousTestCase):
    """
    The OPEN packet and the application's view of a new session.
    """

    def test_fakes(self) -> None:
        """
        The fakes provide the interfaces the session writes through.
        """
        verifyObject(IPollRequest, FakePoll())
        verifyObject(IWebSocketChannel, FakeChannel())
        verifyObject(IEngineIOApplication, self.app)

    def test_pollingOpenPacket(self) -> None:
        """
        A polling handshake answers with the OPEN packet: sid, the
        WebSocket upgrade, the heartbeat settings and maxPayload.
        """
        session = self.server.handshake("polling")
        poll = FakePoll()
        self.assertTrue(session.pollArrived(poll))
        (body,) = poll.bodies
        self.assertEqual(body[:1], b"0")
        self.assertEqual(
            loads(body[1:]),
            {
                "sid": "sid1",
                "upgrades": ["websocket"],
                "pingInterval": 25000,
                "pingTimeout": 20000,
                "maxPayload": 1000000,
            },
        )
        self.assertEqual(self.app.opened, [session])
        self.assertIs(self.server.sessions["sid1"], session)
        self.assertEqual(session.transportName, "polling")
        self.assertEqual(self.server.stats.opened, 1)

    def test_webSocketOpenPacket(self) -> None:
        """
        A direct WebSocket handshake writes the OPEN packet at once, with
        no upgrades.
        """
        session, channel = self.webSocketSession()
        (data,) = channel.data()
        self.assertEqual(loads(data[1:])["upgrades"], [])
        self.assertEqual(loads(data[1:])["sid"], session.sid)
        self.assertEqual(session.transportName, "websocket")

    def test_configuredValues(self) -> None:
        """
        The OPEN packet carries the configured values; no upgrade is
        offered when WebSocket is not an allowed transport.
        """
        config = EngineIOConfig(pingInterval=1000, pingTimeout=500, maxPayload=1234, transports=("polling",))
        server = EngineIOServer(self.app, self.clock, config)
        session = server.handshake("polling")
        poll = FakePoll()
        session.pollArrived(poll)
        fields = loads(poll.bodies[0][1:])
        self.assertEqual(
            (fields["upgrades"], fields["pingInterval"], fields["pingTimeout"], fields["maxPayload"]),
            ([], 1000, 500, 1234),
        )
        self.assertEqual(len(fields["sid"]), 20)

    def test_sendTextAndBytes(self) -> None:
        """
        C{session.send} takes text (a text MESSAGE), bytes (a binary one)
        or an encoded L{Frame}: what a raw Engine.IO application needs
        without the packet module.
        """
        session, channel = self.webSocketSession()
        session.send("héllo")
        session.send(b"\x00\xff")
        session.send(messageFrame(b"framed"))
        self.assertEqual(
            channel.frames[1:],
            [Frame("4héllo".encode()), Frame(b"\x00\xff", binary=True), Frame(b"4framed")],
        )
        polling = self.pollingSession()
        polling.send("a")
        polling.send(b"\x01")
        poll = FakePoll()
        polling.pollArrived(poll)
        self.assertEqual(poll.bodies, [b"4a\x1ebAQ=="])

    def test_uniqueSids(self) -> None:
        """
        A sid factory that repeats itself does not give two sessions the
        same sid.
        """
        sids = iter(["a", "a", "a", "b"])
        server = EngineIOServer(self.app, self.clock, newSid=lambda: next(sids))
        self.assertEqual([server.handshake("polling").sid for _ in range(2)], ["a", "b"])


class HeartbeatTests(EngineTestMixin, SynchronousTestCase):
    """
    PING every pingInterval, close when no PONG comes within pingTimeout.
    """

    def pings(self, channel: FakeChannel) -> int:
        """
        How many PINGs were written to C{channel}.
        """
        return channel.data().count(b"2")

    def test_pingEveryInterval(self) -> None:
        """
        The first PING is sent pingInterval after the handshake, not
        before.
        """
        session, channel = self.webSocketSession()
        self.advance(24.9)
        self.assertEqual(self.pings(channel), 0)
        self.advance(0.35)
        self.assertEqual(self.pings(channel), 1)

    def test_pingTimeout(self) -> None:
        """
        A session that does not answer the PING within pingTimeout is
        closed with "ping timeout", not before.
        """
        session, channel = self.webSocketSession()
        self.advance(25)
        self.assertEqual(self.pings(channel), 1)
        self.advance(19.9)
        self.assertEqual(session.state, OPEN)
        self.advance(0.35)
        self.assertEqual(session.state, CLOSED)
        self.assertEqual(self.app.closed, [(session, "ping timeout")])
        self.assertTrue(channel.closed)
        self.assertNotIn(session.sid, self.server.sessions)
        self.assertEqual(self.server.stats.pingTimeouts, 1)
        self.assertNotIn(session, self.server.wheel)

    def test_shortIntervalsOnTime(self) -> None:
        """
        With pingInterval 300 ms and pingTimeout 200 ms (the compliance
        suites' settings), the PING goes out at 300 ms and a silent session
        is closed at 500 ms: deadlines are not rounded to a coarse tick
        (the fixed 250 ms wheel pinged at 500 ms and closed at 750 ms,
        after the client had given up).
        """
        self.server = EngineIOServer(
            self.app, self.clock, EngineIOConfig(pingInterval=300, pingTimeout=200), newSid=sequentialSids()
        )
        session, channel = self.webSocketSession()
        self.clock.advance(0.299)
        self.assertEqual(self.pings(channel), 0)
        self.clock.advance(0.001)
        self.assertEqual(self.pings(channel), 1)
        session.packetReceived(packet.PONG, b"")
        self.clock.advance(0.3)
        self.assertEqual(self.pings(channel), 2)
        self.clock.advance(0.199)
        self.assertEqual(session.state, OPEN)
        self.clock.advance(0.002)
        self.assertEqual(self.app.closed, [(session, "ping timeout")])

    def test_heartbeatWithoutStart(self) -> None:
        """
        An engine that nobody started still sends its heartbeats: there is
        no sweep to forget to start.
        """
        self.server = EngineIOServer(
            self.app, self.clock, EngineIOConfig(pingInterval=300, pingTimeout=200), newSid=sequentialSids()
        )
        session, channel = self.webSocketSession()
        self.clock.advance(0.3)
        self.assertEqual(self.pings(channel), 1)

    def test_pongKeepsAlive(self) -> None:
        """
        A session that answers each PING stays open over many intervals,
        with one PING per interval.
        """
        session, channel = self.webSocketSession()
        for i in range(1, 21):
            self.advance(25.25)
            self.assertEqual(self.pings(channel), i)
            self.advance(5)
            session.packetReceived(packet.PONG, b"")
        self.assertEqual(session.state, OPEN)
        self.assertEqual(self.app.closed, [])

    def test_unexpectedPong(self) -> None:
        """
        A PONG nobody asked for does not postpone the next PING.
        """
        session, channel = self.webSocketSession()
        self.advance(20)
        session.packetReceived(packet.PONG, b"")
        self.advance(5.25)
        self.assertEqual(self.pings(channel), 1)

    def test_pollingPing(self) -> None:
        """
        A polling session gets its PING through the held GET.
        """
        session = self.pollingSession()
        poll = FakePoll()
        session.pollArrived(poll)
        self.advance(25.25)
        self.assertEqual(poll.bodies, [b"2"])
        session.payloadReceived(b"3")
        self.advance(40)
        self.assertEqual(session.state, OPEN)

    def test_stop(self) -> None:
        """
        Stopping the server closes every session with "server shutting
        down".
        """
        session, channel = self.webSocketSession()
        polling = self.pollingSession()
        self.server.stop()
        self.assertEqual(
            sorted(reason for _, reason in self.app.closed), ["server shutting down"] * 2
        )
        self.assertTrue(channel.closed)
        self.assertEqual(polling.state, CLOSED)
        self.assertEqual(self.server.sessions, {})

    def test_serviceLifecycle(self) -> None:
        """
        The server is a Twisted service: under an application it runs with
        it, and stopping the application closes every session and refuses
        new ones until it starts again.
        """
        from twisted.application.service import IService, MultiService

        self.assertTrue(IService.providedBy(self.server))
        application = MultiService()
        self.server.setServiceParent(application)
        application.startService()
        self.assertTrue(self.server.running)
        session, channel = self.webSocketSession()
        application.stopService()
        self.assertEqual(self.app.closed, [(session, "server shutting down")])
        self.assertTrue(channel.closed)
        with self.assertRaises(EngineIOError):
            self.server.checkRequest(b"GET", {"EIO": "4", "transport": "polling"}, False, None)
        application.startService()
        self.assertEqual(self.server.checkRequest(b"GET", {"EIO": "4", "transport": "polling"}, False, None), ("polling", None))
        session, channel = self.webSocketSession()
        self.clock.advance(25)
        self.assertEqual(self.pings(channel), 1)


class PollingTests(EngineTestMixin, SynchronousTestCase):
    """
    Long-polling: held GETs, batching, POST bodies and closing.
    """

    def test_heldPollAnsweredBatched(self) -> None:
        """
        A held GET is answered when packets are sent; everything sent in
        one reactor turn goes in one response.
        """
        session = self.pollingSession()
        poll = FakePoll()
        self.assertTrue(session.pollArrived(poll))
        self.assertFalse(poll.answered)
        session.send(messageFrame(b"a"))
        session.send(packet.binaryFrame(b"\x01"))
        self.assertFalse(poll.answered)
        self.clock.advance(0)
        self.assertEqual(poll.bodies, [b"4a\x1ebAQ=="])
        self.assertEqual(session.queuedPackets, 0)

    def test_queuedBeforeGet(self) -> None:
        """
        Packets sent with no GET held are returned at once by the next one.
        """
        session = self.pollingSession()
        session.sendMany([messageFrame(b"a"), messageFrame(b"b")])
        self.assertEqual(session.queuedPackets, 2)
        self.assertEqual(session.queuedBytes, 4)
        poll = FakePoll()
        session.pollArrived(poll)
        self.assertEqual(poll.bodies, [b"4a\x1e4b"])
        self.clock.advance(0)
        self.assertEqual(len(poll.bodies), 1)

    def test_batchQueuedAsPackets(self) -> None:
        """
        A L{packet.FrameBatch} sent to a polling session is queued packet
        by packet, as if each had been sent apart: one payload, counted
        and bounded per packet.
        """
        session = self.pollingSession()
        session.send(packet.FrameBatch([messageFrame(b"a"), messageFrame(b"bc")]))
        session.send(messageFrame(b"d"))
        self.assertEqual(session.queuedPackets, 3)
        self.assertEqual(session.queuedBytes, 7)
        poll = FakePoll()
        session.pollArrived(poll)
        self.assertEqual(poll.bodies, [b"4a\x1e4bc\x1e4d"])

    def test_batchOnlyOfText(self) -> None:
        """
        A batch holds text packets, not binary ones nor other batches.
        """
        text = messageFrame(b"a")
        self.assertRaises(ValueError, packet.FrameBatch, [text, packet.binaryFrame(b"\x01")])
        self.assertRaises(ValueError, packet.FrameBatch, [packet.FrameBatch([text])])
        self.assertEqual(packet.FrameBatch([text, messageFrame(b"bc")]), packet.FrameBatch([text, messageFrame(b"bc")]))
        self.assertEqual(len(packet.FrameBatch([text, messageFrame(b"bc")])), 5)

    def test_pollGone(self) -> None:
        """
        A held GET that the client aborted is not answered; the packets
        wait for the next one.
        """
        session = self.pollingSession()
        poll = FakePoll()
        session.pollArrived(poll)
        session.pollGone(poll)
        session.send(messageFrame(b"a"))
        self.clock.advance(0)
        self.assertFalse(poll.answered)
        again = FakePoll()
        session.pollArrived(again)
        self.assertEqual(again.bodies, [b"4a"])

    def test_secondConcurrentGet(self) -> None:
        """
        A second GET while one is held closes the session: the held one is
        answered with CLOSE, the second is refused.
        """
        session = self.pollingSession()
        first, second = FakePoll(), FakePoll()
        session.pollArrived(first)
        self.assertFalse(session.pollArrived(second))
        self.assertEqual(first.bodies, [b"1"])
        self.assertFalse(second.answered)
        self.assertEqual(self.app.closed, [(session, "transport error")])
        self.assertNotIn(session.sid, self.server.sessions)

    def test_postMessages(self) -> None:
        """
        A POST body's MESSAGE packets reach the application in order, text
        and binary.
        """
        session = self.pollingSession()
        self.assertTrue(session.payloadReceived(b"4hello\x1ebAQID\x1e6\x1e4\xe2\x82\xac"))
        self.assertEqual(
            [(data, binary) for _, data, binary in self.app.messages],
            [(b"hello", False), (b"\x01\x02\x03", True), ("€".encode(), False)],
        )

    def test_postMalformed(self) -> None:
        """
        A malformed POST body closes the session with "parse error" and
        delivers none of its packets.
        """
        session = self.pollingSession()
        self.assertFalse(session.payloadReceived(b"4hello\x1e9"))
        self.assertEqual(self.app.messages, [])
        self.assertEqual(self.app.closed, [(session, "parse error")])

    def test_postClose(self) -> None:
        """
        A CLOSE packet closes the session with "transport close"; packets
        after it in the same body are ignored.
        """
        session = self.pollingSession()
        session.payloadReceived(b"1\x1e4late")
        self.assertEqual(self.app.closed, [(session, "transport close")])
        self.assertEqual(self.app.messages, [])

    def test_postCloseAnswersHeldGetWithNoop(self) -> None:
        """
        When the client POSTs a CLOSE while its GET is held, the GET is
        answered with a NOOP (the client asked to close: no CLOSE back) and
        the session is gone.
        """
        session = self.pollingSession()
        poll = FakePoll()
        session.pollArrived(poll)
        session.payloadReceived(b"1")
        self.assertEqual(poll.bodies, [b"6"])
        self.assertEqual(self.app.closed, [(session, "transport close")])
        self.assertNotIn(session.sid, self.server.sessions)

    def test_postUpgradeOnPolling(self) -> None:
        """
        An UPGRADE or OPEN packet on an established polling transport is a
        parse error.
        """
        for body in [b"5", b"0"]:
            session = self.pollingSession()
            session.payloadReceived(body)
            self.assertEqual(self.app.closed[-1], (session, "parse error"))

    def test_closeWithQueueDeliveredNextGet(self) -> None:
        """
        A polling session closed with packets queued delivers them with the
        next GET and CLOSE with the one after (never in one payload:
        socket.io-client would drop the packets), and is forgotten then.
        """
        session = self.pollingSession()
        session.sendMany([messageFrame(b"a"), messageFrame(b"b")])
        session.close()
        self.assertEqual(session.state, CLOSING)
        self.assertEqual(self.app.closed, [(session, "forced close")])
        self.assertIs(self.server.sessions[session.sid], session)
        session.send(messageFrame(b"dropped"))
        poll = FakePoll()
        self.assertTrue(session.pollArrived(poll))
        self.assertEqual(poll.bodies, [b"4a\x1e4b"])
        self.assertEqual(session.state, CLOSING)
        poll = FakePoll()
        self.assertTrue(session.pollArrived(poll))
        self.assertEqual(poll.bodies, [b"1"])
        self.assertEqual(session.state, CLOSED)
        self.assertNotIn(session.sid, self.server.sessions)
        self.assertEqual(len(self.app.closed), 1)

    def test_closeWithQueueForgottenAfterCloseTimeout(self) -> None:
        """
        A closed polling session whose client never comes back is forgotten
        after closeTimeout.
        """
        session = self.pollingSession()
        session.send(messageFrame(b"a"))
        session.close()
        self.advance(29.5)
        self.assertIn(session.sid, self.server.sessions)
        self.advance(0.75)
        self.assertNotIn(session.sid, self.server.sessions)
        self.assertEqual(session.state, CLOSED)
        self.assertEqual(session.queuedPackets, 0)
        self.assertEqual(len(self.server.wheel), 0)

    def test_closeWithHeldPoll(self) -> None:
        """
        Closing a session with a held GET answers it with the queue at
        once, and the next GET with CLOSE.
        """
        session = self.pollingSession()
        poll = FakePoll()
        session.pollArrived(poll)
        session.send(messageFrame(b"a"))
        session.close()
        self.assertEqual(poll.bodies, [b"4a"])
        self.assertEqual(session.state, CLOSING)
        self.clock.advance(0)
        self.assertEqual(len(poll.bodies), 1)
        poll = FakePoll()
        session.pollArrived(poll)
        self.assertEqual(poll.bodies, [b"1"])
        self.assertNotIn(session.sid, self.server.sessions)

    def test_closeWithoutQueue(self) -> None:
        """
        A polling session closed with nothing queued and no GET held is
        forgotten at once.
        """
        session = self.pollingSession()
        session.close("forced close")
        self.assertEqual(session.state, CLOSED)
        self.assertNotIn(session.sid, self.server.sessions)
        self.assertEqual(self.server.stats.closed, 1)

    def test_closeTwice(self) -> None:
        """
        Closing a closed session does nothing.
        """
        session = self.pollingSession()
        session.close()
        session.close("again")
        self.assertEqual(len(self.app.closed), 1)

    def test_packetsAfterClose(self) -> None:
        """
        Packets that arrive for a closed session (a WebSocket frame already
        in flight) reach neither the application nor the heartbeat.
        """
        session, channel = self.webSocketSession()
        self.advance(25.25)
        session.close()
        session.packetReceived(packet.MESSAGE, b"late")
        session.packetReceived(packet.PONG, b"")
        self.assertEqual(self.app.messages, [])
        self.assertNotIn(session, self.server.wheel)


class UpgradeTests(EngineTestMixin, SynchronousTestCase):
    """
    Upgrading a polling session to WebSocket.
    """

    def test_upgrade(self) -> None:
        """
        C{2probe} is answered with C{3probe} and the held GET with NOOP;
        after C{5} the WebSocket carries the session, starting with the
        packets sent during the upgrade, in order.
        """
        session = self.pollingSession()
        poll = FakePoll()
        session.pollArrived(poll)
        channel = FakeChannel()
        self.assertTrue(session.startUpgrade(channel))
        self.assertTrue(session.upgrading)
        session.send(messageFrame(b"during1"))
        self.clock.advance(0)
        self.assertFalse(poll.answered)
        session.upgradePacketReceived(channel, packet.PING, b"probe")
        self.assertEqual(channel.data(), [b"3probe"])
        self.assertEqual(poll.bodies, [b"6"])
        session.send(messageFrame(b"during2"))
        self.clock.advance(0)
        session.upgradePacketReceived(channel, packet.UPGRADE, b"")
        self.assertEqual(channel.data(), [b"3probe", b"4during1", b"4during2"])
        self.assertEqual(session.transportName, "websocket")
        self.assertFalse(session.upgrading)
        self.assertEqual(self.server.stats.upgrades, 1)
        session.send(messageFrame(b"after"))
        self.assertEqual(channel.data()[-1], b"4after")
        self.assertEqual(session.queuedPackets, 0)
        self.assertEqual(poll.bodies, [b"6"])

    def test_upgradeAnswersGetHeldAfterProbe(self) -> None:
        """
        A GET that arrives between the probe and C{5} is answered with NOOP
        within 100 ms (and the next one too: every 100 ms while the upgrade
        is pending, as the official server does), not held until the ping
        timeout; the packets queued go to the WebSocket.
        """
        session = self.pollingSession()
        channel = FakeChannel()
        session.startUpgrade(channel)
        session.upgradePacketReceived(channel, packet.PING, b"probe")
        session.send(messageFrame(b"x"))
        poll = FakePoll()
        session.pollArrived(poll)
        self.assertFalse(poll.answered)
        self.clock.advance(0.1)
        self.assertEqual(poll.bodies, [b"6"])
        again = FakePoll()
        session.pollArrived(again)
        self.clock.advance(0.1)
        self.assertEqual(again.bodies, [b"6"])
        last = FakePoll()
        session.pollArrived(last)
        session.upgradePacketReceived(channel, packet.UPGRADE, b"")
        self.assertEqual(last.bodies, [b"6"])
        self.assertEqual(channel.data(), [b"3probe", b"4x"])
        self.assertNotIn(("noop", session), self.server.wheel)

    def test_noNoopsAfterAbortedUpgrade(self) -> None:
        """
        Once an upgrade is aborted the NOOPs stop: a held GET waits for
        packets again.
        """
        session = self.pollingSession()
        channel = FakeChannel()
        session.startUpgrade(channel)
        session.upgradePacketReceived(channel, packet.PING, b"probe")
        session.channelClosed(channel)
        poll = FakePoll()
        session.pollArrived(poll)
        self.clock.advance(1)
        self.assertFalse(poll.answered)
        self.assertNotIn(("noop", session), self.server.wheel)

    def test_heartbeatDuringUpgrade(self) -> None:
        """
        A PING due during the upgrade is delivered on the WebSocket after
        C{5}, and a PONG there keeps the session alive.
        """
        session = self.pollingSession()
        self.advance(20)
        channel = FakeChannel()
        session.startUpgrade(channel)
        session.upgradePacketReceived(channel, packet.PING, b"probe")
        self.advance(5.25)
        session.upgradePacketReceived(channel, packet.UPGRADE, b"")
        self.assertEqual(channel.data(), [b"3probe", b"2"])
        session.packetReceived(packet.PONG, b"")
        self.advance(30)
        self.assertEqual(session.state, OPEN)

    def test_upgradeTimeout(self) -> None:
        """
        An upgrade that does not complete within upgradeTimeout is
        aborted: the WebSocket is closed and the session keeps polling,
        packets queued meanwhile included.
        """
        session = self.pollingSession()
        channel = FakeChannel()
        session.startUpgrade(channel)
        session.upgradePacketReceived(channel, packet.PING, b"probe")
        session.send(messageFrame(b"a"))
        self.advance(9.9)
        self.assertTrue(session.upgrading)
        self.advance(0.5)
        self.assertFalse(session.upgrading)
        self.assertTrue(channel.closed)
        self.assertEqual(session.transportName, "polling")
        self.assertEqual(session.state, OPEN)
        poll = FakePoll()
        session.pollArrived(poll)
        self.assertEqual(poll.bodies, [b"4a"])

    def test_channelClosedMidProbe(self) -> None:
        """
        A probing WebSocket that closes leaves the session on polling; the
        held GET gets the packets queued meanwhile.
        """
        session = self.pollingSession()
        poll = FakePoll()
        session.pollArrived(poll)
        channel = FakeChannel()
        session.startUpgrade(channel)
        session.send(messageFrame(b"a"))
        session.channelClosed(channel)
        self.assertFalse(session.upgrading)
        self.assertEqual(session.state, OPEN)
        self.assertEqual(poll.bodies, [b"4a"])
        self.assertEqual(self.app.closed, [])
        self.advance(15)
        self.assertEqual(session.state, OPEN)

    def test_badProbePacket(self) -> None:
        """
        Anything but C{2probe} and C{5} on the probing WebSocket aborts the
        upgrade.
        """
        session = self.pollingSession()
        channel = FakeChannel()
        session.startUpgrade(channel)
        session.upgradePacketReceived(channel, packet.MESSAGE, b"hi")
        self.assertTrue(channel.closed)
        self.assertFalse(session.upgrading)
        self.assertEqual(self.app.messages, [])

    def test_secondUpgrade(self) -> None:
        """
        A session being upgraded, or already on WebSocket, refuses another
        upgrade.
        """
        session = self.pollingSession()
        first = FakeChannel()
        self.assertTrue(session.startUpgrade(first))
        self.assertFalse(session.startUpgrade(FakeChannel()))
        session.upgradePacketReceived(first, packet.UPGRADE, b"")
        self.assertFalse(session.startUpgrade(FakeChannel()))

    def test_foreignChannel(self) -> None:
        """
        A packet from a channel that is not the probing one closes that
        channel and leaves the upgrade alone.
        """
        session = self.pollingSession()
        channel, stranger = FakeChannel(), FakeChannel()
        session.startUpgrade(channel)
        session.upgradePacketReceived(stranger, packet.UPGRADE, b"")
        self.assertTrue(stranger.closed)
        self.assertTrue(session.upgrading)

    def test_closeDuringUpgrade(self) -> None:
        """
        Closing a session mid-upgrade closes the probing WebSocket.
        """
        session = self.pollingSession()
        channel = FakeChannel()
        session.startUpgrade(channel)
        session.close()
        self.assertTrue(channel.closed)
        self.assertEqual(len(self.server.wheel), 0)

    def test_upgradedChannelClosed(self) -> None:
        """
        When the WebSocket of an upgraded session closes, the session
        closes with "transport close".
        """
        session = self.pollingSession()
        channel = FakeChannel()
        session.startUpgrade(channel)
        session.upgradePacketReceived(channel, packet.UPGRADE, b"")
        session.channelClosed(channel)
        self.assertEqual(self.app.closed, [(session, "transport close")])
        self.assertNotIn(session.sid, self.server.sessions)


class BufferBoundTests(EngineTestMixin, SynchronousTestCase):
    """
    A session that does not take its packets is closed, not grown.
    """

    config = EngineIOConfig(maxBufferedBytes=1000, maxBufferedPackets=10)

    def test_pausedQueuesAndResumeFlushes(self) -> None:
        """
        While paused, sends are queued; resuming writes them in order, and
        later sends are written directly.
        """
        session, channel = self.webSocketSession()
        session.pauseWriting()
        session.sendMany([messageFrame(b"%d" % (i,)) for i in range(5)])
        self.assertEqual(len(channel.frames), 1)
        self.assertEqual(session.queuedPackets, 5)
        session.resumeWriting()
        self.assertEqual(channel.data()[1:], [b"40", b"41", b"42", b"43", b"44"])
        self.assertEqual((session.queuedPackets, session.queuedBytes), (0, 0))
        session.send(messageFrame(b"x"))
        self.assertEqual(channel.data()[-1], b"4x")

    def test_pauseWhileFlushing(self) -> None:
        """
        A transport that pauses again while the queue is being flushed
        keeps the rest queued, in order.
        """
        session, channel = self.webSocketSession()
        session.pauseWriting()
        session.sendMany([messageFrame(b"%d" % (i,)) for i in range(4)])
        original = channel.writeFrame

        def writeFrame(frame: Frame) -> None:
            original(frame)
            if frame.data == b"41":
                session.pauseWriting()

        channel.writeFrame = writeFrame  # type: ignore[method-assign]
        session.resumeWriting()
        self.assertEqual(channel.data()[1:], [b"40", b"41"])
        session.send(messageFrame(b"4"))
        session.resumeWriting()
        self.assertEqual(channel.data()[1:], [b"40", b"41", b"42", b"43", b"44"])

    def test_packetBound(self) -> None:
        """
        A paused session is closed once it has more than
        maxBufferedPackets queued.
        """
        session, channel = self.webSocketSession()
        session.pauseWriting()
        for i in range(10):
            session.send(messageFrame(b"x"))
        self.assertEqual(session.state, OPEN)
        session.send(messageFrame(b"x"))
        self.assertEqual(session.state, CLOSED)
        self.assertTrue(channel.closed)
        self.assertEqual(self.app.closed, [(session, "transport error")])
        self.assertEqual(self.server.stats.bufferOverflows, 1)
        self.assertEqual(session.queuedPackets, 0)

    def test_batchBoundPerPacket(self) -> None:
        """
        A batch queued on a paused session counts as its packets: one that
        would pass maxBufferedPackets closes the session, and the rest of
        it is dropped with the queue.
        """
        session, channel = self.webSocketSession()
        session.pauseWriting()
        session.send(packet.FrameBatch([messageFrame(b"%d" % (i,)) for i in range(12)]))
        self.assertEqual(session.state, CLOSED)
        self.assertEqual(self.app.closed, [(session, "transport error")])
        self.assertEqual(session.queuedPackets, 0)
        self.assertEqual(len(channel.frames), 1)

    def test_byteBound(self) -> None:
        """
        A paused session is closed once it has more than maxBufferedBytes
        queued.
        """
        session, channel = self.webSocketSession()
        session.pauseWriting()
        session.send(messageFrame(b"x" * 999))
        self.assertEqual(session.queuedBytes, 1000)
        self.assertEqual(session.state, OPEN)
        session.send(messageFrame(b""))
        self.assertEqual(session.state, CLOSED)
        self.assertEqual(self.server.stats.bufferOverflows, 1)

    def test_pollingBound(self) -> None:
        """
        A polling client that stops collecting is closed the same way.
        """
        session = self.pollingSession()
        for i in range(11):
            session.send(messageFrame(b"x"))
        self.assertEqual(self.app.closed, [(session, "transport error")])
        self.assertNotIn(session.sid, self.server.sessions)


class WhenWritableTests(EngineTestMixin, SynchronousTestCase):
    """
    L{EngineIOSession.whenWritable}: a long run of packets paced on the
    client's reading, within a quarter of the session's bounds (here 250
    bytes and 2 packets).
    """

    config = EngineIOConfig(maxBufferedBytes=1000, maxBufferedPackets=10)

    def takeOneFrame(self, session: EngineIOSession, channel: FakeChannel) -> None:
        """
        Resume C{session}'s writing on a transport whose buffer fills again
        after one frame; later resumes take everything.
        """
        original = channel.writeFrame

        def writeFrame(frame: Frame) -> None:
            original(frame)
            session.pauseWriting()
            channel.writeFrame = original  # type: ignore[method-assign]

        channel.writeFrame = writeFrame  # type: ignore[method-assign]
        session.resumeWriting()

    def test_roomAtOnce(self) -> None:
        """
        A session that writes straight through, or whose queue is within a
        quarter of its bounds, is writable at once.
        """
        session, channel = self.webSocketSession()
        self.assertIs(self.successResultOf(session.whenWritable()), True)
        session.pauseWriting()
        session.send(messageFrame(b"x" * 249))
        self.assertEqual(session.queuedBytes, 250)
        self.assertIs(self.successResultOf(session.whenWritable()), True)

    def test_webSocketDrains(self) -> None:
        """
        Past a quarter of the byte bound it waits (every waiter), and
        fires once the transport took enough to be back within it, even if
        its buffer filled again (here after one frame, leaving 200 bytes
        of the 250).
        """
        session, channel = self.webSocketSession()
        session.pauseWriting()
        session.sendMany([messageFrame(b"x" * 99) for _ in range(3)])
        self.assertEqual(session.queuedBytes, 300)
        writable = session.whenWritable()
        also = session.whenWritable()
        self.assertNoResult(writable)
        self.takeOneFrame(session, channel)
        self.assertEqual(session.queuedBytes, 200)
        self.assertIs(self.successResultOf(writable), True)
        self.assertIs(self.successResultOf(also), True)

    def test_webSocketStillFull(self) -> None:
        """
        A transport that takes too little to bring the queue within the
        quarter keeps the waiter waiting until it takes more.
        """
        session, channel = self.webSocketSession()
        session.pauseWriting()
        session.sendMany([messageFrame(b"x" * 199) for _ in range(3)])
        writable = session.whenWritable()
        self.takeOneFrame(session, channel)
        self.assertEqual(session.queuedBytes, 400)
        self.assertNoResult(writable)
        session.resumeWriting()
        self.assertIs(self.successResultOf(writable), True)

    def test_packetQuarter(self) -> None:
        """
        The packet bound counts too: three small packets queued (more than
        a quarter of ten) wait.
        """
        session, channel = self.webSocketSession()
        session.pauseWriting()
        session.sendMany([messageFrame(b"x") for _ in range(3)])
        writable = session.whenWritable()
        self.assertNoResult(writable)
        session.resumeWriting()
        self.assertIs(self.successResultOf(writable), True)

    def test_pollingCollects(self) -> None:
        """
        Over long-polling, the next GET taking the queue makes room.
        """
        session = self.pollingSession()
        session.sendMany([messageFrame(b"x" * 99) for _ in range(3)])
        writable = session.whenWritable()
        self.assertNoResult(writable)
        poll = FakePoll()
        session.pollArrived(poll)
        self.assertTrue(poll.answered)
        self.assertIs(self.successResultOf(writable), True)

    def test_pollingHeldGet(self) -> None:
        """
        A GET held when the queue fills answers at the end of the turn,
        and the waiter fires then.
        """
        session = self.pollingSession()
        poll = FakePoll()
        session.pollArrived(poll)
        session.sendMany([messageFrame(b"x" * 99) for _ in range(3)])
        writable = session.whenWritable()
        self.assertNoResult(writable)
        self.clock.advance(0)
        self.assertTrue(poll.answered)
        self.assertIs(self.successResultOf(writable), True)

    def test_closed(self) -> None:
        """
        A session that closes while a writer waits tells it C{False}; a
        closed one says C{False} at once.
        """
        session, channel = self.webSocketSession()
        session.pauseWriting()
        session.sendMany([messageFrame(b"x" * 99) for _ in range(3)])
        writable = session.whenWritable()
        session.close()
        self.assertIs(self.successResultOf(writable), False)
        self.assertIs(self.successResultOf(session.whenWritable()), False)

    def test_closedByOverflow(self) -> None:
        """
        A writer that did not wait and passed the bound closed the session:
        its waiter hears C{False}.
        """
        session = self.pollingSession()
        session.sendMany([messageFrame(b"x" * 99) for _ in range(3)])
        writable = session.whenWritable()
        session.sendMany([messageFrame(b"x" * 99) for _ in range(8)])
        self.assertEqual(self.app.closed, [(session, "transport error")])
        self.assertIs(self.successResultOf(writable), False)


class CheckRequestTests(EngineTestMixin, SynchronousTestCase):
    """
    L{EngineIOServer.checkRequest}: the request refusals of the official
    server.
    """

    def check(self, query: dict[str, str], method: bytes = b"GET", isWebSocket: bool = False,
              origin: str | None = None) -> Any:
        """
        Call checkRequest with C{EIO=4} unless C{query} says otherwise.
        """
        return self.server.checkRequest(method, query, isWebSocket, origin)

    def assertRefused(self, error: tuple[int, int], query: dict[str, str], **kwargs: Any) -> None:
        """
        The request is refused with C{(status, code)}.
        """
        with self.assertRaises(EngineIOError) as context:
            self.check(query, **kwargs)
        self.assertEqual((context.exception.status, context.exception.code), error, query)

    def test_noHandshakeWhileStopping(self) -> None:
        """
        Once the server is stopping, a handshake is refused with 503, while
        a closed polling session can still collect its last packets.
        """
        session = self.pollingSession()
        session.send(messageFrame(b"bye"))
        self.server.stop()
        error = self.assertRaises(
            EngineIOError,
            self.server.checkRequest,
            b"GET",
            {"EIO": "4", "transport": "polling"},
            False,
            None,
        )
        self.assertEqual(error.status, 503)
        _, found = self.server.checkRequest(
            b"GET", {"EIO": "4", "transport": "polling", "sid": session.sid}, False, None
        )
        self.assertIs(found, session)

    def test_table(self) -> None:
        """
        Each bad request gets the official status and code.
        """
        polling = self.pollingSession()
        upgraded = self.pollingSession()
        channel = FakeChannel()
        upgraded.startUpgrade(channel)
        upgraded.upgradePacketReceived(channel, packet.UPGRADE, b"")
        upgrading = self.pollingSession()
        upgrading.startUpgrade(FakeChannel())
        direct, _ = self.webSocketSession()
        P = {"EIO": "4", "transport": "polling"}
        W = {"EIO": "4", "transport": "websocket"}
        table: list[tuple[tuple[int, int], dict[str, str], dict[str, Any]]] = [
            ((400, 5), {"transport": "polling"}, {}),
            ((400, 5), {"EIO": "3", "transport": "polling"}, {}),
            ((400, 5), {"EIO": "5", "transport": "polling"}, {}),
            ((400, 5), {"EIO": "", "transport": "polling"}, {}),
            ((400, 0), {"EIO": "4"}, {}),
            ((400, 0), {"EIO": "4", "transport": "flashsocket"}, {}),
            ((400, 1), dict(P, sid="nope"), {}),
            ((400, 1), dict(W, sid="nope"), {"isWebSocket": True}),
            ((400, 2), P, {"method": b"POST"}),
            ((400, 3), W, {}),
            ((400, 3), dict(W, sid=polling.sid), {}),
            ((400, 3), dict(P, sid=upgraded.sid), {}),
            ((400, 3), dict(P, sid=direct.sid), {}),
            ((400, 3), P, {"origin": "http://a\r\nSet-Cookie: x"}),
            ((400, 3), P, {"origin": "http://\x00"}),
            ((400, 3), P, {"origin": "http://\u00e9"}),
        ]
        for error, query, kwargs in table:
            with self.subTest(query=query, **kwargs):
                self.assertRefused(error, query, **kwargs)

    def test_accepted(self) -> None:
        """
        Valid requests give the transport and the session (C{None} for a
        handshake).
        """
        polling = self.pollingSession()
        P = {"EIO": "4", "transport": "polling"}
        W = {"EIO": "4", "transport": "websocket"}
        self.assertEqual(self.check(P), ("polling", None))
        self.assertEqual(self.check(W, isWebSocket=True), ("websocket", None))
        self.assertEqual(self.check(dict(P, sid=polling.sid)), ("polling", polling))
        self.assertEqual(self.check(dict(P, sid=polling.sid), method=b"POST"), ("polling", polling))
        self.assertEqual(self.check(dict(W, sid=polling.sid), isWebSocket=True), ("websocket", polling))
        self.assertEqual(self.check(P, origin="https://crm.example:8443"), ("polling", None))

    def test_webSocketForSessionOnWebSocket(self) -> None:
        """
        A WebSocket naming a session already upgraded, being upgraded, or
        opened over WebSocket passes the request check (its handshake
        completes, as with the official server) and is then refused by the
        session: the WebSocket glue closes it.
        """
        upgraded = self.pollingSession()
        channel = FakeChannel()
        upgraded.startUpgrade(channel)
        upgraded.upgradePacketReceived(channel, packet.UPGRADE, b"")
        upgrading = self.pollingSession()
        upgrading.startUpgrade(FakeChannel())
        direct, _ = self.webSocketSession()
        W = {"EIO": "4", "transport": "websocket"}
        for session in [upgraded, upgrading, direct]:
            self.assertEqual(self.check(dict(W, sid=session.sid), isWebSocket=True), ("websocket", session))
            self.assertFalse(session.startUpgrade(FakeChannel()))
            self.assertEqual(session.state, OPEN)

    def test_maxSessions(self) -> None:
        """
        Handshakes past maxSessions get 503; requests of existing sessions
        still pass.
        """
        self.server.config = EngineIOConfig(maxSessions=2)
        first = self.pollingSession()
        self.pollingSession()
        self.assertRefused((503, 3), {"EIO": "4", "transport": "polling"})
        self.assertEqual(self.check({"EIO": "4", "transport": "polling", "sid": first.sid})[1], first)

    def test_disabledTransport(self) -> None:
        """
        A transport that is not configured is unknown.
        """
        self.server.config = EngineIOConfig(transports=("websocket",))
        self.assertRefused((400, 0), {"EIO": "4", "transport": "polling"})

    def test_webSocketOrigin(self) -> None:
        """
        With checkWebSocketOrigin, a WebSocket from an origin not in
        corsOrigins is forbidden; one with no Origin (a native client) is
        let through.
        """
        self.server.config = EngineIOConfig(corsOrigins=("https://ok.example",), checkWebSocketOrigin=True)
        W = {"EIO": "4", "transport": "websocket"}
        self.assertRefused((403, 4), W, isWebSocket=True, origin="https://evil.example")
        self.assertEqual(self.check(W, isWebSocket=True, origin="https://ok.example")[0], "websocket")
        self.assertEqual(self.check(W, isWebSocket=True)[0], "websocket")

    def test_errorBody(self) -> None:
        """
        An L{EngineIOError}'s body is the official JSON.
        """
        with self.assertRaises(EngineIOError) as context:
            self.check({"EIO": "4", "transport": "x"})
        self.assertEqual(loads(context.exception.body()), {"code": 0, "message": "Transport unknown"})
