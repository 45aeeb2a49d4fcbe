# -*- test-case-name: tests.test_storage -*-
"""
Group commit: the write queue every SQL store module writes through.

Every write (a message, a delivered mark, a read, a membership change, a
file record) joins one queue. While a write transaction is in flight, new
writes wait; when it commits, all the waiting writes (up to
L{GroupCommit.maxBatch}) go into the next single transaction. An idle store
thus commits a write at once, and a busy one pays one commit (one fsync)
for many writes; under load at least L{GroupCommit.commitInterval}
separates the starts of two transactions, and at lower rates a part of it
in proportion to the rate (L{GroupCommit.fullIntervalRate}): a commit's
fixed cost matters where the core is busy, its wait where it is not. How a
batch runs inside its transaction is the store's
(L{GroupCommit.runBatch_txn}): the message store merges its
messages into multi-row statements and runs every other write in its own
savepoint, so one failing write fails alone; a failed commit fails the
whole batch. A write's L{Deferred} fires only after its transaction
committed.

Reads go straight to the pool; a read issued after a write's L{Deferred}
fired sees that write (SQLite: the pool's one connection; PostgreSQL: the
write committed before the read's transaction began).

On PostgreSQL several nodes write to one database, each through its own
group commit: every batch first takes the engine's write lock (a
transaction-scoped advisory lock), so that seqs commit in the order they
were drawn across nodes (L{GroupCommit._lockedBatch_txn}).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence, TypeVar

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from .database import Database, Transaction
from .interface import NewMessage, StoreClosedError

_R = TypeVar("_R")

_PENDING = object()


@attrs.define
class Write:
    """
    A write waiting in the group-commit queue.
    """

    desc: str
    func: Callable[[Transaction], Any]
    deferred: Deferred[Any]
    #: one statement: needs no savepoint
    atomic: bool = False
    #: a markDelivered write: merged with the others of its batch
    seqs: Sequence[int] | None = None
    #: a storeMessage write: inserted with the others of its batch
    message: NewMessage | None = None


class GroupCommit:
    """
    The write queue of a store on a L{Database}: writes wait while a
    transaction is in flight and go together into the next one.

    @ivar maxBatch: at most this many writes go into one transaction.
    """

    log = Logger()
    maxBatch = 1000
    #: seconds delivered marks may wait for a write to ride along with
    lazyDelay = 0.5
    #: seconds at least between the starts of two write transactions;
    #: writes arriving meanwhile share the next. A commit costs far more
    #: than its fsync: SQLite appends every page the transaction changed to
    #: the WAL, and each message changes a page in each of its indexes, most
    #: of them at random places; messages of one commit share pages, and the
    #: fsync and thread hand-offs are paid once. Measured with the relay
    #: bench at 4,000 msg/s: 0.87 of a core at 2 ms, 0.68 at 10 ms (see
    #: bench/README.md). A lone write after a quiet spell does not wait.
    commitInterval = 0.010
    #: writes per second (averaged over L{rateWindow}) from which the whole
    #: L{commitInterval} applies; below it the interval shrinks in
    #: proportion, so that a lightly loaded store commits almost every
    #: write at once (latency) and a busy one shares commits (CPU). The
    #: relay bench on one core: at 500 msg/s a commit per message costs
    #: ~0.15 of a core more than the 10 ms interval and takes p50 from ~10
    #: to ~2 ms; at 4,000 msg/s and more the core is full and every
    #: commit shared counts (bench/README). 0: always the whole interval.
    fullIntervalRate = 4000.0
    #: seconds over which the write rate is averaged
    rateWindow = 1.0

    def __init__(self, database: Database) -> None:
        """
        @param database: not yet started; L{open} starts it.
        """
        self.database = database
        self._opened = False
        self._closed = False
        self._queue: list[Write] = []
        # Queued writes other than delivered marks (which may wait).
        self._urgent = 0
        self._lazyCall: Any = None
        self._intervalCall: Any = None
        # The lazy delay of the waiting delivered marks is over.
        self._marksDue = False
        self._lastCommitStart = float("-inf")
        # Writes other than delivered marks since the last transaction
        # started, and their average rate (per second).
        self._arrivals = 0
        self._rate = 0.0
        self._inFlight = False
        self._drainWaiters: list[Deferred[None]] = []
        self._closeResult: object = _PENDING
        self._closeObservers: list[Deferred[None]] = []

    @property
    def transactionCount(self) -> int:
        """
        How many transactions the store has run (for tests and metrics).
        """
        return self.database.transactionCount

    def open(self) -> Deferred[None]:
        """
        Start the database and apply the schema.
        """
        if self._opened:
            return fail(StoreClosedError("the store was opened already"))
        self._opened = True
        return self.database.start()

    async def _close(self) -> None:
        self._flush()
        if self._inFlight or self._queue:
            drained: Deferred[None] = Deferred()
            self._drainWaiters.append(drained)
            await drained
        self.database.close()

    def _closeFinished(self, result: None | Failure) -> None:
        """
        Tell every caller of L{close} that the store is closed.
        """
        self._closeResult = result
        observers, self._closeObservers = self._closeObservers, []
        for observer in observers:
            if result is None:
                observer.callback(None)
            else:
                observer.errback(result)

    def close(self) -> Deferred[None]:
        """
        Refuse new writes, commit the queued ones, then close the database.
        Calling it again returns a L{Deferred} for the same completion.
        """
        if not self._closed:
            self._closed = True
            Deferred.fromCoroutine(self._close()).addBoth(self._closeFinished)
        if self._closeResult is _PENDING:
            observer: Deferred[None] = Deferred()
            self._closeObservers.append(observer)
            return observer
        if isinstance(self._closeResult, Failure):
            return fail(self._closeResult)
        return succeed(None)

    # writes

    def _write(
        self,
        desc: str,
        func: Callable[[Transaction], _R],
        atomic: bool = False,
        seqs: Sequence[int] | None = None,
        message: NewMessage | None = None,
    ) -> Deferred[_R]:
        """
        Queue a write for the next group commit.
        """
        if not self._opened or self._closed:
            return fail(StoreClosedError(f"{desc}: the store is not open"))
        d: Deferred[_R] = Deferred()
        self._queue.append(Write(desc, func, d, atomic, seqs, message))
        if seqs is None:
            self._urgent += 1
            self._arrivals += 1
        self._flush()
        return d

    def _interval(self) -> float:
        """
        Seconds at least between two transactions' starts, at the current
        write rate.
        """
        if self.fullIntervalRate <= 0 or self._rate >= self.fullIntervalRate:
            return self.commitInterval
        return self.commitInterval * self._rate / self.fullIntervalRate

    def _observeRate(self, now: float) -> None:
        """
        Fold the writes since the last transaction started into the average
        rate (an exponential average over L{rateWindow}).
        """
        elapsed = now - self._lastCommitStart
        arrivals, self._arrivals = self._arrivals, 0
        if elapsed <= 0:
            return
        weight = 1.0 - math.exp(-elapsed / self.rateWindow)
        self._rate += (arrivals / elapsed - self._rate) * weight

    def _flush(self) -> None:
        """
        Start a transaction with the queued writes, unless one is in flight.
        """
        if self._inFlight:
            return
        if not self._queue:
            waiters, self._drainWaiters = self._drainWaiters, []
            for waiter in waiters:
                waiter.callback(None)
            return
        if not self._urgent and not self._marksDue and not self._closed:
            # Only delivered marks: nothing waits on them (a crash before
            # they commit repeats a delivery, it never loses one), so they
            # ride along with the next write instead of costing a
            # transaction each; at the latest after lazyDelay.
            if self._lazyCall is None:
                self._lazyCall = self.database.clock.callLater(self.lazyDelay, self._lazyFlush)
            return
        clock = self.database.clock
        now = clock.seconds()
        wait = self._lastCommitStart + self._interval() - now
        if wait > 0:
            if self._intervalCall is None:
                self._intervalCall = clock.callLater(wait, self._intervalFlush)
            return
        self._observeRate(now)
        self._lastCommitStart = now
        self._marksDue = False
        if self._lazyCall is not None:
            self._lazyCall.cancel()
            self._lazyCall = None
        batch = self._queue[: self.maxBatch]
        del self._queue[: self.maxBatch]
        self._urgent -= sum(1 for write in batch if write.seqs is None)
        self._inFlight = True
        try:
            d = self.database.runInteraction(
                "writeBatch", self._lockedBatch_txn, batch
            )
        except Exception:
            d = fail()
        d.addCallbacks(
            self._batchCommitted,
            self._batchFailed,
            callbackArgs=(batch,),
            errbackArgs=(batch,),
        )

    def _intervalFlush(self) -> None:
        self._intervalCall = None
        self._flush()

    def _lazyFlush(self) -> None:
        self._lazyCall = None
        self._marksDue = True  # let the waiting marks go now
        self._flush()

    def _batchCommitted(
        self, results: list[tuple[bool, Any]], batch: list[Write]
    ) -> None:
        """
        Fire the writes of a committed batch, then start the next one.
        """
        for write, (ok, result) in zip(batch, results):
            if ok:
                write.deferred.callback(result)
            else:
                write.deferred.errback(result)
        self._inFlight = False
        self._flush()

    def _batchFailed(self, failure: Failure, batch: list[Write]) -> None:
        """
        Fail every write of a batch whose transaction failed, then start the
        next one.
        """
        self.log.failure(
            "Write transaction of {count} writes failed",
            failure=failure,
            count=len(batch),
        )
        for write in batch:
            write.deferred.errback(failure)
        self._inFlight = False
        self._flush()

    def _lockedBatch_txn(self, txn: Transaction, batch: Sequence[Write]) -> list[tuple[bool, Any]]:
        """
        Take the engine's write lock, then run the batch: on PostgreSQL the
        nodes sharing a database then commit one at a time, and as the lock
        is held from before the first C{seq} is drawn until the commit, seqs
        become visible in order (a reader never sees seq 11 while seq 10 is
        still to commit, and skips it for good).
        """
        lock = txn.engine.writeLockSQL
        if lock is not None:
            txn.execute(lock)
        return self.runBatch_txn(txn, batch)

    def runBatch_txn(self, txn: Transaction, batch: Sequence[Write]) -> list[tuple[bool, Any]]:
        """
        Run the writes of one batch in C{txn} (on the pool thread).

        @return: per write, C{(True, result)} or C{(False, Failure)}.
        """
        raise NotImplementedError()

    def _read(self, desc: str, func: Callable[[Transaction], _R]) -> Deferred[_R]:
        """
        Run a read transaction now.
        """
        if not self._opened:
            return fail(StoreClosedError(f"{desc}: the store is not open"))
        try:
            return self.database.runInteraction(desc, func)
        except Exception:
            return fail()
