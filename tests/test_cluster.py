"""
Unit tests of the cluster's decisions on a L{Clock}: the Redis link's
backoff and address parsing, cluster presence (no flap, a dead node's
users leave after the settling delay), targeted routing, and the
WebSocket upgrade of another node's session spliced to that node
(L{crm_im.cluster.forward}, L{crm_im.cluster.splice}) over string
transports and a L{MemoryReactorClock}.
"""

from __future__ import annotations

from typing import Any

import msgpack
from twisted.internet import ssl
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport, StringTransportWithDisconnection
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.test import iosim
from twisted.trial.unittest import TestCase
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Site

from crm_im.cluster.connection import RedisAddress, backoffDelay
from crm_im.cluster.forward import ForwardingResource
from crm_im.cluster.node import nodeTag, tagOfSid
from crm_im.cluster.presence import ClusterPresence, DeviceRecord
from crm_im.cluster.splice import CONNECT_TIMEOUT
from crm_im.routing.local import LocalRouter
from crm_im.routing.order import ConversationOrder
from crm_im.routing.redis import TO_USERS, RedisRouter


class _Socket:
    def __init__(self) -> None:
        self.frames: list[Any] = []

    def sendFrames(self, frames: Any) -> None:
        self.frames.append(frames)


class LinkTests(TestCase):
    def test_backoff(self) -> None:
        """
        The delay doubles from the start up to the cap, jittered between
        half and all of it.
        """
        self.assertEqual(backoffDelay(1, 0.2, 5.0, rand=1.0), 0.2)
        self.assertEqual(backoffDelay(3, 0.2, 5.0, rand=1.0), 0.8)
        self.assertEqual(backoffDelay(30, 0.2, 5.0, rand=1.0), 5.0)
        self.assertEqual(backoffDelay(30, 0.2, 5.0, rand=0.0), 2.5)

    def commands(self) -> tuple[Any, Clock, Any, list[Any]]:
        """
        The link's command protocol on a L{Clock}, connected to a string
        transport; and what it reported lost.
        """
        from twisted.internet.testing import StringTransport

        from crm_im.cluster.connection import _Commands

        clock = Clock()
        lost: list[Any] = []

        class _Link:
            replyTimeout = 5.0

            def __init__(self) -> None:
                self.clock = clock

            def _lost(self, protocol: Any, why: Any) -> None:
                lost.append(why)

        protocol = _Commands(_Link())  # type: ignore[arg-type]
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, clock, transport, lost

    def test_replyAfterStall(self) -> None:
        """
        A reply that waited in the socket while the reactor was busy past
        the reply timeout is still taken: the expired timer looks again
        after the reactor has read, instead of dropping the link.
        """
        from crm_im.cluster.connection import SECOND_LOOK

        protocol, clock, transport, lost = self.commands()
        d = protocol.execute_command("PING")
        self.assertEqual(transport.value(), b"*1\r\n$4\r\nPING\r\n")
        clock.advance(5.0)
        protocol.dataReceived(b"+PONG\r\n")
        clock.advance(SECOND_LOOK)
        self.assertEqual(self.successResultOf(d), "PONG")
        self.assertFalse(transport.disconnecting)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_replyAfterLongTurns(self) -> None:
        """
        A reply timer that fires late (the reactor was busy for seconds,
        not waiting) starts over instead of dropping the link, a bounded
        number of times; then a missing reply is a timeout after all.
        """
        import txredisapi

        from crm_im.cluster.connection import LATE, MAX_RESTARTS, SECOND_LOOK

        protocol, clock, transport, lost = self.commands()
        d = protocol.execute_command("PING")
        clock.advance(5.0 + LATE)
        clock.advance(SECOND_LOOK)
        self.assertNoResult(d)
        protocol.dataReceived(b"+PONG\r\n")
        self.assertEqual(self.successResultOf(d), "PONG")
        self.assertEqual(clock.getDelayedCalls(), [])
        d = protocol.execute_command("PING")
        for _ in range(MAX_RESTARTS):
            clock.advance(5.0 + LATE)
            self.assertNoResult(d)
        clock.advance(5.0 + LATE)
        clock.advance(SECOND_LOOK)
        self.failureResultOf(d, txredisapi.TimeoutError)
        self.assertTrue(transport.disconnecting)

    def test_replyBehindMessages(self) -> None:
        """
        A reply timer on a connection that keeps receiving bytes (the
        subscriber's PONG behind a flood of published messages this
        process is still working through) starts over instead of dropping
        the link.
        """
        from crm_im.cluster.connection import SECOND_LOOK

        protocol, clock, transport, lost = self.commands()
        d = protocol.execute_command("PING")
        clock.advance(4.0)
        protocol.dataReceived(b"")
        clock.advance(1.0)
        clock.advance(SECOND_LOOK)
        self.assertNoResult(d)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b"+PONG\r\n")
        self.assertEqual(self.successResultOf(d), "PONG")

    def test_replyLost(self) -> None:
        """
        A reply that has not come a moment after the timeout is lost: the
        command fails and the connection is dropped (the link makes it
        again).
        """
        import txredisapi

        from crm_im.cluster.connection import SECOND_LOOK

        protocol, clock, transport, lost = self.commands()
        d = protocol.execute_command("PING")
        clock.advance(5.0)
        self.assertNoResult(d)
        clock.advance(SECOND_LOOK)
        self.failureResultOf(d, txredisapi.TimeoutError)
        self.assertTrue(transport.disconnecting)

    def connecting(self) -> tuple[Any, list[tuple[Any, Deferred[Any]]], list[tuple[Any, ...]]]:
        """
        A started link whose two connections are being made (the test
        completes them), subscribed to C{chan}; and what it heard.
        """
        from crm_im.cluster.connection import RedisLink

        pending: list[tuple[Any, Deferred[Any]]] = []

        def connect(protocol: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append((protocol, d))
            return d

        heard: list[tuple[Any, ...]] = []
        link = RedisLink(Clock(), RedisAddress.parse("redis://127.0.0.1:6379/0"), lambda *a: heard.append(a), connect=connect)
        link.subscribe(b"chan")
        link.start()
        return link, pending, heard

    def test_connectedAfterStop(self) -> None:
        """
        Connections that are made after the link was stopped are closed at
        once, subscribe to nothing and report nothing: a stopped node no
        longer hears the cluster.
        """
        link, pending, heard = self.connecting()
        self.assertTrue(link.stop().called)
        transports = []
        for protocol, d in pending:
            transport = StringTransport()
            protocol.makeConnection(transport)
            transports.append(transport)
            d.callback(protocol)
        self.assertEqual([transport.disconnecting for transport in transports], [True, True])
        self.assertNotIn(b"SUBSCRIBE", transports[1].value())
        pending[1][0].messageReceived(None, b"chan", b"hello")
        self.assertEqual(heard, [])
        self.assertFalse(link.up)

    def test_otherConnectionFailed(self) -> None:
        """
        When one connection fails while the other is being made, the other
        is closed once it is made and reports nothing.
        """
        link, pending, heard = self.connecting()
        (commands, commandsMade), (subscriber, subscriberMade) = pending
        commandsMade.errback(ConnectionRefusedError())
        transport = StringTransport()
        subscriber.makeConnection(transport)
        subscriberMade.callback(subscriber)
        self.assertTrue(transport.disconnecting)
        subscriber.messageReceived(None, b"chan", b"hello")
        self.assertEqual(heard, [])
        link.stop()

    def test_quietAttempts(self) -> None:
        """
        A connection attempt to a Redis that is down logs nothing of its
        own (Twisted's factories log "Starting factory" and "Stopping
        factory" for each of the link's two connections at every attempt:
        four lines every few seconds while Redis is down).
        """
        from twisted.logger import globalLogPublisher

        from crm_im.cluster.connection import RedisLink

        reactor = MemoryReactorClock()
        link = RedisLink(reactor, RedisAddress.parse("redis://127.0.0.1:6379/0"), lambda *a: None)
        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        link.start()
        self.assertEqual(len(reactor.tcpClients), 2)
        for host, port, factory, timeout, bindAddress in reactor.tcpClients:
            self.assertEqual((host, port), ("127.0.0.1", 6379))
            # as a connector does for a refused attempt
            factory.doStart()
            factory.clientConnectionFailed(reactor.connectors[0], Failure(ConnectionRefusedError()))
            factory.doStop()
        self.assertEqual([event.get("log_format") for event in logged if "factory" in str(event.get("log_format"))], [])
        self.assertFalse(link.up)
        link.stop()

    def test_address(self) -> None:
        """
        redis:// URLs give host, port, database and password; others are
        refused.
        """
        a = RedisAddress.parse("redis://:s%40cret@example:6380/2")
        self.assertEqual((a.host, a.port, a.db, a.password), ("example", 6380, 2, "s@cret"))
        self.assertNotIn("cret", repr(a))
        self.assertRaises(ValueError, RedisAddress.parse, "http://x")

    def test_sidTag(self) -> None:
        """
        An Engine.IO sid names its node by tag.
        """
        self.assertEqual(tagOfSid("abc." + nodeTag("n1")), nodeTag("n1"))
        self.assertIsNone(tagOfSid("abc"))


class PresenceTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.left: list[str] = []
        self.presence = ClusterPresence(self.clock, "A", settle=1.0, userLeft=lambda u: self.left.append(u.id))
        self.presence.start()
        self.addCleanup(self.presence.stop)

    def test_noFlapAcrossNodes(self) -> None:
        """
        A phone on A goes and a PC on B logs in half a second later: the
        user never leaves.
        """
        self.presence.login("u", "phone", "U", None)
        self.presence.logout("phone")
        self.clock.advance(0.5)
        self.presence.remoteLogin("B", "pc", DeviceRecord("u", "U", None, "online"), announce=False)
        self.clock.advance(5)
        self.assertEqual(self.left, [])
        self.assertEqual(self.presence.nodesOf("u"), {"B": ["pc"]})

    def test_deadNode(self) -> None:
        """
        A dead node's devices are dropped; its users leave after the
        settling delay, not before.
        """
        self.presence.remoteLogin("B", "d1", DeviceRecord("u", "U", None, "online"))
        self.presence.replaceNode("B", {})
        self.clock.advance(0.5)
        self.assertEqual(self.left, [])
        self.clock.advance(1)
        self.assertEqual(self.left, ["u"])

    def test_recoveryHoldAcrossNodes(self) -> None:
        """
        A socket of B that may be recovered (its connection cut) holds its
        user online here as on B, until the hold ends; not only for the
        settling delay.
        """
        self.presence.remoteLogin("B", "d1", DeviceRecord("u", "U", None, "online"))
        self.presence.remoteLogout("B", "d1", hold=30.0)
        self.clock.advance(29)
        self.assertEqual(self.left, [])
        self.assertIsNotNone(self.presence.user("u"))
        self.clock.advance(2)
        self.assertEqual(self.left, ["u"])

    def test_unreachablePeers(self) -> None:
        """
        While Redis is down only this node's devices count.
        """
        self.presence.login("u", "a1", "U", None)
        self.presence.remoteLogin("B", "b1", DeviceRecord("u", "U", None, "online"))
        self.presence.peersReachable = False
        self.assertEqual(self.presence.devicesOf("u"), {"a1"})
        self.assertEqual(list(self.presence.allDevices()), ["a1"])

    def test_deviceCountLocal(self) -> None:
        """
        The device count is of this node's devices, those L{allDevices}
        gives, whatever other nodes hold.
        """
        self.presence.login("u", "a1", "U", None)
        self.presence.remoteLogin("B", "b1", DeviceRecord("u", "U", None, "online"))
        self.presence.remoteLogin("B", "b2", DeviceRecord("v", "V", None, "online"))
        self.assertEqual(self.presence.deviceCount(), 1)
        self.assertEqual(len(list(self.presence.allDevices())), self.presence.deviceCount())


class RouterTests(TestCase):
    def test_targeted(self) -> None:
        """
        A message to users on two other nodes is published once to each of
        those nodes, never to a node without recipients; local devices are
        written at once.
        """
        presence = ClusterPresence(Clock(), "A")
        sockets = {"a1": _Socket()}
        presence.login("x", "a1", "X", None)
        presence.remoteLogin("B", "b1", DeviceRecord("x", "X", None, "online"))
        presence.remoteLogin("B", "b2", DeviceRecord("y", "Y", None, "online"))
        presence.remoteLogin("C", "c1", DeviceRecord("y", "Y", None, "online"))
        presence.remoteLogin("D", "d1", DeviceRecord("z", "Z", None, "online"))
        sent: list[tuple[str, bytes]] = []
        router = RedisRouter(
            LocalRouter(sockets, presence, Clock()), presence, sockets, lambda n, m: sent.append((n, m)), ConversationOrder(Clock())
        )
        count = router.toUsers(["x", "y"], "message", {"k": 1})
        self.assertEqual(count, 4)
        self.assertEqual(len(sockets["a1"].frames), 1)
        self.assertEqual(sorted(n for n, _ in sent), ["B", "C"])
        kind, targets, _, _ = msgpack.unpackb(dict(sent)["B"])
        self.assertEqual((kind, sorted(targets)), (TO_USERS, ["x", "y"]))


class _Inner(Resource):
    """
    This node's own Engine.IO endpoint: records what reaches it.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.uris: list[bytes] = []

    def render(self, request: IRequest) -> bytes:
        self.uris.append(request.uri)
        return b"inner"


#: A session of node n2, as its sid says.
_SID = "abc." + nodeTag("n2")
_UPGRADE = (
    b"GET /socket.io/?EIO=4&transport=websocket&sid=" + _SID.encode() + b" HTTP/1.1\r\n"
    b"Host: balancer.example:8080\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Cookie: a=1\r\n"
    b"Cookie: b=2\r\n"
)


class UpgradeSpliceTests(TestCase):
    """
    A WebSocket upgrade for a session of another live node is spliced to
    that node's internal address: the client's connection taken from
    twisted.web, the request head replayed with the forwarding mark, then
    bytes copied both ways.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.inner = _Inner()
        self.resource = ForwardingResource(
            self.inner,
            self.reactor,
            isLocal=lambda sid: sid == "mine." + nodeTag("n1"),
            myTag=nodeTag("n1"),
            addressOf={nodeTag("n2"): "http://10.0.0.2:8081"}.get,
        )
        self.site = Site(self.resource, timeout=60, reactor=self.reactor)
        address = IPv4Address("TCP", "192.0.2.7", 40000)
        self.client = StringTransportWithDisconnection(peerAddress=address)
        protocol = self.site.buildProtocol(address)
        # As a real TCP transport, the transport knows its protocol: the
        # splice swaps it when it takes the connection over.
        self.client.protocol = protocol
        self.httpProtocol = protocol
        protocol.makeConnection(self.client)

    def ownerConnects(self) -> StringTransportWithDisconnection:
        """
        The connection attempt to the owner succeeds; the owner's end.
        """
        host, port, factory, timeout, _ = self.reactor.tcpClients[-1]
        self.assertEqual((host, port, timeout), ("10.0.0.2", 8081, CONNECT_TIMEOUT))
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert protocol is not None
        owner = StringTransportWithDisconnection()
        owner.protocol = protocol
        protocol.makeConnection(owner)
        return owner

    def splice(self) -> StringTransportWithDisconnection:
        """
        Send the upgrade and let the owner be reached; the owner's end,
        with what it received so far cleared.
        """
        self.client.protocol.dataReceived(_UPGRADE + b"\r\n")
        owner = self.ownerConnects()
        owner.clear()
        return owner

    def test_headReplayed(self) -> None:
        """
        The owner receives the request line with the original URI, every
        header the client sent (each value of a repeated one) and
        C{X-CRM-IM-Forwarded: 1}; nothing is answered to the client by
        this node, and nothing reaches this node's own endpoint.
        """
        self.client.protocol.dataReceived(_UPGRADE + b"\r\n")
        self.assertEqual(self.reactor.tcpClients[0][:2], ("10.0.0.2", 8081))
        owner = self.ownerConnects()
        head, separator, rest = owner.value().partition(b"\r\n\r\n")
        self.assertEqual((separator, rest), (b"\r\n\r\n", b""))
        requestLine, *lines = head.split(b"\r\n")
        self.assertEqual(requestLine, _UPGRADE.split(b"\r\n")[0])
        sent = sorted(tuple(line.split(b": ", 1)) for line in _UPGRADE.rstrip(b"\r\n").split(b"\r\n")[1:])
        self.assertEqual(
            sorted((name.lower(), value) for name, value in (line.split(b": ", 1) for line in lines)),
            sorted([(name.lower(), value) for name, value in sent] + [(b"x-crm-im-forwarded", b"1")]),
        )
        self.assertEqual(self.client.value(), b"")
        self.assertEqual(self.inner.uris, [])
        self.assertEqual((self.resource.spliced, self.resource.forwarded, len(self.resource.splices)), (1, 0, 1))

    def test_earlyBytes(self) -> None:
        """
        Bytes the client sent after the head, before the owner was reached
        (kept by the HTTP channel as the start of a next request), follow
        the head to the owner.
        """
        self.client.protocol.dataReceived(_UPGRADE + b"\r\nearly")
        self.client.protocol.dataReceived(b" bytes")
        owner = self.ownerConnects()
        self.assertTrue(owner.value().endswith(b"\r\n\r\nearly bytes"), owner.value())

    def test_bytesBothWays(self) -> None:
        """
        Once spliced, what the client sends reaches the owner and what the
        owner sends reaches the client, byte for byte; each side is the
        other's producer (a full write buffer on one stops reading on the
        other), and the HTTP channel's idle timeout no longer applies.
        """
        owner = self.splice()
        self.assertIsNot(self.client.protocol, self.httpProtocol)
        answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x063probe"
        owner.protocol.dataReceived(answer)
        self.assertEqual(self.client.value(), answer)
        frame = b"\x81\x86abcd" + bytes(c ^ k for c, k in zip(b"2probe", b"abcdab"))
        self.client.protocol.dataReceived(frame[:3])
        self.client.protocol.dataReceived(frame[3:])
        self.assertEqual(owner.value(), frame)
        self.assertIs(self.client.producer, owner)
        self.assertIs(owner.producer, self.client)
        self.assertTrue(self.client.streaming and owner.streaming)
        self.reactor.advance(3600)
        self.assertTrue(self.client.connected and owner.connected)

    def test_ownerCloses(self) -> None:
        """
        The owner closing its end closes the client's; the splice is over.
        """
        owner = self.splice()
        owner.loseConnection()
        self.assertFalse(self.client.connected)
        self.assertEqual(self.resource.splices, set())

    def test_clientCloses(self) -> None:
        """
        The client closing its end closes the owner's; the splice is over.
        """
        owner = self.splice()
        self.client.loseConnection()
        self.assertFalse(owner.connected)
        self.assertEqual(self.resource.splices, set())

    def test_unreachable(self) -> None:
        """
        An owner that refuses the connection gets the client Engine.IO's
        "Session ID unknown" (502) from this node, over the HTTP channel.
        """
        self.client.protocol.dataReceived(_UPGRADE + b"\r\n")
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(self.reactor.connectors[-1], Failure(ConnectionRefusedError()))
        self.assertTrue(self.client.value().startswith(b"HTTP/1.1 502 "), self.client.value())
        self.assertIn(b'{"code":1,"message":"Session ID unknown"}', self.client.value())
        self.assertIs(self.client.protocol, self.httpProtocol)
        self.assertEqual(self.resource.splices, set())

    def test_badAddress(self) -> None:
        """
        An owner registered with an address that is not C{http://host:port}
        gets the client the same 502, and nothing is connected.
        """
        self.resource.addressOf = lambda tag: "http://10.0.0.2:99999"
        self.client.protocol.dataReceived(_UPGRADE + b"\r\n")
        self.assertTrue(self.client.value().startswith(b"HTTP/1.1 502 "), self.client.value())
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.resource.splices, set())

    def test_clientGoneWhileConnecting(self) -> None:
        """
        A client gone before the owner answers cancels the attempt.
        """
        self.client.protocol.dataReceived(_UPGRADE + b"\r\n")
        self.client.loseConnection()
        self.assertTrue(self.reactor.connectors[-1].stoppedConnecting)
        self.assertEqual(self.resource.splices, set())

    def test_stopping(self) -> None:
        """
        A node stopping drops the connections it splices.
        """
        owner = self.splice()
        self.resource.close()
        self.assertFalse(self.client.connected or owner.connected)
        self.assertEqual(self.resource.splices, set())

    def test_notSpliced(self) -> None:
        """
        This node's own sessions, requests forwarded already, and upgrades
        to anything but WebSocket are served by this node's endpoint.
        """
        for head in [
            _UPGRADE.replace(_SID.encode(), b"mine." + nodeTag("n1").encode()),
            _UPGRADE + b"X-CRM-IM-Forwarded: 1\r\n",
            _UPGRADE.replace(b"Upgrade: websocket", b"Upgrade: h2c"),
            _UPGRADE.replace(_SID.encode(), b"abc." + nodeTag("n3").encode()),
        ]:
            self.client.clear()
            self.client.protocol.dataReceived(head + b"\r\n")
            self.assertTrue(self.client.value().endswith(b"inner"), self.client.value())
        self.assertEqual(len(self.inner.uris), 4)
        self.assertEqual(self.reactor.tcpClients, [])


class _TLSClient(Protocol):
    """
    A client over TLS: records what it receives, decrypted, and whether
    its connection is gone.
    """

    lost = False

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True


class UpgradeSpliceTLSTests(TestCase):
    """
    The splice of a node listening with TLS: the client's connection is a
    TLS wrapper around TCP, and the splice takes over what the wrapper
    decrypts (as Autobahn does) and reads from the connection under it.
    """

    def test_tls(self) -> None:
        """
        Over TLS, the head reaches the owner decrypted, bytes flow both
        ways through the splice, and the owner closing closes the client.
        """
        reactor = MemoryReactorClock()
        resource = ForwardingResource(
            _Inner(), reactor, lambda sid: False, nodeTag("n1"), {nodeTag("n2"): "http://10.0.0.2:8081"}.get
        )
        pem = FilePath(iosim.__file__).sibling("server.pem").getContent()
        site = TLSMemoryBIOFactory(
            ssl.PrivateCertificate.loadPEM(pem).options(), False, Site(resource, timeout=60, reactor=reactor), reactor
        )
        client = _TLSClient()
        clientFactory = TLSMemoryBIOFactory(
            ssl.CertificateOptions(verify=False), True, ClientFactory.forProtocol(lambda: client), reactor
        )
        address = IPv4Address("TCP", "192.0.2.7", 40000)
        serverTLS = site.buildProtocol(address)
        clientTLS = clientFactory.buildProtocol(address)
        pump = iosim.connect(
            serverTLS, iosim.makeFakeServer(serverTLS), clientTLS, iosim.makeFakeClient(clientTLS), clock=reactor
        )
        assert client.transport is not None
        client.transport.write(_UPGRADE + b"\r\n")
        pump.flush()
        host, port, factory, _, _ = reactor.tcpClients[-1]
        ownerProtocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert ownerProtocol is not None
        owner = StringTransportWithDisconnection()
        owner.protocol = ownerProtocol
        ownerProtocol.makeConnection(owner)
        self.assertTrue(owner.value().startswith(_UPGRADE.split(b"\r\n")[0] + b"\r\n"), owner.value())
        owner.clear()
        ownerProtocol.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\n\r\nfrom owner")
        pump.flush()
        self.assertEqual(client.received, b"HTTP/1.1 101 Switching Protocols\r\n\r\nfrom owner")
        client.transport.write(b"from client")
        pump.flush()
        self.assertEqual(owner.value(), b"from client")
        self.assertFalse(client.lost)
        owner.loseConnection()
        pump.flush()
        self.assertTrue(client.lost)
