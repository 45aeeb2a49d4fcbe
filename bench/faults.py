#!/usr/bin/env python3
# -*- test-case-name: tests.integration.test_faults -*-
"""
Faults under load: relay traffic against a real C{twistd -n crm_im} on
SQLite while the server is killed with C{kill -9} again and again, then a
check, through the server, that nothing receipted was lost and nothing was
stored twice.

    python bench/faults.py                              # 20 kills, 50 clients, 300 msg/s
    python bench/faults.py --kills 3 --clients 4 --rate 80 --seconds-between-kills 1

What it does:

  1. Starts C{twistd -n --pidfile= crm_im --listen tcp:PORT:interface=127.0.0.1
     --data-dir DIR --quiet} (the default store: SQLite in C{DIR}, the
     default C{--sqlite-synchronous FULL}); C{--port} and C{--data-dir}
     default to a free port and a fresh temporary directory.
  2. Connects C{--clients} raw Socket.IO v5 / Engine.IO v4 WebSocket
     clients, user C{f0} ... C{fN-1}, each sending 1:1 C{message} events to
     the next user of the ring with an acknowledgement asked for, at
     C{--rate} messages per second in all (a timer spreads them over the
     clients that are connected and logged in; a client with no connection
     is not offered any).
  3. Every C{--seconds-between-kills} seconds, arms a kill: the server gets
     C{SIGKILL} in the very reactor turn in which the next receipt arrives
     (a receipt sent before its commit would then be lost with the
     process), or after C{--arm-timeout} seconds if none comes. When the
     process has ended it is started again on the same data directory and
     port; once it logs that it listens every client reconnects, logs in,
     and sends again, with the same C{id}, every message it sent and has no
     receipt for, plus the C{--probes} messages it was most recently given
     a receipt for (their new receipt must carry the first one's
     timestamp).
  4. After the last kill it keeps going for C{--seconds-between-kills}
     more, stops offering, and waits until every message sent has a
     receipt (C{--settle-timeout}).
  5. Reads every conversation back with C{get_history} (C{after} paging,
     through the server) and checks: every receipted C{(fromId, id)} is
     there exactly once, nothing is there twice, nothing is there that was
     never sent. Then stops the server with C{SIGTERM}; with
     C{--sqlite-check} it also counts the rows of the database file.

Each client keeps a ledger (L{Ledger}): every id it made, how often it sent
it, its receipt, and whether a kill caught it unreceipted. A message caught
in flight by a kill is counted as C{lostUnreceiptedThenResent}; its receipt
after the restart tells whether the killed server had committed it
(C{committedBeforeKill}: the receipt's timestamp is older than the kill, the
resend was deduplicated) or not (C{storedAfterRestart}).

The report is one JSON object on stdout (and in C{--out}); the exit status
is 0 when C{ok} is true. Server output goes to C{DIR/faults-server-K.log}.

Live deliveries are counted too. A message delivered twice to one
connection of a recipient (C{deliveriesRepeatedOnOneConnection}) fails the
run: a resend must cause no second delivery. Across connections
(C{deliveriesRepeated}) it is not judged: the server marks messages
delivered lazily, so a kill may make it deliver a message again as an
offline message at the recipient's next login (at least once, by design; see
C{crm_im/storage/commit.py}).

The clients speak the wire protocol by hand (one Engine.IO packet per
WebSocket frame, as the official server sends them), so the check depends
on no client library's reconnection logic: reconnecting and resending are
this module's, and they are what the ledger describes. Every wait is on an
event or a L{Deferred}; the only timers are the offered rate, the kill
schedule, retries of a refused connection, and timeouts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import sqlite3
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, ensureDeferred, fail, gatherResults, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure

REPO = Path(__file__).resolve().parent.parent
TWISTD = "from twisted.scripts.twistd import run; run()"
LISTENING = b"crm_im listening on"
#: events per C{get_history} page (the server's maximum)
HISTORY_PAGE = 200
#: seconds between two attempts to reach a server that is up but refused
RETRY_DELAY = 0.1
#: seconds before a message refused with an error ack is sent again
ERROR_RETRY_DELAY = 1.0


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def percentile(values: Sequence[float], fraction: float) -> Optional[float]:
    """
    The nearest-rank percentile of C{values}, or L{None} for none.
    """
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(fraction * len(ordered) + 0.5)) - 1))
    return ordered[index]


# ---- the wire: Engine.IO v4 / Socket.IO v5 text packets over WebSocket


def encodeEvent(name: str, payload: Any, ackId: Optional[int] = None) -> str:
    """
    An Engine.IO MESSAGE carrying a Socket.IO EVENT on namespace C{/}.
    """
    return "42" + ("" if ackId is None else str(ackId)) + json.dumps([name, payload], separators=(",", ":"))


def parseFrame(text: str) -> Tuple[str, Optional[int], Any]:
    """
    Classify one text frame from the server.

    @return: C{(kind, ackId, data)}: C{kind} is C{"open"}, C{"ping"},
        C{"close"}, C{"noop"}, C{"connect"}, C{"connect_error"},
        C{"disconnect"}, C{"event"} (C{data} the argument list, the event
        name first), C{"ack"} (C{data} the argument list) or C{"other"}.
    """
    if not text:
        return ("other", None, text)
    kind = text[0]
    if kind == "0":
        return ("open", None, json.loads(text[1:]))
    if kind == "2":
        return ("ping", None, text[1:])
    if kind == "1":
        return ("close", None, None)
    if kind == "6":
        return ("noop", None, None)
    if kind != "4" or len(text) < 2:
        return ("other", None, text)
    packet, rest = text[1], text[2:]
    if rest.startswith("/"):
        # another namespace than "/": not ours
        return ("other", None, text)
    digits = 0
    while digits < len(rest) and rest[digits].isdigit():
        digits += 1
    ackId = int(rest[:digits]) if digits else None
    body = json.loads(rest[digits:]) if rest[digits:] else None
    if packet == "0":
        return ("connect", None, body)
    if packet == "4":
        return ("connect_error", None, body)
    if packet == "1":
        return ("disconnect", None, None)
    if packet == "2":
        return ("event", ackId, body)
    if packet == "3":
        return ("ack", ackId, body)
    return ("other", None, text)


# ---- the ledger


class Ledger:
    """
    What one sender sent and what it was told, independent of connections.

    @ivar order: every id this sender made, in order.
    @ivar sends: per id, how many times it went on the wire.
    @ivar receipts: per receipted id, the receipt's C{timestamp}.
    @ivar interrupted: per id that was in flight (sent, unreceipted) when
        its connection was lost, the kill's time in ms since the epoch.
    @ivar resent: ids sent again after a reconnect because they had no
        receipt.
    @ivar probed: ids sent again after a reconnect although receipted.
    @ivar probeMismatches: C{(id, first timestamp, later receipt)} of probes
        whose receipt differed from the first one.
    """

    def __init__(self, userId: str) -> None:
        self.userId = userId
        self.order: List[str] = []
        self.sends: Dict[str, int] = {}
        self.receipts: Dict[str, int] = {}
        self.interrupted: Dict[str, int] = {}
        self.resent: Set[str] = set()
        self.probed: Set[str] = set()
        self.probeMismatches: List[Tuple[str, int, Any]] = []
        self._counter = itertools.count()

    def newId(self) -> str:
        """
        Make the next message id of this sender.
        """
        messageId = f"{self.userId}-{next(self._counter)}"
        self.order.append(messageId)
        self.sends[messageId] = 0
        return messageId

    def unreceipted(self) -> List[str]:
        """
        The ids made and not receipted yet, oldest first.
        """
        return [messageId for messageId in self.order if messageId not in self.receipts]

    def settled(self) -> bool:
        """
        Whether every id made has a receipt.
        """
        return len(self.receipts) == len(self.order)

    def receipted(self, messageId: str, receipt: Dict[str, Any]) -> None:
        """
        Record a receipt; a second receipt for the same id must carry the
        first one's timestamp.
        """
        timestamp = receipt.get("timestamp")
        first = self.receipts.get(messageId)
        if first is None:
            self.receipts[messageId] = int(timestamp) if isinstance(timestamp, (int, float)) else -1
        elif first != timestamp or receipt.get("messageId") != messageId:
            self.probeMismatches.append((messageId, first, receipt))


# ---- the server process


class ServerProcess(ProcessProtocol):
    """
    One C{twistd -n crm_im} process: its output goes to a log file, and
    L{listening} fires when it logs that it listens.
    """

    def __init__(self, logPath: Path) -> None:
        self.logPath = logPath
        self._log = open(logPath, "ab")
        self._tail = b""
        self.listening: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.reason: Optional[Failure] = None

    def outReceived(self, data: bytes) -> None:
        """
        Keep the output; fire L{listening} when its line appears.
        """
        self._log.write(data)
        if not self.listening.called:
            seen = self._tail + data
            if LISTENING in seen:
                self._log.flush()
                self.listening.callback(None)
            self._tail = seen[-len(LISTENING):]

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        """
        Close the log; fail L{listening} if it never fired; fire L{ended}.
        """
        self.reason = reason
        self._log.close()
        if not self.listening.called:
            self.listening.errback(RuntimeError(f"the server ended before listening; see {self.logPath}"))
        self.ended.callback(None)

    def signal(self, name: str) -> None:
        """
        Send a signal, if the process still runs.
        """
        if self.transport is None or self.reason is not None:
            return
        try:
            self.transport.signalProcess(name)
        except ProcessExitedAlready:
            pass

    def exitCode(self) -> Optional[int]:
        """
        The exit code, or L{None} while running or after a signal.
        """
        if self.reason is None:
            return None
        return getattr(self.reason.value, "exitCode", None)


# ---- one client


class SIOClientProtocol(WebSocketClientProtocol):
    """
    The Twisted side of one WebSocket: hands every text frame to its
    L{Sender}.
    """

    sender: "Sender"

    def onOpen(self) -> None:
        """
        The WebSocket is open: the server's Engine.IO OPEN comes next.
        """
        self.sender.opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        One Engine.IO packet (binary ones are not expected here).
        """
        if not isBinary:
            self.sender.frameReceived(payload.decode("utf-8"))

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        """
        Closed, cleanly or not (a killed server just vanishes).
        """
        self.sender.closed(self)

    def sendText(self, text: str) -> None:
        """
        Send one text frame.
        """
        self.sendMessage(text.encode("utf-8"), False)  # type: ignore[no-untyped-call, unused-ignore]


class SIOClientFactory(WebSocketClientFactory):
    """
    Builds the one L{SIOClientProtocol} of a connection attempt of a
    L{Sender}.
    """

    protocol = SIOClientProtocol

    def __init__(self, sender: "Sender", url: str, reactor: Any) -> None:
        super().__init__(url, reactor=reactor)  # type: ignore[no-untyped-call, unused-ignore]
        self.sender = sender

    def buildProtocol(self, addr: Any) -> SIOClientProtocol:
        """
        The protocol, told its L{Sender}.
        """
        proto = super().buildProtocol(addr)
        assert isinstance(proto, SIOClientProtocol)
        proto.sender = self.sender
        return proto

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        """
        The TCP connection could not be made: the same as a lost one.
        """
        self.sender.closed(None)


class Sender:
    """
    One user with one socket: logs in, sends messages with an ack asked
    for, records receipts in its L{Ledger}, and, after every reconnect,
    resends what has no receipt.

    @ivar ready: whether the socket is logged in (messages may be sent).
    """

    def __init__(self, run: "FaultRun", userId: str, toId: str) -> None:
        self.run = run
        self.userId = userId
        self.toId = toId
        self.ledger = Ledger(userId)
        self.ready = False
        self.connecting = False
        #: connection attempts so far: deliveries are told apart by it
        self.connections = 0
        self._proto: Optional[SIOClientProtocol] = None
        self._ackIds = itertools.count(1)
        #: ack id -> (message id, time sent, whether it was a first send)
        self._pending: Dict[int, Tuple[str, float, bool]] = {}
        self._calls: Dict[int, Deferred[Any]] = {}
        self._readyWaiters: List[Deferred[None]] = []
        self._retries: Set[str] = set()

    # connection

    def connect(self) -> None:
        """
        Open a new WebSocket to the server (unless one is being opened).
        """
        if self.connecting or self._proto is not None:
            return
        self.connecting = True
        self.connections += 1
        port = self.run.port
        factory = SIOClientFactory(self, f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket", self.run.reactor)
        self.run.reactor.connectTCP("127.0.0.1", port, factory, timeout=5)

    def whenReady(self) -> Deferred[None]:
        """
        A L{Deferred} firing once this client is logged in.
        """
        if self.ready:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._readyWaiters.append(d)
        return d

    def opened(self, proto: SIOClientProtocol) -> None:
        """
        The WebSocket of this attempt is open.
        """
        self._proto = proto

    def closed(self, proto: Optional[SIOClientProtocol]) -> None:
        """
        The connection (or the attempt) ended: every message in flight is
        now unreceipted (and will be resent after the reconnect); pending
        calls fail.
        """
        if proto is not None and self._proto is not None and proto is not self._proto:
            return
        self._proto = None
        self.connecting = False
        self.ready = False
        killedAt = self.run.lastKillMs
        for messageId, _, _ in self._pending.values():
            if messageId not in self.ledger.receipts and messageId not in self.ledger.interrupted:
                self.ledger.interrupted[messageId] = killedAt
        self._pending.clear()
        calls, self._calls = self._calls, {}
        for d in calls.values():
            d.errback(ConnectionError(f"{self.userId}: connection lost"))
        self.run.senderDown(self)

    def _send(self, text: str) -> None:
        assert self._proto is not None
        self._proto.sendText(text)

    def frameReceived(self, text: str) -> None:
        """
        One frame from the server.
        """
        kind, ackId, data = parseFrame(text)
        if kind == "open":
            self._send("40")
        elif kind == "ping":
            self._send("3")
        elif kind == "connect":
            self.call("user:login", {"id": self.userId, "name": self.userId}).addCallbacks(self._loggedIn, self._loginFailed)
        elif kind == "ack" and ackId is not None:
            self._ackReceived(ackId, data)
        elif kind == "event" and isinstance(data, list) and data and data[0] == "message":
            if len(data) > 1 and isinstance(data[1], dict):
                self.run.delivered(self, data[1])
        elif kind in ("connect_error", "disconnect", "close"):
            if self._proto is not None:
                self._proto.dropConnection(abort=True)

    def call(self, event: str, payload: Any) -> Deferred[Any]:
        """
        Emit C{event} with an ack asked for; the L{Deferred} fires with the
        ack's first argument.
        """
        if self._proto is None:
            return fail(ConnectionError(f"{self.userId}: not connected"))
        ackId = next(self._ackIds)
        d: Deferred[Any] = Deferred()
        self._calls[ackId] = d
        self._send(encodeEvent(event, payload, ackId))
        return d

    def _loggedIn(self, user: Any) -> None:
        if isinstance(user, dict) and "error" in user:
            self.run.problem(f"{self.userId}: login refused: {user}")
            if self._proto is not None:
                self._proto.dropConnection(abort=True)
            return
        self.ready = True
        ledger = self.ledger
        for messageId in ledger.unreceipted():
            if ledger.sends[messageId]:
                ledger.resent.add(messageId)
                self._retries.discard(messageId)
                self._emit(messageId, first=False)
        if self.run.probes:
            receipted = [m for m in reversed(ledger.order) if m in ledger.receipts][: self.run.probes]
            for messageId in receipted:
                ledger.probed.add(messageId)
                self._emit(messageId, first=False)
        waiters, self._readyWaiters = self._readyWaiters, []
        for d in waiters:
            d.callback(None)

    def _loginFailed(self, failure: Failure) -> None:
        if isinstance(failure.value, ConnectionError):
            return
        self.run.problem(f"{self.userId}: login failed: {failure.getErrorMessage()}")
        if self._proto is not None:
            self._proto.dropConnection(abort=True)

    # messages

    def sendNew(self) -> None:
        """
        Make a message and send it.
        """
        messageId = self.ledger.newId()
        self._emit(messageId, first=True)

    def _emit(self, messageId: str, first: bool) -> None:
        ackId = next(self._ackIds)
        self._pending[ackId] = (messageId, self.run.reactor.seconds(), first)
        self.ledger.sends[messageId] += 1
        self.run.emitted += 1
        self._send(encodeEvent(
            "message", {"id": messageId, "toId": self.toId, "type": "text", "content": f"faults {messageId}"}, ackId))

    def _ackReceived(self, ackId: int, args: Any) -> None:
        payload = args[0] if isinstance(args, list) and args else None
        call = self._calls.pop(ackId, None)
        if call is not None:
            call.callback(payload)
            return
        pending = self._pending.pop(ackId, None)
        if pending is None:
            self.run.problem(f"{self.userId}: an ack for no message (ack id {ackId})")
            return
        messageId, sentAt, first = pending
        if not isinstance(payload, dict) or "error" in payload:
            code = payload["error"].get("code") if isinstance(payload, dict) and isinstance(payload.get("error"), dict) else repr(payload)
            self.run.errorAcks[str(code)] += 1
            if messageId not in self.ledger.receipts and messageId not in self._retries:
                self._retries.add(messageId)
                self.run.reactor.callLater(ERROR_RETRY_DELAY, self._retry, messageId)
            return
        if payload.get("messageId") != messageId:
            self.run.problem(f"{self.userId}: receipt for {payload.get('messageId')!r} answering {messageId!r}")
        self.ledger.receipted(messageId, payload)
        if first:
            self.run.latencies.append(self.run.reactor.seconds() - sentAt)
        self.run.receiptArrived(self)

    def _retry(self, messageId: str) -> None:
        self._retries.discard(messageId)
        if self.ready and messageId not in self.ledger.receipts:
            self.ledger.resent.add(messageId)
            self._emit(messageId, first=False)

    # history

    async def history(self, friendId: str) -> List[Dict[str, Any]]:
        """
        The whole conversation with C{friendId}, oldest first, read page by
        page with C{after}.
        """
        messages: List[Dict[str, Any]] = []
        after = 0
        while True:
            page = await self.call("get_history", {"friendId": friendId, "after": after, "limit": HISTORY_PAGE})
            if not isinstance(page, dict) or "error" in page:
                raise RuntimeError(f"get_history refused: {page!r}")
            batch = page["messages"]
            messages.extend(batch)
            if not page["hasMore"] or not batch:
                return messages
            after = int(batch[-1]["seq"])

    def close(self) -> None:
        """
        Close the socket (at the end).
        """
        if self._proto is not None:
            self._proto.dropConnection(abort=True)


# ---- the run


class FaultRun:
    """
    One run: a server process killed C{kills} times under load, and the
    check of its history afterwards.

    @ivar lastKillMs: the last kill's time, ms since the epoch (by the
        reactor's clock, as the server stamps its messages).
    """

    def __init__(
        self,
        reactor: Any,
        dataDir: Path,
        port: int,
        kills: int = 20,
        clients: int = 50,
        rate: float = 300.0,
        secondsBetweenKills: float = 3.0,
        probes: int = 1,
        burst: bool = True,
        armTimeout: float = 2.0,
        settleTimeout: float = 60.0,
        startTimeout: float = 30.0,
        serverArgs: Sequence[str] = (),
        python: str = sys.executable,
        serverRepo: Path = REPO,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.dataDir = dataDir
        self.port = port
        self.kills = kills
        self.rate = rate
        self.secondsBetweenKills = secondsBetweenKills
        self.probes = probes
        self.burst = burst
        self.armTimeout = armTimeout
        self.settleTimeout = settleTimeout
        self.startTimeout = startTimeout
        self.serverArgs = list(serverArgs)
        self.python = python
        self.serverRepo = serverRepo
        self.log = log
        users = [f"f{index}" for index in range(clients)]
        self.senders = [Sender(self, user, users[(index + 1) % clients]) for index, user in enumerate(users)]
        self.server: Optional[ServerProcess] = None
        self.serverUp = False
        self.starts = 0
        self.lastKillMs = 0
        self.emitted = 0
        self.notOffered = 0
        self.errorAcks: Counter[str] = Counter()
        self.latencies: List[float] = []
        self.deliveries: Counter[Tuple[str, str]] = Counter()
        self.connectionDeliveries: Counter[Tuple[str, int, str, str]] = Counter()
        self.problems: List[str] = []
        self.killReports: List[Dict[str, Any]] = []
        self._armed: Optional[Deferred[None]] = None
        self._settleWaiter: Optional[Deferred[None]] = None
        self._turn = 0
        self._offered = 0
        self._offerStart = 0.0
        self._retryCalls: Dict[str, IDelayedCall] = {}

    # reporting hooks of the senders

    def problem(self, text: str) -> None:
        """
        Something a correct server never does: it fails the run.
        """
        self.problems.append(text)
        self.log(text)

    def delivered(self, sender: Sender, message: Dict[str, Any]) -> None:
        """
        C{sender} got C{message} as an event: count it, overall and per
        connection.
        """
        key = (str(message.get("fromId")), str(message.get("id")))
        self.deliveries[key] += 1
        self.connectionDeliveries[(sender.userId, sender.connections) + key] += 1

    def receiptArrived(self, sender: Sender) -> None:
        """
        A receipt came: kill the server now if a kill is armed (a receipt
        sent before its commit would be lost with the process); fire the
        settle wait once every message has its receipt.
        """
        if self._armed is not None:
            armed, self._armed = self._armed, None
            armed.callback(None)
        if self._settleWaiter is not None and self.settled():
            waiter, self._settleWaiter = self._settleWaiter, None
            waiter.callback(None)

    def senderDown(self, sender: Sender) -> None:
        """
        A client lost its connection (or could not open one): if the server
        is up it tries again, else it waits for the restart.
        """
        if self.serverUp:
            call = self.reactor.callLater(RETRY_DELAY, sender.connect)
            self._retryCalls[sender.userId] = call

    def settled(self) -> bool:
        """
        Whether every message sent has its receipt.
        """
        return all(sender.ledger.settled() for sender in self.senders)

    # the server

    async def startServer(self) -> ServerProcess:
        """
        Start C{twistd -n crm_im} on the data directory and port; return
        once it logs that it listens.
        """
        self.starts += 1
        process = ServerProcess(self.dataDir / f"faults-server-{self.starts}.log")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.serverRepo)] + [p for p in [env.get("PYTHONPATH")] if p])
        args = [self.python, "-c", TWISTD, "-n", "--pidfile=", "crm_im",
                "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                "--data-dir", str(self.dataDir), "--quiet", *self.serverArgs]
        spawner: IReactorProcess = self.reactor
        spawner.spawnProcess(process, args[0], args, env=env, path=str(self.serverRepo))
        self.server = process
        await process.listening.addTimeout(self.startTimeout, self.clock)
        self.serverUp = True
        return process

    async def killOnNextReceipt(self) -> Dict[str, Any]:
        """
        Arm the kill; C{SIGKILL} the server in the turn the next receipt
        arrives (or after C{armTimeout}); wait until it ended.
        """
        server = self.server
        assert server is not None
        armed: Deferred[None] = Deferred()
        self._armed = armed
        if self.burst:
            # Messages in flight when the kill lands, whatever the rate:
            # arriving together they share a commit or wait for the next.
            for sender in self.senders:
                if sender.ready:
                    sender.sendNew()
        timedOut: List[bool] = []

        def onTimeout() -> None:
            if self._armed is armed:
                self._armed = None
                timedOut.append(True)
                armed.callback(None)

        timer = self.clock.callLater(self.armTimeout, onTimeout)
        await armed
        if timer.active():
            timer.cancel()
        # no await between the receipt and the signal: this is its turn
        self.serverUp = False
        self.lastKillMs = int(self.clock.seconds() * 1000)
        inFlight = sum(len(sender._pending) for sender in self.senders)
        server.signal("KILL")
        killedAt = self.clock.seconds()
        await server.ended
        for call in self._retryCalls.values():
            if call.active():
                call.cancel()
        self._retryCalls.clear()
        return {"onReceipt": not timedOut, "inFlight": inFlight, "killedAt": killedAt}

    # the load

    def _tick(self) -> None:
        """
        Offer the messages due by now, round-robin over the logged-in
        clients.
        """
        due = int((self.clock.seconds() - self._offerStart) * self.rate) - self._offered
        if due <= 0:
            return
        self._offered += due
        count = len(self.senders)
        for _ in range(due):
            for step in range(count):
                sender = self.senders[(self._turn + step) % count]
                if sender.ready:
                    self._turn = (self._turn + step + 1) % count
                    sender.sendNew()
                    break
            else:
                self.notOffered += 1

    async def _reconnectAll(self) -> None:
        for sender in self.senders:
            sender.connect()
        await gatherResults([sender.whenReady() for sender in self.senders], consumeErrors=True).addTimeout(
            self.startTimeout, self.clock)

    async def run(self) -> Dict[str, Any]:
        """
        The whole run; the report.
        """
        started = self.clock.seconds()
        await self.startServer()
        await self._reconnectAll()
        self.log(f"{len(self.senders)} clients logged in; offering {self.rate} msg/s")
        loop = LoopingCall(self._tick)
        loop.clock = self.clock
        self._offerStart = self.clock.seconds()
        loop.start(0.01, now=False)
        try:
            for kill in range(self.kills):
                await deferLater(self.clock, self.secondsBetweenKills, lambda: None)
                report = await self.killOnNextReceipt()
                await self.startServer()
                restarted = self.clock.seconds()
                await self._reconnectAll()
                report.update(
                    restartSeconds=round(restarted - report["killedAt"], 3),
                    reconnectedSeconds=round(self.clock.seconds() - report["killedAt"], 3),
                )
                del report["killedAt"]
                self.killReports.append(report)
                self.log(f"kill {kill + 1}/{self.kills}: {report}")
            await deferLater(self.clock, self.secondsBetweenKills, lambda: None)
        finally:
            loop.stop()
        offeredSeconds = self.clock.seconds() - self._offerStart
        if not self.settled():
            waiter: Deferred[None] = Deferred()
            self._settleWaiter = waiter
            try:
                await waiter.addTimeout(self.settleTimeout, self.clock)
            except Exception:
                self._settleWaiter = None
                self.problem(f"not every message had a receipt {self.settleTimeout}s after the load stopped")
        history = await self.readHistory()
        self.serverUp = False  # no reconnects from here on
        for sender in self.senders:
            sender.close()
        server = self.server
        assert server is not None
        server.signal("TERM")
        await server.ended.addTimeout(30, self.clock)
        report = self.report(history, offeredSeconds, self.clock.seconds() - started)
        report["serverExitCode"] = server.exitCode()
        return report

    async def readHistory(self) -> Dict[Tuple[str, str], List[Dict[str, Any]]]:
        """
        Every conversation of the ring, once, read through the server by
        one of its two users.
        """
        conversations: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
        for sender in self.senders:
            key = (min(sender.userId, sender.toId), max(sender.userId, sender.toId))
            if key not in conversations:
                conversations[key] = await sender.history(sender.toId)
        return conversations

    # the verdict

    def report(self, history: Dict[Tuple[str, str], List[Dict[str, Any]]], offeredSeconds: float,
               totalSeconds: float) -> Dict[str, Any]:
        """
        Compare the ledgers with the history read back.
        """
        seen: Counter[Tuple[str, str]] = Counter()
        misplaced = 0
        seqProblems = 0
        for (a, b), messages in history.items():
            seqs = [m.get("seq") for m in messages]
            if seqs != sorted(set(s for s in seqs if isinstance(s, int))):
                seqProblems += 1
            for m in messages:
                key = (str(m.get("fromId")), str(m.get("id")))
                seen[key] += 1
                if {m.get("fromId"), m.get("toId")} != {a, b}:
                    misplaced += 1
        sent: Set[Tuple[str, str]] = set()
        receipted: Set[Tuple[str, str]] = set()
        resent = interrupted = committedBefore = storedAfter = interruptedUnreceipted = 0
        probes = 0
        mismatches: List[Any] = []
        for sender in self.senders:
            ledger = sender.ledger
            sent.update((ledger.userId, m) for m in ledger.order if ledger.sends[m])
            receipted.update((ledger.userId, m) for m in ledger.receipts)
            resent += len(ledger.resent)
            probes += len(ledger.probed)
            mismatches.extend(ledger.probeMismatches)
            for messageId, killedAt in ledger.interrupted.items():
                interrupted += 1
                timestamp = ledger.receipts.get(messageId)
                if timestamp is None:
                    interruptedUnreceipted += 1
                elif timestamp <= killedAt:
                    committedBefore += 1
                else:
                    storedAfter += 1
        missing = sorted(f"{f}/{m}" for f, m in receipted if seen[(f, m)] == 0)
        duplicates = sorted(f"{f}/{m} x{n}" for (f, m), n in seen.items() if n > 1)
        unknown = sorted(f"{f}/{m}" for (f, m) in seen if (f, m) not in sent)
        unreceipted = len(sent - receipted)
        latencies = [value * 1000 for value in self.latencies]
        restart = [r["restartSeconds"] for r in self.killReports]
        repeatedOnOneConnection = sum(n - 1 for n in self.connectionDeliveries.values() if n > 1)
        ok = not (repeatedOnOneConnection or missing or duplicates or unknown or mismatches or misplaced or seqProblems or unreceipted
                  or self.problems) and len(self.killReports) == self.kills
        return {
            "ok": ok,
            "kills": len(self.killReports),
            "killsOnReceipt": sum(1 for r in self.killReports if r["onReceipt"]),
            "clients": len(self.senders),
            "rate": self.rate,
            "offeredSeconds": round(offeredSeconds, 1),
            "totalSeconds": round(totalSeconds, 1),
            "sent": len(sent),
            "emitted": self.emitted,
            "receipted": len(receipted),
            "resent": resent,
            "lostUnreceiptedThenResent": interrupted,
            "committedBeforeKill": committedBefore,
            "storedAfterRestart": storedAfter,
            "probes": probes,
            "probeMismatches": len(mismatches),
            "inHistory": sum(seen.values()),
            "duplicates": len(duplicates),
            "missing": len(missing),
            "unknown": len(unknown),
            "misplaced": misplaced,
            "unorderedConversations": seqProblems,
            "unreceiptedAtEnd": unreceipted,
            "notOfferedWhileDown": self.notOffered,
            "errorAcks": dict(self.errorAcks),
            "deliveries": sum(self.deliveries.values()),
            "deliveriesRepeated": sum(n - 1 for n in self.deliveries.values() if n > 1),
            "deliveriesRepeatedOnOneConnection": repeatedOnOneConnection,
            "receiptLatencyMs": {
                "p50": _round(percentile(latencies, 0.5)),
                "p99": _round(percentile(latencies, 0.99)),
                "max": _round(max(latencies) if latencies else None),
            },
            "restartSeconds": {
                "min": _round(min(restart) if restart else None),
                "median": _round(percentile(restart, 0.5)),
                "max": _round(max(restart) if restart else None),
            },
            "perKill": self.killReports,
            "problems": self.problems[:20],
            "examples": {"missing": missing[:10], "duplicates": duplicates[:10], "unknown": unknown[:10],
                         "probeMismatches": [repr(m) for m in mismatches[:10]]},
        }


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 3)


def sqliteCheck(dataDir: Path, senders: Iterable[Sender]) -> Dict[str, Any]:
    """
    The extra cross-check, after the server has stopped: the database file
    itself, read-only.
    """
    database = sqlite3.connect(f"file:{dataDir / 'crm_im.sqlite3'}?mode=ro", uri=True)
    try:
        rows = database.execute("SELECT from_id, message_id FROM messages").fetchall()
    finally:
        database.close()
    counts = Counter((str(f), str(m)) for f, m in rows)
    receipted = {(s.ledger.userId, m) for s in senders for m in s.ledger.receipts}
    return {
        "rows": len(rows),
        "duplicateRows": sum(n - 1 for n in counts.values() if n > 1),
        "receiptedMissingRows": sum(1 for key in receipted if key not in counts),
    }


def parseArgs(argv: Sequence[str]) -> argparse.Namespace:
    """
    The command line.
    """
    parser = argparse.ArgumentParser(
        description="kill -9 crm_im under relay load, restart it, and check that every receipted "
                    "message is in history exactly once")
    parser.add_argument("--kills", type=int, default=20, help="kill -9 this many times (20)")
    parser.add_argument("--clients", type=int, default=50, help="senders, one user each, in a ring (50)")
    parser.add_argument("--rate", type=float, default=300.0, help="messages per second offered in all (300)")
    parser.add_argument("--seconds-between-kills", type=float, default=3.0,
                        help="seconds of load after each (re)start before the next kill is armed (3)")
    parser.add_argument("--port", type=int, default=0, help="the server's port on 127.0.0.1 (a free one)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="the server's --data-dir, reused across restarts (a new temporary directory)")
    parser.add_argument("--probes", type=int, default=1,
                        help="receipted messages each client resends after a reconnect, besides the unreceipted (1)")
    parser.add_argument("--no-burst", action="store_true",
                        help="do not have every client send one message more when a kill is armed")
    parser.add_argument("--arm-timeout", type=float, default=2.0,
                        help="kill this long after arming even if no receipt came (2)")
    parser.add_argument("--settle-timeout", type=float, default=60.0,
                        help="seconds, after the load stops, for every message to get its receipt (60)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="one more crm_im option, repeatable, e.g. --server-arg=--commit-interval=0")
    parser.add_argument("--server-repo", type=Path, default=REPO,
                        help="run the crm_im of this source tree (e.g. a `git archive` of one commit; this checkout)")
    parser.add_argument("--sqlite-check", action="store_true",
                        help="at the end, also count the rows of the database file (read-only)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    return parser.parse_args(argv)


async def main(reactor: Any, argv: Sequence[str]) -> None:
    """
    Run once with the options of C{argv}; print the report; exit 1 unless
    it is C{ok}.
    """
    options = parseArgs(argv)
    dataDir = options.data_dir or Path(tempfile.mkdtemp(prefix="crm_im-faults-"))
    dataDir.mkdir(parents=True, exist_ok=True)
    port = options.port or freePort()

    def log(line: str) -> None:
        print(f"[faults {reactor.seconds():.3f}] {line}", file=sys.stderr, flush=True)

    log(f"data dir {dataDir}, port {port}")
    run = FaultRun(reactor, dataDir.resolve(), port, kills=options.kills, clients=options.clients,
                   rate=options.rate, secondsBetweenKills=options.seconds_between_kills,
                   probes=options.probes, burst=not options.no_burst, armTimeout=options.arm_timeout,
                   settleTimeout=options.settle_timeout, serverArgs=options.server_arg,
                   serverRepo=options.server_repo.resolve(), log=log)
    try:
        report = await run.run()
    finally:
        if run.server is not None:
            run.server.signal("KILL")
    if options.sqlite_check:
        report["sqlite"] = sqliteCheck(run.dataDir, run.senders)
        report["ok"] = report["ok"] and not report["sqlite"]["duplicateRows"] and not report["sqlite"]["receiptedMissingRows"]
    report["dataDir"] = str(dataDir)
    text = json.dumps(report, indent=2)
    print(text)
    if options.out is not None:
        options.out.write_text(text + "\n")
    if not report["ok"]:
        raise SystemExit(1)


if __name__ == "__main__":
    from twisted.internet.task import react

    react(lambda reactor: ensureDeferred(main(reactor, sys.argv[1:])))
