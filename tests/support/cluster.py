"""
Several real C{twistd crm_im} nodes as one cluster, for the end-to-end
tests of CLUSTER.md (L{tests.integration.test_cluster}).

  - L{requireRedis}: the machine's Redis (C{$CRM_IM_TEST_REDIS}, by
    default C{redis://127.0.0.1:6379/0}); unreachable, the test is skipped
    with the reason, or failed when C{CI=true}.
  - L{RedisServer}: a C{redis-server} of the test's own on a free port,
    stopped and started again by the test (a Redis outage).
  - L{Cluster}: N nodes on one PostgreSQL database and one Redis, each
    with its own C{--node-id}, data directory and port, a C{--redis-prefix}
    of the test's own (the keys it leaves in a shared Redis are deleted
    at cleanup), ready once every node logged its registration in the
    cluster.
  - L{RoundRobinProxy}: a TCP proxy in the test process that sends each
    new connection to the next node, and notes which node saw each
    Engine.IO C{sid} in a request line: proof that one session's polling
    requests landed on several nodes.
  - L{runEmitter}: C{@socket.io/redis-emitter} from Node
    (C{tests/interop/emit.js}), as a CRM back end publishes.

Nothing waits on the wall clock: processes are ready when their output
says so, and ends are process exits.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, cast
from unittest import SkipTest
from urllib.parse import parse_qs, urlsplit

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.internet.protocol import connectionDone
from twisted.protocols.portforward import ProxyFactory, ProxyServer
from twisted.python.failure import Failure

from tests.integration.test_twistd import Inline, ProcessTestCase, ServerProcess, freePort
from tests.support.clients import INTEROP, requireKind

#: The Redis tests share, unless C{$CRM_IM_TEST_REDIS} names another.
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
#: seconds a node has to start listening
JOIN_TIMEOUT = 45.0
#: seconds a listening node has to say it joined the cluster
REGISTER_TIMEOUT = 10.0
#: seconds C{redis-server} has to start or stop
REDIS_TIMEOUT = 15.0
#: seconds the emitter script has to publish and exit
EMIT_TIMEOUT = 20.0
#: The admin token the nodes are started with (C{/api/publish}).
ADMIN_TOKEN = "cluster-admin-token-for-tests"
EMITTER = INTEROP / "emit.js"


def redisURL() -> str:
    """
    The Redis the cluster tests share.
    """
    return os.environ.get("CRM_IM_TEST_REDIS") or DEFAULT_REDIS


def _unavailable(reason: str, what: str) -> None:
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"{reason} (CI=true: {what} is required)")
    raise SkipTest(reason)


def requireRedis() -> str:
    """
    The URL of the machine's Redis; skip the calling test when it is
    unreachable, or fail it when C{CI=true}.
    """
    url = redisURL()
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as error:
        _unavailable(f"Redis at {host}:{port} unreachable: {error} (set CRM_IM_TEST_REDIS to another)",
                     "Redis")
    return url


def requireRedisServer() -> str:
    """
    The path of C{redis-server} (for tests that stop their own Redis);
    skip or fail (C{CI=true}) without it.
    """
    path = shutil.which("redis-server")
    if path is None:
        _unavailable("redis-server is not on PATH (apt-get install redis-server)", "redis-server")
    assert path is not None
    return path


@inlineCallbacks
def _redisCommands(url: str, *commands: Sequence[Any]) -> Inline:
    """
    Run C{commands} on a connection of its own to C{url}; return the
    replies.
    """
    import txredisapi

    parts = urlsplit(url)
    db = int(parts.path.strip("/") or 0)
    connection = yield txredisapi.Connection(parts.hostname or "127.0.0.1", parts.port or 6379,
                                             dbid=db, reconnect=False, charset=None)
    try:
        replies = []
        for command in commands:
            replies.append((yield connection.execute_command(*command)))
        return replies
    finally:
        yield connection.disconnect()


@inlineCallbacks
def deleteKeys(url: str, prefix: str) -> Inline:
    """
    Delete the keys a cluster with C{--redis-prefix prefix} left in the
    Redis at C{url} (its own C{crm_im:<prefix>:...} and anything else
    named after the prefix).
    """
    found: Set[bytes] = set()
    for pattern in (f"crm_im:{prefix}*", f"{prefix}*"):
        cursor = b"0"
        while True:
            (reply,) = yield _redisCommands(url, ("SCAN", cursor, "MATCH", pattern, "COUNT", 1000))
            cursor, keys = reply
            found.update(keys)
            if cursor in (b"0", 0, "0"):
                break
    if found:
        yield _redisCommands(url, ("DEL", *sorted(found)))
    return len(found)


@inlineCallbacks
def keysOf(url: str, prefix: str) -> Inline:
    """
    The keys of the cluster C{prefix} in the Redis at C{url}, decoded.
    """
    (keys,) = yield _redisCommands(url, ("KEYS", f"crm_im:{prefix}*"))
    return sorted(key.decode("utf-8") for key in keys)


class RedisServer:
    """
    A C{redis-server} of the test's own, on a free loopback port that
    stays its port across L{stop} and L{start} (the nodes keep their
    C{--redis} URL). No persistence: a restart is an empty Redis, as after
    losing the machine.

    @ivar process: the running server, or L{None}.
    """

    def __init__(self, testCase: ProcessTestCase) -> None:
        self.testCase = testCase
        self.executable = requireRedisServer()
        self.port = freePort()
        self.process: Optional[ServerProcess] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @inlineCallbacks
    def start(self) -> Inline:
        """
        Start it; fire once it accepts connections.
        """
        assert self.process is None
        process = self.testCase.spawn([
            self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--loglevel", "notice", "--protected-mode", "no"])
        self.process = process
        try:
            yield process.whenOutputContains(b"Ready to accept connections").addTimeout(
                REDIS_TIMEOUT, reactor)
        except Exception:
            self.testCase.fail(f"redis-server did not start on port {self.port}:\n{process.text}")

    @inlineCallbacks
    def stop(self, signal: str = "KILL") -> Inline:
        """
        Stop it (SIGKILL by default: Redis gone at once, as a crash or a
        cut network); fire once it exited.
        """
        process, self.process = self.process, None
        assert process is not None
        process.signal(signal)
        yield self.testCase.waitForExit(process, timeout=REDIS_TIMEOUT)


class Node:
    """
    One node of a L{Cluster}.

    @ivar name: its C{--node-id}.
    @ivar process: the C{twistd} process (L{None} before the start).
    """

    def __init__(self, name: str, dataDir: str, options: Sequence[str]) -> None:
        self.name = name
        self.dataDir = dataDir
        self.options = list(options)
        self.port = freePort()
        self.process: Optional[ServerProcess] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def registered(self) -> bytes:
        """
        The line a node logs once it has joined the cluster (every time
        it registers, after a Redis outage too).
        """
        return f"cluster node {self.name} registered (".encode("utf-8")

    @property
    def text(self) -> str:
        return self.process.text if self.process is not None else ""


class Cluster:
    """
    N C{twistd crm_im} nodes sharing one store (a PostgreSQL database) and
    one Redis, with a key prefix of their own.

    @ivar nodes: the nodes, in order.
    @ivar prefix: their C{--redis-prefix}.
    """

    def __init__(self, testCase: ProcessTestCase, size: int, store: str, redis: str,
                 options: Sequence[str] = (), nodeTTL: float = 3.0,
                 prefix: Optional[str] = None, cleanKeys: bool = True) -> None:
        """
        @param store: the C{--store} URL every node is given.
        @param redis: the C{--redis} URL every node is given.
        @param options: more options for every node.
        @param nodeTTL: C{--node-ttl}: how long a dead node takes to be
            noticed (small in tests).
        @param prefix: C{--redis-prefix} (default: one of the test's own).
        @param cleanKeys: delete the prefix's keys at cleanup (not for a
            Redis the test runs itself: it goes with its keys).
        """
        self.testCase = testCase
        self.store = store
        self.redis = redis
        self.nodeTTL = nodeTTL
        self.prefix = prefix if prefix is not None else "crmimtest-" + uuid.uuid4().hex[:12]
        self.nodes: List[Node] = []
        for index in range(size):
            name = f"node{index + 1}"
            self.nodes.append(Node(name, os.path.abspath(testCase.mktemp()), [
                "--redis", redis, "--node-id", name, "--node-ttl", str(nodeTTL),
                "--redis-prefix", self.prefix, "--admin-token", ADMIN_TOKEN,
                *options]))
        if cleanKeys:
            testCase.addCleanup(deleteKeys, redis, self.prefix)

    def __getitem__(self, index: int) -> Node:
        return self.nodes[index]

    @property
    def urls(self) -> List[str]:
        return [node.url for node in self.nodes]

    def spawn(self, node: Node) -> ServerProcess:
        """
        Spawn C{node}'s process (on its port, with its options); the test
        case kills it at cleanup if it still runs.
        """
        node.process = self.testCase.spawnTwistd(
            node.dataDir, "--store", self.store, "--node-address", node.url, *node.options,
            port=node.port)
        return node.process

    @inlineCallbacks
    def start(self) -> Inline:
        """
        Start every node at once; fire once each has joined the cluster.
        """
        for node in self.nodes:
            self.spawn(node)
        yield gatherResults([self.whenJoined(node) for node in self.nodes], consumeErrors=True)

    @inlineCallbacks
    def whenJoined(self, node: Node) -> Inline:
        """
        Fire once C{node} listens and logged that it joined the cluster;
        fail the test if it exits first or takes too long
        (L{JOIN_TIMEOUT}, L{REGISTER_TIMEOUT}).
        """
        process = node.process
        assert process is not None
        try:
            yield process.whenOutputContains(b"crm_im listening on").addTimeout(JOIN_TIMEOUT, reactor)
            # (a node joins before it listens, unless Redis is slow to answer)
            yield process.whenOutputContains(node.registered).addTimeout(REGISTER_TIMEOUT, reactor)
        except Exception as error:
            self.testCase.fail(f"{node.name} did not join the cluster ({error!r}):\n{process.text}")

    @inlineCallbacks
    def stop(self) -> Inline:
        """
        SIGTERM every node still running; fire once all exited, and fail
        unless each exited 0.
        """
        running = [node for node in self.nodes
                   if node.process is not None and node.process.reason is None]
        for node in running:
            assert node.process is not None
            node.process.signal("TERM")
        codes = yield gatherResults([self.testCase.waitForExit(node.process) for node in running
                                     if node.process is not None])
        for node, code in zip(running, codes):
            self.testCase.assertEqual(code, 0, f"{node.name} did not exit cleanly:\n{node.text}")



#: A polling or WebSocket request line naming an Engine.IO session.
_REQUEST_LINE = re.compile(rb"(GET|POST) /socket\.io/\?([^ \r\n]*) HTTP/1\.[01]\r\n")
#: Bytes of a connection's stream kept for a request line split in two.
_SNIFF_KEEP = 4096


class _RoundRobinServer(ProxyServer):
    """
    One client connection: sent to the next node; its request lines read
    on the way for Engine.IO sids.
    """

    def connectionMade(self) -> None:
        proxy = cast(RoundRobinProxy, self.factory)
        transport: Any = self.transport
        transport.pauseProducing()
        self.backend = proxy.pick()
        self.sniffed = b""
        proxy.servers.append(self)
        client = self.clientProtocolFactory()
        client.setServer(self)
        host, port = proxy.backends[self.backend]
        proxy.reactor.connectTCP(host, port, client)

    def dataReceived(self, data: bytes) -> None:
        proxy = cast(RoundRobinProxy, self.factory)
        self.sniffed = (self.sniffed + data)[-_SNIFF_KEEP:]
        end = 0
        for match in _REQUEST_LINE.finditer(self.sniffed):
            query = parse_qs(match.group(2).decode("ascii", "replace"))
            sid = query.get("sid", [None])[0]
            if sid is not None:
                proxy.sawRequest(sid, query.get("transport", ["?"])[0], self.backend)
            end = match.end()
        self.sniffed = self.sniffed[end:]
        ProxyServer.dataReceived(self, data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        proxy = cast(RoundRobinProxy, self.factory)
        if self in proxy.servers:
            proxy.servers.remove(self)
        ProxyServer.connectionLost(self, reason)


class RoundRobinProxy(ProxyFactory):
    """
    A round-robin TCP balancer in the test process: each new connection
    goes to the next backend, whatever it carries (no sticky sessions).

    @ivar connections: connections sent to each backend.
    @ivar sids: for each Engine.IO sid seen in a request line (polling
        GET/POST, WebSocket upgrade), the backends that received one.
    @ivar requests: every such request: C{(sid, transport, backend)}.
    """

    protocol = _RoundRobinServer

    def __init__(self, backends: Sequence[str], reactor: Any = reactor) -> None:
        """
        @param backends: C{http://host:port} URLs.
        """
        self.backends = [(urlsplit(url).hostname or "127.0.0.1", urlsplit(url).port or 80)
                         for url in backends]
        ProxyFactory.__init__(self, *self.backends[0])
        self.reactor = reactor
        self.connections = [0] * len(self.backends)
        self.sids: Dict[str, Set[int]] = {}
        self.requests: List[Tuple[str, str, int]] = []
        self._waiters: List[Tuple[Callable[[str, str, int], bool], Deferred[Tuple[str, str, int]]]] = []
        self.servers: List[_RoundRobinServer] = []
        self.listening: Any = None
        self._next = 0

    def pick(self) -> int:
        """
        The index of the backend the next connection goes to.
        """
        index = self._next
        self._next = (index + 1) % len(self.backends)
        self.connections[index] += 1
        return index

    def sawRequest(self, sid: str, transport: str, backend: int) -> None:
        """
        A request for session C{sid} over C{transport} went to C{backend}.
        """
        self.sids.setdefault(sid, set()).add(backend)
        request = (sid, transport, backend)
        self.requests.append(request)
        waiting = []
        for matcher, d in self._waiters:
            if matcher(*request):
                d.callback(request)
            else:
                waiting.append((matcher, d))
        self._waiters = waiting

    def whenRequest(self, matcher: Callable[[str, str, int], bool],
                    timeout: float = 10.0) -> Deferred[Tuple[str, str, int]]:
        """
        Fire with the first request C{(sid, transport, backend)}, seen so
        far or to come, for which C{matcher} is true.
        """
        for request in self.requests:
            if matcher(*request):
                return succeed(request)
        d: Deferred[Tuple[str, str, int]] = Deferred()
        self._waiters.append((matcher, d))
        return d.addTimeout(timeout, self.reactor)

    def listen(self, testCase: ProcessTestCase) -> str:
        """
        Listen on a free loopback port until the end of C{testCase}; return
        the proxy's URL.
        """
        self.listening = self.reactor.listenTCP(0, self, interface="127.0.0.1")
        testCase.addCleanup(self.stop)
        return f"http://127.0.0.1:{self.listening.getHost().port}"

    def stop(self) -> Optional[Deferred[None]]:
        """
        Stop listening and drop every connection.
        """
        for server in list(self.servers):
            peer: Any = server.peer
            if peer is not None and peer.transport is not None:
                peer.transport.abortConnection()
            transport: Any = server.transport
            if transport is not None:
                transport.abortConnection()
        listening, self.listening = self.listening, None
        return cast(Optional[Deferred[None]], listening.stopListening() if listening is not None else None)


class _DelayingServer(ProxyServer):
    """
    One node's connection to Redis: what the node writes reaches Redis
    L{DelayedRedis.delay} seconds late, in order; what Redis answers comes
    back at once.
    """

    def connectionMade(self) -> None:
        proxy = cast(DelayedRedis, self.factory)
        proxy.servers.append(self)
        self.pending: List[Tuple[float, bytes]] = []
        self.timer: Any = None
        ProxyServer.connectionMade(self)

    def dataReceived(self, data: bytes) -> None:
        proxy = cast(DelayedRedis, self.factory)
        self.pending.append((proxy.reactor.seconds() + proxy.delay, data))
        if self.timer is None:
            self.timer = proxy.reactor.callLater(proxy.delay, self._due)

    def _due(self) -> None:
        proxy = cast(DelayedRedis, self.factory)
        self.timer = None
        now = proxy.reactor.seconds()
        while self.pending and self.pending[0][0] <= now:
            _, data = self.pending.pop(0)
            if self.peer is not None and self.peer.transport is not None:
                self.peer.transport.write(data)
        if self.pending:
            self.timer = proxy.reactor.callLater(self.pending[0][0] - now, self._due)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        proxy = cast(DelayedRedis, self.factory)
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self in proxy.servers:
            proxy.servers.remove(self)
        ProxyServer.connectionLost(self, reason)


class DelayedRedis(ProxyFactory):
    """
    A TCP proxy in the test process in front of Redis that delays every
    command a node sends (its publishes among them) by C{delay} seconds:
    that node's messages then cross to the other nodes late, as on a
    loaded network, while the other nodes deliver their own at once.
    """

    protocol = _DelayingServer

    def __init__(self, redis: str, delay: float, reactor: Any = reactor) -> None:
        """
        @param redis: the real Redis, C{redis://host:port/db}.
        """
        parts = urlsplit(redis)
        ProxyFactory.__init__(self, parts.hostname or "127.0.0.1", parts.port or 6379)
        self.path = parts.path
        self.delay = delay
        self.reactor = reactor
        self.servers: List[_DelayingServer] = []
        self.listening: Any = None

    def listen(self, testCase: ProcessTestCase) -> str:
        """
        Listen on a free loopback port until the end of C{testCase}; return
        the C{--redis} URL that goes through the proxy.
        """
        self.listening = self.reactor.listenTCP(0, self, interface="127.0.0.1")
        testCase.addCleanup(self.stop)
        return f"redis://127.0.0.1:{self.listening.getHost().port}{self.path}"

    def stop(self) -> Optional[Deferred[None]]:
        """
        Stop listening and drop every connection.
        """
        for server in list(self.servers):
            for transport in (server.peer.transport if server.peer is not None else None, server.transport):
                if transport is not None:
                    cast(Any, transport).abortConnection()
        listening, self.listening = self.listening, None
        return cast(Optional[Deferred[None]], listening.stopListening() if listening is not None else None)


@inlineCallbacks
def runEmitter(testCase: ProcessTestCase, redis: str, prefix: str,
               emits: Sequence[Dict[str, Any]]) -> Inline:
    """
    Publish with C{@socket.io/redis-emitter} from Node, in order, on one
    Redis connection (C{tests/interop/emit.js}); fire once the script
    exited 0 (every PUBLISH answered).

    @param emits: C{{"to": [rooms], "except": [rooms], "event": name,
        "args": [...]}} each.
    @return: the script's output (one JSON line per publish: the channel
        and how many subscribers Redis delivered it to).
    """
    requireKind("node")
    node = shutil.which("node") or "node"
    spec = json.dumps({"url": redis, "prefix": prefix, "emits": list(emits)})
    process = testCase.spawn([node, str(EMITTER), spec])
    code = yield testCase.waitForExit(process, timeout=EMIT_TIMEOUT)
    testCase.assertEqual(code, 0, f"emit.js failed:\n{process.text}")
    return [json.loads(line) for line in process.text.splitlines() if line.startswith("{")]
