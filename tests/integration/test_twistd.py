"""
crm_im as operators run it: a real C{twistd} process (the plugin and
C{crm_im.tac}), stopped with SIGTERM, killed with SIGKILL, started with
bad options, and installed with pip into a fresh virtualenv.

Each test spawns C{twistd} with C{sys.executable}, the repository root as
working directory and C{PYTHONPATH}, on a free loopback port picked just
before, and waits until C{GET /} answers (a bounded poll driven by the
reactor).  Clients are the real ones of L{tests.support.clients}.
"""

from __future__ import annotations

import os
import socket
import sys
import sysconfig
from pathlib import Path
from typing import Any, Dict, Generator, List, Optional

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from tests.support.clients import requireKind, startDriver
from tests.support.markers import MarkedBytes

Inline = Generator[Deferred[Any], Any, Any]

REPO = Path(__file__).resolve().parent.parent.parent
TWISTD = "from twisted.scripts.twistd import run; run()"
#: seconds a server has to answer C{GET /} after spawning
START_TIMEOUT = 30.0
#: seconds a server has to exit after a signal
EXIT_TIMEOUT = 15.0


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerProcess(ProcessProtocol):
    """
    One child process: its output, and a L{Deferred} for its end.

    @ivar output: everything it wrote on stdout and stderr.
    @ivar reason: why it ended (L{ProcessDone} or L{ProcessTerminated}), or
        L{None} while it runs.
    """

    def __init__(self) -> None:
        self._marked = MarkedBytes()
        self.output = self._marked.data
        self.reason: Optional[Failure] = None
        self.port: Optional[int] = None
        self._endWaiters: List[Deferred[None]] = []

    def outReceived(self, data: bytes) -> None:
        """
        Keep stdout, and fire the waiters whose text has appeared.
        """
        self._marked.feed(data)

    def whenOutputContains(self, marker: bytes) -> Deferred[None]:
        """
        A new L{Deferred} that fires once C{marker} has appeared in the
        output.
        """
        return self._marked.whenContains(marker)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        """
        Remember why the process ended and fire L{ended}; output waiters
        still waiting fail.
        """
        self.reason = reason
        waiters, self._endWaiters = self._endWaiters, []
        for waiter in waiters:
            waiter.callback(None)
        self._marked.failWaiting(reason)

    def whenEnded(self) -> Deferred[None]:
        """
        A new L{Deferred} that fires once the process ended.
        """
        d: Deferred[None] = Deferred()
        if self.reason is not None:
            d.callback(None)
        else:
            self._endWaiters.append(d)
        return d

    @property
    def text(self) -> str:
        """
        The output, decoded.
        """
        return self.output.decode("utf-8", "replace")

    def signal(self, name: str) -> None:
        """
        Send a signal, if the process still runs.
        """
        assert self.transport is not None
        try:
            self.transport.signalProcess(name)
        except ProcessExitedAlready:
            pass

    def exitCode(self) -> Optional[int]:
        """
        The exit code, or L{None} while running or after a signal.
        """
        if self.reason is None:
            return None
        if self.reason.check(ProcessDone):
            return 0
        value = self.reason.value
        assert isinstance(value, ProcessTerminated)
        return value.exitCode


class ProcessTestCase(TestCase):
    """
    A test case that spawns processes, killed at cleanup.
    """

    timeout = 120

    def spawn(self, args: List[str], env: Optional[Dict[str, str]] = None,
              cwd: Path = REPO) -> ServerProcess:
        """
        Spawn C{args}; SIGKILL it at cleanup if it still runs.
        """
        process = ServerProcess()
        environment = dict(os.environ)
        environment["PYTHONPATH"] = str(REPO)
        environment.update(env or {})
        reactor.spawnProcess(process, args[0], args, env=environment, path=str(cwd))

        def reap() -> Optional[Deferred[None]]:
            if process.reason is not None:
                return None
            process.signal("KILL")
            return process.whenEnded()

        self.addCleanup(reap)
        return process

    def spawnTwistd(self, dataDir: str, *options: str, port: Optional[int] = None,
                    python: str = sys.executable, env: Optional[Dict[str, str]] = None,
                    cwd: Path = REPO, quiet: bool = True) -> ServerProcess:
        """
        Spawn C{twistd -n crm_im} on a free loopback port.

        @param quiet: C{--quiet} (no line per event: C{[连接]}, C{[断开]}, ...).
        """
        port = port if port is not None else freePort()
        dataDir = os.path.abspath(dataDir)
        process = self.spawn(
            [python, "-c", TWISTD, "-n", "--pidfile=", "crm_im",
             "--listen", f"tcp:{port}:interface=127.0.0.1", "--data-dir", dataDir,
             *(["--quiet"] if quiet else []), *options], env=env, cwd=cwd)
        process.port = port
        return process

    @inlineCallbacks
    def waitUntilServing(self, process: ServerProcess,
                         timeout: float = START_TIMEOUT) -> Inline:
        """
        Wait until the server logs that it listens, then C{GET /}; fail if
        the process exits first or C{timeout} passes.

        @return: the decoded body of C{GET /}.
        """
        try:
            yield process.whenOutputContains(b"crm_im listening on").addTimeout(timeout, reactor)
        except Exception:
            self.fail(f"the server did not start serving within {timeout}s:\n{process.text}")
        response = yield treq.get(f"http://127.0.0.1:{process.port}/", persistent=False, timeout=10)
        body = yield response.json()
        return body

    @inlineCallbacks
    def waitForExit(self, process: ServerProcess, timeout: float = EXIT_TIMEOUT) -> Inline:
        """
        Wait until the process ends; return its exit code.
        """
        yield process.whenEnded().addTimeout(timeout, reactor)
        return process.exitCode()

    @inlineCallbacks
    def driver(self, kind: str) -> Inline:
        """
        Start a client driver of C{kind}, quit at cleanup.
        """
        driver = yield startDriver(kind)
        self.addCleanup(driver.quit)
        return driver


class TwistdTests(ProcessTestCase):
    """
    C{twistd -n crm_im} and C{twistd -ny crm_im.tac}.
    """

    def test_sigterm(self) -> Deferred[None]:
        """
        On SIGTERM every connected client (Node over WebSocket and over
        long-polling, python-socketio) gets C{server:shutdown} before its
        connection closes, and the process exits 0.
        """
        return self.cleanStop("TERM")

    def test_sighup(self) -> Deferred[None]:
        """
        SIGHUP stops the server as SIGTERM does (it killed it at once, exit
        129, without C{server:shutdown}).
        """
        return self.cleanStop("HUP")

    @inlineCallbacks
    def cleanStop(self, signal: str) -> Inline:
        """
        Start the server, connect clients, send C{signal}: each client gets
        C{server:shutdown} then its disconnect, and the process exits 0.
        """
        # Before the server starts: a missing client kind skips the test
        # without leaving a process behind.
        requireKind("node")
        requireKind("python")
        process = self.spawnTwistd(self.mktemp())
        status = yield self.waitUntilServing(process)
        self.assertEqual(status["status"], "running")
        url = f"http://127.0.0.1:{process.port}"
        node, python = yield gatherResults([self.driver("node"), self.driver("python")])
        clients = [(node, "ws", {"transports": ["websocket"]}),
                   (node, "poll", {"transports": ["polling"]}),
                   (python, "py", {})]
        for driver, name, opts in clients:
            yield driver.connect(name, url, **opts)
            yield driver.emit(name, "user:login", {"id": name, "name": name}, ack=True)
        process.signal(signal)
        for driver, name, _ in clients:
            (shutdown,) = yield driver.waitFor(name, "server:shutdown")
            self.assertEqual(set(shutdown), {"message", "timestamp"})
            self.assertIsInstance(shutdown["timestamp"], int)
            reason = yield driver.waitForDisconnect(name)
            self.assertIn(reason, ("io server disconnect", "transport close"))
            names = [r.get("event", r["type"]) for r in driver.reports
                     if r.get("client") == name and r["type"] in ("event", "disconnect")]
            self.assertEqual(names[-2:], ["server:shutdown", "disconnect"])
        code = yield self.waitForExit(process)
        self.assertEqual(code, 0, process.text)

    @inlineCallbacks
    def test_durableAfterSIGKILL(self) -> Inline:
        """
        200 messages to an offline user whose receipts all came survive a
        SIGKILL right after: restarted on the same data directory, the
        server delivers all 200 on the user's login, in order, none twice.
        """
        dataDir = self.mktemp()
        process = self.spawnTwistd(dataDir)
        yield self.waitUntilServing(process)
        driver = yield self.driver("node")
        url = f"http://127.0.0.1:{process.port}"
        yield driver.connect("sender", url, transports=["websocket"])
        yield driver.emit("sender", "user:login", {"id": "s", "name": "S"}, ack=True)
        count = 200
        receipts = yield gatherResults([
            driver.emit("sender", "message", {"id": f"m{i}", "toId": "r", "content": f"#{i}"},
                        ack=True, timeout=30)
            for i in range(count)])
        self.assertEqual([r[0]["status"] for r in receipts], ["offline"] * count)
        process.signal("KILL")
        yield self.waitForExit(process)
        yield driver.waitForDisconnect("sender")
        restarted = self.spawnTwistd(dataDir)
        yield self.waitUntilServing(restarted)
        url = f"http://127.0.0.1:{restarted.port}"
        yield driver.connect("recipient", url, transports=["websocket"])
        yield driver.emit("recipient", "user:login", {"id": "r", "name": "R"}, ack=True)
        yield driver.waitFor("recipient", "message", timeout=30,
                             predicate=lambda args: args[0]["id"] == f"m{count - 1}")
        yield driver.connect("sender2", url, transports=["websocket"])
        yield driver.emit("sender2", "user:login", {"id": "s", "name": "S"}, ack=True)
        yield driver.emit("sender2", "message", {"id": "last", "toId": "r", "content": "end"},
                          ack=True)
        yield driver.waitFor("recipient", "message",
                             predicate=lambda args: args[0]["id"] == "last")
        got = [args[0] for args in driver.events("recipient", "message")]
        self.assertEqual([m["id"] for m in got], [f"m{i}" for i in range(count)] + ["last"])
        seqs = [m["seq"] for m in got]
        self.assertEqual(seqs, sorted(set(seqs)))
        restarted.signal("TERM")
        self.assertEqual((yield self.waitForExit(restarted)), 0, restarted.text)

    @inlineCallbacks
    def test_tac(self) -> Inline:
        """
        C{twistd -ny crm_im.tac} takes its options from C{CRM_IM_OPTIONS}
        and serves the same server.
        """
        port = freePort()
        dataDir = os.path.abspath(self.mktemp())
        process = self.spawn(
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "-y", "crm_im.tac"],
            env={"CRM_IM_OPTIONS":
                 f"--listen tcp:{port}:interface=127.0.0.1 --data-dir {dataDir} --quiet"})
        process.port = port
        status = yield self.waitUntilServing(process)
        self.assertEqual((status["status"], status["onlineUsers"]), ("running", 0))
        self.assertTrue(os.path.isdir(dataDir))
        process.signal("TERM")
        self.assertEqual((yield self.waitForExit(process)), 0, process.text)

    @inlineCallbacks
    def test_badOptions(self) -> Inline:
        """
        Invalid options end C{twistd crm_im} with a non-zero exit and a
        usage error naming the option, before anything listens.
        """
        cases = [(["--port", "abc"], "--port must be a number"),
                 (["--sqlite-synchronous", "nope"], "--sqlite-synchronous must be one of"),
                 (["--ping-interval", "-5"], "--ping-interval must be positive")]
        processes = [(self.spawn([sys.executable, "-c", TWISTD, "-n", "--pidfile=", "crm_im",
                                  "--data-dir", self.mktemp(), *args]), message)
                     for args, message in cases]
        for process, message in processes:
            code = yield self.waitForExit(process)
            self.assertNotEqual(code, 0, process.text)
            self.assertIn(message, process.text)
            self.assertIn("Usage:", process.text)


def slowTestsWanted() -> bool:
    """
    Whether tests taking about half a minute run: on CI, or when asked
    for with C{CRM_IM_SLOW_TESTS=1}.
    """
    return os.environ.get("CRM_IM_SLOW_TESTS") == "1" or os.environ.get("CI") == "true"


class PipInstallTests(ProcessTestCase):
    """
    The package as pip installs it (about 30 s: a venv, and a build that
    fetches setuptools and wheel into an isolated environment).
    """

    def setUp(self) -> None:
        """
        Skip unless slow tests are wanted.
        """
        if not slowTestsWanted():
            raise SkipTest("set CRM_IM_SLOW_TESTS=1 (or CI=true) to run the pip install test")

    @inlineCallbacks
    def runCommand(self, args: List[str], cwd: Path) -> Inline:
        """
        Run a command to its end; fail the test unless it exits 0.
        """
        process = self.spawn(args, cwd=cwd, env={"PYTHONPATH": "", "PIP_NO_INPUT": "1"})
        code = yield self.waitForExit(process, timeout=120)
        self.assertEqual(code, 0, f"{args} failed:\n{process.text}")
        return process.text

    @inlineCallbacks
    def test_pipInstall(self) -> Inline:
        """
        C{pip install} of the repository into a fresh virtualenv installs
        the plugin with the package: that venv's C{twistd crm_im}, run away
        from the source tree, finds it and serves.
        """
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        venv = base / "venv"
        yield self.runCommand([sys.executable, "-m", "venv", str(venv)], cwd=base)
        python = str(venv / "bin" / "python")
        # The dependencies come from the interpreter running the tests.
        newSite = (yield self.runCommand([python, "-c",
                                   "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  cwd=base)).strip()
        paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        Path(newSite, "_test_deps.pth").write_text("\n".join(sorted(paths)) + "\n")
        yield self.runCommand([python, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check",
                        "--quiet", str(REPO)], cwd=base)
        where = yield self.runCommand([python, "-c", "import crm_im; print(crm_im.__file__)"], cwd=base)
        self.assertTrue(where.strip().startswith(str(venv)), where)
        process = self.spawnTwistd(str(base / "data"), python=python, cwd=base,
                                   env={"PYTHONPATH": ""})
        status = yield self.waitUntilServing(process)
        self.assertEqual(status["status"], "running")
        process.signal("TERM")
        self.assertEqual((yield self.waitForExit(process)), 0, process.text)
