"""
The cluster options of C{twistd crm_im} (CLUSTER.md): C{--redis} (or
C{$CRM_IM_REDIS}) turns clustering on; C{--node-id}, C{--node-ttl},
C{--redis-prefix} and C{--node-address} reach L{Config}; bad values are
refused with a message naming the option.
"""

from __future__ import annotations

import os
import socket

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from crm_im.config import Config, firstTCPPort
from crm_im.tap import Options

PG = "postgresql://crm@db/crm"


def parse(*args: str) -> Config:
    options = Options()
    options.parseOptions(list(args))
    config: Config = options.config
    return config


class ClusterOptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        keys = ("PORT", "CRM_IM_REDIS", "CRM_IM_STORE")
        self.saved = {key: os.environ.get(key) for key in keys}
        for key in keys:
            os.environ.pop(key, None)

    def tearDown(self) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def refused(self, *args: str) -> str:
        error = self.assertRaises(usage.UsageError, parse, *args)
        return str(error)

    def test_offByDefault(self) -> None:
        """
        Without C{--redis} there is one node.
        """
        config = parse()
        self.assertIsNone(config.redis)
        self.assertEqual((config.nodeTTL, config.redisPrefix, config.nodeAddress), (15.0, "socket.io", None))

    def test_everyOption(self) -> None:
        config = parse(
            "--store", PG, "--redis", "redis://:pw@r:6380/2", "--node-id", "crm-1:a",
            "--node-ttl", "5", "--redis-prefix", "crm", "--node-address", "http://10.0.0.5:8080/",
        )
        self.assertEqual(config.redis, "redis://:pw@r:6380/2")
        self.assertEqual(config.clusterNodeId(), "crm-1:a")
        self.assertEqual((config.nodeTTL, config.redisPrefix, config.nodeAddress), (5.0, "crm", "http://10.0.0.5:8080"))
        self.assertNotIn("pw", repr(config))

    def test_fromEnvironment(self) -> None:
        """
        C{$CRM_IM_REDIS} and C{$CRM_IM_STORE} do what the options do; the
        default node id is the host name and the port.
        """
        os.environ["CRM_IM_REDIS"] = "redis://127.0.0.1:6379/0"
        os.environ["CRM_IM_STORE"] = PG
        config = parse("--port", "8081")
        self.assertEqual(config.redis, "redis://127.0.0.1:6379/0")
        self.assertEqual(config.clusterNodeId(), f"{socket.gethostname()}:8081")
        self.assertEqual(config.clusterNodeId(port=9000), f"{socket.gethostname()}:9000")

    def test_firstTCPPort(self) -> None:
        self.assertEqual(firstTCPPort(("systemd:domain=INET:index=0", "tcp:8080:backlog=1024")), 8080)
        self.assertEqual(firstTCPPort(("ssl:port=8443:privateKey=k",)), 8443)
        self.assertIsNone(firstTCPPort(("unix:/tmp/s",)))

    def test_refused(self) -> None:
        """
        Each bad value is refused with a message naming the option.
        """
        base = ("--store", PG, "--redis", "redis://127.0.0.1/0")
        self.assertIn("--redis", self.refused("--store", PG, "--redis", "http://r"))
        self.assertIn("--redis", self.refused("--store", PG, "--redis", "redis://r:x/0"))
        self.assertIn("--node-id", self.refused(*base, "--node-id", "a b"))
        self.assertIn("--node-id", self.refused(*base, "--node-id", ""))
        self.assertIn("--node-id", self.refused(*base, "--node-id", "x" * 129))
        self.assertIn("--node-ttl", self.refused(*base, "--node-ttl", "0.5"))
        self.assertIn("--node-ttl", self.refused(*base, "--node-ttl", "soon"))
        self.assertIn("--redis-prefix", self.refused(*base, "--redis-prefix", "a#b"))
        self.assertIn("--node-address", self.refused(*base, "--node-address", "10.0.0.5:8080"))
        self.assertIn("--node-address", self.refused(*base, "--node-address", "http://h:8080/engine"))

    def test_needsRedis(self) -> None:
        """
        The cluster options without C{--redis} are refused, not ignored.
        """
        self.assertIn("needs --redis", self.refused("--node-id", "a"))
        self.assertIn("needs --redis", self.refused("--node-ttl", "5"))

    def test_needsSharedStore(self) -> None:
        """
        Nodes share one PostgreSQL store; SQLite (the default) is refused.
        """
        message = self.refused("--redis", "redis://127.0.0.1/0", "--node-id", "a")
        self.assertIn("postgresql://", message)
        self.assertIn("--store", self.refused("--store", "sqlite:x.db", "--redis", "redis://127.0.0.1/0", "--node-id", "a"))

    def test_portZeroNeedsNodeId(self) -> None:
        """
        With C{--port 0} the default node id would not name the node.
        """
        self.assertIn("--node-id", self.refused("--store", PG, "--redis", "redis://127.0.0.1/0", "--port", "0"))
        config = parse("--store", PG, "--redis", "redis://127.0.0.1/0", "--port", "0", "--node-id", "b")
        self.assertEqual(config.clusterNodeId(), "b")
