"""
A headless Chromium for the browser tests: Debian's C{/usr/bin/chromium}
driven by C{tests/interop/browser.js} (playwright-core) in a child
process, one JSON line per command and answer.

L{startBrowser} skips the test with the reason when Chromium, node or
playwright-core is missing, and fails it instead when C{CI=true} (CI
installs Chromium in C{.ci/run}: a missing browser there is a broken
build, not a reason to skip).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest

from tests.support.clients import INTEROP, NODE_MODULES

BROWSER_DRIVER = INTEROP / "browser.js"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

#: seconds Chromium has to start, and one command to answer
START_TIMEOUT = 60.0
COMMAND_TIMEOUT = 30.0


class BrowserError(Exception):
    """
    A command failed in the page (its message says why).
    """


def browserSkipReason() -> Optional[str]:
    """
    Why the browser tests cannot run here, if they cannot.
    """
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing: apt-get install chromium (CI installs it in .ci/run)"
    if shutil.which("node") is None:
        return "node is not on PATH"
    if not (NODE_MODULES / "playwright-core" / "package.json").exists():
        return f"{NODE_MODULES} has no playwright-core: run `npm ci --prefix tests/interop`"
    return None


def requireBrowser() -> None:
    """
    Skip the calling test when the browser cannot run here; fail it when
    C{CI=true}.
    """
    reason = browserSkipReason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"browser tests cannot run on CI: {reason}")
    raise SkipTest(reason)


class _Protocol(ProcessProtocol):
    def __init__(self, browser: Browser) -> None:
        self.browser = browser

    def outReceived(self, data: bytes) -> None:
        self.browser._out(data)

    def errReceived(self, data: bytes) -> None:
        self.browser._err(data)

    def processEnded(self, reason: Failure) -> None:
        self.browser._ended(reason)


class Browser:
    """
    One Chromium with one page. Every command returns a L{Deferred} firing
    with its value (or failing with L{BrowserError}).
    """

    log = Logger()

    def __init__(self, reactor: Any, env: Optional[Dict[str, str]] = None) -> None:
        self.reactor = reactor
        self.version: Optional[str] = None
        self.stderr = b""
        self._buffer = b""
        self._next = 1
        self._pending: Dict[int, Deferred[Any]] = {}
        self._ready: Deferred[Browser] = Deferred()
        self._done: Deferred[None] = Deferred()
        self._finished = False
        environ = dict(os.environ, CHROMIUM=CHROMIUM, **(env or {}))
        self._process = reactor.spawnProcess(
            _Protocol(self), shutil.which("node") or "node", ["node", str(BROWSER_DRIVER)], env=environ,
            path=str(INTEROP))

    def _out(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            if not line.strip():
                continue
            message = json.loads(line)
            if "ready" in message:
                if message["ready"]:
                    self.version = message.get("version")
                    self._ready.callback(self)
                else:
                    self._ready.errback(BrowserError(message.get("error", "chromium did not start")))
                continue
            d = self._pending.pop(message["id"], None)
            if d is None:
                continue
            if message["ok"]:
                d.callback(message.get("value"))
            else:
                d.errback(BrowserError(message["error"]))

    def _err(self, data: bytes) -> None:
        self.stderr += data
        for line in data.decode("utf-8", "replace").splitlines():
            self.log.info("browser: {line}", line=line)

    def _ended(self, reason: Failure) -> None:
        self._finished = True
        error = BrowserError(f"the browser driver ended: {reason.value}; stderr: "
                             f"{self.stderr.decode('utf-8', 'replace')[-2000:]}")
        if not self._ready.called:
            self._ready.errback(error)
        for d in list(self._pending.values()):
            d.errback(error)
        self._pending.clear()
        self._done.callback(None)

    def whenReady(self) -> Deferred[Browser]:
        """
        Fire once Chromium runs.
        """
        return self._ready.addTimeout(START_TIMEOUT, self.reactor)

    def command(self, cmd: str, wait: float = COMMAND_TIMEOUT, **fields: Any) -> Deferred[Any]:
        """
        Send one command; its value.
        """
        if self._finished:
            return fail(BrowserError("the browser driver ended"))
        ident = self._next
        self._next += 1
        d: Deferred[Any] = Deferred()
        self._pending[ident] = d
        self._process.write(json.dumps(dict(fields, id=ident, cmd=cmd)).encode("utf-8") + b"\n")
        return d.addTimeout(wait, self.reactor)

    def goto(self, url: str) -> Deferred[Any]:
        """
        Navigate and wait for the load event.
        """
        return self.command("goto", url=url)

    def click(self, selector: str) -> Deferred[Any]:
        """
        Click an element once it is visible and enabled.
        """
        return self.command("click", selector=selector)

    def fill(self, selector: str, value: str) -> Deferred[Any]:
        """
        Type into an input.
        """
        return self.command("fill", selector=selector, value=value)

    def waitFor(self, expression: str, timeout: float = 10.0) -> Deferred[Any]:
        """
        Until C{expression} is truthy in the page (checked on every
        animation frame); its value.
        """
        return self.command("waitFor", timeout + 5, expression=expression, timeout=int(timeout * 1000))

    def text(self, selector: str) -> Deferred[Any]:
        """
        An element's text.
        """
        return self.command("text", selector=selector)

    def eval(self, expression: str) -> Deferred[Any]:
        """
        Evaluate in the page; the (JSON) value.
        """
        return self.command("eval", expression=expression)

    def download(self, selector: str) -> Deferred[Any]:
        """
        Click and fire with the download's C{{name, text}}.
        """
        return self.command("download", selector=selector)

    def screenshot(self, path: str, fullPage: bool = False) -> Deferred[Any]:
        """
        A PNG of the page at C{path}.
        """
        return self.command("screenshot", path=path, fullPage=fullPage)

    def external(self) -> Deferred[List[str]]:
        """
        The URLs of other origins the page tried to fetch (aborted).
        """
        return self.command("external")

    def quit(self) -> Deferred[None]:
        """
        Close the browser; fire once the driver exited (killed after 10 s).
        """
        if self._finished:
            return self._done
        try:
            self._process.write(b'{"id": 0, "cmd": "quit"}\n')
            self._process.closeStdin()
        except Exception:
            pass

        def kill() -> None:
            if not self._finished:
                try:
                    self._process.signalProcess("KILL")
                except Exception:
                    pass

        call = self.reactor.callLater(10, kill)
        self._done.addBoth(lambda result: call.cancel() if call.active() else None)
        return self._done


def startBrowser(testCase: Any, reactor: Any, **env: str) -> Deferred[Browser]:
    """
    A L{Browser} for C{testCase}, closed at its cleanup; skips (or fails
    under C{CI=true}) when Chromium cannot run here.
    """
    try:
        requireBrowser()
    except BaseException:
        return fail()
    browser = Browser(reactor, env)
    testCase.addCleanup(browser.quit)
    return browser.whenReady()


__all__ = ["Browser", "BrowserError", "ProcessDone", "browserSkipReason", "requireBrowser", "startBrowser"]
