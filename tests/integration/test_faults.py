"""
Faults under load, short: L{bench.faults} against a real C{twistd -n crm_im}
on SQLite, killed with C{SIGKILL} four times while four clients send, each
kill landing in the turn a receipt arrives.

It fails if a receipt goes out before its commit (the receipted message is
then missing from history after the kill, or the resent probe of it gets a
new timestamp), or if a resend after a reconnect (of unreceipted messages,
and of the last receipted one as a probe) stores a second copy. Checked by
hand against a server whose group commit fired its results before
committing: C{missing} and C{probeMismatches} (see bench/README.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Generator, List

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, inlineCallbacks
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bench.faults import FaultRun, Sender, encodeEvent, freePort, parseFrame

Inline = Generator[Deferred[Any], Any, None]


class FaultsUnderLoadTests(TestCase):
    """
    The harness's short run: four kills, four clients, 80 messages per
    second.
    """

    timeout = 120

    @inlineCallbacks
    def test_killedUnderLoad(self) -> Inline:
        """
        After four C{kill -9}s under load and the restarts, every message
        sent has a receipt, every receipted message is in history exactly
        once, nothing is there twice, every probe resend was answered
        with its first receipt, and no connection got a message twice.
        """
        clients, kills = 4, 4
        run = FaultRun(reactor, Path(self.mktemp()).resolve(), freePort(), kills=kills, clients=clients,
                       rate=80.0, secondsBetweenKills=1.0, settleTimeout=20.0)
        run.dataDir.mkdir(parents=True)

        def reap() -> None:
            if run.server is not None:
                run.server.signal("KILL")

        self.addCleanup(reap)
        report = yield ensureDeferred(run.run())
        summary = {key: value for key, value in report.items() if key not in ("perKill",)}
        self.assertEqual(report["kills"], kills, summary)
        self.assertEqual(report["killsOnReceipt"], kills, summary)
        self.assertGreater(report["receipted"], 100, summary)
        self.assertEqual(report["receipted"], report["sent"], summary)
        self.assertEqual(report["inHistory"], report["sent"], summary)
        self.assertEqual(
            (report["missing"], report["duplicates"], report["unknown"], report["probeMismatches"],
             report["misplaced"], report["unorderedConversations"], report["deliveriesRepeatedOnOneConnection"],
             report["problems"]),
            (0, 0, 0, 0, 0, 0, 0, []), summary)
        self.assertEqual(report["probes"], clients * kills, summary)
        self.assertTrue(report["ok"], summary)
        self.assertEqual(report["serverExitCode"], 0, summary)


class VerdictTests(SynchronousTestCase):
    """
    L{FaultRun.report} judges ledgers against a history: it is what makes
    the run above able to fail.
    """

    def run_(self) -> FaultRun:
        run = FaultRun(MemoryReactorClock(), Path("unused"), 1, kills=0, clients=2)
        for sender in run.senders:
            for _ in range(3):
                messageId = sender.ledger.newId()
                sender.ledger.sends[messageId] = 1
                sender.ledger.receipted(messageId, {"messageId": messageId, "timestamp": 1000})
        return run

    def history(self, run: FaultRun) -> Dict[Any, List[Dict[str, Any]]]:
        a, b = run.senders
        messages = [
            {"fromId": sender.userId, "toId": sender.toId, "id": messageId, "seq": 0}
            for sender in (a, b) for messageId in sender.ledger.order
        ]
        for seq, message in enumerate(messages, 1):
            message["seq"] = seq
        return {("f0", "f1"): messages}

    def test_clean(self) -> None:
        """
        Everything receipted there once: C{ok}.
        """
        run = self.run_()
        report = run.report(self.history(run), 1.0, 1.0)
        self.assertTrue(report["ok"], report)
        self.assertEqual((report["sent"], report["receipted"], report["inHistory"]), (6, 6, 6))

    def test_missingAndDuplicate(self) -> None:
        """
        A receipted message absent, another twice, one never sent: each is
        counted, and the run is not C{ok}.
        """
        run = self.run_()
        history = self.history(run)
        messages = history[("f0", "f1")]
        dropped = messages.pop(0)
        messages.append(dict(messages[0], seq=100))
        messages.append({"fromId": "f0", "toId": "f1", "id": "f0-99", "seq": 101})
        report = run.report(history, 1.0, 1.0)
        self.assertFalse(report["ok"])
        self.assertEqual((report["missing"], report["duplicates"], report["unknown"]), (1, 1, 1))
        self.assertEqual(report["examples"]["missing"], [f"{dropped['fromId']}/{dropped['id']}"])

    def test_probeMismatch(self) -> None:
        """
        A second receipt for an id with another timestamp (the first was
        given before a commit that never happened) fails the run.
        """
        run = self.run_()
        sender: Sender = run.senders[0]
        messageId = sender.ledger.order[0]
        sender.ledger.receipted(messageId, {"messageId": messageId, "timestamp": 2000})
        report = run.report(self.history(run), 1.0, 1.0)
        self.assertFalse(report["ok"])
        self.assertEqual(report["probeMismatches"], 1)

    def test_codec(self) -> None:
        """
        Events go out as C{42<ack>[name, payload]}; acks, events, connects
        and pings come back classified.
        """
        self.assertEqual(encodeEvent("message", {"id": "x"}, 7), '427["message",{"id":"x"}]')
        self.assertEqual(parseFrame('437[{"messageId":"x"}]'), ("ack", 7, [{"messageId": "x"}]))
        self.assertEqual(parseFrame('42["message",{"id":"x"}]'), ("event", None, ["message", {"id": "x"}]))
        self.assertEqual(parseFrame('40{"sid":"s"}'), ("connect", None, {"sid": "s"}))
        self.assertEqual(parseFrame("2"), ("ping", None, ""))
        self.assertEqual(parseFrame('42/admin,["x"]')[0], "other")
