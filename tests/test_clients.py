"""
Tests for L{tests.support.clients}: the C{$bin} codec, the report routing
and queueing of L{ClientDriver} (on a fake process and a L{Clock}), which
kinds can run, and the drivers' own codec through a real child process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Generator, List

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests.support import clients
from tests.support.clients import (
    ClientDriver,
    ConnectError,
    DriverError,
    DriverExited,
    DriverTestMixin,
    WaitTimeout,
    decodeBinary,
    encodeBinary,
    requireKind,
)


class BinaryCodecTests(SynchronousTestCase):
    """
    L{encodeBinary} and L{decodeBinary}.
    """

    def test_encodeNested(self) -> None:
        """
        C{bytes}, C{bytearray} and C{memoryview} anywhere inside lists,
        tuples and dicts become C{{"$bin": base64}}; tuples become lists.
        """
        value = {"a": [b"\x00\x01\x02", ("x", bytearray(b"hi"))],
                 "b": {"c": memoryview(b"")}, "n": 1, "z": None}
        self.assertEqual(encodeBinary(value), {
            "a": [{"$bin": "AAEC"}, ["x", {"$bin": "aGk="}]],
            "b": {"c": {"$bin": ""}}, "n": 1, "z": None})

    def test_encodeScalar(self) -> None:
        """
        A bare C{bytes} value is encoded, scalars are left alone.
        """
        self.assertEqual(encodeBinary(b"\xff"), {"$bin": "/w=="})
        self.assertEqual(encodeBinary("text"), "text")
        self.assertEqual(encodeBinary(1.5), 1.5)

    def test_decodeNested(self) -> None:
        """
        Every C{{"$bin": base64}} inside lists and dicts becomes C{bytes}.
        """
        self.assertEqual(
            decodeBinary([{"$bin": "AAEC"}, {"k": [{"$bin": ""}, 2]}]),
            [b"\x00\x01\x02", {"k": [b"", 2]}])

    def test_decodeOnlyExactPlaceholders(self) -> None:
        """
        A dict is a placeholder only if C{"$bin"} is its single key and holds
        a string.
        """
        notPlaceholders = [{"$bin": "AA==", "other": 1}, {"$bin": 5},
                           {"$bin": None}, {"bin": "AA=="}]
        for value in notPlaceholders:
            self.assertEqual(decodeBinary(value), value)

    def test_roundTrip(self) -> None:
        """
        Decoding what was encoded gives back the value, with C{bytes} for
        every binary type and lists for tuples.
        """
        value = {"blob": bytes(range(256)), "parts": [b"", b"a", {"d": b"\n"}],
                 "text": "é", "nested": [[[b"deep"]]]}
        encoded = encodeBinary(value)
        self.assertEqual(json.loads(json.dumps(encoded)), encoded)
        self.assertEqual(decodeBinary(encoded), value)


class FakeProcess:
    """
    Records what a L{ClientDriver} writes to its child.
    """

    def __init__(self) -> None:
        self.lines: List[Dict[str, Any]] = []
        self.stdinClosed = False
        self.signals: List[str] = []

    def write(self, data: bytes) -> None:
        """
        Record one command line.

        @param data: a JSON line.
        """
        self.lines.append(json.loads(data))

    def closeStdin(self) -> None:
        """
        Record that stdin was closed.
        """
        self.stdinClosed = True

    def signalProcess(self, signal: str) -> None:
        """
        Record a signal.

        @param signal: its name.
        """
        self.signals.append(signal)


class ClientDriverRoutingTests(SynchronousTestCase):
    """
    L{ClientDriver}'s handling of reports, without a child process.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.driver = ClientDriver("python", reactor=self.clock)
        self.process = FakeProcess()
        self.driver._process = self.process  # type: ignore[assignment]

    def report(self, **fields: Any) -> None:
        """
        Feed one report to the driver, split across two chunks.
        """
        line = json.dumps(fields).encode("utf-8") + b"\n"
        self.driver._outReceived(line[:5])
        self.driver._outReceived(line[5:])

    def event(self, event: str, *args: Any, client: str = "a",
              namespace: str = "/") -> None:
        """
        Feed one C{event} report.
        """
        self.report(type="event", client=client, namespace=namespace,
                    event=event, args=encodeBinary(list(args)))

    def test_commandCarriesRefAndEncodesBinary(self) -> None:
        """
        A command gets a fresh C{ref}, binary args go out as C{$bin}, and the
        reply with that C{ref} fires the L{Deferred} with decoded args.
        """
        d = self.driver.emit("a", "e", b"\x01", {"k": b"\x02"}, ack=True,
                             timeout=3)
        (sent,) = self.process.lines
        self.assertEqual(sent, {
            "cmd": "emit", "ref": sent["ref"], "client": "a",
            "namespace": "/", "event": "e", "ack": True, "timeout": 3000,
            "args": [{"$bin": "AQ=="}, {"k": {"$bin": "Ag=="}}]})
        self.report(type="ack", ref=sent["ref"],
                    args=[{"$bin": "Aw=="}, "ok"])
        self.assertEqual(self.successResultOf(d), [b"\x03", "ok"])

    def test_emitWithoutAck(self) -> None:
        """
        An emit without ack fires with L{None} on the C{emitted} reply.
        """
        d = self.driver.emit("a", "e")
        self.report(type="emitted", ref=self.process.lines[0]["ref"])
        self.assertIsNone(self.successResultOf(d))

    def test_connectError(self) -> None:
        """
        A C{connect_error} answering a connect fails it with
        L{ConnectError} carrying the message and the decoded data.
        """
        d = self.driver.connect("a", "http://127.0.0.1:1", auth={"t": 1})
        sent = self.process.lines[0]
        self.assertEqual(sent["opts"], {"auth": {"t": 1}})
        self.report(type="connect_error", ref=sent["ref"], client="a",
                    namespace="/", message="no",
                    data={"raw": {"$bin": "AA=="}})
        error = self.failureResultOf(d, ConnectError).value
        self.assertEqual((error.message, error.data), ("no", {"raw": b"\x00"}))

    def test_errorReply(self) -> None:
        """
        An C{error} answering a command fails it with L{DriverError}.
        """
        d = self.driver.transport("nobody")
        self.report(type="error", ref=self.process.lines[0]["ref"],
                    message="no client nobody")
        self.assertIn("no client nobody",
                      str(self.failureResultOf(d, DriverError).value))

    def test_eventBeforeWait(self) -> None:
        """
        An event that arrived before L{ClientDriver.waitFor} is queued and
        handed to the first wait for it, and to no later one.
        """
        self.event("hello", b"\x00", 1)
        self.assertEqual(self.successResultOf(self.driver.waitFor("a", "hello")),
                         [b"\x00", 1])
        second = self.driver.waitFor("a", "hello")
        self.assertNoResult(second)
        self.event("hello", 2)
        self.assertEqual(self.successResultOf(second), [2])

    def test_waitsAreKeyedByClientAndNamespace(self) -> None:
        """
        An event for another client or namespace does not satisfy a wait.
        """
        d = self.driver.waitFor("a", "hello", namespace="/admin")
        self.event("hello", 1, client="b", namespace="/admin")
        self.event("hello", 2, client="a", namespace="/")
        self.assertNoResult(d)
        self.event("hello", 3, client="a", namespace="/admin")
        self.assertEqual(self.successResultOf(d), [3])
        self.assertEqual(self.successResultOf(self.driver.waitFor("b", "hello",
                                                                  "/admin")),
                         [1])

    def test_predicate(self) -> None:
        """
        A wait with a predicate skips events that fail it, leaving them for
        other waits.
        """
        d = self.driver.waitFor("a", "n", predicate=lambda args: args[0] > 1)
        self.event("n", 1)
        self.assertNoResult(d)
        self.event("n", 2)
        self.assertEqual(self.successResultOf(d), [2])
        self.assertEqual(self.successResultOf(self.driver.waitFor("a", "n")),
                         [1])

    def test_eventsKeepsEverything(self) -> None:
        """
        L{ClientDriver.events} lists every event received, consumed or not.
        """
        self.event("n", 1)
        self.event("other", 0)
        self.event("n", b"2")
        self.successResultOf(self.driver.waitFor("a", "n"))
        self.assertEqual(self.driver.events("a", "n"), [[1], [b"2"]])
        self.assertEqual(self.driver.events("a", "n", "/admin"), [])

    def test_waitTimesOut(self) -> None:
        """
        A wait fails with L{WaitTimeout} after its timeout, and an event
        arriving later stays queued for the next wait.
        """
        d = self.driver.waitFor("a", "late", timeout=2)
        self.clock.advance(2)
        self.assertIn("'late'", str(self.failureResultOf(d, WaitTimeout).value))
        self.event("late")
        self.assertEqual(self.successResultOf(self.driver.waitFor("a", "late")),
                         [])

    def test_commandTimesOut(self) -> None:
        """
        A command with no reply fails with L{WaitTimeout}; a late reply is
        ignored.
        """
        d = self.driver.transport("a")
        self.clock.advance(clients.DEFAULT_TIMEOUT)
        self.failureResultOf(d, WaitTimeout)
        self.report(type="transport", ref=self.process.lines[0]["ref"],
                    name="polling")

    def test_disconnectUpgradeConnect(self) -> None:
        """
        Disconnect, upgrade and unsolicited connect reports feed their waits.
        """
        self.report(type="upgrade", client="a", transport="websocket")
        self.report(type="disconnect", client="a", namespace="/admin",
                    reason="io server disconnect")
        self.report(type="connect", ref=None, client="a", namespace="/admin",
                    id="x", transport="websocket")
        self.assertEqual(self.successResultOf(self.driver.waitForUpgrade("a")),
                         "websocket")
        self.assertEqual(
            self.successResultOf(self.driver.waitForDisconnect("a", "/admin")),
            "io server disconnect")
        self.assertEqual(
            self.successResultOf(self.driver.waitForConnect("a", "/admin"))["id"],
            "x")

    def test_readyAndExit(self) -> None:
        """
        L{ClientDriver.whenReady} fires on the ready report; when the child
        ends, pending commands and waits fail with L{DriverExited} and
        L{ClientDriver.quit} fires.
        """
        ready = self.driver.whenReady()
        self.report(type="ready", kind="python", version="5.18.1", pid=1)
        self.assertIs(self.successResultOf(ready), self.driver)
        self.assertEqual(self.driver.version, "5.18.1")
        command = self.driver.transport("a")
        wait = self.driver.waitFor("a", "never")
        self.driver._errReceived(b"boom\n")
        self.driver._processEnded(Failure(ProcessTerminated(exitCode=1)))
        self.assertIn("boom", str(self.failureResultOf(command,
                                                       DriverExited).value))
        self.failureResultOf(wait, DriverExited)
        self.assertIsNone(self.successResultOf(self.driver.quit()))
        self.failureResultOf(self.driver.transport("a"), DriverExited)

    def test_quitThenKill(self) -> None:
        """
        L{ClientDriver.quit} sends C{quit}, closes stdin, and kills the child
        if it has not ended after the quit timeout.
        """
        d = self.driver.quit(timeout=5)
        again = self.driver.quit()
        self.assertEqual(self.process.lines, [{"cmd": "quit"}])
        self.assertTrue(self.process.stdinClosed)
        self.clock.advance(5)
        self.assertEqual(self.process.signals, ["KILL"])
        self.assertNoResult(d)
        self.driver._processEnded(Failure(ProcessDone(0)))
        self.assertIsNone(self.successResultOf(d))
        self.assertIsNone(self.successResultOf(again))

    def test_readyTimeoutKills(self) -> None:
        """
        A child that never says it is ready is told to quit, then killed,
        and L{ClientDriver.whenReady} fails with L{WaitTimeout}.
        """
        d = self.driver.whenReady(timeout=3)
        self.clock.advance(3)
        self.assertEqual(self.process.lines, [{"cmd": "quit"}])
        self.clock.advance(clients.QUIT_TIMEOUT)
        self.assertEqual(self.process.signals, ["KILL"])
        self.driver._processEnded(Failure(ProcessTerminated(signal=9)))
        self.failureResultOf(d, WaitTimeout)


class RequireKindTests(SynchronousTestCase):
    """
    L{requireKind}: skip outside CI, fail on CI.
    """

    def setUp(self) -> None:
        self.patch(clients, "NODE_MODULES", Path("/nonexistent/node_modules"))

    def test_skipOutsideCI(self) -> None:
        """
        Without C{CI=true}, missing node_modules skips, naming the fix.
        """
        self.patch(clients.os, "environ", {})
        error = self.assertRaises(SkipTest, requireKind, "node")
        self.assertIn("npm ci --prefix tests/interop", str(error))

    def test_failOnCI(self) -> None:
        """
        With C{CI=true}, missing node_modules is an error, not a skip.
        """
        self.patch(clients.os, "environ", {"CI": "true"})
        self.assertRaises(RuntimeError, requireKind, "node")

    def test_unknownKind(self) -> None:
        """
        An unknown kind is a L{ValueError}.
        """
        self.assertRaises(ValueError, requireKind, "java")


class DriverCodecMixin(DriverTestMixin):
    """
    The driver child's own C{$bin} codec, through a real process (no
    server needed).
    """

    @inlineCallbacks
    def test_roundtrip(self) -> Generator[Deferred[Any], Any, None]:
        """
        Nested binary survives the trip through the driver, which sees each
        binary value as a buffer; a look-alike dict stays a dict.
        """
        driver = yield self.startDriver()
        self.assertTrue(driver.version)
        value = {"a": [b"\x00\xff", {"b": b""}], "c": "s",
                 "$bin": "not alone"}
        back, buffers = yield driver.roundtrip(value)
        self.assertEqual((back, buffers), (value, 2))

    @inlineCallbacks
    def test_unknownClient(self) -> Generator[Deferred[Any], Any, None]:
        """
        A command for a client that does not exist fails with
        L{DriverError}; the driver keeps serving.
        """
        driver = yield self.startDriver()
        yield self.assertFailure(driver.transport("nobody"), DriverError)
        back, _ = yield driver.roundtrip([1])
        self.assertEqual(back, [1])


class NodeDriverCodecTests(DriverCodecMixin, TestCase):
    """
    L{DriverCodecMixin} with socket.io-client.
    """

    kind = "node"


class PythonDriverCodecTests(DriverCodecMixin, TestCase):
    """
    L{DriverCodecMixin} with python-socketio.
    """

    kind = "python"
