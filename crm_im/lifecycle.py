# -*- test-case-name: tests.test_lifecycle -*-
"""
Starting and stopping a server's parts in order, as Twisted services.

Twisted's L{MultiService} starts its children one after another but does
not wait for one to be ready before starting the next (a store opens
asynchronously; a port listens when a Deferred fires), and it stops them
all at once. A server needs more than that: the store open before anything
uses it, the ports listening last; and at stop, clients told and drained
while the ports still accept their last requests, then the ports closed,
then the parts, the store closed last of all.

L{StagedService} gives that order: children start in the order they were
added, each once the one before it is ready, and stop in the reverse
order, each once the one after it has stopped. L{Stage} makes any pair of
start/stop callables (plain or async) such a child, so that the objects
doing the work (presence, the upload service, the push sender) need not be
services themselves; L{ListeningPorts} is the stage that listens.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Iterable, Sequence

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from zope.interface import implementer

#: What a stage's start or stop callable may return: nothing, a Deferred
#: or a coroutine.
StepResult = Awaitable[Any] | None
Step = Callable[[], StepResult]


class IStage(IService):
    """
    A service that is ready some time after C{startService} returns.
    """

    def whenStarted() -> Deferred[None]:
        """
        Fires once the service is ready (errbacks if it could not start).
        Call once per start.
        """


def _deferred(result: StepResult) -> Deferred[Any]:
    if result is None:
        return succeed(None)
    if isinstance(result, Deferred):
        return result
    return ensureDeferred(result)  # type: ignore[arg-type]  # a coroutine


@implementer(IStage)
class Stage(Service):
    """
    One part of a server, started and stopped by two callables.

    @ivar name: the stage's name, shown in the log if it fails.
    """

    def __init__(self, name: str, start: Step | None = None, stop: Step | None = None) -> None:
        self.setName(name)
        self._start = start
        self._stop = stop
        self._started: Deferred[None] = succeed(None)

    def startService(self) -> None:
        super().startService()
        self._started = maybeDeferred(self._start or (lambda: None)).addCallback(_deferred).addCallback(
            lambda _: None
        )

    def whenStarted(self) -> Deferred[None]:
        return self._started

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return maybeDeferred(self._stop or (lambda: None)).addCallback(_deferred).addCallback(lambda _: None)


class ListeningPorts(Stage):
    """
    Listen on endpoints (strings of L{serverFromString}), in order; stop
    listening on all of them at stop.

    @ivar ports: the ports listening now.
    """

    def __init__(
        self,
        name: str,
        reactor: Any,
        descriptions: Sequence[str],
        factory: IProtocolFactory,
        listening: Callable[[IListeningPort], None] = lambda port: None,
    ) -> None:
        """
        @param listening: called with each port once it listens (for the
            log line an operator looks for).
        """
        super().__init__(name, self._listen, self._close)
        self.reactor = reactor
        self.descriptions = list(descriptions)
        self.factory = factory
        self.listening = listening
        self.ports: list[IListeningPort] = []

    async def _listen(self) -> None:
        for description in self.descriptions:
            port = await serverFromString(self.reactor, description).listen(self.factory)
            self.ports.append(port)
            self.listening(port)

    async def _close(self) -> None:
        ports, self.ports = self.ports, []
        for port in ports:
            await maybeDeferred(port.stopListening)


class StagedService(MultiService):
    """
    A service whose children start one after another, each once the one
    before it is ready (L{IStage.whenStarted}; a plain service is ready when
    its C{startService} returns), and stop in the reverse order, each once
    the one after it has stopped.

    A child that fails to start ends the start-up: L{started} errbacks and
    the children after it are not started (those before it are stopped at
    C{stopService}, as usual). A child that fails to stop is logged and the
    others are stopped all the same: a failed upload sweep must not leave
    the store unclosed.

    @ivar started: fires once every child is ready; errbacks with the first
        failure. Set by C{startService}.
    """

    log = Logger()

    started: Deferred[None]

    def startService(self) -> None:
        # Not MultiService.startService: it would start every child at once.
        Service.startService(self)
        self.started = Deferred.fromCoroutine(self._startChildren())

    async def _startChildren(self) -> None:
        for child in list(self):
            if not self.running:
                return  # stopped while starting: start nothing more
            child.startService()
            if IStage.providedBy(child):
                await child.whenStarted()

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stopChildren(list(self)))

    async def _stopChildren(self, children: Iterable[IService]) -> None:
        for child in reversed(list(children)):
            if not child.running:
                continue
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                self.log.failure("stopping {name} failed", name=child.name)


__all__ = ["IStage", "ListeningPorts", "Stage", "StagedService"]
