#!/usr/bin/env python3
"""
The soak: crm_im holding (nearly) 20,000 logged-in connections for ten
minutes, with heartbeats (the load generator answers every PING) and a
trickle of messages between a few other clients meanwhile.

    python bench/soak.py                              # 19,960 held + 20 chatting, 600 s
    python bench/soak.py --n 2000 --hold-secs 60      # a quick look

The server runs on core 0 (``twistd -n crm_im``, SQLite, a fresh data
directory), the shared load generator (``../shared/bench/loadgen``, set up
by ``bench/run.py``) on core 1: one ``idle --login`` process logs the N
clients in and holds them; once they are all online a second one,
``relay`` with a few clients at a low rate, runs until the hold ends. The
server's ``/metrics`` and RSS are sampled every few seconds. The verdict:
every held connection still up at the end, no PING timeout, no buffer
overflow, no session closed during the hold, every trickle message
delivered; RSS during the hold (it must not grow). The sandbox allows
20,000 open files per process (``ulimit -Hn``), so N plus the trickle's
clients stays under it.

A harness, not a test: it samples the server from outside on a timer.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import run as benchrun  # noqa: E402  (bench/run.py: where the shared bench is set up)
from serverprocess import freePort, procStatus, scrape  # noqa: E402

#: the counters of /metrics the verdict reads
COUNTERS = (
    "crm_im_sessions_opened_total",
    "crm_im_sessions_closed_total",
    "crm_im_ping_timeouts_total",
    "crm_im_buffer_overflows_total",
)
_READY_RE = re.compile(r"idle: (\d+) ready \(")


def raiseFileLimit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rssKiB(pid: int) -> int | None:
    try:
        return procStatus(pid).get("VmRSS")
    except OSError:
        return None


def waitListening(port: int, server: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"soak: the server exited with {server.returncode} before listening")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    sys.exit("soak: the server did not answer GET / in time")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=19960, help="connections logged in and held")
    parser.add_argument("--hold-secs", type=int, default=600)
    parser.add_argument("--max-login-secs", type=int, default=2400)
    parser.add_argument("--login-timeout-secs", type=int, default=120, help="one login's time limit")
    parser.add_argument("--trickle-clients", type=int, default=20)
    parser.add_argument("--trickle-rate", type=int, default=10, help="messages per second between them")
    parser.add_argument("--sample-secs", type=float, default=5.0)
    parser.add_argument("--crm-args", default="", help="more crm_im options")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "bench")
    parser.add_argument("--out", type=Path, default=None, help="JSON result (default: print only)")
    a = parser.parse_args(argv)

    bench = benchrun.locate_bench(a.shared, None, setup=True)
    loadgen = bench / "loadgen" / "loadgen.js"
    twistd = Path(sys.executable).with_name("twistd")
    data = Path(tempfile.mkdtemp(prefix="crm_im-soak-"))
    port = freePort()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    serverLog = open(data / "server.log", "wb")
    server = subprocess.Popen(
        ["taskset", "-c", "0", str(twistd), "-n", "--pidfile=", "crm_im", "--port", str(port),
         "--data-dir", str(data / "data"), *a.crm_args.split()],
        cwd=str(REPO), env=env, stdout=serverLog, stderr=subprocess.STDOUT, preexec_fn=raiseFileLimit,
    )
    result: dict[str, Any] = {"n": a.n, "hold_s": a.hold_secs, "trickle": None, "samples": []}
    idle = trickle = None
    try:
        waitListening(port, server)
        log = lambda msg: print(f"[soak] {msg}", file=sys.stderr, flush=True)  # noqa: E731
        log(f"server pid {server.pid} on port {port}; logging {a.n} clients in")
        started = time.monotonic()
        idle = subprocess.Popen(
            ["taskset", "-c", "1", "node", str(loadgen), "idle", "--port", str(port), "--pid", str(server.pid),
             "--n", str(a.n), "--login", "--hold-secs", str(a.hold_secs), "--max-login-secs", str(a.max_login_secs),
             "--login-timeout-secs", str(a.login_timeout_secs)],
            stdout=subprocess.PIPE, stderr=open(data / "idle.log", "wb"), preexec_fn=raiseFileLimit,
        )
        holdStart = None
        ready = a.n
        baseline: dict[str, float] = {}
        while idle.poll() is None:
            time.sleep(a.sample_secs)
            try:
                # a login storm's reactor turns can be long: wait up to a minute
                now = scrape(f"http://127.0.0.1:{port}", timeout=60)
            except OSError as error:
                # A login storm's turns can keep the reactor from answering
                # for a while (each login fans out to every user): noted,
                # not fatal.
                result.setdefault("metrics_unanswered", []).append(
                    [round(time.monotonic() - started, 1), str(error)]
                )
                continue
            sample = {
                "t": round(time.monotonic() - started, 1),
                "rss_kib": rssKiB(server.pid),
                "online": now.get("crm_im_users_online", 0),
                "connections": now.get("crm_im_connections", 0),
                "delayed_calls": now.get("crm_im_reactor_delayed_calls"),
                "buffered_bytes": now.get("crm_im_buffered_bytes"),
                **{name: now.get(name, 0) for name in COUNTERS},
            }
            result["samples"].append(sample)
            readyLine = _READY_RE.search((data / "idle.log").read_text(errors="replace"))
            if holdStart is None and readyLine is not None:
                # the load generator has logged in all it could and holds them now
                ready = int(readyLine.group(1))
                holdStart = time.monotonic()
                baseline = {name: now.get(name, 0) for name in COUNTERS}
                result["login_phase_s"] = round(holdStart - started, 1)
                log(f"{ready} of {a.n} online after {result['login_phase_s']} s; trickle starts")
                trickle = subprocess.Popen(
                    ["taskset", "-c", "1", "node", str(loadgen), "relay", "--port", str(port),
                     "--clients", str(a.trickle_clients), "--rates", str(a.trickle_rate),
                     "--step-secs", str(max(10, a.hold_secs - 30)), "--warmup-secs", "2", "--retry-failed=false"],
                    stdout=subprocess.PIPE, stderr=open(data / "trickle.log", "wb"),
                )
        # the hold's end: the last sample with every client online (the
        # load generator closes them all once it has reported)
        inHold = [
            sample for sample in result["samples"]
            if holdStart is not None and sample["t"] >= result["login_phase_s"] and sample["connections"] >= ready
        ]
        final = inHold[-1] if inHold else {}
        result["idle"] = json.loads(idle.stdout.read() or b"null") if idle.stdout else None
        if trickle is not None:
            out, _ = trickle.communicate(timeout=120)
            result["trickle"] = json.loads(out or b"null")
        during = {name: final.get(name, 0) - baseline.get(name, 0) for name in COUNTERS} if baseline else None
        result["during_hold"] = during
        held = [sample["rss_kib"] for sample in inHold]
        result["rss_hold_kib"] = {"first": held[0], "last": held[-1], "max": max(held)} if held else None
        idleResult = result["idle"] or {}
        steps = (result["trickle"] or {}).get("steps") or []
        result["verdict"] = {
            "all_logged_in": idleResult.get("ready") == a.n,
            "all_held": idleResult.get("held_at_end") == idleResult.get("ready"),
            "no_ping_timeouts": bool(during) and during["crm_im_ping_timeouts_total"] == 0,
            "no_buffer_overflows": bool(during) and during["crm_im_buffer_overflows_total"] == 0,
            # the trickle's own clients close when it ends, before the hold does
            "no_held_session_closed": bool(during) and during["crm_im_sessions_closed_total"] <= a.trickle_clients,
            "trickle_all_delivered": bool(steps) and all(step.get("lost", 1) == 0 for step in steps),
        }
        log(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
    finally:
        for process in (trickle, idle):
            if process is not None and process.poll() is None:
                process.terminate()
        server.send_signal(signal.SIGTERM)
        try:
            result["server_exit"] = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            result["server_exit"] = "killed"
        if a.out is not None:
            a.out.write_text(json.dumps(result, indent=2) + "\n")
        shutil.copy(data / "server.log", (a.out or Path("/tmp/soak")).with_suffix(".server.log"))
        shutil.rmtree(data / "data", ignore_errors=True)
    verdict = result.get("verdict")
    return 0 if verdict and all(value is True for value in verdict.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
