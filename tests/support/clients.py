# -*- test-case-name: tests.test_clients -*-
"""
Real Socket.IO clients driven from trial.

A L{ClientDriver} runs one child process that holds any number of named
clients of one kind:

  - C{"node"}: socket.io-client 4.8 (C{tests/interop/driver.js}, needs
    C{npm ci --prefix tests/interop});
  - C{"python"}: python-socketio's synchronous C{Client}
    (C{tests/interop/sio_driver.py}, run with C{sys.executable}).

Both speak the same JSON-lines protocol, so a scenario written once against
L{ClientDriver} runs against both kinds (see L{DriverTestMixin})::

    class LoginScenario(DriverTestMixin):
        @inlineCallbacks
        def test_login(self) -> Generator[Deferred[Any], Any, None]:
            driver = yield self.startDriver()
            yield driver.connect("a", url, transports=["websocket"])
            yield driver.emit("a", "user:login", {"id": 1, "name": "A"})
            (user,) = yield driver.waitFor("a", "user:login:success")

    class LoginNodeTests(LoginScenario, TestCase):
        kind = "node"

    class LoginPythonTests(LoginScenario, TestCase):
        kind = "python"

Binary payloads are C{bytes} on this side; on the wire to the drivers they
travel as C{{"$bin": "<base64>"}} (L{encodeBinary}, L{decodeBinary}).

Events are queued per C{(client, namespace)} as they arrive, so an event that
arrives before the L{ClientDriver.waitFor} that wants it is not missed; each
queued report is consumed by at most one wait.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import sys
from importlib.util import find_spec
from pathlib import Path
from typing import (
    TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple)
from unittest import SkipTest

from twisted.internet.defer import Deferred, TimeoutError, fail, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import (
    IDelayedCall, IProcessTransport)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

JSON = Any
Report = Dict[str, Any]
Matcher = Callable[[Report], bool]

INTEROP = Path(__file__).resolve().parent.parent / "interop"
NODE_DRIVER = INTEROP / "driver.js"
PYTHON_DRIVER = INTEROP / "sio_driver.py"
NODE_MODULES = INTEROP / "node_modules"
KINDS = ("node", "python")

#: seconds any single wait or command may take unless told otherwise
DEFAULT_TIMEOUT = 10.0
#: seconds a child has to say it is ready
START_TIMEOUT = 20.0
#: seconds C{quit} waits for a clean exit before C{SIGKILL}
QUIT_TIMEOUT = 5.0
#: bytes of the child's stderr kept for error messages
STDERR_KEEP = 64 * 1024


class DriverError(Exception):
    """
    The driver could not carry out a command (an C{error} report), or an ack
    did not come in time.
    """


class ConnectError(Exception):
    """
    The client reported C{connect_error}.

    @ivar message: the error's message (the server's, for a rejection by a
        namespace middleware).
    @ivar data: the error's C{data}, or L{None}.
    """

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message, data)
        self.message = message
        self.data = data

    def __str__(self) -> str:
        return f"connect_error: {self.message!r} data={self.data!r}"


class DriverExited(Exception):
    """
    The driver process ended while something was still waiting on it.
    """


class WaitTimeout(TimeoutError):
    """
    A wait or a command did not complete within its timeout.
    """


def encodeBinary(value: Any) -> JSON:
    """
    Replace every C{bytes} inside C{value} by C{{"$bin": base64}}.

    @param value: lists, tuples, dicts and scalars, possibly holding
        C{bytes}, C{bytearray} or C{memoryview}.
    @return: a JSON-serialisable copy (tuples become lists).
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bin": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [encodeBinary(item) for item in value]
    if isinstance(value, dict):
        return {key: encodeBinary(item) for key, item in value.items()}
    return value


def decodeBinary(value: JSON) -> Any:
    """
    Replace every C{{"$bin": base64}} inside C{value} by C{bytes}.

    Only a dict whose single key is C{"$bin"} with a string value is a
    placeholder; anything else is copied as it is.

    @param value: a decoded JSON value.
    @return: a copy holding C{bytes} where the placeholders were.
    """
    if isinstance(value, list):
        return [decodeBinary(item) for item in value]
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get("$bin"), str):
            return base64.b64decode(value["$bin"])
        return {key: decodeBinary(item) for key, item in value.items()}
    return value


def kindSkipReason(kind: str) -> Optional[str]:
    """
    Say why clients of C{kind} cannot run here, if they cannot.

    @param kind: C{"node"} or C{"python"}.
    @return: a reason, or L{None} when the kind is usable.
    """
    if kind == "node":
        if shutil.which("node") is None:
            return "node is not on PATH"
        if not (NODE_MODULES / "socket.io-client" / "package.json").exists():
            return (f"{NODE_MODULES} has no socket.io-client: run "
                    "`npm ci --prefix tests/interop`")
        return None
    if kind == "python":
        for module in ("socketio", "engineio", "websocket", "requests"):
            if find_spec(module) is None:
                return (f"python module {module!r} is missing: install "
                        "python-socketio[client]")
        return None
    raise ValueError(f"unknown client kind {kind!r}; use one of {KINDS}")


def requireKind(kind: str) -> None:
    """
    Skip the calling test when clients of C{kind} cannot run here, or fail
    it loudly when C{CI=true} is in the environment.

    @param kind: C{"node"} or C{"python"}.
    @raise SkipTest: outside CI, when the kind is unusable.
    @raise RuntimeError: on CI, when the kind is unusable.
    """
    reason = kindSkipReason(kind)
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"{kind} Socket.IO clients unavailable on CI: "
                           f"{reason}")
    raise SkipTest(reason)


def _defaultReactor() -> Any:
    from twisted.internet import reactor

    return reactor


class DriverProcessProtocol(ProcessProtocol):
    """
    The L{ProcessProtocol} of a driver child: hands its output and its end
    to the L{ClientDriver}.  (A separate object because
    L{ClientDriver.transport} is a command, which a protocol's C{transport}
    attribute would shadow.)
    """

    def __init__(self, driver: ClientDriver) -> None:
        self.driver = driver

    def outReceived(self, data: bytes) -> None:
        """
        Pass stdout on.

        @param data: bytes from the child's stdout.
        """
        self.driver._outReceived(data)

    def errReceived(self, data: bytes) -> None:
        """
        Pass stderr on.

        @param data: bytes from the child's stderr.
        """
        self.driver._errReceived(data)

    def processEnded(self, reason: Failure) -> None:
        """
        Pass the end on.

        @param reason: why the child ended.
        """
        self.driver._processEnded(reason)


class ClientDriver:
    """
    One driver child process holding named Socket.IO clients of one kind.

    Build it with L{startDriver}.  Every method returning a L{Deferred} has a
    timeout; on timeout it fails with L{WaitTimeout}, and if the child exits
    meanwhile with L{DriverExited}.

    @ivar kind: C{"node"} or C{"python"}.
    @ivar version: the client library's version, from the ready report.
    @ivar reports: every report received, in order (for debugging).
    @ivar errors: C{error} reports that answered no command.
    """

    log = Logger()

    def __init__(self, kind: str, reactor: Optional[Any] = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown client kind {kind!r}; use one of {KINDS}")
        self.kind = kind
        self.version: Optional[str] = None
        self.reports: List[Report] = []
        self.errors: List[Report] = []
        self._reactor = reactor if reactor is not None else _defaultReactor()
        self._refs = itertools.count(1)
        self._buffer = b""
        self._stderr = bytearray()
        self._pending: Dict[int, Deferred[Report]] = {}
        self._unconsumed: List[Report] = []
        self._waiters: List[Tuple[Matcher, Deferred[Report]]] = []
        self._eventLog: Dict[Tuple[str, str], List[Tuple[str, List[Any]]]] = {}
        self._readyWaiters: List[Deferred[Report]] = []
        self._endWaiters: List[Deferred[None]] = []
        self._ended: Optional[Failure] = None
        self._quitting = False
        self._killCall: Optional[IDelayedCall] = None
        self._protocol = DriverProcessProtocol(self)
        self._process: Optional[IProcessTransport] = None

    # -- process plumbing -------------------------------------------------

    def spawn(self) -> None:
        """
        Start the child process for this driver's kind.
        """
        env = dict(os.environ)
        if self.kind == "node":
            node = shutil.which("node") or "node"
            args = [node, str(NODE_DRIVER)]
        else:
            env["PYTHONUNBUFFERED"] = "1"
            args = [sys.executable, "-u", str(PYTHON_DRIVER)]
        self._process = self._reactor.spawnProcess(
            self._protocol, args[0], args, env=env, path=str(INTEROP))

    @property
    def stderr(self) -> str:
        """
        The last L{STDERR_KEEP} bytes the child wrote on stderr.
        """
        return self._stderr.decode("utf-8", "replace")

    def _outReceived(self, data: bytes) -> None:
        """
        Split stdout into lines, one JSON report each.

        @param data: bytes from the child's stdout.
        """
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            try:
                report = json.loads(line)
            except ValueError:
                self.log.warn("{kind} driver wrote a non-JSON line: {line!r}",
                              kind=self.kind, line=line)
                continue
            self._dispatch(report)

    def _errReceived(self, data: bytes) -> None:
        """
        Keep the tail of the child's stderr for error messages.

        @param data: bytes from the child's stderr.
        """
        self._stderr += data
        del self._stderr[:-STDERR_KEEP]

    def _processEnded(self, reason: Failure) -> None:
        """
        Fail everything still waiting and release L{quit}.

        @param reason: why the child ended.
        """
        if self._killCall is not None and self._killCall.active():
            self._killCall.cancel()
        self._killCall = None
        clean = self._quitting and reason.check(ProcessDone) is not None
        detail = "" if clean else f"\n--- {self.kind} driver stderr ---\n{self.stderr}"
        self._ended = Failure(DriverExited(
            f"{self.kind} driver exited ({reason.value}){detail}"))
        pending = list(self._pending.values())
        waiters = [d for _, d in self._waiters]
        self._pending.clear()
        self._waiters.clear()
        readyWaiters, self._readyWaiters = self._readyWaiters, []
        for d in pending + waiters + readyWaiters:
            d.errback(self._ended)
        endWaiters, self._endWaiters = self._endWaiters, []
        for done in endWaiters:
            done.callback(None)

    def _dispatch(self, report: Report) -> None:
        """
        Route one report: the ready signal, a reply to a command, or an
        unsolicited report for the waits.
        """
        self.reports.append(report)
        kind = report.get("type")
        if "args" in report:
            report["args"] = decodeBinary(report["args"])
        if kind == "ready":
            self.version = report.get("version")
            readyWaiters, self._readyWaiters = self._readyWaiters, []
            for waiter in readyWaiters:
                waiter.callback(report)
            return
        ref = report.get("ref")
        if ref is not None and ref in self._pending:
            d = self._pending.pop(ref)
            if kind == "error":
                d.errback(DriverError(report.get("message")))
            elif kind == "connect_error":
                d.errback(ConnectError(report.get("message", ""),
                                       decodeBinary(report.get("data"))))
            else:
                d.callback(report)
            return
        if kind == "error":
            self.errors.append(report)
            self.log.warn("{kind} driver error: {message}", kind=self.kind,
                          message=report.get("message"))
            return
        if kind == "event":
            key = (report["client"], report["namespace"])
            self._eventLog.setdefault(key, []).append(
                (report["event"], report["args"]))
        for index, (matcher, d) in enumerate(self._waiters):
            if matcher(report):
                del self._waiters[index]
                d.callback(report)
                return
        self._unconsumed.append(report)

    # -- waiting -----------------------------------------------------------

    def _timeoutFailure(self, what: str) -> Callable[[Any, float], Any]:
        def onTimeout(result: Any, timeout: float) -> Any:
            return Failure(WaitTimeout(
                f"{self.kind} clients: {what} within {timeout}s"))

        return onTimeout

    def whenReady(self, timeout: float = START_TIMEOUT) -> Deferred[ClientDriver]:
        """
        Fire with this driver once the child reported ready.

        @param timeout: seconds to wait; then the child is killed.
        """
        if self.version is not None:
            return succeed(self)
        if self._ended is not None:
            return fail(self._ended)

        def cancel(d: Deferred[Report]) -> None:
            if d in self._readyWaiters:
                self._readyWaiters.remove(d)

        def onTimeout(result: Any, timeout: float) -> Failure:
            return Failure(WaitTimeout(
                f"{self.kind} driver not ready within {timeout}s; "
                f"stderr:\n{self.stderr}"))

        def failed(failure: Failure) -> Any:
            if self._ended is None:
                return self.quit().addCallback(lambda _: failure)
            return failure

        d: Deferred[Report] = Deferred(cancel)
        self._readyWaiters.append(d)
        d.addTimeout(timeout, self._reactor, onTimeoutCancel=onTimeout)
        d.addErrback(failed)
        return d.addCallback(lambda _: self)

    def waitForReport(self, matcher: Matcher, timeout: float = DEFAULT_TIMEOUT,
                      description: str = "no matching report") -> Deferred[Report]:
        """
        Fire with the first unconsumed unsolicited report for which
        C{matcher} is true, consuming it; wait for one if none is queued.

        @param matcher: a test on the report dict.
        @param timeout: seconds to wait.
        @param description: what the timeout error says was not seen.
        """
        for index, report in enumerate(self._unconsumed):
            if matcher(report):
                del self._unconsumed[index]
                return succeed(report)
        if self._ended is not None:
            return fail(self._ended)
        entry: List[Tuple[Matcher, Deferred[Report]]] = []

        def cancel(d: Deferred[Report]) -> None:
            if entry and entry[0] in self._waiters:
                self._waiters.remove(entry[0])

        d: Deferred[Report] = Deferred(cancel)
        entry.append((matcher, d))
        self._waiters.append(entry[0])
        d.addTimeout(timeout, self._reactor,
                     onTimeoutCancel=self._timeoutFailure(description))
        return d

    def waitFor(self, client: str, event: str, namespace: str = "/",
                predicate: Optional[Callable[[List[Any]], bool]] = None,
                timeout: float = DEFAULT_TIMEOUT) -> Deferred[List[Any]]:
        """
        Fire with the args of the first event C{event} received by C{client}
        on C{namespace} that no earlier wait consumed and that satisfies
        C{predicate}.

        @param predicate: a test on the args list, or L{None} for any.
        @return: a L{Deferred} firing with the event's args (C{bytes} for
            binary).
        """

        def matches(report: Report) -> bool:
            return (report.get("type") == "event"
                    and report.get("client") == client
                    and report.get("namespace") == namespace
                    and report.get("event") == event
                    and (predicate is None or bool(predicate(report["args"]))))

        seen = self.events(client, event, namespace)
        d = self.waitForReport(
            matches, timeout,
            f"no {event!r} event for {client} on {namespace} "
            f"({len(seen)} such events had arrived when the wait began)")
        return d.addCallback(lambda report: report["args"])

    def waitForDisconnect(self, client: str, namespace: str = "/",
                          timeout: float = DEFAULT_TIMEOUT) -> Deferred[str]:
        """
        Fire with the reason of the next unconsumed disconnect of C{client}
        from C{namespace}, in socket.io-client's words
        (C{"io server disconnect"}, C{"io client disconnect"},
        C{"transport close"}, ...).
        """

        def matches(report: Report) -> bool:
            return (report.get("type") == "disconnect"
                    and report.get("client") == client
                    and report.get("namespace") == namespace)

        d = self.waitForReport(matches, timeout,
                               f"no disconnect of {client} from {namespace}")
        return d.addCallback(lambda report: report["reason"])

    def waitForUpgrade(self, client: str,
                       timeout: float = DEFAULT_TIMEOUT) -> Deferred[str]:
        """
        Fire with the transport C{client} upgraded to (C{"websocket"}).
        """

        def matches(report: Report) -> bool:
            return (report.get("type") == "upgrade"
                    and report.get("client") == client)

        d = self.waitForReport(matches, timeout, f"no upgrade of {client}")
        return d.addCallback(lambda report: report["transport"])

    def waitForConnect(self, client: str, namespace: str = "/",
                       timeout: float = DEFAULT_TIMEOUT) -> Deferred[Report]:
        """
        Fire with a connect report not answering a L{connect} call: an extra
        namespace from C{namespaces=[...]}, or a reconnection.
        """

        def matches(report: Report) -> bool:
            return (report.get("type") == "connect"
                    and report.get("client") == client
                    and report.get("namespace") == namespace)

        return self.waitForReport(matches, timeout,
                                  f"no connect of {client} to {namespace}")

    def events(self, client: str, event: str,
               namespace: str = "/") -> List[List[Any]]:
        """
        Return the args of every C{event} C{client} received on
        C{namespace} so far, consumed by a wait or not.
        """
        return [args for name, args in self._eventLog.get((client, namespace), [])
                if name == event]

    # -- commands ----------------------------------------------------------

    def _command(self, command: Dict[str, Any],
                 timeout: float = DEFAULT_TIMEOUT) -> Deferred[Report]:
        """
        Send C{command} with a fresh C{ref}; fire with the reply report.
        """
        if self._ended is not None:
            return fail(self._ended)
        if self._quitting or self._process is None:
            return fail(DriverExited(f"{self.kind} driver is quitting"))
        ref = next(self._refs)

        def cancel(d: Deferred[Report]) -> None:
            self._pending.pop(ref, None)

        d: Deferred[Report] = Deferred(cancel)
        self._pending[ref] = d
        line = json.dumps({**command, "ref": ref}) + "\n"
        self._process.write(line.encode("utf-8"))
        d.addTimeout(timeout, self._reactor, onTimeoutCancel=self._timeoutFailure(
            f"no reply to {command.get('cmd')} "
            f"({command.get('client')} {command.get('event', '')})"))
        return d

    def connect(self, client: str, url: str, namespace: str = "/",
                namespaces: Sequence[str] = (), timeout: float = DEFAULT_TIMEOUT,
                **opts: Any) -> Deferred[Report]:
        """
        Connect C{client} to C{namespace} of the server at C{url}.

        @param client: the client's name; several namespaces of one name
            share one connection (one Manager, one python C{Client}).
        @param url: C{"http://127.0.0.1:PORT"}, without the namespace.
        @param namespaces: more namespaces to connect on the same
            connection now; their connect reports come through
            L{waitForConnect}.  python-socketio can only connect namespaces
            this way: a later L{connect} of another namespace of a connected
            python client fails with L{DriverError}.
        @param opts: client options: C{transports}, C{auth}, C{extraHeaders},
            C{query}, C{path}, C{timeout} (ms) are understood by both kinds,
            and so are the TLS options C{ca} (PEM text) and
            C{rejectUnauthorized}; anything else goes to socket.io-client's C{Manager} and is
            ignored by python-socketio.  C{reconnection} is off unless given
            (node only).
        @return: a L{Deferred} firing with the connect report
            (C{id}, C{transport}, ...) or failing with L{ConnectError}.
        """
        return self._command({"cmd": "connect", "client": client, "url": url,
                              "namespace": namespace,
                              "namespaces": list(namespaces),
                              "opts": encodeBinary(opts)}, timeout)

    def emit(self, client: str, event: str, *args: Any, namespace: str = "/",
             ack: bool = False,
             timeout: float = DEFAULT_TIMEOUT) -> Deferred[Optional[List[Any]]]:
        """
        Emit C{event} with C{args} from C{client}.

        @param ack: ask for an acknowledgement.
        @param timeout: seconds to wait for the ack (or the driver's reply).
        @return: a L{Deferred} firing with the ack's args list when C{ack}
            is true (failing with L{DriverError} if no ack came in time),
            else with L{None} once the client emitted.
        """
        d = self._command({"cmd": "emit", "client": client,
                           "namespace": namespace, "event": event,
                           "args": encodeBinary(list(args)), "ack": ack,
                           "timeout": int(timeout * 1000)}, timeout + 5)
        return d.addCallback(
            lambda report: report["args"] if report["type"] == "ack" else None)

    def onAck(self, client: str, event: str,
              reply: Optional[Sequence[Any]] = None,
              namespace: str = "/") -> Deferred[None]:
        """
        From now on, answer the server's C{event} asking for an ack with
        C{reply} (L{None}: echo the event's args).  May be called before
        C{client} connects.
        """
        d = self._command({"cmd": "onAck", "client": client,
                           "namespace": namespace, "event": event,
                           "reply": None if reply is None
                           else encodeBinary(list(reply))})
        return d.addCallback(lambda _: None)

    def disconnect(self, client: str, namespace: str = "/") -> Deferred[None]:
        """
        Disconnect C{client} from C{namespace}; the reason comes through
        L{waitForDisconnect}.  A python client on several namespaces refuses
        (L{DriverError}): use L{close}.
        """
        d = self._command({"cmd": "disconnect", "client": client,
                           "namespace": namespace})
        return d.addCallback(lambda _: None)

    def close(self, client: str) -> Deferred[None]:
        """
        Disconnect every namespace of C{client} and forget it; the name can
        then connect afresh.
        """
        d = self._command({"cmd": "close", "client": client})
        return d.addCallback(lambda _: None)

    def transport(self, client: str) -> Deferred[Optional[str]]:
        """
        Fire with C{client}'s current transport: C{"websocket"} or
        C{"polling"}.
        """
        d = self._command({"cmd": "transport", "client": client})
        return d.addCallback(lambda report: report["name"])

    def roundtrip(self, value: Any) -> Deferred[Tuple[Any, int]]:
        """
        Pass C{value} through the driver's binary codec and back, with no
        server involved.

        @return: a L{Deferred} firing with C{(value, buffers)}: the value as
            it came back and how many binary values the driver saw in it.
        """
        d = self._command({"cmd": "roundtrip", "value": encodeBinary(value)})
        return d.addCallback(
            lambda report: (decodeBinary(report["value"]), report["buffers"]))

    def quit(self, timeout: float = QUIT_TIMEOUT) -> Deferred[None]:
        """
        Ask the child to close its clients and exit; kill it if it has not
        after C{timeout} seconds.  Fires once the process was reaped.  Safe
        to call more than once (and as a test cleanup).
        """
        if self._ended is not None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._endWaiters.append(d)
        if not self._quitting:
            self._quitting = True
            if self._process is not None:
                try:
                    self._process.write(b'{"cmd":"quit"}\n')
                    self._process.closeStdin()
                except Exception:
                    self.log.failure("writing quit to the {kind} driver",
                                     kind=self.kind)
            self._killCall = self._reactor.callLater(timeout, self._kill)
        return d

    def _kill(self) -> None:
        self._killCall = None
        self.log.warn("{kind} driver did not quit; killing it", kind=self.kind)
        if self._process is None:
            return
        try:
            self._process.signalProcess("KILL")
        except ProcessExitedAlready:
            pass


def startDriver(kind: str, reactor: Optional[Any] = None,
                timeout: float = START_TIMEOUT) -> Deferred[ClientDriver]:
    """
    Spawn a driver of C{kind} and fire with it once it is ready.

    Fails with L{SkipTest} when the kind cannot run here (e.g. no
    C{tests/interop/node_modules}), or with C{RuntimeError} for the same
    reason when C{CI=true}.  Pair it with C{testCase.addCleanup(driver.quit)}.

    @param kind: C{"node"} or C{"python"}.
    @param reactor: the reactor to spawn on and time with (default: the
        global one).
    @param timeout: seconds the child has to say it is ready.
    """
    try:
        requireKind(kind)
        driver = ClientDriver(kind, reactor)
        driver.spawn()
    except BaseException:
        return fail()
    return driver.whenReady(timeout)


if TYPE_CHECKING:
    from twisted.trial.unittest import TestCase as _MixinBase
else:
    _MixinBase = object


class DriverTestMixin(_MixinBase):
    """
    Mix into a scenario written once; subclass it with C{TestCase} and
    C{kind = "node"} / C{kind = "python"} to run it against each client.

    @cvar kind: the client kind this test case drives.
    @cvar timeout: trial's per-test timeout, in seconds.
    """

    kind: str = "node"
    timeout = 60

    def startDriver(self) -> Deferred[ClientDriver]:
        """
        Start a driver of C{self.kind}, quit at cleanup.
        """

        def started(driver: ClientDriver) -> ClientDriver:
            self.addCleanup(driver.quit)
            return driver

        return startDriver(self.kind).addCallback(started)
