"""
Tests for L{crm_im.engineio.turnwriter}.
"""

from __future__ import annotations

import errno

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from crm_im.engineio.turnwriter import TurnWriter, directlyWritable


class FakeSocket:
    """
    A non-blocking socket that takes at most C{room} bytes per C{send}, or
    raises C{error}.
    """

    def __init__(self, room: int = 1 << 20, error: OSError | None = None) -> None:
        self.room = room
        self.error = error
        self.sends: list[bytes] = []

    def send(self, data: bytes) -> int:
        if self.error is not None:
            raise self.error
        taken = bytes(data[: self.room])
        self.sends.append(taken)
        return len(taken)


class FakeTCPTransport:
    """
    The parts of L{twisted.internet.tcp.Connection} the writer looks at:
    its socket and its own buffer.
    """

    def __init__(self, socket: FakeSocket) -> None:
        self.socket = socket
        self.dataBuffer = b""
        self._tempDataBuffer: list[bytes] = []
        self.connected = True
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        if self.connected:
            self._tempDataBuffer.append(data)


def isFake(transport: object) -> bool:
    return isinstance(transport, FakeTCPTransport)


class TurnWriterTests(SynchronousTestCase):
    """
    L{TurnWriter} gathers a turn's writes per connection and sends them
    with one C{send()} when the turn ends.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.writer = TurnWriter(self.clock, isFake)

    def test_gatheredUntilTurnEnds(self) -> None:
        """
        Nothing is sent during the turn; at its end each connection's
        writes go out joined, in order, with one C{send()}.
        """
        a, b = FakeTCPTransport(FakeSocket()), FakeTCPTransport(FakeSocket())
        self.writer.write(a, b"1")
        self.writer.write(b, b"x")
        self.writer.write(a, b"2")
        self.writer.write(a, b"3")
        self.assertEqual((a.socket.sends, b.socket.sends), ([], []))
        self.assertEqual(self.writer.pendingConnections, 2)
        self.clock.advance(0)
        self.assertEqual(a.socket.sends, [b"123"])
        self.assertEqual(b.socket.sends, [b"x"])
        self.assertEqual((a._tempDataBuffer, b._tempDataBuffer), ([], []))
        self.assertEqual(self.writer.pendingConnections, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_restToTransportBuffer(self) -> None:
        """
        What the kernel does not take goes to the transport's own buffer,
        where Twisted's polling and back-pressure take over.
        """
        transport = FakeTCPTransport(FakeSocket(room=3))
        self.writer.write(transport, b"hello")
        self.clock.advance(0)
        self.assertEqual(transport.socket.sends, [b"hel"])
        self.assertEqual(transport._tempDataBuffer, [b"lo"])

    def test_wouldBlock(self) -> None:
        """
        A full socket buffer (C{EWOULDBLOCK}) sends everything through the
        transport.
        """
        transport = FakeTCPTransport(FakeSocket(error=BlockingIOError(errno.EWOULDBLOCK, "full")))
        self.writer.write(transport, b"hello")
        self.clock.advance(0)
        self.assertEqual(transport._tempDataBuffer, [b"hello"])

    def test_socketErrorLeftToTwisted(self) -> None:
        """
        Any other socket error hands the bytes to the transport, whose next
        write attempt meets the error and closes the connection.
        """
        transport = FakeTCPTransport(FakeSocket(error=ConnectionResetError(errno.ECONNRESET, "reset")))
        self.writer.write(transport, b"hello")
        self.clock.advance(0)
        self.assertEqual(transport._tempDataBuffer, [b"hello"])

    def test_behindBufferedBytes(self) -> None:
        """
        While the transport still buffers bytes, new ones queue behind
        them instead of overtaking them on the socket.
        """
        transport = FakeTCPTransport(FakeSocket())
        transport._tempDataBuffer.append(b"old")
        self.writer.write(transport, b"new")
        self.clock.advance(0)
        self.assertEqual(transport.socket.sends, [])
        self.assertEqual(transport._tempDataBuffer, [b"old", b"new"])
        other = FakeTCPTransport(FakeSocket())
        other.dataBuffer = b"partly sent"
        self.writer.write(other, b"new")
        self.clock.advance(0)
        self.assertEqual(other.socket.sends, [])

    def test_closingOrClosed(self) -> None:
        """
        A connection that is closing gets the bytes through its buffer
        (sent before it closes); a closed one drops them.
        """
        closing = FakeTCPTransport(FakeSocket())
        closing.disconnecting = True
        closed = FakeTCPTransport(FakeSocket())
        self.writer.write(closing, b"last")
        self.writer.write(closed, b"lost")
        closed.connected = False
        self.clock.advance(0)
        self.assertEqual((closing.socket.sends, closing._tempDataBuffer), ([], [b"last"]))
        self.assertEqual((closed.socket.sends, closed._tempDataBuffer), ([], []))

    def test_largeWriteBuffered(self) -> None:
        """
        A turn's bytes beyond C{sendLimit} go through the transport's
        buffer, as Twisted sends at most that much at a time.
        """
        self.writer.sendLimit = 4
        transport = FakeTCPTransport(FakeSocket())
        self.writer.write(transport, b"12345")
        self.clock.advance(0)
        self.assertEqual(transport._tempDataBuffer, [b"12345"])

    def test_flushSizeKeepsBackPressure(self) -> None:
        """
        Once a turn has gathered C{flushSize} bytes for a connection they
        are sent at once: a connection that does not read fills the
        kernel's buffer and then the transport's, whose producer pauses the
        session, instead of gathering the whole turn's output.
        """
        self.writer.flushSize = 10
        transport = FakeTCPTransport(FakeSocket(room=12))
        for chunk in (b"aaaa", b"bbbb"):
            self.writer.write(transport, chunk)
        self.assertEqual(transport.socket.sends, [])
        self.writer.write(transport, b"cccc")
        self.assertEqual(transport.socket.sends, [b"aaaabbbbcccc"])
        self.writer.write(transport, b"dd")
        self.writer.write(transport, b"x" * 10)
        self.assertEqual(transport.socket.sends, [b"aaaabbbbcccc", b"ddxxxxxxxxxx"])
        self.writer.write(transport, b"y" * 10)
        # A first write of flushSize bytes goes at once too; the socket
        # is full now (room 12 per send in this fake), the rest buffers.
        self.assertEqual(transport.socket.sends[-1], b"y" * 10)
        self.clock.advance(0)
        self.assertEqual(len(transport.socket.sends), 3)

    def test_flushNow(self) -> None:
        """
        C{flush} sends what waits for one connection at once (before another
        writer uses its transport); the end of the turn sends the rest.
        """
        a, b = FakeTCPTransport(FakeSocket()), FakeTCPTransport(FakeSocket())
        self.writer.write(a, b"1")
        self.writer.write(b, b"x")
        self.writer.flush(a)
        self.assertEqual(a.socket.sends, [b"1"])
        self.assertEqual(b.socket.sends, [])
        self.clock.advance(0)
        self.assertEqual(a.socket.sends, [b"1"])
        self.assertEqual(b.socket.sends, [b"x"])

    def test_discard(self) -> None:
        """
        C{discard} forgets what waits for a connection that is gone.
        """
        transport = FakeTCPTransport(FakeSocket())
        self.writer.write(transport, b"1")
        self.writer.discard(transport)
        self.clock.advance(0)
        self.assertEqual(transport.socket.sends, [])

    def test_otherTransportsWrittenAtOnce(self) -> None:
        """
        Transports that are not plain TCP (TLS, test transports) are
        written through C{transport.write} at once, as without the writer.
        """
        transport = StringTransport()
        TurnWriter(self.clock).write(transport, b"now")
        self.assertEqual(transport.value(), b"now")
        self.assertEqual(self.clock.getDelayedCalls(), [])


class DirectlyWritableTests(TestCase):
    """
    L{directlyWritable} picks plain TCP connections only.
    """

    def test_stringTransport(self) -> None:
        """
        A test transport is not written directly.
        """
        self.assertFalse(directlyWritable(StringTransport()))

    async def test_tcpConnection(self) -> None:
        """
        The server side of a real loopback TCP connection is; bytes written
        through the writer arrive at the client in order.
        """
        accepted: Deferred[protocol.Protocol] = Deferred()
        received: Deferred[bytes] = Deferred()

        class Accept(protocol.Protocol):
            def connectionMade(self) -> None:
                accepted.callback(self)

        class Receive(protocol.Protocol):
            buffer = b""

            def dataReceived(self, data: bytes) -> None:
                self.buffer += data
                if len(self.buffer) >= 6 and not received.called:
                    received.callback(self.buffer)

        port = reactor.listenTCP(0, protocol.Factory.forProtocol(Accept), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        client = await protocol.ClientCreator(reactor, Receive).connectTCP("127.0.0.1", port.getHost().port)
        self.addCleanup(client.transport.loseConnection)
        server = await accepted
        self.addCleanup(server.transport.loseConnection)  # type: ignore[union-attr]
        self.assertTrue(directlyWritable(server.transport))
        writer = TurnWriter(reactor)  # type: ignore[arg-type]
        for chunk in (b"ab", b"cd", b"ef"):
            writer.write(server.transport, chunk)
        self.assertEqual(await received, b"abcdef")
