"""
Tests for L{crm_im.threadpool}: calls in threads that leave no cyclic
garbage, on real threads.
"""

from __future__ import annotations

import gc
import threading
import weakref
from typing import Any, Callable

from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from crm_im.storage.engines import SQLiteEngine
from crm_im.threadpool import AcyclicThreadPool, PoolStopped

#: seconds a test waits for a worker thread
WAIT = 10.0


class Thing:
    """
    An object a weak reference can watch.
    """


def runCalls(pool: ThreadPool, count: int, func: Callable[..., Any], *args: Any) -> list[tuple[bool, Any]]:
    """
    Run C{func(*args)} C{count} times through
    C{pool.callInThreadWithCallback}; the results, once the worker is past
    the last call (a final call runs after it on the pool's one thread).
    """
    results: list[tuple[bool, Any]] = []
    done = threading.Event()
    for _ in range(count):
        pool.callInThreadWithCallback(lambda ok, result: results.append((ok, result)), func, *args)
    pool.callInThreadWithCallback(lambda ok, result: done.set(), lambda: None)
    if not done.wait(WAIT):
        raise AssertionError("the worker did not finish")
    return results


class AcyclicThreadPoolTests(SynchronousTestCase):
    """
    L{AcyclicThreadPool} on one worker thread.
    """

    def startPool(self, kind: type[ThreadPool] = AcyclicThreadPool) -> ThreadPool:
        pool = kind(1, 1)
        pool.start()
        self.addCleanup(pool.stop)
        return pool

    def test_callAfterStop(self) -> None:
        """
        A call submitted once the pool has stopped is not run, and its
        callback is told so (Twisted's pool drops it without a word, so a
        Deferred waiting for it never fires).
        """
        pool = AcyclicThreadPool(1, 1, name="test-pool")
        pool.start()
        pool.stop()
        results: list[tuple[bool, Any]] = []
        ran: list[bool] = []
        pool.callInThreadWithCallback(lambda ok, result: results.append((ok, result)), ran.append, True)
        self.assertEqual((ran, [ok for ok, _ in results]), ([], [False]))
        self.assertIsInstance(results[0][1], Failure)
        results[0][1].trap(PoolStopped)

    def garbageOf(self, pool: ThreadPool, count: int) -> int:
        """
        How many objects the collector finds unreachable after C{count}
        calls through C{pool} (collections off meanwhile).
        """
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        runCalls(pool, count, lambda: Thing())
        return gc.collect()

    def test_noCyclicGarbage(self) -> None:
        """
        A hundred calls leave nothing for the cycle collector, where
        Twisted's own pool leaves four objects per call.
        """
        self.assertEqual(self.garbageOf(self.startPool(), 100), 0)

    def test_twistedPoolLeavesGarbage(self) -> None:
        """
        The garbage L{test_noCyclicGarbage} looks for is there with
        Twisted's L{ThreadPool} (this Twisted still makes it; if a new one
        stops, this pool can go).
        """
        self.assertGreaterEqual(self.garbageOf(self.startPool(ThreadPool), 100), 400)

    def test_resultsAndFailures(self) -> None:
        """
        C{onResult} gets C{(True, result)}, or C{(False, Failure)} when the
        call raised.
        """
        pool = self.startPool()
        self.assertEqual(runCalls(pool, 2, lambda x: x * 2, 21), [(True, 42), (True, 42)])

        def fails() -> None:
            raise ValueError("no")

        [(ok, failure)] = runCalls(pool, 1, fails)
        self.assertFalse(ok)
        self.assertIsInstance(failure, Failure)
        failure.trap(ValueError)

    def test_failureWithoutCallbackLogged(self) -> None:
        """
        A call without C{onResult} that raises is logged.
        """
        pool = self.startPool()
        done = threading.Event()

        def fails() -> None:
            raise ValueError("logged")

        pool.callInThread(fails)
        pool.callInThreadWithCallback(lambda ok, result: done.set(), lambda: None)
        self.assertTrue(done.wait(WAIT))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_argumentsAndResultReleased(self) -> None:
        """
        Once a call is over, the pool keeps neither its arguments nor its
        result alive (the worker holds on to its last task until the next
        one comes).
        """
        pool = self.startPool()
        argument = Thing()
        argumentRef = weakref.ref(argument)
        results: list[Any] = []
        done = threading.Event()

        def onResult(ok: bool, result: Any) -> None:
            results.append(weakref.ref(result))
            done.set()

        pool.callInThreadWithCallback(onResult, lambda thing: Thing(), argument)
        del argument
        self.assertTrue(done.wait(WAIT))
        # The worker is back at its queue once a second call has run.
        runCalls(pool, 1, lambda: None)
        gc.collect()
        self.assertIsNone(argumentRef())
        self.assertIsNone(results[0]())


class StoreConnectionPoolTests(TestCase):
    """
    The store's connection pool (L{crm_im.storage.engines}) on an
    L{AcyclicThreadPool}, with the reactor running.
    """

    async def test_madeWhileRunning(self) -> None:
        """
        A pool made once the reactor runs (which starts its threads as it
        is made: a store opened again in a running server) runs its
        transactions on an L{AcyclicThreadPool}, started.
        """
        pool = SQLiteEngine(self.mktemp()).makePool(reactor)
        pool.start()
        self.addCleanup(pool.close)
        self.assertIsInstance(pool.threadpool, AcyclicThreadPool)
        result = await pool.runInteraction(lambda cursor: cursor.execute("SELECT 6 * 7").fetchone())
        self.assertEqual(result, (42,))
