#!/usr/bin/env python3
"""
Slow-reader harness: clients that log in and then stop reading their
socket, against a real C{twistd -n crm_im} (SQLite, fresh temporary data
directory), while senders send to them and a control group of normal
clients keeps exchanging messages.

    python bench/slow_readers.py --slow 1000 --max-buffered-bytes 262144
    python bench/slow_readers.py --slow 30 --senders 5 --control-pairs 5 --phase-seconds 3

What a slow reader is: a raw WebSocket client (C{bench/rawclient.py}) with
a small receive buffer (C{--rcvbuf}) that, once logged in, never calls
C{recv} again: its TCP window closes, the server's socket buffer fills,
then Twisted's transport buffer (64 KiB before it pauses the session),
then the session's own bounded queue (C{--max-buffered-bytes} /
C{--max-buffered-packets}); past that bound the server must close the
session (counted in C{crm_im_buffer_overflows_total}). Slow readers
announce an Ethernet-sized MSS (C{--mss 1448}): on loopback's 64 KiB one
Linux sizes the server's socket send buffer at tcp_wmem's maximum (4 MiB)
at once, which no real network path does (C{--mss 0} to see it).

Phases, each C{--phase-seconds} long at least, the control group running
throughout (C{--control-pairs} pairs, each client sending its partner
C{--control-rate} messages a second; latency is send to arrival, both ends
in this process):

 1. C{before}: the control group alone;
 2. C{during}: C{--slow} clients connect, log in and stop reading;
    C{--senders} clients send them messages (C{--kind message}, stored
    then relayed) or inline files (C{--kind file}) of C{--size}
    characters, each sender keeping C{--window} in flight, until every
    slow reader's receipts come back C{offline} (the server dropped it and
    keeps what follows for it) or C{--max-per-reader} were sent to it;
 3. C{after}: the control group alone again.

The server's RSS, sessions, queued bytes and open descriptors are sampled
every C{--sample-every} seconds throughout. It fails (exit status 1) if a
slow reader was not dropped for its buffer, a control message was lost, or
the server's peak RSS passed C{--rss-limit-mib} over its RSS at the start
of phase 2. One JSON report on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rawclient import Closed, RawClient  # noqa: E402
from serverprocess import Server  # noqa: E402


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """
    Count, p50, p99 and max of C{values} (milliseconds).
    """
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def pick(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 2)

    return {"n": len(ordered), "p50": pick(0.50), "p99": pick(0.99), "max": round(ordered[-1], 2)}


class ControlGroup:
    """
    Pairs of normal clients sending each other timestamped messages.
    """

    def __init__(self, port: int, pairs: int, rate: float) -> None:
        self.port = port
        self.pairs = pairs
        self.rate = rate
        self.clients: list[RawClient] = []
        self.phase = "before"
        self.latencies: dict[str, list[float]] = {"before": [], "during": [], "after": []}
        self.sent = 0
        self.received = 0
        self.refused = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self._running = True

    async def start(self, prefix: str) -> None:
        """
        Connect and log in the pairs, then start every client sending.
        """
        for i in range(2 * self.pairs):
            client = RawClient(self.port)
            await client.connect()
            await client.login(f"{prefix}-control-{i}")
            client.onEvent = self._event
            self.clients.append(client)
            self._tasks.append(asyncio.ensure_future(client.run()))
        for i, client in enumerate(self.clients):
            partner = f"{prefix}-control-{i ^ 1}"
            self._tasks.append(asyncio.ensure_future(self._send(client, partner, i)))

    def _event(self, event: str, args: list[Any]) -> None:
        if event != "message":
            return
        content = args[0].get("content", "")
        sentAt, _, phase = content.partition(" ")
        self.received += 1
        self.latencies.setdefault(phase.split(" ")[0], []).append((time.monotonic() - float(sentAt)) * 1000)

    async def _send(self, client: RawClient, partner: str, index: int) -> None:
        interval = 1 / self.rate
        # spread the senders over the interval
        await asyncio.sleep(interval * index / len(self.clients))
        nextAt = time.monotonic()
        n = 0
        while self._running and not client.closed:
            content = f"{time.monotonic():.6f} {self.phase} control"
            future = client.emit("message", {"id": f"c{index}-{n}", "toId": partner, "content": content, "type": "text"}, ack=True)
            self.sent += 1
            n += 1
            assert future is not None
            future.add_done_callback(self._receipt)
            nextAt += interval
            await asyncio.sleep(max(0.0, nextAt - time.monotonic()))

    def _receipt(self, future: "asyncio.Future[Any]") -> None:
        if future.cancelled() or future.exception() is not None:
            self.refused += 1
            return
        result = future.result()
        if not isinstance(result, dict) or "error" in result:
            self.refused += 1

    async def stop(self) -> None:
        """
        Stop sending, give the last messages a second to arrive, close.
        """
        self._running = False
        await asyncio.sleep(1.0)  # the last messages in flight arrive
        for client in self.clients:
            client.close()
        for task in self._tasks:
            task.cancel()


async def connectSlow(
    port: int, prefix: str, count: int, rcvbuf: int, concurrency: int, mss: int, fast: bool = False
) -> list[RawClient]:
    """
    C{count} clients that log in, then never read again (with C{fast}:
    that keep reading, for the comparison run C{--fast-readers}).
    """
    clients: list[RawClient] = []
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            client = RawClient(port, rcvbuf=rcvbuf, mss=mss or None)
            await client.connect()
            await client.login(f"{prefix}-slow-{i}")
            clients.append(client)
            if fast:
                asyncio.ensure_future(client.run())

    await asyncio.gather(*(one(i) for i in range(count)))
    return clients


async def sendToSlow(
    port: int, prefix: str, targets: list[str], senders: int, size: int, window: int, maxPerReader: int,
    kind: str = "file",
) -> dict[str, Any]:
    """
    Senders send to each target until its receipts say C{offline}
    (dropped by the server, what comes next is queued for it) or
    C{maxPerReader} were sent to it: C{message}s of C{size} characters
    (each stored before it is relayed), or C{file_transfer}s with C{size}
    characters of base64 data (relayed as they are, stored only once the
    target is gone).
    """
    padding = "s" * size

    def payload(target: str, ref: str) -> tuple[str, dict[str, Any]]:
        if kind == "file":
            return "file_transfer", {"id": ref, "toId": target, "fileName": "slow.bin", "data": padding}
        return "message", {"id": ref, "toId": target, "content": padding, "type": "text"}
    clients = []
    tasks = []
    for i in range(senders):
        client = RawClient(port)
        await client.connect()
        await client.login(f"{prefix}-sender-{i}")
        clients.append(client)
        tasks.append(asyncio.ensure_future(client.run()))
    pending = list(reversed(targets))
    perTarget: dict[str, dict[str, int]] = {}
    errors: list[Any] = []

    async def sender(client: RawClient, index: int) -> None:
        n = 0
        while pending and not client.closed:
            target = pending.pop()
            counts = perTarget[target] = {"sent": 0, "delivered": 0, "offline": 0, "errors": 0}
            inFlight: set[asyncio.Future[Any]] = set()
            while (inFlight or counts["sent"] < maxPerReader) and counts["offline"] == 0 and not client.closed:
                while len(inFlight) < window and counts["sent"] < maxPerReader:
                    future = client.emit(*payload(target, f"s{index}-{n}"), ack=True)
                    assert future is not None
                    inFlight.add(future)
                    counts["sent"] += 1
                    n += 1
                done, inFlight = await asyncio.wait(inFlight, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    if future.exception() is None and isinstance(future.result(), dict):
                        status = future.result().get("status")
                        if status in ("delivered", "offline"):
                            counts[status] += 1
                        elif "error" in future.result():
                            counts["errors"] += 1
                            errors.append(future.result()["error"])
            if inFlight:
                await asyncio.wait(inFlight)

    started = time.monotonic()
    await asyncio.gather(*(sender(client, i) for i, client in enumerate(clients)))
    seconds = time.monotonic() - started
    for client in clients:
        client.close()
    for task in tasks:
        task.cancel()
    sent = sum(c["sent"] for c in perTarget.values())
    return {
        "seconds": round(seconds, 2),
        "messagesSent": sent,
        "bytesSent": sent * size,
        "delivered": sum(c["delivered"] for c in perTarget.values()),
        "offline": sum(c["offline"] for c in perTarget.values()),
        "targetsSeenOffline": sum(1 for c in perTarget.values() if c["offline"]),
        "errors": len(errors),
        "firstErrors": errors[:3],
        "maxDeliveredToOne": max((c["delivered"] for c in perTarget.values()), default=0),
        "minDeliveredToOne": min((c["delivered"] for c in perTarget.values()), default=0),
    }


def kernelSendQueue(port: int) -> int:
    """
    Bytes waiting in the kernel's send buffers of the server's
    connections on C{port} (C{ss}'s Send-Q), which the server's own bounds
    do not count: Linux grows a socket's send buffer up to
    C{net.ipv4.tcp_wmem}'s maximum.
    """
    try:
        out = subprocess.run(["ss", "-tnH", f"( sport = :{port} )"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return 0
    total = 0
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2].isdigit():
            total += int(fields[2])
    return total


class Sampler:
    """
    The server's RSS and gauges every C{every} seconds, with the phase.
    """

    def __init__(self, server: Server, every: float) -> None:
        self.server = server
        self.every = every
        self.samples: list[dict[str, Any]] = []
        self.phase = "before"
        self._running = True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        while self._running:
            try:
                gauges = await loop.run_in_executor(None, self.server.gauges)
            except OSError:
                gauges = None
            if gauges is not None:
                self.samples.append({
                    "t": round(time.monotonic() - started, 2),
                    "phase": self.phase,
                    "rss_mib": round(gauges["rss_kib"] / 1024, 1),
                    "sessions": gauges["crm_im_connections"],
                    "buffered_kib": round(gauges["crm_im_buffered_bytes"] / 1024, 1),
                    "overflows": gauges["crm_im_buffer_overflows_total"],
                    "ping_timeouts": gauges["crm_im_ping_timeouts_total"],
                    "fds": len(os.listdir(f"/proc/{self.server.pid}/fd")),
                    "kernel_sendq_mib": round(await loop.run_in_executor(None, kernelSendQueue, self.server.port) / 2**20, 1),
                })
            await asyncio.sleep(self.every)

    def stop(self) -> None:
        self._running = False


async def scenario(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """
    The three phases (module docstring) against C{server}; the report.
    """
    prefix = f"sr{int(time.time())}"
    report: dict[str, Any] = {"fdsIdle": len(os.listdir(f"/proc/{server.pid}/fd"))}
    sampler = Sampler(server, args.sample_every)
    samplerTask = asyncio.ensure_future(sampler.run())
    control = ControlGroup(server.port, args.control_pairs, args.control_rate)
    await control.start(prefix)
    await asyncio.sleep(args.phase_seconds)
    atStart = server.gauges()
    report["rssBeforeMiB"] = round(atStart["rss_kib"] / 1024, 1)
    report["fdsBefore"] = len(os.listdir(f"/proc/{server.pid}/fd"))
    control.phase = sampler.phase = "during"
    started = time.monotonic()
    slow = await connectSlow(
        server.port, prefix, args.slow, args.rcvbuf, args.connect_concurrency, args.mss, args.fast_readers
    )
    report["slowLoginSeconds"] = round(time.monotonic() - started, 2)
    report["senders"] = await sendToSlow(
        server.port, prefix, [f"{prefix}-slow-{i}" for i in range(args.slow)], args.senders, args.size,
        args.window, args.max_per_reader, args.kind,
    )
    # the phase lasts at least phase-seconds
    await asyncio.sleep(max(0.0, args.phase_seconds - (time.monotonic() - started)))
    report["duringSeconds"] = round(time.monotonic() - started, 2)
    control.phase = sampler.phase = "after"
    await asyncio.sleep(args.phase_seconds)
    await control.stop()
    sampler.stop()
    await samplerTask
    if args.fast_readers:
        for client in slow:
            client.close()
    # The server closes a dropped slow reader's connection itself: its
    # WebSocket close cannot get through, so after Autobahn's close
    # handshake timeout (5 s) it aborts the TCP connection. The slow
    # readers keep theirs open until then.
    fdsReleased, releaseSeconds, end = await asyncio.get_running_loop().run_in_executor(
        None, lambda: server.waitUntil(lambda _: len(os.listdir(f"/proc/{server.pid}/fd")) <= report["fdsIdle"], 30.0)
    )
    report["end"] = {
        "overflows": end["crm_im_buffer_overflows_total"],
        "pingTimeouts": end["crm_im_ping_timeouts_total"],
        "sessions": end["crm_im_connections"],
        "rssMiB": round(end["rss_kib"] / 1024, 1),
        "fds": len(os.listdir(f"/proc/{server.pid}/fd")),
        "fdsReleased": fdsReleased,
        "fdsReleasedAfterSeconds": round(releaseSeconds, 2),
    }
    for client in slow:
        client.close()
    report["control"] = {
        "sent": control.sent,
        "received": control.received,
        "refused": control.refused,
        **{phase: percentiles(values) for phase, values in control.latencies.items()},
    }
    report["peak"] = {
        "rssMiB": max(s["rss_mib"] for s in sampler.samples),
        "bufferedKiB": max(s["buffered_kib"] for s in sampler.samples),
        "sessions": max(s["sessions"] for s in sampler.samples),
        "fds": max(s["fds"] for s in sampler.samples),
        "kernelSendQueueMiB": max(s["kernel_sendq_mib"] for s in sampler.samples),
    }
    report["samples"] = sampler.samples
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slow", type=int, default=1000, help="slow readers")
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--window", type=int, default=8, help="messages in flight per sender")
    parser.add_argument("--kind", choices=("file", "message"), default="message",
                        help="what the senders send: file_transfer (relayed, not stored while the target is "
                             "online) or message (stored, then relayed)")
    parser.add_argument("--size", type=int, default=8192, help="characters per message or file to a slow reader")
    parser.add_argument("--max-per-reader", type=int, default=2000)
    parser.add_argument("--fast-readers", action="store_true",
                        help="the comparison run: the same clients keep reading, and get --max-per-reader each "
                             "(give the mean a slow reader got before it was dropped: the same load, nobody slow)")
    parser.add_argument("--rcvbuf", type=int, default=4096, help="slow readers' SO_RCVBUF")
    parser.add_argument("--mss", type=int, default=1448,
                        help="the TCP MSS slow readers announce (0: loopback's, with which the server's kernel "
                             "buffers up to 4 MiB per connection at once)")
    parser.add_argument("--connect-concurrency", type=int, default=50)
    parser.add_argument("--control-pairs", type=int, default=25)
    parser.add_argument("--control-rate", type=float, default=5.0, help="messages a second per control client")
    parser.add_argument("--phase-seconds", type=float, default=10.0)
    parser.add_argument("--sample-every", type=float, default=0.5)
    parser.add_argument("--max-buffered-bytes", type=int, default=262144)
    parser.add_argument("--max-buffered-packets", type=int, default=20000)
    parser.add_argument("--rss-limit-mib", type=float, default=None,
                        help="fail past this growth of the peak RSS (default: 2 x slow x (bound + 64 KiB) + 64 MiB)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra crm_im option (repeatable)")
    parser.add_argument("--port", type=int, default=None,
                        help="use the server already running on this port (with --pid; started with the same "
                             "--max-buffered-* values, --rate-messages 0 and --rate-events 0)")
    parser.add_argument("--pid", type=int, default=None, help="the pid of the server of --port")
    args = parser.parse_args(argv)
    if args.port is not None:
        if args.pid is None:
            parser.error("--port needs --pid")
        server = Server.attach(args.port, args.pid)
    else:
        server = Server(
            "--max-buffered-bytes", str(args.max_buffered_bytes),
            "--max-buffered-packets", str(args.max_buffered_packets),
            # the senders are few and fast; the control group is what is measured
            "--rate-messages", "0", "--rate-events", "0", *args.server_arg,
        )
    report: dict[str, Any] = {"settings": vars(args)}
    try:
        server.waitServing()
        report.update(asyncio.run(scenario(server, args)))
        limit = args.rss_limit_mib
        if limit is None:
            limit = 2 * args.slow * (args.max_buffered_bytes + 65536) / 2**20 + 64
        growth = report["peak"]["rssMiB"] - report["rssBeforeMiB"]
        report["rssGrowthMiB"] = round(growth, 1)
        problems = []
        if args.fast_readers:
            if report["end"]["overflows"]:
                problems.append(f"{report['end']['overflows']:.0f} readers that read were dropped for their buffer")
        elif report["end"]["overflows"] < args.slow:
            problems.append(f"{args.slow - report['end']['overflows']:.0f} slow readers not dropped for their buffer")
        if report["control"]["received"] < report["control"]["sent"] or report["control"]["refused"]:
            problems.append(f"control group: {report['control']}")
        if report["senders"]["errors"]:
            problems.append(f"senders got {report['senders']['errors']} refusals: {report['senders']['firstErrors']}")
        if not report["end"]["fdsReleased"]:
            problems.append(f"the server kept {report['end']['fds'] - report['fdsIdle']} more descriptors than at idle")
        if growth > limit:
            problems.append(f"peak RSS grew {growth:.1f} MiB (limit {limit:.1f})")
        report["problems"] = problems
    except Closed as error:
        report["problems"] = [f"a client was closed: {error}"]
    finally:
        report["exitCode"] = server.stop()
    print(json.dumps(report, indent=2))
    return 1 if report.get("problems", ["did not finish"]) else 0


if __name__ == "__main__":
    sys.exit(main())
