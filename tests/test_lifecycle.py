"""
Tests for L{crm_im.lifecycle}: stages started in order, each awaited, and
stopped in reverse, each awaited.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from crm_im.lifecycle import ListeningPorts, Stage, StagedService


class Recorder:
    """
    Steps that log what ran, and can be held open with a Deferred.
    """

    def __init__(self) -> None:
        self.events: list[str] = []
        self.pending: dict[str, Deferred[None]] = {}

    def step(self, name: str, hold: bool = False) -> Any:
        def run() -> Deferred[None] | None:
            self.events.append(name)
            if hold:
                self.pending[name] = Deferred()
                return self.pending[name]
            return None

        return run

    def release(self, name: str) -> None:
        self.pending.pop(name).callback(None)


class StagedServiceTests(SynchronousTestCase):
    def build(self, recorder: Recorder, holdStart: str = "", holdStop: str = "") -> StagedService:
        service = StagedService()
        for name in ("store", "sockets", "listen"):
            Stage(
                name,
                recorder.step(f"start {name}", hold=name == holdStart),
                recorder.step(f"stop {name}", hold=name == holdStop),
            ).setServiceParent(service)
        return service

    def test_startWaitsForEachStage(self) -> None:
        """
        A stage starts only once the stage before it is ready; C{started}
        fires once the last is.
        """
        recorder = Recorder()
        service = self.build(recorder, holdStart="store")
        service.startService()
        self.assertEqual(recorder.events, ["start store"])
        self.assertNoResult(service.started)
        recorder.release("start store")
        self.assertEqual(recorder.events, ["start store", "start sockets", "start listen"])
        self.successResultOf(service.started)

    def test_coroutineSteps(self) -> None:
        """
        A step may be a coroutine function; it is awaited like a Deferred.
        """
        gate: Deferred[None] = Deferred()
        events: list[str] = []

        async def openStore() -> None:
            await gate
            events.append("store open")

        service = StagedService()
        Stage("store", openStore).setServiceParent(service)
        Stage("listen", lambda: events.append("listen") and None).setServiceParent(service)
        service.startService()
        self.assertEqual(events, [])
        gate.callback(None)
        self.assertEqual(events, ["store open", "listen"])

    def test_stopInReverseWaitingForEach(self) -> None:
        """
        Stages stop in the reverse order, each once the one after it has
        stopped; the service's stop fires once the first stage stopped.
        """
        recorder = Recorder()
        service = self.build(recorder, holdStop="sockets")
        service.startService()
        del recorder.events[:]
        stopped = service.stopService()
        self.assertEqual(recorder.events, ["stop listen", "stop sockets"])
        self.assertNoResult(stopped)
        recorder.release("stop sockets")
        self.assertEqual(recorder.events, ["stop listen", "stop sockets", "stop store"])
        self.successResultOf(stopped)
        self.assertFalse(service.running)

    def test_failedStartEndsStartUp(self) -> None:
        """
        A stage that fails to start fails C{started}; the stages after it
        are not started, and a stop stops only those that were.
        """
        recorder = Recorder()
        service = StagedService()
        Stage("store", recorder.step("start store"), recorder.step("stop store")).setServiceParent(service)
        Stage("listen", lambda: fail(OSError("address in use")), recorder.step("stop listen")).setServiceParent(
            service
        )
        Stage("tuning", recorder.step("start tuning"), recorder.step("stop tuning")).setServiceParent(service)
        service.startService()
        self.failureResultOf(service.started, OSError)
        self.assertEqual(recorder.events, ["start store"])
        self.successResultOf(service.stopService())
        # "listen" did start (and failed): it is running as a service and is
        # stopped too, so that what it half-opened is closed.
        self.assertEqual(recorder.events, ["start store", "stop listen", "stop store"])

    def test_failedStopDoesNotStopTheOthers(self) -> None:
        """
        A stage failing to stop is logged; the stages before it still stop.
        """
        recorder = Recorder()
        service = StagedService()
        Stage("store", None, recorder.step("stop store")).setServiceParent(service)
        Stage("uploads", None, lambda: fail(RuntimeError("sweep broke"))).setServiceParent(service)
        service.startService()
        self.successResultOf(service.stopService())
        self.assertEqual(recorder.events, ["stop store"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_stopWhileStarting(self) -> None:
        """
        Stopping while a stage is still starting starts nothing more.
        """
        recorder = Recorder()
        service = self.build(recorder, holdStart="store")
        service.startService()
        self.successResultOf(service.stopService())
        recorder.release("start store")
        self.assertEqual(recorder.events, ["start store", "stop store"])

    def test_plainServiceChild(self) -> None:
        """
        A plain Twisted service among the stages is started in its turn and
        is ready when its C{startService} returns.
        """
        recorder = Recorder()
        service = self.build(recorder, holdStart="store")
        plain = Service()
        plain.setName("plain")
        plain.setServiceParent(service)
        service.startService()
        self.assertFalse(plain.running)
        recorder.release("start store")
        self.assertTrue(plain.running)
        self.successResultOf(service.stopService())
        self.assertFalse(plain.running)


class ListeningPortsTests(SynchronousTestCase):
    def test_listenAndClose(self) -> None:
        """
        Each endpoint listens in turn and is reported; at stop, every port
        stops listening.
        """
        reactor = MemoryReactor()
        seen: list[Any] = []
        factory = Factory.forProtocol(Protocol)
        stage = ListeningPorts("listen", reactor, ["tcp:8080", "tcp:9090:interface=127.0.0.1"], factory, seen.append)
        stage.startService()
        self.successResultOf(stage.whenStarted())
        self.assertEqual([port.getHost().port for port in stage.ports], [8080, 9090])
        self.assertEqual(seen, stage.ports)
        self.assertEqual([(port, listening[0]) for port, listening in zip([8080, 9090], reactor.tcpServers)], [
            (8080, 8080),
            (9090, 9090),
        ])
        closed: list[int] = []
        for port in stage.ports:
            port.stopListening = lambda number=port.getHost().port: closed.append(number)  # type: ignore[method-assign]
        self.successResultOf(stage.stopService())
        self.assertEqual(stage.ports, [])
        self.assertEqual(closed, [8080, 9090])
