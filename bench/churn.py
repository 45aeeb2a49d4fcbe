#!/usr/bin/env python3
"""
Churn harness: many short-lived clients against a real C{twistd -n crm_im}
(durable SQLite store, fresh temporary data directory), then a check that
the server let go of all of them.

    python bench/churn.py --cycles 10000 --concurrency 100
    python bench/churn.py --cycles 300 --warmup 100 --concurrency 30 --recovery-window 2

Each cycle (C{bench/churn.js}, real socket.io-client 4.8 over WebSocket) is
a user of its own: connect, C{user:login}, one message to a sink user kept
online for the run (its receipt must say C{delivered}), disconnect; every
C{--abrupt-every}'th cycle cuts its TCP connection instead, so the server
holds its socket for connection state recovery (C{--recovery-window}
seconds) and must drop it afterwards.

Steps: start the server; read the gauges at idle; run C{--warmup} cycles
and wait until the gauges are back to idle (no connection, no user online,
nothing queued, no more reactor timers than at idle) and, if the server
gives memory back when quiet (C{crm_im_memory_releases_total},
C{--release-memory-after}), until it has done so: the RSS then is the
baseline; run C{--cycles} cycles, wait the same way, read the RSS again.
It fails (exit status 1) if a cycle failed, the gauges never came back
(a leaked session, user, buffer or timer), the memory release did not
come or the RSS ended more than
C{--rss-tolerance} above the baseline. One JSON report on stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serverprocess import GAUGES, Server, idleAgain  # noqa: E402

HERE = Path(__file__).resolve().parent


def runClients(
    url: str, cycles: int, concurrency: int, prefix: str, abruptEvery: int, size: int, transport: str = "websocket"
) -> dict[str, Any]:
    """
    Run C{bench/churn.js}; its JSON report.
    """
    result = subprocess.run(
        ["node", str(HERE / "churn.js"), "--url", url, "--cycles", str(cycles), "--concurrency", str(concurrency),
         "--prefix", prefix, "--abrupt-every", str(abruptEvery), "--size", str(size), "--transport", transport],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"churn.js failed ({result.returncode}):\n{result.stderr}")
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


class PeakSampler(threading.Thread):
    """
    Samples the server's RSS (and sessions) while the clients run.
    """

    def __init__(self, server: Server, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.every = every
        self.done = threading.Event()
        self.peakRSS = 0.0
        self.peakConnections = 0.0
        self.peakTimers = 0.0

    def run(self) -> None:
        while not self.done.wait(self.every):
            try:
                samples = self.server.gauges()
            except OSError:
                continue
            self.peakRSS = max(self.peakRSS, samples["rss_kib"])
            self.peakConnections = max(self.peakConnections, samples["crm_im_connections"])
            self.peakTimers = max(self.peakTimers, samples["crm_im_reactor_delayed_calls"])


def phase(server: Server, name: str, idle: dict[str, float], args: argparse.Namespace, cycles: int) -> dict[str, Any]:
    """
    One run of the clients, then the wait until the server is idle again.
    """
    sampler = PeakSampler(server)
    sampler.start()
    started = time.monotonic()
    clients = runClients(
        server.url, cycles, args.concurrency, f"{name}{int(time.time())}", args.abrupt_every, args.size, args.transport
    )
    sampler.done.set()
    sampler.join()
    atEnd = server.gauges()
    settled, settleSeconds, after = server.waitUntil(idleAgain(idle), args.settle_timeout)
    released: bool | None = None
    if settled and RELEASES in atEnd:
        # The server gives back what the spell took once it has been quiet
        # for --release-memory-after seconds: the RSS is read after that.
        released, _, after = server.waitUntil(
            lambda samples: samples[RELEASES] > atEnd[RELEASES], args.settle_timeout
        )
    return {
        "clients": clients,
        "seconds": round(time.monotonic() - started, 2),
        "atClientsEnd": {key: atEnd[key] for key in (*GAUGE_KEYS, "rss_kib")},
        "settled": settled,
        "settleSeconds": round(settleSeconds, 2),
        "memoryReleased": released,
        "after": {key: after[key] for key in REPORT_KEYS},
        "peakRSSKiB": sampler.peakRSS,
        "peakConnections": sampler.peakConnections,
        "peakDelayedCalls": sampler.peakTimers,
    }


GAUGE_KEYS = GAUGES
#: how many times the server gave memory back after a busy spell
RELEASES = "crm_im_memory_releases_total"
REPORT_KEYS = (
    *GAUGE_KEYS,
    "crm_im_sessions_opened_total",
    "crm_im_sessions_closed_total",
    "crm_im_buffer_overflows_total",
    "crm_im_ping_timeouts_total",
    "rss_kib",
    "rss_peak_kib",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=10000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--abrupt-every", type=int, default=2, help="every Nth cycle cuts TCP (0: none)")
    parser.add_argument("--size", type=int, default=120, help="message content length")
    parser.add_argument("--transport", choices=("websocket", "polling"), default="websocket",
                        help="polling: long-polling only, every cycle disconnects cleanly")
    parser.add_argument("--recovery-window", type=float, default=5.0)
    parser.add_argument("--settle-timeout", type=float, default=120.0, help="seconds to wait for idle gauges")
    parser.add_argument("--rss-tolerance", type=float, default=0.10)
    parser.add_argument("--server-arg", action="append", default=[], help="extra crm_im option (repeatable)")
    args = parser.parse_args(argv)
    server = Server("--recovery-window", str(args.recovery_window), *args.server_arg)
    report: dict[str, Any] = {"settings": vars(args)}
    try:
        server.waitServing()
        idle = server.gauges()
        report["idle"] = {key: idle[key] for key in REPORT_KEYS}
        report["warmup"] = phase(server, "warm", idle, args, args.warmup)
        baseline = report["warmup"]["after"]["rss_kib"]
        report["main"] = phase(server, "churn", idle, args, args.cycles)
        final = report["main"]["after"]["rss_kib"]
        report["rssBaselineKiB"] = baseline
        report["rssFinalKiB"] = final
        report["rssGrowth"] = round(final / baseline - 1, 4)
        problems = []
        for name in ("warmup", "main"):
            if report[name]["clients"]["failures"]:
                problems.append(f"{name}: {report[name]['clients']['failures']} cycles failed")
            if report[name]["memoryReleased"] is False:
                problems.append(f"{name}: no memory release within {args.settle_timeout}s of going idle")
            if not report[name]["settled"]:
                problems.append(f"{name}: gauges not back to idle after {args.settle_timeout}s: {report[name]['after']}")
        if report["rssGrowth"] > args.rss_tolerance:
            problems.append(f"RSS grew {report['rssGrowth']:.1%} (baseline {baseline} KiB, final {final} KiB)")
        report["problems"] = problems
    finally:
        report["exitCode"] = server.stop()
    print(json.dumps(report, indent=2))
    return 1 if report.get("problems", ["did not finish"]) else 0


if __name__ == "__main__":
    sys.exit(main())
