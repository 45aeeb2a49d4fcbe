#!/usr/bin/env python3
# -*- test-case-name: tests.test_bench_cluster -*-
"""
N crm_im nodes as one server, for the bench: a cluster on one PostgreSQL
database and one Redis behind HAProxy (TCP mode, round-robin) on one port.

    python bench/cluster.py --nodes 2 --port 8080 --data-dir /tmp/c2
    python bench/run.py --servers '' --base crm-1node \\
        --add crm-1node "cd $PWD && exec .venv/bin/python bench/cluster.py --nodes 1 --port {PORT} --data-dir {DATA}" \\
        --add crm-2nodes "cd $PWD && exec .venv/bin/python bench/cluster.py --nodes 2 --port {PORT} --data-dir {DATA}"

It is a server COMMAND for C{bench/run.py --add} (and the shared
C{run.sh}): it runs in the foreground, answers C{GET /} on C{--port} once
every node is up, and stops everything on SIGTERM or SIGINT.

  1. Makes a fresh PostgreSQL database (C{crm_im_bench_<random>}, through
     C{--admin-postgres}, trust authentication) unless C{--store} names
     one; dropped at exit.
  2. Starts the nodes one after the other (each waits for the previous one
     to answer C{GET /}, so that only one creates the schema):
     C{twistd -n --pidfile= crm_im --port P_i --data-dir DATA/node_i
     --store ... --redis ... --redis-prefix PREFIX --node-id bench-i
     --node-address http://127.0.0.1:P_i [extra options after --]}, with
     C{taskset -c} when C{--cpus} says where. PREFIX is the run's own
     (C{crm_im_bench_<random>} unless C{--redis-prefix}); every key under
     it is deleted at exit.
  3. Writes C{DATA/haproxy.cfg} (L{haproxyConfig}) and runs C{haproxy -db}
     as a child on C{--port}. Round-robin in TCP mode gives consecutive
     connections to the nodes in turn. The load generator's relay pairs
     client i with client i + C/2 and connects them in order: with two
     nodes and C/2 even (C{--clients 1000}) both users of every pair land
     on the same node, with C/2 odd (C{--clients 1002}) on different ones,
     and every message crosses Redis (the C{crm_im_cluster_node_messages}
     counters printed at exit say which happened). C{--nodes 1} is the
     same shape with one node (cluster mode, PostgreSQL, Redis, HAProxy),
     so that one against two compares like with like. A balancer in
     Python would be the bottleneck; HAProxy costs little.
  4. Forwards the nodes' output with a C{[node_i]} prefix and, every
     C{--cpu-log} seconds, prints the cores used by each node, HAProxy,
     the run's PostgreSQL backends, C{redis-server} and the whole machine
     (C{cluster-cpu} lines), because the load generator's C{server_cpu} is
     one process's: see below. At exit it prints each node's cluster
     counters from C{/metrics} (messages published to other nodes, ...)
     and the CPU seconds of each process over the whole run.
  5. On SIGTERM or SIGINT: SIGTERM to the nodes first (their clients get
     C{server:shutdown} through HAProxy), then to HAProxy; SIGKILL to
     whatever is left after C{--stop-timeout}; then drops the database and
     deletes the Redis keys, and exits 0 (1 if a child died by itself or
     the start failed). Every child also gets SIGTERM if this process dies
     (C{PR_SET_PDEATHSIG}), so a SIGKILL of the launcher leaves no node
     running (but leaves the database and keys).

What C{run.sh} sees: it takes the server's PID from the first process
C{ss} lists as owning the port, sends it and the launcher SIGTERM at the
same moment, and hands that PID to the load generator, which measures its
CPU and memory. HAProxy there would end at once on SIGTERM (a hard stop),
cutting the clients off before the nodes' C{server:shutdown} reaches
them. So the launcher binds the port itself, hands the socket to HAProxy
(C{bind fd@N}), and then starts a C{sleep infinity} child holding it too
(the I{holder}; C{--no-holder}: none). C{ss} lists the newest process
first, so the holder is the server PID C{run.sh} sees: its SIGTERM ends
the holder, and the launcher stops the nodes, then HAProxy. The price:
the load generator's C{server_cpu} and C{server_rss_kib} are the
holder's (zero); the nodes, HAProxy, PostgreSQL and Redis all count in
C{other_cpu}. The C{cluster-cpu} lines of the run's C{.server.log} split
it (and C{bench/run.py}'s capacity and latency figures do not depend on
it).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import fcntl
import os
import random
import resource
import secrets
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import unquote, urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent

#: Where databases are made and dropped (the tests' default server).
ADMIN_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"

#: The cluster counters printed at exit (L{crm_im.cluster.metrics}).
CLUSTER_METRICS = (
    "crm_im_cluster_nodes",
    "crm_im_cluster_devices",
    "crm_im_cluster_node_messages_total",
    "crm_im_cluster_forwarded_total",
    "crm_im_cluster_spliced_total",
    "crm_im_cluster_order_held_total",
    "crm_im_cluster_order_late_total",
)

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[cluster] {message}", flush=True)


# ---------------------------------------------------------------- pure parts


def nodeCpus(spec: str | None, nodes: int) -> list[str | None]:
    """
    Which cores each node is pinned to: C{--cpus "0,1"} gives node 0 core 0
    and node 1 core 1; an entry may be a C{taskset -c} range (C{"0-1"});
    with fewer entries than nodes they are used again in turn. Without
    C{spec}, no node is pinned (they inherit this process's affinity: core
    0 under C{run.sh}).
    """
    if not spec:
        return [None] * nodes
    entries = [entry.strip() for entry in spec.split(",")]
    for entry in entries:
        low, dash, high = entry.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"--cpus: {entry!r} is not a core or a range of cores (0, 1, 0-1)")
    return [entries[i % len(entries)] for i in range(nodes)]


def nodeCommand(
    twistd: Sequence[str],
    index: int,
    port: int,
    dataDir: Path,
    store: str,
    redis: str,
    prefix: str,
    extra: Sequence[str] = (),
    cpus: str | None = None,
) -> list[str]:
    """
    The command line of node C{index}.
    """
    command = [
        *twistd, "-n", "--pidfile=", "crm_im",
        "--port", str(port),
        "--data-dir", str(dataDir),
        "--store", store,
        "--redis", redis,
        "--redis-prefix", prefix,
        "--node-id", f"bench-{index}",
        "--node-address", f"http://127.0.0.1:{port}",
        *extra,
    ]
    return (["taskset", "-c", cpus] if cpus is not None else []) + command


def haproxyConfig(bind: str, backends: Sequence[int], maxconn: int = 20000) -> str:
    """
    HAProxy in TCP mode, round-robin over C{127.0.0.1:port} for each port
    of C{backends}, listening on C{bind} (e.g. C{":8080"}).

    TCP mode: HAProxy copies bytes and never parses HTTP, which is the
    least it can cost; the load generator speaks WebSocket from the first
    request, so no request needs to reach a particular node (and a
    long-polling or upgrade request that lands on the wrong one is
    forwarded or spliced by crm_im itself). No health checks: they would
    be traffic the one-node run does not have. Timeouts far above the
    Engine.IO ping interval, since WebSockets live for the whole run.
    """
    if not backends:
        raise ValueError("no backend")
    servers = "\n".join(f"    server node{i} 127.0.0.1:{port}" for i, port in enumerate(backends))
    return f"""\
# generated by bench/cluster.py
global
    maxconn {maxconn}

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    maxconn {maxconn}

frontend crm_im
    bind {bind}
    default_backend nodes

backend nodes
    balance roundrobin
{servers}
"""


def databaseURL(adminURL: str, name: str) -> str:
    """
    C{adminURL} with its database replaced by C{name}.
    """
    parts = urlsplit(adminURL)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


def redisPatterns(prefix: str) -> list[str]:
    """
    The keys a cluster with C{--redis-prefix prefix} leaves in Redis: its
    own C{crm_im:<prefix>:...} (L{crm_im.cluster.node}), and anything named
    after the prefix itself (as the tests' cleanup does).
    """
    return [f"crm_im:{prefix}:*", f"{prefix}*"]


def postgresBackend(cmdline: bytes, database: str) -> bool:
    """
    Whether a process's C{/proc/PID/cmdline} is a PostgreSQL backend
    serving C{database}: its title is C{postgres: USER DATABASE HOST ...},
    or C{postgres: CLUSTER: USER DATABASE ...} when C{cluster_name} is set
    (Debian's C{15/main}).
    """
    words = cmdline.replace(b"\0", b" ").decode("utf-8", "replace").split()
    return bool(words) and words[0] == "postgres:" and database in words[2:4]


# ---------------------------------------------------------------- Redis and PostgreSQL


def _redisEncode(*words: str) -> bytes:
    out = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _redisRead(stream: Any) -> Any:
    line = stream.readline()
    if not line:
        raise ConnectionError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RuntimeError(f"Redis: {rest.decode('utf-8', 'replace')}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = stream.read(size + 2)
        return data[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_redisRead(stream) for _ in range(count)]
    raise RuntimeError(f"Redis: unexpected reply {line!r}")


def deleteRedisKeys(url: str, prefix: str) -> int:
    """
    Delete the cluster's keys (L{redisPatterns}) from the Redis at C{url};
    returns how many there were. A few lines of RESP rather than a client
    library the bench would otherwise not need.
    """
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=5) as connection:
        stream = connection.makefile("rwb")

        def command(*words: str) -> Any:
            stream.write(_redisEncode(*words))
            stream.flush()
            return _redisRead(stream)

        if parts.password is not None:
            user = unquote(parts.username) if parts.username else None
            command("AUTH", *([user] if user else []), unquote(parts.password))
        database = parts.path.strip("/")
        if database:
            command("SELECT", database)
        keys: set[bytes] = set()
        for pattern in redisPatterns(prefix):
            cursor = "0"
            while True:
                cursor_, found = command("SCAN", cursor, "MATCH", pattern, "COUNT", "1000")
                keys.update(found)
                cursor = cursor_.decode()
                if cursor == "0":
                    break
        if keys:
            command("DEL", *(key.decode("utf-8") for key in sorted(keys)))
        return len(keys)


def _postgres(adminURL: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(adminURL, connect_timeout=5, autocommit=True) as connection:
        connection.execute(sql)


# ---------------------------------------------------------------- processes


def _pdeathsig() -> None:
    """
    In the child before exec: SIGTERM when the launcher dies (so that a
    SIGKILL of the launcher by C{run.sh} does not leave nodes behind).
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _cpuSeconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _machineBusySeconds() -> float:
    with open("/proc/stat") as f:
        values = f.readline().split()[1:4]
    return sum(int(v) for v in values) / CLK_TCK


def freePort(rng: random.Random) -> int:
    """
    A free TCP port between 20000 and 32000 (outside the ephemeral range,
    like C{run.sh}'s, so no client socket of the load generator takes it).
    """
    for _ in range(500):
        port = rng.randint(20000, 32000)
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000")


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    buffer: bytes = b""
    started: float = field(default_factory=time.monotonic)


class Stop(Exception):
    """
    A signal asked to stop, or a child died: unwind to the clean-up.
    """


class Cluster:
    """
    The launcher's state: children, their output, signals, clean-up.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.children: list[Child] = []
        self.nodes: list[Child] = []
        self.nodePorts: list[int] = []
        self.haproxy: Child | None = None
        self.holder: Child | None = None
        self.signalled: int | None = None
        self.failed: str | None = None
        self.database: str | None = None
        self.redisPrefix: str = args.redis_prefix or f"crm_im_bench_{secrets.token_hex(4)}"
        self._wakeR, self._wakeW = os.pipe()
        for fd in (self._wakeR, self._wakeW):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self._cpuBase: dict[int, float] = {}
        self._cpuLast: dict[int, float] = {}
        self._cpuAt = time.monotonic()
        self._machineLast = _machineBusySeconds()
        self._nextCpuLog = time.monotonic() + (args.cpu_log or 0)
        self._redisPid: int | None = None

    # -- signals and output

    def installSignals(self) -> None:
        signal.set_wakeup_fd(self._wakeW)

        def stop(number: int, frame: Any) -> None:
            if self.signalled is None:
                self.signalled = number

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        # only to wake the select() when a child exits
        signal.signal(signal.SIGCHLD, lambda number, frame: None)

    def pump(self, timeout: float) -> None:
        """
        Wait up to C{timeout} seconds for a signal or children's output;
        forward complete output lines with the child's name.
        """
        pipes = {c.process.stdout.fileno(): c for c in self.children
                 if c.process.stdout is not None and not c.process.stdout.closed}
        try:
            ready, _, _ = select.select([self._wakeR, *pipes], [], [], max(0.0, timeout))
        except InterruptedError:
            ready = []
        for fd in ready:
            if fd == self._wakeR:
                try:
                    while os.read(self._wakeR, 512):
                        pass
                except BlockingIOError:
                    pass
                continue
            child = pipes[fd]
            data = os.read(fd, 65536)
            if not data:
                assert child.process.stdout is not None
                child.process.stdout.close()
                data = b"\n" if child.buffer else b""
            child.buffer += data
            *lines, child.buffer = child.buffer.split(b"\n")
            for line in lines:
                sys.stdout.write(f"[{child.name}] {line.decode('utf-8', 'replace')}\n")
            sys.stdout.flush()
        self.maybeLogCpu()

    def check(self) -> None:
        """
        Raise L{Stop} when asked to stop or when a child is gone.
        """
        if self.signalled is not None:
            raise Stop(f"signal {signal.Signals(self.signalled).name}")
        if self.holder is not None and self.holder.process.poll() is not None:
            raise Stop(f"the port holder {self.holder.process.pid} ended (status {self.holder.process.returncode})")
        for child in self.children:
            if child is self.holder:
                continue
            code = child.process.poll()
            if code is not None:
                self.failed = f"{child.name} exited by itself (status {code})"
                raise Stop(self.failed)

    # -- children

    def spawn(self, name: str, command: list[str], passFds: Sequence[int] = ()) -> Child:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        log(f"{name}: {shlex.join(command)}")
        process = subprocess.Popen(
            command, cwd=str(REPO), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, preexec_fn=_pdeathsig, pass_fds=tuple(passFds),
            # a group of its own: a Ctrl-C (or a kill of this process's
            # group) reaches the launcher only, which stops the nodes first
            process_group=0,
        )
        child = Child(name, process)
        self.children.append(child)
        return child

    def waitHTTP(self, child: Child, port: int) -> None:
        deadline = time.monotonic() + self.args.ready_timeout
        while True:
            self.check()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                    if 200 <= response.status < 300:
                        log(f"{child.name} answers on {port} after {time.monotonic() - child.started:.1f}s")
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.failed = f"{child.name} does not answer GET / on {port} after {self.args.ready_timeout}s"
                raise Stop(self.failed)
            self.pump(0.2)

    def start(self) -> None:
        args = self.args
        dataDir = Path(args.data_dir).resolve()
        dataDir.mkdir(parents=True, exist_ok=True)
        store = args.store
        if store is None:
            self.database = f"crm_im_bench_{secrets.token_hex(6)}"
            _postgres(args.admin_postgres, f"CREATE DATABASE {self.database}")
            store = databaseURL(args.admin_postgres, self.database)
            log(f"database {self.database} created")
        twistd = Path(sys.executable).with_name("twistd")
        runner = [str(twistd)] if twistd.exists() else [sys.executable, "-m", "twisted"]
        cpus = nodeCpus(args.cpus, args.nodes)
        rng = random.Random()
        for i in range(args.nodes):
            port = freePort(rng)
            nodeDir = dataDir / f"node_{i}"
            nodeDir.mkdir(exist_ok=True)
            node = self.spawn(f"node{i}", nodeCommand(
                runner, i, port, nodeDir, store, args.redis, self.redisPrefix, args.extra, cpus[i]))
            self.nodes.append(node)
            self.nodePorts.append(port)
            # one at a time: the first creates the schema
            self.waitHTTP(node, port)
        config = dataDir / "haproxy.cfg"
        listener = None
        bind = f":{args.port}"
        if args.holder:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("0.0.0.0", args.port))
            bind = f"fd@{listener.fileno()}"
        config.write_text(haproxyConfig(bind, self.nodePorts, self.maxconn()))
        command = [args.haproxy, "-db", "-f", str(config)]
        if args.haproxy_cpus:
            command = ["taskset", "-c", args.haproxy_cpus, *command]
        passed = [listener.fileno()] if listener is not None else []
        self.haproxy = self.spawn("haproxy", command, passed)
        if listener is not None:
            # started after HAProxy, so it has the higher PID: run.sh takes
            # the first process ss lists for the port (the newest), so this
            # one gets run.sh's SIGTERM instead of HAProxy (see the module
            # docstring); it ends on it, and that stops the cluster
            self.holder = self.spawn("holder", ["sleep", "infinity"], passed)
            listener.close()
        self.waitHTTP(self.haproxy, args.port)
        for child in self.children:
            self._cpuBase[child.process.pid] = self._cpuLast[child.process.pid] = _cpuSeconds(child.process.pid) or 0.0
        self._cpuAt = time.monotonic()
        self._machineLast = _machineBusySeconds()
        self._nextCpuLog = self._cpuAt + (args.cpu_log or 0)
        log(f"ready: {args.nodes} node(s) on {', '.join(map(str, self.nodePorts))} behind HAProxy on {args.port}; "
            f"Redis prefix {self.redisPrefix}")

    def maxconn(self) -> int:
        """
        C{--maxconn}, or as many connections as the open-file limit lets
        HAProxy proxy (two descriptors each, and a few of its own): it
        cannot raise the hard limit without CAP_SYS_RESOURCE, and refuses
        to start with a maxconn it has no descriptors for.
        """
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        fits = (hard - 200) // 2 if hard != resource.RLIM_INFINITY else 100_000
        if self.args.maxconn is not None:
            return int(self.args.maxconn)
        if fits < 20000:
            log(f"HAProxy maxconn {fits} (open files limit {hard}): at most {fits} client connections")
        return min(20000, fits)

    def run(self) -> None:
        while True:
            self.check()
            self.pump(self._untilCpuLog())

    # -- CPU accounting

    def _untilCpuLog(self) -> float:
        if not self.args.cpu_log:
            return 3600.0
        return max(0.0, self._nextCpuLog - time.monotonic())

    def _others(self) -> dict[str, list[int]]:
        """
        PostgreSQL backends of the run's database and C{redis-server}.
        """
        found: dict[str, list[int]] = {"postgres": [], "redis": []}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read(256)
            except OSError:
                continue
            if self.database and postgresBackend(cmdline, self.database):
                found["postgres"].append(pid)
            elif cmdline.startswith(b"/usr/bin/redis-server") or cmdline.startswith(b"redis-server"):
                found["redis"].append(pid)
        return found

    def maybeLogCpu(self) -> None:
        if not self.args.cpu_log or not self._cpuBase or time.monotonic() < self._nextCpuLog:
            return
        now = time.monotonic()
        dt = now - self._cpuAt
        groups: dict[str, list[int]] = {c.name: [c.process.pid] for c in self.children if c is not self.holder}
        groups.update(self._others())
        parts = []
        for name, pids in groups.items():
            used = 0.0
            for pid in pids:
                seconds = _cpuSeconds(pid)
                if seconds is None:
                    continue
                used += seconds - self._cpuLast.get(pid, seconds)
                self._cpuLast[pid] = seconds
            parts.append(f"{name}={used / dt:.2f}")
        machine = _machineBusySeconds()
        parts.append(f"machine={(machine - self._machineLast) / dt:.2f}")
        self._machineLast = machine
        self._cpuAt = now
        self._nextCpuLog = now + self.args.cpu_log
        print(f"cluster-cpu t={time.time():.1f} {' '.join(parts)}", flush=True)

    def cpuTotals(self) -> str:
        """
        CPU seconds each child used since the cluster was ready (read
        before they are stopped: a reaped child's /proc entry is gone).
        """
        parts = []
        for child in self.children:
            if child is self.holder:
                continue
            pid = child.process.pid
            seconds = _cpuSeconds(pid)
            if seconds is not None and pid in self._cpuBase:
                parts.append(f"{child.name}={seconds - self._cpuBase[pid]:.1f}s")
        return " ".join(parts)

    # -- stopping

    def metricsSnapshot(self) -> None:
        for node, port in zip(self.nodes, self.nodePorts):
            if node.process.poll() is not None:
                continue
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as response:
                    text = response.read().decode("utf-8", "replace")
            except OSError as error:
                log(f"{node.name}: /metrics: {error}")
                continue
            lines = [line for line in text.splitlines() if line.startswith(CLUSTER_METRICS)]
            log(f"{node.name} metrics: " + "; ".join(lines))

    def terminate(self, children: list[Child], timeout: float) -> None:
        for child in children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(c.process.poll() is None for c in children) and time.monotonic() < deadline:
            self.pump(0.05)
        for child in children:
            if child.process.poll() is None:
                log(f"{child.name} still running {timeout}s after SIGTERM: SIGKILL")
                child.process.kill()
            child.process.wait()

    def stop(self) -> None:
        totals = self.cpuTotals()
        if self.haproxy is not None and self.haproxy.process.poll() is None:
            self.metricsSnapshot()
        # the nodes first: their server:shutdown goes out through HAProxy
        self.terminate(self.nodes, self.args.stop_timeout)
        self.terminate([c for c in self.children if c not in self.nodes], 2.0)
        # the rest of their output (bounded: a grandchild could hold a pipe)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and any(
                c.process.stdout is not None and not c.process.stdout.closed for c in self.children):
            self.pump(0.1)
        if totals:
            log(f"CPU seconds from ready to SIGTERM: {totals}")
        for child in self.children:
            log(f"{child.name} exited with status {child.process.returncode}")

    def cleanUp(self) -> None:
        if self.database is not None:
            try:
                _postgres(self.args.admin_postgres, f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")
                log(f"database {self.database} dropped")
            except Exception as error:
                log(f"could not drop database {self.database}: {error}")
        try:
            count = deleteRedisKeys(self.args.redis, self.redisPrefix)
            log(f"{count} Redis key(s) of prefix {self.redisPrefix} deleted")
        except Exception as error:
            log(f"could not delete the Redis keys of prefix {self.redisPrefix}: {error}")


def parseArgs(argv: Sequence[str]) -> argparse.Namespace:
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(
        description="N crm_im nodes (PostgreSQL, Redis) behind HAProxy round-robin on one port, for bench/run.py --add.",
        epilog="Options after -- go to every crm_im node, e.g. -- --commit-interval 5.",
    )
    p.add_argument("--nodes", type=int, default=2, help="crm_im nodes [2]")
    p.add_argument("--port", type=int, required=True, help="the port HAProxy listens on ({PORT})")
    p.add_argument("--data-dir", required=True, help="where each node's data dir and haproxy.cfg go ({DATA})")
    p.add_argument("--store", help="a PostgreSQL URL to use as it is (default: a fresh database, dropped at exit)")
    p.add_argument("--admin-postgres", default=os.environ.get("CRM_IM_TEST_POSTGRES") or ADMIN_POSTGRES,
                   help=f"where the fresh database is made [$CRM_IM_TEST_POSTGRES or {ADMIN_POSTGRES}]")
    p.add_argument("--redis", default=os.environ.get("CRM_IM_TEST_REDIS") or DEFAULT_REDIS,
                   help=f"the Redis URL [$CRM_IM_TEST_REDIS or {DEFAULT_REDIS}]")
    p.add_argument("--redis-prefix", help="the nodes' --redis-prefix (its keys are deleted at exit) [crm_im_bench_<random>]")
    p.add_argument("--cpus", help="taskset -c for node i, one entry per node, reused in turn: '0,1' (default: inherited)")
    p.add_argument("--haproxy-cpus", help="taskset -c for HAProxy (default: inherited)")
    p.add_argument("--haproxy", default="haproxy", help="the haproxy executable")
    p.add_argument("--no-holder", dest="holder", action="store_false",
                   help="no port-holding 'sleep' process: run.sh then sends its SIGTERM to HAProxy itself")
    p.add_argument("--maxconn", type=int, help="HAProxy's maxconn [20000, or less if the open files limit is lower]")
    p.add_argument("--cpu-log", type=float, default=1.0, help="seconds between cluster-cpu lines (0: none) [1]")
    p.add_argument("--ready-timeout", type=float, default=50.0, help="seconds each node may take to answer GET / [50]")
    p.add_argument("--stop-timeout", type=float, default=4.0,
                   help="seconds the nodes get after SIGTERM before SIGKILL [4; run.sh kills everything at 5]")
    args = p.parse_args(argv)
    if args.nodes < 1:
        p.error("--nodes must be at least 1")
    try:
        nodeCpus(args.cpus, args.nodes)
    except ValueError as error:
        p.error(str(error))
    args.extra = extra
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parseArgs(sys.argv[1:] if argv is None else argv)
    cluster = Cluster(args)
    cluster.installSignals()
    try:
        cluster.start()
        cluster.run()
    except Stop as why:
        log(f"stopping: {why}")
    except Exception as error:
        cluster.failed = f"{type(error).__name__}: {error}"
        log(f"stopping: {cluster.failed}")
    finally:
        # a second SIGTERM while cleaning up must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            cluster.stop()
        finally:
            cluster.cleanUp()
    return 1 if cluster.failed else 0


if __name__ == "__main__":
    sys.exit(main())
