"""
Slow readers against a real C{twistd -n crm_im} (SQLite store, fresh data
directory, a 64 KiB per-session bound): clients that log in and stop
reading their socket while others send to them are dropped by the
server's outgoing bound, its memory stays within the bound, and a control
group of normal clients keeps getting every message. The small version of
C{bench/slow_readers.py}, which drives the clients here too (raw
WebSocket clients, C{bench/rawclient.py}), attached to the server this
test starts.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue

from tests.integration.test_twistd import REPO, Inline, ProcessTestCase

HARNESS = REPO / "bench" / "slow_readers.py"

#: the per-session bound of these tests (--max-buffered-bytes)
BOUND = 65536
SLOW = 30


class SlowReaderTests(ProcessTestCase):
    """
    Clients that stop reading are dropped; nobody else notices.
    """

    timeout = 90

    @inlineCallbacks
    def test_slowReadersDropped(self) -> Inline:
        """
        30 clients log in and stop reading (a 4 KiB receive buffer); 5
        senders send them 8,000-character messages until their receipts
        say C{offline}: every one of them is closed for its full buffer
        (not for a missing PONG: the heartbeat is far away), the bytes
        queued in the server never pass 30 bounds, the server's
        descriptors of the slow readers are released, and the control
        group (3 pairs, 5 messages a second each) got every message it
        sent, before, during and after.
        """
        process = self.spawnTwistd(
            self.mktemp(), "--max-buffered-bytes", str(BOUND), "--rate-messages", "0", "--rate-events", "0",
        )
        yield self.waitUntilServing(process)
        assert process.transport is not None
        out, err, code = yield getProcessOutputAndValue(
            sys.executable,
            [str(HARNESS), "--port", str(process.port), "--pid", str(process.transport.pid),
             "--slow", str(SLOW), "--senders", "5", "--control-pairs", "3", "--phase-seconds", "2",
             "--max-buffered-bytes", str(BOUND), "--sample-every", "0.2"],
            env={**os.environ, "PYTHONPATH": str(REPO)},
            reactor=reactor,
        )
        text = out.decode("utf-8", "replace")
        try:
            report: dict[str, Any] = json.loads(text)
        except ValueError:
            self.fail(f"harness exited {code}:\n{text}\n{err.decode('utf-8', 'replace')}\n{process.text}")
        self.assertEqual(report["problems"], [], report)
        self.assertEqual(code, 0)
        self.assertEqual(report["end"]["overflows"], SLOW)
        self.assertEqual(report["end"]["pingTimeouts"], 0)
        self.assertEqual(report["senders"]["targetsSeenOffline"], SLOW)
        # what waits in the sessions' queues: never past one bound each
        self.assertLessEqual(report["peak"]["bufferedKiB"] * 1024, SLOW * BOUND)
        # the server closed the slow readers' connections itself (they
        # keep theirs open until the end): back to its idle descriptors
        self.assertTrue(report["end"]["fdsReleased"], report["end"])
        self.assertLessEqual(report["end"]["fds"], report["fdsIdle"])
        control = report["control"]
        self.assertEqual((control["received"], control["refused"]), (control["sent"], 0))
        for phase in ("before", "during", "after"):
            self.assertGreater(control[phase]["n"], 0, phase)
