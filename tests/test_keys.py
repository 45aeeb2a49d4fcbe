"""
Unit tests of the key directory handlers (L{crm_im.im.keys}) and of
C{type: 'encrypted'} messages in the message handlers, on the in-memory
store with a recording router (L{tests.test_im_handlers.HandlerTestCase}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from crm_im.im.errors import FORBIDDEN, INVALID_PAYLOAD, TOO_LARGE
from crm_im.im.keys import MAX_KEY, KeyLimits
from crm_im.im.reserved import reservedEvent
from crm_im.im.validation import message
from crm_im.notify.rules import CONTENT_PREVIEW, notificationBody
from crm_im.storage.outbox import Pushkey, PushPlan
from tests.test_im_handlers import HandlerTestCase


def keysOf(deviceId: str, identity: str = "IK", first: int = 1, count: int = 0, spk: int = 1) -> dict[str, Any]:
    """
    A C{keys:upload} payload for C{deviceId}.
    """
    return {
        "deviceId": deviceId,
        "identityKey": identity,
        "signedPreKey": {"keyId": spk, "publicKey": f"SPK{spk}", "signature": f"SIG{spk}"},
        "oneTimeKeys": [{"keyId": n, "publicKey": f"OTK{n}"} for n in range(first, first + count)],
    }


class KeyHandlerTestCase(HandlerTestCase):
    """
    Shortcuts for the key events.
    """

    def upload(self, device: str, data: Any) -> dict[str, Any]:
        """
        C{keys:upload} from C{device}.
        """
        return self.answer(self.core.keys.upload(self.caller(device), data))  # type: ignore[no-any-return]

    def query(self, device: str, data: Any) -> dict[str, Any]:
        """
        C{keys:query} from C{device}.
        """
        return self.answer(self.core.keys.query(self.caller(device), data))  # type: ignore[no-any-return]

    def claim(self, device: str, data: Any) -> dict[str, Any]:
        """
        C{keys:claim} from C{device}.
        """
        return self.answer(self.core.keys.claim(self.caller(device), data))  # type: ignore[no-any-return]


class UploadQueryTests(KeyHandlerTestCase):
    """
    C{keys:upload} and C{keys:query}.
    """

    def test_uploadQuery(self) -> None:
        """
        An upload is acked with the device's one-time key count; a query
        returns each user asked for, with their devices' public keys (no
        one-time keys), an empty list for a user without keys.
        """
        self.assertEqual(self.upload("b1", keysOf("bob-phone", count=3)), {"oneTimeKeyCount": 3})
        self.assertEqual(self.upload("b1", keysOf("bob-phone", first=4, count=2)), {"oneTimeKeyCount": 5})
        self.assertEqual(
            self.query("a1", {"userIds": ["bob", "erin", "bob"]}),
            {
                "devices": {
                    "bob": [
                        {
                            "deviceId": "bob-phone",
                            "identityKey": "IK",
                            "signedPreKey": {"keyId": 1, "publicKey": "SPK1", "signature": "SIG1"},
                        }
                    ],
                    "erin": [],
                }
            },
        )

    def test_devicesBoundToCaller(self) -> None:
        """
        The device belongs to the logged-in user, whatever the payload
        says: alice's upload never changes bob's keys.
        """
        self.upload("b1", keysOf("phone"))
        self.upload("a1", dict(keysOf("phone", identity="ALICE"), userId="bob"))
        devices = self.query("c1", {"userIds": ["alice", "bob"]})["devices"]
        self.assertEqual((devices["alice"][0]["identityKey"], devices["bob"][0]["identityKey"]), ("ALICE", "IK"))

    def test_invalidUploads(self) -> None:
        """
        Every malformed or out-of-bounds field is C{INVALID_PAYLOAD}.
        """
        caller = self.caller("a1")
        good = keysOf("d", count=1)
        bad: list[Any] = [
            None,
            [],
            dict(good, deviceId=""),
            dict(good, deviceId="x" * 129),
            dict(good, identityKey=None),
            dict(good, identityKey="k" * (MAX_KEY + 1)),
            dict(good, identityKey="a\x00b"),
            dict(good, signedPreKey=None),
            dict(good, signedPreKey={"keyId": 1, "publicKey": "p"}),
            dict(good, signedPreKey={"keyId": -1, "publicKey": "p", "signature": "s"}),
            dict(good, signedPreKey={"keyId": True, "publicKey": "p", "signature": "s"}),
            dict(good, signedPreKey={"keyId": 2**53, "publicKey": "p", "signature": "s"}),
            dict(good, signedPreKey={"keyId": "1", "publicKey": "p", "signature": "s"}),
            dict(good, oneTimeKeys={"keyId": 1}),
            dict(good, oneTimeKeys=["k"]),
            dict(good, oneTimeKeys=[{"keyId": 1.5, "publicKey": "k"}]),
            dict(good, oneTimeKeys=[{"keyId": 1, "publicKey": ""}]),
            dict(good, oneTimeKeys=[{"keyId": n, "publicKey": "k"} for n in range(101)]),
            dict(good, replace="yes"),
        ]
        for data in bad:
            self.assertEqual(self.refused(self.core.keys.upload, caller, data), INVALID_PAYLOAD, data)
        self.assertEqual(self.successResultOf(self.store.deviceKeys(["alice"], 32)), {})

    def test_storedBound(self) -> None:
        """
        A device holds at most 500 one-time keys: the upload that would
        pass it is C{TOO_LARGE} and stores none of its keys.
        """
        for batch in range(5):
            self.upload("a1", keysOf("d", first=batch * 100, count=100))
        self.assertEqual(self.refused(self.core.keys.upload, self.caller("a1"), keysOf("d", first=500, count=1)), TOO_LARGE)
        self.assertEqual(self.upload("a1", keysOf("d", first=0, count=100)), {"oneTimeKeyCount": 500})

    def test_deviceBound(self) -> None:
        """
        A user has keys on at most 16 devices: a 17th replaces the one
        whose keys were uploaded longest ago (a device that tops up its
        keys stays).
        """
        for n in range(16):
            self.upload("a1", keysOf(f"d{n:02}"))
            self.clock.advance(1)
        self.upload("a1", keysOf("d00", count=1))
        self.upload("a1", keysOf("d16"))
        devices = [d["deviceId"] for d in self.query("b1", {"userIds": ["alice"]})["devices"]["alice"]]
        self.assertEqual(devices, [f"d{n:02}" for n in range(17) if n != 1])

    def test_invalidQueries(self) -> None:
        """
        C{userIds} must be a list of 1..100 user ids.
        """
        caller = self.caller("a1")
        for data in (None, {}, {"userIds": []}, {"userIds": "bob"}, {"userIds": [None]},
                     {"userIds": [str(n) for n in range(101)]}):
            self.assertEqual(self.refused(self.core.keys.query, caller, data), INVALID_PAYLOAD, data)
        self.assertEqual(len(self.query("a1", {"userIds": [str(n) for n in range(100)]})["devices"]), 100)


class IdentityChangeTests(KeyHandlerTestCase):
    """
    A device's identity key changes only with C{replace: true}, and then
    its user's contacts hear C{keys:changed}.
    """

    def test_refusedWithoutReplace(self) -> None:
        """
        A changed identity key without C{replace} is C{FORBIDDEN}; nothing
        changes and nobody is told.
        """
        self.upload("a1", keysOf("phone", count=2))
        self.router.clear()
        code = self.refused(self.core.keys.upload, self.caller("a1"), keysOf("phone", identity="NEW"))
        self.assertEqual(code, FORBIDDEN)
        self.assertEqual(self.query("b1", {"userIds": ["alice"]})["devices"]["alice"][0]["identityKey"], "IK")
        self.assertEqual(self.router.events("keys:changed"), [])

    def test_replaceTellsContacts(self) -> None:
        """
        With C{replace: true} the key is replaced, the device's old
        one-time keys are dropped, and C{keys:changed} reaches the users
        who share a 1:1 conversation or a group with alice, and alice's
        other devices; not the uploading device, not strangers.
        """
        self.send("a1", "hi", toId="bob")
        self.makeGroup("d1", ["alice"])
        self.upload("a1", keysOf("phone", count=2))
        self.router.clear()
        ack = self.upload("a1", dict(keysOf("phone", identity="NEW", first=10, count=1), replace=True))
        self.assertEqual(ack, {"oneTimeKeyCount": 1})
        (changed,) = self.router.events("keys:changed")
        self.assertEqual(changed.payload, {"userId": "alice", "deviceId": "phone"})
        self.assertEqual(changed.devices, {"a2", "b1", "b2", "d1"})
        claimed = self.claim("c1", {"userId": "alice"})
        self.assertEqual(claimed["keys"]["phone"]["oneTimeKey"], {"keyId": 10, "publicKey": "OTK10"})

    def test_announcedAfterTheAck(self) -> None:
        """
        Finding the contacts (a walk of the user's 1:1 messages) does not
        hold up the upload's ack; the walks run one at a time, and a
        user's changes made while their walk waits are told with it.
        """
        walks: list[tuple[str, Deferred[list[str]]]] = []

        def contacts(userId: str, limit: int) -> Deferred[list[str]]:
            walks.append((userId, Deferred()))
            return walks[-1][1]

        self.patch(self.store, "contacts", contacts)
        for device, user in (("phone", "a1"), ("pc", "b1"), ("tablet", "b2")):
            self.upload(user, keysOf(device))
        self.assertEqual(self.upload("a1", dict(keysOf("phone", identity="NEW"), replace=True)), {"oneTimeKeyCount": 0})
        self.upload("b1", dict(keysOf("pc", identity="NEW"), replace=True))
        self.upload("b2", dict(keysOf("tablet", identity="NEW"), replace=True))
        self.assertEqual([user for user, _ in walks], ["alice"])
        walks[0][1].callback(["carol"])
        (changed,) = self.router.events("keys:changed")
        self.assertEqual((changed.payload, changed.devices), ({"userId": "alice", "deviceId": "phone"}, {"a2", "c1"}))
        self.assertEqual([user for user, _ in walks], ["alice", "bob"])
        self.router.clear()
        walks[1][1].callback(["dave"])
        told = [(e.payload["deviceId"], e.devices) for e in self.router.events("keys:changed")]
        self.assertEqual(told, [("pc", {"b2", "d1"}), ("tablet", {"b1", "d1"})])

    def test_sameKeyReplaceIsQuiet(self) -> None:
        """
        C{replace: true} with the same identity key changes nothing
        anyone must hear of.
        """
        self.send("a1", "hi", toId="bob")
        self.upload("a1", keysOf("phone"))
        self.upload("a1", dict(keysOf("phone", spk=2), replace=True))
        self.assertEqual(self.router.events("keys:changed"), [])


class ClaimTests(KeyHandlerTestCase):
    """
    C{keys:claim} and C{keys:low}.
    """

    def test_claimAndLow(self) -> None:
        """
        Each claim hands out a different one-time key with the device's
        identity key and signed pre-key; once fewer than 10 are left the
        owner's devices get C{keys:low {deviceId, count}}; once none are
        left, the signed pre-key alone.
        """
        self.upload("b1", keysOf("bob-phone", count=11))
        seen = set()
        for n in range(11):
            ack = self.claim("a1", {"userId": "bob"})
            entry = ack["keys"]["bob-phone"]
            self.assertEqual(
                (entry["identityKey"], entry["signedPreKey"]),
                ("IK", {"keyId": 1, "publicKey": "SPK1", "signature": "SIG1"}),
            )
            seen.add(entry["oneTimeKey"]["keyId"])
            low = self.router.events("keys:low")
            if n == 0:
                self.assertEqual(low, [])
        self.assertEqual(seen, set(range(1, 12)))
        low = self.router.events("keys:low")
        self.assertEqual([d.payload["count"] for d in low], list(range(9, -1, -1)))
        self.assertEqual({d.payload["deviceId"] for d in low}, {"bob-phone"})
        self.assertEqual(low[0].devices, {"b1", "b2"})
        fallback = self.claim("a1", {"userId": "bob", "deviceIds": ["bob-phone", "unknown"]})
        self.assertEqual(list(fallback["keys"]), ["bob-phone"])
        self.assertNotIn("oneTimeKey", fallback["keys"]["bob-phone"])

    def test_unknownUser(self) -> None:
        """
        A user without keys has none to claim.
        """
        self.assertEqual(self.claim("a1", {"userId": "erin"}), {"keys": {}})

    def test_invalidClaims(self) -> None:
        """
        C{userId} is required; C{deviceIds}, when given, is a list of 1..16
        device ids.
        """
        caller = self.caller("a1")
        for data in (None, {}, {"userId": ""}, {"userId": "bob", "deviceIds": []},
                     {"userId": "bob", "deviceIds": "d"}, {"userId": "bob", "deviceIds": [1]},
                     {"userId": "bob", "deviceIds": [f"d{n}" for n in range(17)]}):
            self.assertEqual(self.refused(self.core.keys.claim, caller, data), INVALID_PAYLOAD, data)


class EncryptedMessageTests(KeyHandlerTestCase):
    """
    C{message {type: 'encrypted'}}: validated, stored and relayed as sent,
    through every path of the message handlers.
    """

    def sendEncrypted(self, device: str, ciphertext: Any, **where: Any) -> dict[str, Any]:
        """
        Send an encrypted message from C{device}; return the receipt.
        """
        data = dict(where, type="encrypted", ciphertext=ciphertext, algorithm="olm.v1")
        return self.answer(self.core.messaging.send(self.caller(device), data))  # type: ignore[no-any-return]

    def test_direct(self) -> None:
        """
        A 1:1 encrypted message reaches the recipient's devices with its
        ciphertext and algorithm and no content; offline it waits in the
        queue; history returns it as sent.
        """
        perDevice = {"b1-curve": "CIPHER-1", "b2-curve": "CIPHER-2"}
        receipt = self.sendEncrypted("a1", perDevice, toId="bob", id="e1")
        self.assertEqual(receipt["status"], "delivered")
        (relayed,) = [p for e, p in self.router.inbox("b1") if e == "message"]
        self.assertEqual(
            (relayed["type"], relayed["ciphertext"], relayed["algorithm"], "content" in relayed),
            ("encrypted", perDevice, "olm.v1", False),
        )
        self.assertEqual(self.sendEncrypted("a1", "OPAQUE", toId="erin")["status"], "offline")
        (pending,) = self.successResultOf(self.store.pendingFor("erin", 10))
        self.assertEqual(pending.toWire()["ciphertext"], "OPAQUE")
        history = self.answer(self.core.messaging.history(self.caller("b2"), {"friendId": "alice"}))
        self.assertEqual([m["ciphertext"] for m in history["messages"]], [perDevice])

    def test_counted(self) -> None:
        """
        C{/metrics} counts encrypted messages under their own type, 1:1
        and group alike.
        """
        self.makeGroup("a1", ["bob"])
        self.sendEncrypted("a1", "C1", toId="bob")
        self.sendEncrypted("a1", "C2", groupId="g1")
        self.assertEqual((self.core.metrics.messages["encrypted"].value, self.core.metrics.messages["text"].value), (2, 0))

    def test_keyEventsCounted(self) -> None:
        """
        The key events are counted under their own names in C{/metrics}.
        """
        for name in ("keys:upload", "keys:query", "keys:claim"):
            self.core.metrics.event(name)
            self.assertEqual(self.core.metrics.events[name].value, 1)
        self.assertEqual(self.core.metrics.otherEvents.value, 0)

    def test_resendIsDeduplicated(self) -> None:
        """
        The same id sent again is not stored twice.
        """
        self.sendEncrypted("a1", "C1", toId="erin", id="e1")
        self.sendEncrypted("a1", "C1", toId="erin", id="e1")
        self.assertEqual(len(self.store.messages), 1)

    def test_group(self) -> None:
        """
        An encrypted group message reaches the members as sent.
        """
        self.makeGroup("a1", ["bob", "carol"])
        receipt = self.sendEncrypted("a1", {"c1": "X"}, groupId="g1")
        self.assertEqual(receipt["status"], "sent")
        (relayed,) = self.router.events("message")
        self.assertEqual((relayed.payload["ciphertext"], relayed.devices), ({"c1": "X"}, {"a2", "b1", "b2", "c1"}))

    def test_groupHistoryAndSummary(self) -> None:
        """
        A group's history returns encrypted messages as sent; the group
        summary's C{lastMessage} carries a ciphertext up to 64 KiB and
        leaves a larger one out (C{ciphertextOmitted}), as a login lists
        up to 500 groups.
        """
        self.makeGroup("a1", ["bob"])
        self.sendEncrypted("a1", {"b1": "SMALL"}, groupId="g1")
        history = self.answer(self.core.messaging.history(self.caller("b1"), {"groupId": "g1"}))
        self.assertEqual([m.get("ciphertext") for m in history["messages"]][-1], {"b1": "SMALL"})
        last = self.summary("b1")["lastMessage"]
        self.assertEqual((last["ciphertext"], "ciphertextOmitted" in last), ({"b1": "SMALL"}, False))
        self.sendEncrypted("a1", {"b1": "L" * 65535}, groupId="g1")
        last = self.summary("b1")["lastMessage"]
        self.assertEqual((last.get("ciphertext"), last.get("ciphertextOmitted"), last["algorithm"]), (None, True, "olm.v1"))
        history = self.answer(self.core.messaging.history(self.caller("b1"), {"groupId": "g1"}))
        self.assertEqual(history["messages"][-1]["ciphertext"], {"b1": "L" * 65535})

    def test_recall(self) -> None:
        """
        A recalled encrypted message keeps no ciphertext.
        """
        self.sendEncrypted("a1", "SECRET", toId="bob", id="e1")
        self.answer(self.core.messaging.recall(self.caller("a1"), {"messageId": "e1"}))
        (stub,) = self.successResultOf(self.store.history("bob", "alice", None, 10, None, None)).messages
        self.assertEqual((stub.ciphertext, stub.toWire()["recalled"]), (None, True))

    def test_invalid(self) -> None:
        """
        Content, a file, a room, a missing or empty ciphertext, a bad
        ciphertext object or a missing algorithm are C{INVALID_PAYLOAD}; a
        ciphertext past the bound is C{TOO_LARGE}.
        """
        caller = self.caller("a1")
        good = {"type": "encrypted", "toId": "bob", "ciphertext": "C", "algorithm": "a"}
        for data in (
            dict(good, content="clear"),
            dict(good, fileUrl="http://x"),
            {"type": "encrypted", "roomId": "r1", "ciphertext": "C", "algorithm": "a"},
            dict(good, ciphertext=None),
            dict(good, ciphertext=""),
            dict(good, ciphertext=["C"]),
            dict(good, ciphertext={}),
            dict(good, ciphertext={"d": 1}),
            dict(good, ciphertext={"d": ""}),
            dict(good, ciphertext={"x" * 129: "C"}),
            dict(good, algorithm=None),
            dict(good, algorithm="a" * 65),
            dict(good, toId=None),
        ):
            self.assertEqual(self.refused(self.core.messaging.send, caller, data), INVALID_PAYLOAD, data)
        self.assertEqual(self.store.messages, {})

    def test_bound(self) -> None:
        """
        The ciphertext's characters, device ids counted, are bounded by
        the server's maxPayload (here its default, 1,000,000).
        """
        request = message({"type": "encrypted", "toId": "b", "ciphertext": "C" * 1_000_000, "algorithm": "a"}, "a", 10)
        self.assertEqual(len(request.ciphertext or ""), 1_000_000)
        caller = self.caller("a1")
        over = {"type": "encrypted", "toId": "bob", "ciphertext": "C" * 1_000_001, "algorithm": "a"}
        self.assertEqual(self.refused(self.core.messaging.send, caller, over), TOO_LARGE)
        split = {"type": "encrypted", "toId": "bob", "ciphertext": {"dev": "C" * 999_998}, "algorithm": "a"}
        self.assertEqual(self.refused(self.core.messaging.send, caller, split), TOO_LARGE)


class PushAndReservedTests(SynchronousTestCase):
    """
    What leaves the server about encrypted messages and keys, besides
    the wire.
    """

    def test_pushCarriesNoContent(self) -> None:
        """
        A push notification of an encrypted message carries no content,
        even with C{--push-content preview}.
        """
        from crm_im.storage.interface import StoredMessage

        stored = StoredMessage(1, "e1", "alice", "Alice", "bob", None, "encrypted", "", None, None, None, 5, False, None,
                               ciphertext="SECRET", algorithm="olm.v1")
        plan = PushPlan("bob", 1, 1, 5, [stored], 1, [Pushkey("k", "bob", "app", None, None, None, 5)], {})
        body = notificationBody(plan, CONTENT_PREVIEW)
        self.assertNotIn("content", body["notification"])
        self.assertNotIn("SECRET", repr(body))

    def test_reserved(self) -> None:
        """
        Back ends may not publish the key directory's server events.
        """
        self.assertTrue(reservedEvent("keys:low"))
        self.assertTrue(reservedEvent("keys:changed"))


class LimitsTests(SynchronousTestCase):
    """
    The key directory's default bounds are the contract's.
    """

    def test_defaults(self) -> None:
        """
        100 one-time keys per upload, 500 per device, 100 users per query,
        C{keys:low} below 10.
        """
        limits = KeyLimits()
        self.assertEqual(
            (limits.oneTimeKeysPerUpload, limits.oneTimeKeysPerDevice, limits.usersPerQuery, limits.lowWatermark),
            (100, 500, 100, 10),
        )
