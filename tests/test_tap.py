"""
Tests for L{crm_im.tap} and the twistd plugin: options become one
L{Config}; bad options are usage errors; the plugin is discoverable.
"""

from __future__ import annotations

import os
import re
from typing import Any

import attrs

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from crm_im.config import Config
from crm_im.tap import Options


def parse(*args: str) -> Config:
    """
    Parse C{args} as C{twistd crm_im} would.
    """
    options = Options()
    options.parseOptions(list(args))
    config: Config = options.config
    return config


class OptionsTests(SynchronousTestCase):
    """
    Command line and environment to L{Config}.
    """

    def setUp(self) -> None:
        self.saved = {key: os.environ.get(key) for key in ("PORT", "QUIET")}
        for key in self.saved:
            os.environ.pop(key, None)

    def tearDown(self) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def test_defaults(self) -> None:
        """
        Without options: port 8080, data in C{crm_im-data}, the contract's
        Engine.IO defaults, every origin allowed, event logging on.
        """
        config = parse()
        self.assertEqual(config.listen, ("tcp:8080:backlog=1024",))
        self.assertEqual(config.dataDir, "crm_im-data")
        self.assertEqual((config.pingInterval, config.pingTimeout, config.maxPayload), (25000, 20000, 1_000_000))
        self.assertEqual(config.connectTimeout, 45000)
        self.assertEqual(
            (config.engineConfig().maxBufferedBytes, config.engineConfig().maxBufferedPackets),
            (16 * 1024 * 1024, 20000),
        )
        self.assertIsNone(config.corsOrigins)
        self.assertTrue(config.logEvents)

    def test_portFromEnvironment(self) -> None:
        """
        C{PORT} in the environment picks the port; C{--port} wins over it.
        """
        os.environ["PORT"] = "9001"
        self.assertEqual(parse().listen, ("tcp:9001:backlog=1024",))
        self.assertEqual(parse("--port", "9002").listen, ("tcp:9002:backlog=1024",))

    def test_listenRepeatable(self) -> None:
        """
        C{--listen} takes endpoint strings, several times, and replaces the
        port.
        """
        config = parse("--listen", "tcp:1:interface=127.0.0.1", "--listen", "unix:/tmp/s", "--port", "5")
        self.assertEqual(config.listen, ("tcp:1:interface=127.0.0.1", "unix:/tmp/s"))

    def test_badEndpoints(self) -> None:
        """
        A C{--listen} or C{--admin-listen} that is no server endpoint is a
        one-line usage error naming the option and the value (it was a
        traceback after the store had been opened); good ones pass.
        """
        for option in ("--listen", "--admin-listen"):
            for value in ("bogus:thing", "tcp:abc", "tcp:80:nope=1", ""):
                with self.subTest(option=option, value=value):
                    error = self.assertRaises(usage.UsageError, parse, option, value, "--admin-token", "t" * 20)
                    self.assertIn(f"{option}: bad endpoint {value!r}", str(error))
                    self.assertNotIn("\n", str(error))
        config = parse("--admin-listen", "tcp:9090:interface=127.0.0.1", "--admin-token", "t" * 20)
        self.assertEqual(config.adminListen, ("tcp:9090:interface=127.0.0.1",))

    def test_tuning(self) -> None:
        """
        Every tuning option lands in the config.
        """
        config = parse(
            "--ping-interval", "1000", "--ping-timeout", "2000", "--max-payload", "5000",
            "--connect-timeout", "3000", "--max-message-length", "10", "--presence-grace", "1.5",
            "--cors-origin", "https://a.example", "--cors-origin", "https://b.example",
            "--sqlite-synchronous", "normal", "--quiet", "--data-dir", "/tmp/x",
            "--commit-interval", "2.5", "--max-buffered-bytes", "65536", "--max-buffered-packets", "100",
            "--release-memory-after", "0.5",
        )
        self.assertEqual((config.pingInterval, config.pingTimeout, config.maxPayload), (1000, 2000, 5000))
        self.assertEqual((config.connectTimeout, config.maxMessageLength), (3000, 10))
        self.assertEqual(config.presenceGrace, 1.5)
        self.assertEqual(config.corsOrigins, ("https://a.example", "https://b.example"))
        self.assertEqual(config.sqliteSynchronous, "NORMAL")
        self.assertEqual(config.commitInterval, 0.0025)
        self.assertEqual(config.releaseMemoryAfter, 0.5)
        self.assertEqual(parse("--release-memory-after", "0").releaseMemoryAfter, 0)
        self.assertEqual(parse().releaseMemoryAfter, 10)
        self.assertFalse(config.logEvents)
        self.assertEqual(config.dataDir, "/tmp/x")
        self.assertEqual(config.engineConfig().corsOrigins, config.corsOrigins)
        self.assertEqual(
            (config.engineConfig().maxBufferedBytes, config.engineConfig().maxBufferedPackets), (65536, 100)
        )

    def test_legacyClientsAndRecovery(self) -> None:
        """
        Engine.IO v3 clients are refused unless C{--allow-eio3}; connection
        state recovery is on for 120 s by default, C{--recovery-window}
        sets it (C{0}: off) and the service's Socket.IO server gets both.
        """
        from twisted.internet import reactor

        from crm_im.server import CRMIMService
        from crm_im.storage.memory import MemoryMessageStore

        config = parse()
        self.assertFalse(config.allowEIO3)
        self.assertFalse(config.engineConfig().allowEIO3)
        self.assertEqual(config.recoveryWindow, 120)
        config = parse("--allow-eio3", "--recovery-window", "2.5")
        self.assertTrue(config.engineConfig().allowEIO3)
        self.assertEqual(config.recoveryWindow, 2.5)
        self.assertEqual(parse("--recovery-window", "0").recoveryWindow, 0)
        for args in (["--recovery-window", "-1"], ["--recovery-window", "soon"], ["--recovery-window", "100000"]):
            with self.subTest(args=args):
                error = self.assertRaises(usage.UsageError, parse, *args)
                self.assertIn("recovery-window", str(error))
        for window, expected in ((2.5, 2500), (0.0, 0)):
            with self.subTest(window=window):
                directory = self.mktemp()
                # Built, never started: nothing is scheduled on the reactor.
                service = CRMIMService(
                    attrs.evolve(config, dataDir=directory, recoveryWindow=window), reactor, MemoryMessageStore()
                )
                self.assertTrue(service.sio.engine.config.allowEIO3)
                self.assertEqual(service.sio.config.recoveryWindow, expected)
                self.assertEqual(service.sio.recovery is not None, expected > 0)

    def test_quietFromEnvironment(self) -> None:
        """
        C{QUIET=1} turns the per-event log lines off.
        """
        os.environ["QUIET"] = "1"
        self.assertFalse(parse().logEvents)

    def test_badValues(self) -> None:
        """
        Nonsense values are usage errors, naming the option.
        """
        for args in (
            ["--port", "abc"],
            ["--port", "70000"],
            ["--ping-interval", "0"],
            ["--max-payload", "-5"],
            ["--presence-grace", "soon"],
            ["--sqlite-synchronous", "sometimes"],
            ["--commit-interval", "-1"],
            ["--commit-interval", "5000"],
            ["--commit-interval", "nan"],
            ["--release-memory-after", "-1"],
            ["--release-memory-after", "nan"],
            ["--release-memory-after", "inf"],
            ["--max-buffered-bytes", "0"],
            ["--max-buffered-packets", "many"],
            # (0 was silently the default, 7)
            ["--file-link-days", "0"],
            ["--file-link-days", "-1"],
            ["--file-link-days", "nan"],
            ["--file-link-days", "inf"],
        ):
            with self.subTest(args=args):
                error = self.assertRaises(usage.UsageError, parse, *args)
                self.assertIn(args[0].lstrip("-").split("-")[0], str(error))


    def test_fileLinkDays(self) -> None:
        """
        C{--file-link-days} must be more than 0: 0 is refused, not taken
        as the default (7) as it was; a fraction of a day is fine.
        """
        self.assertEqual(parse().fileLinkDays, 7.0)
        self.assertEqual(parse("--file-link-days", "0.5").fileLinkDays, 0.5)
        error = self.assertRaises(usage.UsageError, parse, "--file-link-days", "0")
        self.assertIn("--file-link-days must be more than 0", str(error))

    def test_uploadExpiry(self) -> None:
        """
        C{--upload-expiry} must be more than 0 too: 0 was taken as the
        default (3600).
        """
        self.assertEqual(parse().uploadExpiry, 3600.0)
        self.assertEqual(parse("--upload-expiry", "90").uploadExpiry, 90.0)
        for bad in ("0", "inf"):
            error = self.assertRaises(usage.UsageError, parse, "--upload-expiry", bad)
            self.assertIn("--upload-expiry must be more than 0", str(error))
        self.assertRaises(usage.UsageError, parse, "--upload-expiry", "-1")


    def test_helpText(self) -> None:
        """
        C{--help} wraps each option's text without runs of spaces (an
        C{opt_} method's docstring kept its line breaks and indentation
        as runs of spaces: C{(repeatable)         instead of}).
        """
        for line in Options().getUsage().splitlines():
            text = line.strip()
            if text.startswith("-"):
                text = re.split(r" {2,}", text, maxsplit=1)[-1]
            self.assertNotRegex(text, r"\S {2,}\S", line)


class PluginTests(SynchronousTestCase):
    """
    The twistd plugin.
    """

    def test_discoverable(self) -> None:
        """
        C{twistd} finds a service maker named C{crm_im} built on
        L{crm_im.tap}.
        """
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("crm_im", makers)
        self.assertEqual(makers["crm_im"].module, "crm_im.tap")
        self.assertIsInstance(makers["crm_im"].options(), Options)


class HangupTests(SynchronousTestCase):
    """
    SIGHUP stops the server as SIGTERM does.
    """

    def test_stopOnHangup(self) -> None:
        """
        Once the reactor runs a SIGHUP handler is installed; it stops the
        reactor from the signal (C{callFromThread}), the path of SIGTERM,
        and sets no exit signal (the process exits 0).
        """
        import signal

        from crm_im.tap import _stopOnHangup

        installed: list[tuple[int, Any]] = []
        self.patch(signal, "signal", lambda number, handler: installed.append((number, handler)))
        reactor = _RecordingReactor()
        _stopOnHangup(reactor)
        self.assertEqual(installed, [])
        for call in reactor.whenRunning:
            call()
        ((number, handler),) = installed
        self.assertEqual(number, signal.SIGHUP)
        handler(signal.SIGHUP, None)
        self.assertEqual(reactor.fromThread, [reactor.stop])
        self.assertIsNone(getattr(reactor, "_exitSignal", None))


class _RecordingReactor:
    """
    What L{crm_im.tap._stopOnHangup} asks of a reactor, recorded.
    """

    def __init__(self) -> None:
        self.whenRunning: list[Any] = []
        self.fromThread: list[Any] = []

    def callWhenRunning(self, call: Any) -> None:
        self.whenRunning.append(call)

    def callFromThread(self, call: Any) -> None:
        self.fromThread.append(call)

    def stop(self) -> None:
        raise AssertionError("stopped directly from the signal handler")


class DataDirModeTests(SynchronousTestCase):
    """
    L{crm_im.startup.checkDataDir} keeps the data directory to its owner.
    """

    def check(self, path: str) -> list[str]:
        """
        Check C{path}; the log events' text.
        """
        from twisted.logger import capturedLogs, formatEvent

        from crm_im.startup import checkDataDir

        with capturedLogs() as events:
            checkDataDir(path)
        return [formatEvent(event) for event in events]

    def test_createdForItsOwnerOnly(self) -> None:
        """
        A data directory the server creates is readable by its owner only
        (whatever the umask), and nothing is said about it.
        """
        path = os.path.join(self.mktemp(), "data")
        old = os.umask(0o022)
        try:
            logged = self.check(path)
        finally:
            os.umask(old)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o700)
        self.assertEqual(logged, [])

    def test_openDirectoryWarned(self) -> None:
        """
        An existing data directory others may read is left as it is, with
        a warning that says how to close it.
        """
        path = self.mktemp()
        os.makedirs(path)
        os.chmod(path, 0o755)
        (line,) = self.check(path)
        self.assertIn("is open to other users of this machine (mode 755)", line)
        self.assertIn("chmod 700", line)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o755)
        os.chmod(path, 0o700)
        self.assertEqual(self.check(path), [])
