"""
A real C{twistd -n crm_im} for the reliability harnesses (C{bench/churn.py},
C{bench/slow_readers.py}): started on a free loopback port with a fresh
SQLite data directory, read from outside only (its C{/metrics} gauges and
the RSS of its pid from C{/proc}), stopped with SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
NODE_MODULES = REPO / "tests" / "interop" / "node_modules"

#: The gauges that must be back to their idle value once every client is
#: gone: sessions, users, bytes queued, the reactor's timers.
GAUGES = ("crm_im_connections", "crm_im_users_online", "crm_im_buffered_bytes", "crm_im_reactor_delayed_calls")


def idleAgain(idle: dict[str, float]) -> Callable[[dict[str, float]], bool]:
    """
    The condition "every client is gone": no more connections, users
    online or reactor timers than at C{idle} (a scrape taken before the
    clients came), and nothing queued.
    """

    def condition(samples: dict[str, float]) -> bool:
        return (
            samples["crm_im_connections"] <= idle["crm_im_connections"]
            and samples["crm_im_users_online"] <= idle["crm_im_users_online"]
            and samples["crm_im_buffered_bytes"] == 0
            and samples["crm_im_reactor_delayed_calls"] <= idle["crm_im_reactor_delayed_calls"]
        )

    return condition


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def procStatus(pid: int) -> dict[str, int]:
    """
    C{VmRSS} and C{VmHWM} (peak RSS) of C{pid}, in KiB.
    """
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    return values


def scrape(url: str, timeout: float = 10) -> dict[str, float]:
    """
    Every sample of C{GET url/metrics}; labelled samples are summed under
    their name (C{crm_im_connections} is both transports).
    """
    with urllib.request.urlopen(url + "/metrics", timeout=timeout) as response:
        text = response.read().decode("utf-8")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name] = samples.get(sample.name, 0.0) + sample.value
    return samples


class Server:
    """
    One C{twistd -n crm_im} child process (or, with L{Server.attach}, one
    already running, which L{stop} leaves alone).

    @ivar url: C{http://127.0.0.1:PORT}.
    @ivar pid: the server's pid (C{twistd -n} runs in the process spawned).
    """

    def __init__(self, *options: str, dataDir: str | None = None) -> None:
        self.port = freePort()
        self.url = f"http://127.0.0.1:{self.port}"
        self._ownDir = dataDir is None
        self.dataDir = dataDir if dataDir is not None else tempfile.mkdtemp(prefix="crm_im-bench-")
        self.logPath = os.path.join(self.dataDir, "server.log")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self._log = open(self.logPath, "wb")
        self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             "crm_im", "--listen", f"tcp:{self.port}:interface=127.0.0.1:backlog=1024",
             "--data-dir", self.dataDir, "--quiet", *options],
            cwd=str(REPO), env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.pid = self.process.pid
    @classmethod
    def attach(cls, port: int, pid: int) -> "Server":
        """
        A server started by someone else (a test), on C{port} with C{pid}.
        """
        server = cls.__new__(cls)
        server.port = port
        server.url = f"http://127.0.0.1:{port}"
        server.pid = pid
        server.process = None
        server._ownDir = False
        return server

    def waitServing(self, timeout: float = 30.0) -> None:
        """
        Wait until C{/metrics} answers.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.logText()}")
            try:
                scrape(self.url)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not serving after {timeout}s:\n{self.logText()}")
                time.sleep(0.1)

    def gauges(self) -> dict[str, float]:
        """
        The scrape, with the RSS of the process (KiB) as C{rss_kib} and
        C{rss_peak_kib}.
        """
        samples = scrape(self.url)
        status = procStatus(self.pid)
        samples["rss_kib"] = status["VmRSS"]
        samples["rss_peak_kib"] = status["VmHWM"]
        return samples

    def waitUntil(
        self, condition: Callable[[dict[str, float]], bool], timeout: float, every: float = 0.25
    ) -> tuple[bool, float, dict[str, float]]:
        """
        Scrape every C{every} seconds until C{condition(samples)} holds or
        C{timeout} passes (the server's state is only visible by scraping).

        @return: whether it held, the seconds it took, the last samples.
        """
        started = time.monotonic()
        while True:
            samples = self.gauges()
            if condition(samples):
                return True, time.monotonic() - started, samples
            if time.monotonic() - started > timeout:
                return False, time.monotonic() - started, samples
            time.sleep(every)

    def logText(self) -> str:
        """
        What the server logged so far.
        """
        with open(self.logPath, "rb") as log:
            return log.read().decode("utf-8", "replace")

    def stop(self, timeout: float = 30.0) -> int | None:
        """
        SIGTERM, wait for the exit (SIGKILL past C{timeout}), remove the
        data directory if it was made here.
        """
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        if self._ownDir:
            shutil.rmtree(self.dataDir, ignore_errors=True)
        return self.process.returncode
