"""
Tests for L{crm_im.presence}: transitions as pure functions of the calls
and an explicit clock.
"""

from __future__ import annotations

import tracemalloc

import orjson
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crm_im.presence import INVISIBLE, Presence, UserPresence


class PresenceTests(SynchronousTestCase):
    """
    Logins, logouts, statuses and the grace period.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.left: list[UserPresence] = []
        self.presence = Presence(self.clock, grace=0, userLeft=self.left.append)
        self.presence.start()
        self.addCleanup(self.presence.stop)

    def test_firstAndSecondDevice(self) -> None:
        """
        The first device makes the user appear; a second one does not, and
        updates the profile.
        """
        first = self.presence.login("u1", "s1", "Alice", None)
        second = self.presence.login("u1", "s2", "Alice B", "a.png")
        self.assertTrue(first.firstDevice)
        self.assertFalse(second.firstDevice)
        self.assertEqual(self.presence.devicesOf("u1"), {"s1", "s2"})
        self.assertEqual(
            self.presence.onlineUsers(), [{"id": "u1", "name": "Alice B", "avatar": "a.png", "status": "online"}]
        )
        self.assertEqual(self.presence.userOfDevice("s2"), first.user)

    def test_lastDeviceLeaves(self) -> None:
        """
        Only the last device's logout reports the user gone.
        """
        self.presence.login("u1", "s1", "Alice", None)
        self.presence.login("u1", "s2", "Alice", None)
        out1 = self.presence.logout("s1")
        out2 = self.presence.logout("s2")
        assert out1 is not None and out2 is not None
        self.assertFalse(out1.lastDevice)
        self.assertTrue(out2.lastDevice)
        self.assertIsNone(self.presence.user("u1"))
        self.assertEqual(self.presence.onlineCount(), 0)
        self.assertIsNone(self.presence.logout("s2"))

    def test_loginSerials(self) -> None:
        """
        Each device logging in gets a serial past every earlier one; it
        keeps it while it stays logged in as that user (a second login
        of the same device changes nothing), and has none once out.
        """
        presence = self.presence
        self.assertEqual((presence.lastLoginSerial, presence.loginSerial("s1")), (0, 0))
        presence.login("u1", "s1", "Alice", None)
        presence.login("u2", "s2", "Bob", None)
        first, second = presence.loginSerial("s1"), presence.loginSerial("s2")
        self.assertLess(0, first)
        self.assertLess(first, second)
        self.assertEqual(presence.lastLoginSerial, second)
        presence.login("u1", "s1", "Alice A", None)
        self.assertEqual((presence.loginSerial("s1"), presence.lastLoginSerial), (first, second))
        self.assertEqual(presence.deviceCount(), 2)
        presence.logout("s1")
        self.assertEqual((presence.loginSerial("s1"), presence.deviceCount()), (0, 1))
        presence.login("u1", "s1", "Alice", None)
        self.assertLess(second, presence.loginSerial("s1"))
        self.assertEqual(presence.lastLoginSerial, presence.loginSerial("s1"))

    def test_invisibleLeftOut(self) -> None:
        """
        An invisible user is logged in but neither listed nor counted.
        """
        self.presence.login("u1", "s1", "Alice", None)
        self.presence.login("u2", "s2", "Bob", None)
        self.presence.setStatus("u1", INVISIBLE)
        self.assertEqual([u["id"] for u in self.presence.onlineUsers()], ["u2"])
        self.assertEqual(self.presence.onlineCount(), 1)
        self.assertEqual(self.presence.devicesOf("u1"), {"s1"})
        outcome = self.presence.logout("s1")
        assert outcome is not None
        self.assertFalse(outcome.wasVisible)

    def test_onlineUsersJSON(self) -> None:
        """
        C{onlineUsersJSON} serialises to the same JSON as C{onlineUsers},
        and follows changes of profile and status (each user is encoded
        once until it changes).
        """
        self.presence.login("u1", "s1", "Alice", None)
        self.presence.login("u2", "s2", "Bob", "b.png")

        def same() -> None:
            self.assertEqual(
                orjson.loads(orjson.dumps(self.presence.onlineUsersJSON())), self.presence.onlineUsers()
            )

        same()
        user = self.presence.user("u1")
        assert user is not None
        self.assertIs(user.wireJSON(), user.wireJSON())
        self.presence.login("u1", "s3", "Alice B", "a.png")
        same()
        self.presence.setStatus("u2", "busy")
        same()
        self.presence.setStatus("u1", INVISIBLE)
        same()
        self.assertEqual(len(self.presence.onlineUsersJSON()), 1)

    def test_wireJSONSmall(self) -> None:
        """
        A user's cached JSON costs about its own size, not the 4 KiB buffer
        orjson encodes into (kept for the user's whole session).
        """
        self.presence.login("u1", "s1", "Alice", None)
        user = self.presence.user("u1")
        assert user is not None
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        before = tracemalloc.get_traced_memory()[0]
        fragment = user.wireJSON()
        kept = tracemalloc.get_traced_memory()[0] - before
        self.assertLess(kept, 512)
        self.assertEqual(orjson.loads(orjson.dumps([fragment])), [user.toWire()])

    def test_unknownStatus(self) -> None:
        """
        A status outside the contract's four is refused.
        """
        self.presence.login("u1", "s1", "Alice", None)
        self.assertRaises(ValueError, self.presence.setStatus, "u1", "sleeping")

    def test_graceAbsorbsFlap(self) -> None:
        """
        With a grace period, a device back in time makes no change visible
        and the user is never reported gone.
        """
        self.presence.grace = 5
        self.presence.login("u1", "s1", "Alice", None)
        outcome = self.presence.logout("s1")
        assert outcome is not None
        self.assertFalse(outcome.lastDevice)
        self.assertEqual(self.presence.onlineCount(), 1)
        self.clock.advance(3)
        again = self.presence.login("u1", "s2", "Alice", None)
        self.assertFalse(again.firstDevice)
        self.clock.advance(10)
        self.assertEqual(self.left, [])
        self.assertEqual(self.presence.devicesOf("u1"), {"s2"})

    def test_graceEnds(self) -> None:
        """
        With no device back, the user is gone when the grace period ends,
        not before, and the listener is told once.
        """
        self.presence.grace = 5
        self.presence.login("u1", "s1", "Alice", None)
        self.presence.logout("s1")
        self.clock.advance(4.5)
        self.assertEqual(self.left, [])
        for _ in range(4):
            self.clock.advance(0.25)
        self.assertEqual([user.id for user in self.left], ["u1"])
        self.assertIsNone(self.presence.user("u1"))
        self.clock.advance(10)
        self.assertEqual(len(self.left), 1)
        self.assertTrue(self.presence.login("u1", "s3", "Alice", None).firstDevice)
