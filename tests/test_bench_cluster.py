"""
The pure parts of C{bench/cluster.py} (N crm_im nodes behind HAProxy for
the bench): the HAProxy configuration, the nodes' command lines (parsed by
C{twistd crm_im}'s own options, so a renamed option fails here rather than
in a bench run), the core pinning, the arguments, the Redis protocol and
the key clean-up. The processes themselves are checked by the bench's
smoke run (bench/README.md, "One node against two").
"""

from __future__ import annotations

import io
import secrets
import socket
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from bench.cluster import (
    _redisEncode,
    _redisRead,
    databaseURL,
    deleteRedisKeys,
    haproxyConfig,
    nodeCommand,
    nodeCpus,
    parseArgs,
    postgresBackend,
    redisPatterns,
)
from crm_im.tap import Options
from tests.support.cluster import requireRedis

STORE = "postgresql://postgres@127.0.0.1:5432/crm_im_bench_x"
REDIS = "redis://127.0.0.1:6379/0"


class HAProxyConfigTests(SynchronousTestCase):
    def test_roundRobinTCP(self) -> None:
        """
        One C{server} line per node port, in order, round-robin, in TCP
        mode (HAProxy never parses HTTP), on the bind address given.
        """
        text = haproxyConfig(":8080", [20001, 20002], maxconn=9900)
        lines = [line.strip() for line in text.splitlines()]
        self.assertIn("mode tcp", lines)
        self.assertNotIn("mode http", lines)
        self.assertIn("balance roundrobin", lines)
        self.assertIn("bind :8080", lines)
        self.assertEqual(
            [line for line in lines if line.startswith("server ")],
            ["server node0 127.0.0.1:20001", "server node1 127.0.0.1:20002"],
        )
        self.assertEqual(lines.count("maxconn 9900"), 2)

    def test_inheritedSocket(self) -> None:
        """
        The bind address may be an inherited descriptor (the launcher's
        port holder).
        """
        self.assertIn("    bind fd@5\n", haproxyConfig("fd@5", [20001]))

    def test_timeoutsOutliveWebSockets(self) -> None:
        """
        Client and server timeouts are far above the Engine.IO ping
        interval (25 s): a relay run's sockets must not be cut.
        """
        lines = [line.strip() for line in haproxyConfig(":1", [2]).splitlines()]
        self.assertIn("timeout client 1h", lines)
        self.assertIn("timeout server 1h", lines)

    def test_noBackend(self) -> None:
        self.assertRaises(ValueError, haproxyConfig, ":8080", [])


class NodeCommandTests(SynchronousTestCase):
    def test_crmImAcceptsIt(self) -> None:
        """
        The node's arguments after C{crm_im} parse with C{twistd crm_im}'s
        options into a cluster node with its own id, address and data
        directory, the shared store, Redis and prefix, plus the extra
        options.
        """
        command = nodeCommand(["twistd"], 1, 20002, Path("/d/node_1"), STORE, REDIS, "crm_im_bench_ab",
                              ["--commit-interval", "5"])
        self.assertEqual(command[:4], ["twistd", "-n", "--pidfile=", "crm_im"])
        options = Options()
        options.parseOptions(command[4:])
        config = options.config
        self.assertEqual(
            (config.nodeId, config.nodeAddress, config.dataDir, config.store, config.redis, config.redisPrefix),
            ("bench-1", "http://127.0.0.1:20002", "/d/node_1", STORE, REDIS, "crm_im_bench_ab"),
        )
        self.assertEqual(config.listen[0].split(":")[:2], ["tcp", "20002"])
        self.assertEqual(config.commitInterval, 0.005)

    def test_pinned(self) -> None:
        """
        With cores, the command runs under C{taskset -c}.
        """
        command = nodeCommand(["twistd"], 0, 20001, Path("/d"), STORE, REDIS, "p", cpus="1")
        self.assertEqual(command[:4], ["taskset", "-c", "1", "twistd"])


class NodeCpusTests(SynchronousTestCase):
    def test_none(self) -> None:
        self.assertEqual(nodeCpus(None, 2), [None, None])

    def test_onePerNode(self) -> None:
        self.assertEqual(nodeCpus("0,1", 2), ["0", "1"])

    def test_reusedInTurn(self) -> None:
        self.assertEqual(nodeCpus("0,1", 3), ["0", "1", "0"])
        self.assertEqual(nodeCpus("0-1", 2), ["0-1", "0-1"])

    def test_bad(self) -> None:
        self.assertRaises(ValueError, nodeCpus, "0,x", 2)
        self.assertRaises(ValueError, nodeCpus, "0-", 2)


class ArgumentTests(SynchronousTestCase):
    def test_extraAfterDashes(self) -> None:
        """
        What follows C{--} goes to every node, untouched.
        """
        args = parseArgs(["--nodes", "1", "--port", "8080", "--data-dir", "/d", "--", "--commit-interval", "5"])
        self.assertEqual((args.nodes, args.port, args.data_dir), (1, 8080, "/d"))
        self.assertEqual(args.extra, ["--commit-interval", "5"])
        self.assertTrue(args.holder)

    def test_noExtra(self) -> None:
        self.assertEqual(parseArgs(["--port", "1", "--data-dir", "/d"]).extra, [])

    def test_refused(self) -> None:
        """
        No node, or cores that are not cores, stop at the arguments.
        """
        for argv in (["--nodes", "0"], ["--cpus", "a"]):
            with self.assertRaises(SystemExit):
                parseArgs(["--port", "1", "--data-dir", "/d", *argv])


class SmallPartsTests(SynchronousTestCase):
    def test_databaseURL(self) -> None:
        self.assertEqual(databaseURL("postgresql://postgres@127.0.0.1:5432/test", "b"),
                         "postgresql://postgres@127.0.0.1:5432/b")
        self.assertEqual(databaseURL("postgresql://u@h/test?sslmode=disable", "b"), "postgresql://u@h/b?sslmode=disable")

    def test_redisPatterns(self) -> None:
        self.assertEqual(redisPatterns("crm_im_bench_1"), ["crm_im:crm_im_bench_1:*", "crm_im_bench_1*"])

    def test_postgresBackend(self) -> None:
        """
        Backends of the run's database, with or without a cluster name
        in their title; not other databases' or the server's own
        processes.
        """
        self.assertTrue(postgresBackend(b"postgres: 15/main: postgres crm_im_bench_1 127.0.0.1(4242) idle\0", "crm_im_bench_1"))
        self.assertTrue(postgresBackend(b"postgres: postgres crm_im_bench_1 127.0.0.1(4242) idle", "crm_im_bench_1"))
        self.assertFalse(postgresBackend(b"postgres: 15/main: postgres test 127.0.0.1(4242) idle", "crm_im_bench_1"))
        self.assertFalse(postgresBackend(b"postgres: 15/main: checkpointer ", "crm_im_bench_1"))
        self.assertFalse(postgresBackend(b"/usr/lib/postgresql/15/bin/postgres\0-D\0crm_im_bench_1", "crm_im_bench_1"))


class RedisTests(SynchronousTestCase):
    def test_encode(self) -> None:
        self.assertEqual(_redisEncode("SCAN", "0", "MATCH", "é*"),
                         b"*4\r\n$4\r\nSCAN\r\n$1\r\n0\r\n$5\r\nMATCH\r\n$3\r\n\xc3\xa9*\r\n")

    def test_read(self) -> None:
        """
        A SCAN reply (an array of a bulk string and an array), integers,
        nil and status lines; an error reply raises.
        """
        stream = io.BytesIO(b"*2\r\n$2\r\n17\r\n*2\r\n$1\r\na\r\n$4\r\nb\r\nc\r\n:3\r\n$-1\r\n+OK\r\n-ERR no\r\n")
        self.assertEqual(_redisRead(stream), [b"17", [b"a", b"b\r\nc"]])
        self.assertEqual(_redisRead(stream), 3)
        self.assertIsNone(_redisRead(stream))
        self.assertEqual(_redisRead(stream), b"OK")
        self.assertRaises(RuntimeError, _redisRead, stream)
        self.assertRaises(ConnectionError, _redisRead, stream)

    def test_deleteKeys(self) -> None:
        """
        Against the machine's Redis: the prefix's keys go, another
        prefix's stay.
        """
        url = requireRedis()
        mine, other = f"crm_im_bench_t{secrets.token_hex(4)}", f"crm_im_bench_u{secrets.token_hex(4)}"
        keys = [f"crm_im:{mine}:nodes", f"crm_im:{mine}:alive:bench-0", f"{mine}#/#", f"crm_im:{other}:nodes"]

        def command(connection: socket.socket, *words: str) -> object:
            connection.sendall(_redisEncode(*words))
            return _redisRead(connection.makefile("rb"))

        with socket.create_connection(("127.0.0.1", 6379), timeout=5) as connection:
            for key in keys:
                command(connection, "SET", key, "1")
        self.addCleanup(deleteRedisKeys, url, other)
        self.assertEqual(deleteRedisKeys(url, mine), 3)
        with socket.create_connection(("127.0.0.1", 6379), timeout=5) as connection:
            self.assertEqual(command(connection, "EXISTS", *keys), 1)
