"""
End-to-end encryption through the real wire (ENCRYPTION.md, "End to
end"): real Socket.IO clients (Node's socket.io-client and
python-socketio, one driver process each) on the real L{CRMIMService},
with real keys made here by the clients' side of the test (the
C{cryptography} package): X25519 identity, signed pre-key and one-time
keys, the signed pre-key signed with Ed25519.

The sender runs an X3DH-style agreement (three or four X25519 exchanges,
HKDF-SHA256) from what C{keys:query} and C{keys:claim} return, encrypts
with AES-256-GCM and sends C{type: 'encrypted'}; the recipient derives the
same key from its private keys and decrypts. The server relays and stores
the ciphertext exactly as sent (the recipient's copy and history equal the
sender's), never holds the text (the data directory is scanned for it),
hands each one-time key out once even to two clients claiming at once,
falls back to the signed pre-key when a device has none left, tells the
owner C{keys:low}, and tells contacts C{keys:changed}.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any, Dict, Generator, List, Optional, Tuple

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase

from crm_im.config import Config
from crm_im.server import CRMIMService
from tests.integration.test_im import serveIM
from tests.support.clients import ClientDriver, DriverTestMixin
from tests.support.postgres import newSchemaURL

Inline = Generator[Deferred[Any], Any, Any]

ALGORITHM = "x3dh-x25519-hkdf-sha256-aes256gcm"
INFO = b"crm_im e2e test"


def b64(data: bytes) -> str:
    """
    Standard base64 text.
    """
    return base64.b64encode(data).decode("ascii")


def raw(public: X25519PublicKey | Ed25519PublicKey) -> bytes:
    """
    A public key's 32 raw bytes.
    """
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class Device:
    """
    One client device's keys, private halves kept here: an X25519
    identity key with an Ed25519 signing key beside it (the identity key
    published is both, as C{curve:ed} base64), a signed pre-key, and
    one-time keys by id.
    """

    def __init__(self, deviceId: str, oneTimeKeys: int, firstKeyId: int = 1) -> None:
        self.deviceId = deviceId
        self.identity = X25519PrivateKey.generate()
        self.signing = Ed25519PrivateKey.generate()
        self.signedPreKey = X25519PrivateKey.generate()
        self.oneTime = {firstKeyId + n: X25519PrivateKey.generate() for n in range(oneTimeKeys)}

    @property
    def identityKey(self) -> str:
        """
        The published identity key.
        """
        return b64(raw(self.identity.public_key())) + ":" + b64(raw(self.signing.public_key()))

    def upload(self, replace: bool = False) -> Dict[str, Any]:
        """
        The C{keys:upload} payload.
        """
        spk = raw(self.signedPreKey.public_key())
        payload: Dict[str, Any] = {
            "deviceId": self.deviceId,
            "identityKey": self.identityKey,
            "signedPreKey": {"keyId": 1, "publicKey": b64(spk), "signature": b64(self.signing.sign(spk))},
            "oneTimeKeys": [{"keyId": k, "publicKey": b64(raw(v.public_key()))} for k, v in self.oneTime.items()],
        }
        if replace:
            payload["replace"] = True
        return payload


def kdf(secrets: List[bytes]) -> bytes:
    """
    The session key from the concatenated exchanges.
    """
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"\0" * 32, info=INFO).derive(b"".join(secrets))


def seal(sender: Device, bundle: Dict[str, Any], plaintext: str) -> str:
    """
    The sender's side: check the signed pre-key's signature, run the
    exchanges with the claimed bundle (a one-time key if there was one),
    encrypt. The result is the ciphertext string sent, with the header the
    recipient needs.
    """
    curve, ed = bundle["identityKey"].split(":")
    spk = base64.b64decode(bundle["signedPreKey"]["publicKey"])
    Ed25519PublicKey.from_public_bytes(base64.b64decode(ed)).verify(
        base64.b64decode(bundle["signedPreKey"]["signature"]), spk
    )
    theirIdentity = X25519PublicKey.from_public_bytes(base64.b64decode(curve))
    theirSignedPreKey = X25519PublicKey.from_public_bytes(spk)
    ephemeral = X25519PrivateKey.generate()
    secrets = [
        sender.identity.exchange(theirSignedPreKey),
        ephemeral.exchange(theirIdentity),
        ephemeral.exchange(theirSignedPreKey),
    ]
    header: Dict[str, Any] = {"ik": sender.identityKey, "ek": b64(raw(ephemeral.public_key()))}
    oneTime = bundle.get("oneTimeKey")
    if oneTime is not None:
        secrets.append(ephemeral.exchange(X25519PublicKey.from_public_bytes(base64.b64decode(oneTime["publicKey"]))))
        header["otk"] = oneTime["keyId"]
    nonce = os.urandom(12)
    headerText = json.dumps(header, sort_keys=True)
    sealed = AESGCM(kdf(secrets)).encrypt(nonce, plaintext.encode("utf-8"), headerText.encode("utf-8"))
    return json.dumps({"h": headerText, "n": b64(nonce), "c": b64(sealed)})


def unseal(recipient: Device, ciphertext: str) -> Tuple[str, Optional[int]]:
    """
    The recipient's side: the same exchanges from its private keys (its
    one-time key used once, then forgotten), then decrypt.

    @return: the text and the one-time key id used, if any.
    """
    message = json.loads(ciphertext)
    header = json.loads(message["h"])
    curve, _ = header["ik"].split(":")
    theirIdentity = X25519PublicKey.from_public_bytes(base64.b64decode(curve))
    ephemeral = X25519PublicKey.from_public_bytes(base64.b64decode(header["ek"]))
    secrets = [
        recipient.signedPreKey.exchange(theirIdentity),
        recipient.identity.exchange(ephemeral),
        recipient.signedPreKey.exchange(ephemeral),
    ]
    otk = header.get("otk")
    if otk is not None:
        secrets.append(recipient.oneTime.pop(otk).exchange(ephemeral))
    plain = AESGCM(kdf(secrets)).decrypt(
        base64.b64decode(message["n"]), base64.b64decode(message["c"]), message["h"].encode("utf-8")
    )
    return plain.decode("utf-8"), otk


def first(args: List[Any]) -> Dict[str, Any]:
    """
    An event's payload.
    """
    payload: Dict[str, Any] = args[0]
    return payload


class EncryptionScenario(DriverTestMixin):
    """
    The key directory and encrypted messages, for one client kind.
    """

    serverSettings: Dict[str, Any] = {}

    @inlineCallbacks
    def setUp(self) -> Inline:
        """
        Serve crm_im.
        """
        self.dataDir = self.mktemp()
        self.service, self.url = yield serveIM(self, dataDir=self.dataDir, **self.serverSettings)

    @inlineCallbacks
    def login(self, driver: ClientDriver, client: str, userId: str) -> Inline:
        """
        Connect C{client} over WebSocket and log it in as C{userId}.
        """
        yield driver.connect(client, self.url, transports=["websocket"])
        (ack,) = yield driver.emit(client, "user:login", {"id": userId, "name": userId.title()}, ack=True)
        self.assertEqual(ack["id"], userId)

    @inlineCallbacks
    def ask(self, driver: ClientDriver, client: str, event: str, payload: Any) -> Inline:
        """
        Emit C{event} with an ack; fail unless it succeeded.
        """
        (ack,) = yield driver.emit(client, event, payload, ack=True)
        self.assertFalse(isinstance(ack, dict) and "error" in ack, f"{event} {payload!r} refused: {ack!r}")
        return ack

    @inlineCallbacks
    def test_firstMessage(self) -> Inline:
        """
        Bob publishes his keys; Alice queries them, claims a one-time key,
        derives the session key and sends an encrypted message; Bob gets
        the ciphertext exactly as sent (an object keyed by his device id),
        derives the same key and reads it; history returns it unchanged;
        the text is nowhere in the server's data directory.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "alice", "alice")
        yield self.login(driver, "bob", "bob")
        phone = Device("bob-phone", 12)
        laptop = Device("alice-laptop", 3)
        ack = yield self.ask(driver, "bob", "keys:upload", phone.upload())
        self.assertEqual(ack, {"oneTimeKeyCount": 12})
        yield self.ask(driver, "alice", "keys:upload", laptop.upload())
        found = yield self.ask(driver, "alice", "keys:query", {"userIds": ["bob", "nobody"]})
        (published,) = found["devices"]["bob"]
        self.assertEqual((published["deviceId"], published["identityKey"]), ("bob-phone", phone.identityKey))
        self.assertEqual(found["devices"]["nobody"], [])
        claimed = yield self.ask(driver, "alice", "keys:claim", {"userId": "bob"})
        bundle = claimed["keys"]["bob-phone"]
        self.assertEqual(bundle["identityKey"], phone.identityKey)
        self.assertEqual(bundle["signedPreKey"], published["signedPreKey"])
        marker = "the launch code is 0451, tell nobody"
        ciphertext = {"bob-phone": seal(laptop, bundle, marker)}
        receipt = yield self.ask(
            driver, "alice", "message",
            {"type": "encrypted", "toId": "bob", "id": "e2e-1", "ciphertext": ciphertext, "algorithm": ALGORITHM},
        )
        self.assertEqual(receipt["status"], "delivered")
        relayed = first((yield driver.waitFor("bob", "message", predicate=lambda a: first(a)["id"] == "e2e-1")))
        self.assertEqual(
            (relayed["type"], relayed["algorithm"], relayed["ciphertext"], "content" in relayed),
            ("encrypted", ALGORITHM, ciphertext, False),
        )
        self.assertEqual(json.dumps(relayed["ciphertext"]), json.dumps(ciphertext))
        text, used = unseal(phone, relayed["ciphertext"]["bob-phone"])
        self.assertEqual((text, used), (marker, bundle["oneTimeKey"]["keyId"]))
        history = yield self.ask(driver, "bob", "get_history", {"friendId": "alice"})
        (kept,) = history["messages"]
        self.assertEqual((kept["ciphertext"], kept["algorithm"]), (ciphertext, ALGORITHM))
        for root, _, files in os.walk(self.dataDir):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    self.assertNotIn(marker.encode("utf-8"), f.read(), name)

    @inlineCallbacks
    def test_claimsAtOnceAndFallback(self) -> Inline:
        """
        Alice and Carol claim Bob's keys at the same time, more often than
        he has keys: each key is handed out once; the rest get the signed
        pre-key alone; Bob hears C{keys:low} as his count falls below 10.
        A message set up on the signed pre-key alone still decrypts.
        """
        driver = yield self.startDriver()
        for userId in ("alice", "carol", "bob"):
            yield self.login(driver, userId, userId)
        phone = Device("bob-phone", 12)
        yield self.ask(driver, "bob", "keys:upload", phone.upload())
        claims = []
        for _ in range(8):
            claims.append(driver.emit("alice", "keys:claim", {"userId": "bob"}, ack=True))
            claims.append(driver.emit("carol", "keys:claim", {"userId": "bob"}, ack=True))
        answers = yield gatherResults(claims)
        bundles = [answer[0]["keys"]["bob-phone"] for answer in answers]
        given = [b["oneTimeKey"]["keyId"] for b in bundles if "oneTimeKey" in b]
        self.assertEqual(sorted(given), sorted(phone.oneTime))
        self.assertEqual(len(bundles) - len(given), 4)
        for count in range(9, -1, -1):
            low = first((yield driver.waitFor("bob", "keys:low", predicate=lambda a, c=count: first(a)["count"] == c)))
            self.assertEqual(low, {"deviceId": "bob-phone", "count": count})
        fallback = next(b for b in bundles if "oneTimeKey" not in b)
        laptop = Device("alice-laptop", 0)
        sealed = seal(laptop, fallback, "no one-time key left")
        yield self.ask(driver, "alice", "message",
                       {"type": "encrypted", "toId": "bob", "id": "fb-1", "ciphertext": sealed, "algorithm": ALGORITHM})
        relayed = first((yield driver.waitFor("bob", "message", predicate=lambda a: first(a)["id"] == "fb-1")))
        self.assertEqual(relayed["ciphertext"], sealed)
        self.assertEqual(unseal(phone, relayed["ciphertext"]), ("no one-time key left", None))

    @inlineCallbacks
    def test_keysChanged(self) -> Inline:
        """
        A new identity key for a known device is refused without
        C{replace}; with it, Alice, who shares a conversation with Bob,
        hears C{keys:changed}, and the query shows the new key.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "alice", "alice")
        yield self.login(driver, "bob", "bob")
        yield self.ask(driver, "bob", "keys:upload", Device("bob-phone", 1).upload())
        yield self.ask(driver, "bob", "message", {"toId": "alice", "content": "hi"})
        reinstalled = Device("bob-phone", 2, firstKeyId=100)
        (refusal,) = yield driver.emit("bob", "keys:upload", reinstalled.upload(), ack=True)
        self.assertEqual(refusal["error"]["code"], "FORBIDDEN")
        ack = yield self.ask(driver, "bob", "keys:upload", reinstalled.upload(replace=True))
        self.assertEqual(ack, {"oneTimeKeyCount": 2})
        changed = first((yield driver.waitFor("alice", "keys:changed")))
        self.assertEqual(changed, {"userId": "bob", "deviceId": "bob-phone"})
        found = yield self.ask(driver, "alice", "keys:query", {"userIds": ["bob"]})
        self.assertEqual(found["devices"]["bob"][0]["identityKey"], reinstalled.identityKey)

    @inlineCallbacks
    def test_refusals(self) -> Inline:
        """
        Refusals travel as the contract says, as an ack C{{error: {message,
        code}}} and an C{error} event naming the event (and the message
        id): the key events before a login, out-of-bounds payloads, an
        encrypted message with content.
        """
        driver = yield self.startDriver()
        yield driver.connect("alice", self.url, transports=["websocket"])
        (ack,) = yield driver.emit("alice", "keys:claim", {"userId": "bob"}, ack=True)
        self.assertEqual(ack["error"]["code"], "NOT_LOGGED_IN")
        error = first((yield driver.waitFor("alice", "error")))
        self.assertEqual((error["event"], error["code"]), ("keys:claim", "NOT_LOGGED_IN"))
        yield driver.emit("alice", "user:login", {"id": "alice", "name": "Alice"}, ack=True)
        tooMany = dict(Device("d", 0).upload(), oneTimeKeys=[{"keyId": n, "publicKey": "K"} for n in range(101)])
        cases = [
            ("keys:upload", tooMany, "INVALID_PAYLOAD"),
            ("keys:query", {"userIds": [str(n) for n in range(101)]}, "INVALID_PAYLOAD"),
            ("keys:claim", {"userId": "bob", "deviceIds": []}, "INVALID_PAYLOAD"),
            ("message", {"type": "encrypted", "toId": "bob", "id": "bad-1", "content": "clear", "ciphertext": "C",
                         "algorithm": "a"}, "INVALID_PAYLOAD"),
        ]
        for event, payload, code in cases:
            (ack,) = yield driver.emit("alice", event, payload, ack=True)
            error = first((yield driver.waitFor("alice", "error", predicate=lambda a, e=event: first(a)["event"] == e)))
            self.assertEqual((ack["error"]["code"], error["code"]), (code, code), event)
            self.assertEqual(ack["error"]["message"], error["message"])
        self.assertEqual(error["id"], "bad-1")


class EncryptionNodeTests(EncryptionScenario, TestCase):
    """
    The scenario with Node's socket.io-client.
    """

    kind = "node"


class EncryptionPythonTests(EncryptionScenario, TestCase):
    """
    The scenario with python-socketio.
    """

    kind = "python"


class TwoNodesClaimTests(DriverTestMixin, TestCase):
    """
    Two crm_im nodes on one PostgreSQL database (skipped without
    PostgreSQL, failed under C{CI=true}): clients of both claim one
    device's keys at once.
    """

    kind = "python"

    @inlineCallbacks
    def serveNode(self, store: str) -> Inline:
        """
        A node on C{store}; its URL.
        """
        config = Config(listen=("tcp:0:interface=127.0.0.1",), dataDir=self.mktemp(), logEvents=False,
                        shutdownGrace=0.5, store=store)
        service = CRMIMService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        ports = yield service.ready
        return f"http://127.0.0.1:{ports[0].getHost().port}"

    @inlineCallbacks
    def test_claimsOnTwoNodes(self) -> Inline:
        """
        Bob uploads on node A; Alice on node A and Carol on node B claim
        his keys, many times each, at once: every key is handed out
        exactly once across both nodes, and the rest fall back to the
        signed pre-key.
        """
        store = newSchemaURL(self)
        first = yield self.serveNode(store)
        second = yield self.serveNode(store)
        driver = yield self.startDriver()
        for client, url in (("bob", first), ("alice", first), ("carol", second)):
            yield driver.connect(client, url, transports=["websocket"])
            yield driver.emit(client, "user:login", {"id": client, "name": client.title()}, ack=True)
        phone = Device("bob-phone", 30)
        (ack,) = yield driver.emit("bob", "keys:upload", phone.upload(), ack=True)
        self.assertEqual(ack, {"oneTimeKeyCount": 30})
        claims = []
        for _ in range(20):
            claims.append(driver.emit("alice", "keys:claim", {"userId": "bob"}, ack=True))
            claims.append(driver.emit("carol", "keys:claim", {"userId": "bob"}, ack=True))
        answers = yield gatherResults(claims)
        bundles = [answer[0]["keys"]["bob-phone"] for answer in answers]
        given = [b["oneTimeKey"]["keyId"] for b in bundles if "oneTimeKey" in b]
        self.assertEqual(sorted(given), sorted(phone.oneTime))
        self.assertEqual(len(bundles) - len(given), 10)
