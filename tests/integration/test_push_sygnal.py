"""
crm_im -> Sygnal -> Web Push, end to end: the push gateway Matrix
deployments run (Sygnal, U{https://github.com/element-hq/sygnal}) takes
crm_im's notifications unchanged, its Web Push pushkin encrypts them
(RFC 8291, aes128gcm, VAPID) to a browser's push endpoint, here a
L{twisted.web} resource of the test that decrypts them with the
subscription's keys; an endpoint answering 410 Gone makes Sygnal reject
its pushkey, and crm_im deletes it.

Sygnal is not a dependency of crm_im: it runs from a virtualenv of its
own, C{$CRM_IM_SYGNAL_PYTHON} (default C{/tmp/sygnal-venv/bin/python}),
made as C{docs/operations.md} says. Without one the test is skipped, on CI
too, saying so.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path
from typing import Any, Dict, Generator, List

import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from tests.integration.test_im import serveIM
from tests.integration.test_twistd import ProcessTestCase, freePort
from tests.support.clients import requireKind, startDriver

Inline = Generator[Deferred[Any], Any, Any]

APP = "com.example.crm.web"
SYGNAL_PYTHON = os.environ.get("CRM_IM_SYGNAL_PYTHON", "/tmp/sygnal-venv/bin/python")
#: Sygnal 0.15+ from the archived matrix-org repository refuses to start
#: without this; element-hq's releases ignore it.
SYGNAL_ENV = {"RUN_DESPITE_UNSUPPORTED": "Y"}


def b64url(data: bytes) -> str:
    """
    Unpadded base64url, as browsers give subscription keys.
    """
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class Subscription:
    """
    A browser's push subscription: its P-256 key pair and auth secret.
    """

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.public = self.private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self.auth = secrets.token_bytes(16)

    @property
    def pushkey(self) -> str:
        """
        The pushkey Sygnal's Web Push pushkin expects: C{p256dh}.
        """
        return b64url(self.public)

    @property
    def data(self) -> Dict[str, Any]:
        """
        The pusher data it expects: the endpoint and the auth secret.
        """
        return {"endpoint": self.endpoint, "auth": b64url(self.auth)}

    def decrypt(self, body: bytes) -> Dict[str, Any]:
        """
        Decrypt an aes128gcm Web Push message (RFC 8188, RFC 8291) and
        read its JSON.
        """
        salt, recordSize, idLength = body[:16], int.from_bytes(body[16:20], "big"), body[20]
        serverPublic = body[21:21 + idLength]
        ciphertext = body[21 + idLength:]
        assert len(ciphertext) <= recordSize, "one record expected"
        shared = self.private.exchange(
            ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), serverPublic)
        )
        ikm = HKDF(hashes.SHA256(), 32, self.auth, b"WebPush: info\x00" + self.public + serverPublic).derive(shared)
        key = HKDF(hashes.SHA256(), 16, salt, b"Content-Encoding: aes128gcm\x00").derive(ikm)
        nonce = HKDF(hashes.SHA256(), 12, salt, b"Content-Encoding: nonce\x00").derive(ikm)
        padded = AESGCM(key).decrypt(nonce, ciphertext, None).rstrip(b"\x00")
        assert padded.endswith(b"\x02"), "last record's delimiter"
        return orjson.loads(padded[:-1])  # type: ignore[no-any-return]


class PushService(Resource):
    """
    The browser vendors' push service: C{POST /wp/NAME} takes an encrypted
    message for subscription C{NAME} (201), or answers 410 Gone for the
    names in C{gone}.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.received: List[tuple[str, Dict[str, List[bytes]], bytes]] = []
        self.gone: set[str] = set()
        self._waiters: List[tuple[str, int, Deferred[None]]] = []

    def render_POST(self, request: Request) -> bytes:
        """
        Keep one message.
        """
        assert request.content is not None
        name = request.path.decode().rsplit("/", 1)[-1]
        headers = {k.decode().lower(): v for k, v in request.requestHeaders.getAllRawHeaders()}
        self.received.append((name, headers, request.content.read()))
        request.setResponseCode(410 if name in self.gone else 201)
        waiting = []
        for wanted, count, d in self._waiters:
            if len(self.to(wanted)) >= count:
                d.callback(None)
            else:
                waiting.append((wanted, count, d))
        self._waiters = waiting
        return b""

    def to(self, name: str) -> List[tuple[Dict[str, List[bytes]], bytes]]:
        """
        The messages for subscription C{name}.
        """
        return [(headers, body) for to, headers, body in self.received if to == name]

    def waitFor(self, name: str, count: int = 1, timeout: float = 30) -> Deferred[None]:
        """
        Fire once C{count} messages reached subscription C{name}.
        """
        d: Deferred[None] = Deferred()
        if len(self.to(name)) >= count:
            d.callback(None)
            return d
        self._waiters.append((name, count, d))
        return d.addTimeout(timeout, reactor)


SYGNAL_CONFIG = """\
log:
  setup:
    version: 1
    formatters:
      normal:
        format: "%(levelname)s %(name)s %(message)s"
    handlers:
      stderr:
        class: logging.StreamHandler
        formatter: normal
        stream: ext://sys.stderr
    root:
      handlers: [stderr]
      level: INFO
    disable_existing_loggers: false
http:
  bind_addresses: ['127.0.0.1']
  port: {port}
apps:
  {app}:
    type: webpush
    vapid_private_key: {key}
    vapid_contact_email: ops@example.com
    allowed_endpoints: ["127.0.0.1:*"]
"""


class SygnalTests(ProcessTestCase):
    """
    crm_im notifying a real Sygnal.
    """

    @inlineCallbacks
    def setUp(self) -> Inline:
        """
        Skip without a Sygnal to run (it is no dependency of crm_im).
        """
        if not Path(SYGNAL_PYTHON).exists():
            raise SkipTest(
                f"Sygnal is not installed: no {SYGNAL_PYTHON} (set CRM_IM_SYGNAL_PYTHON to a python with "
                "matrix-sygnal installed; docs/operations.md shows how)"
            )
        out, err, code = yield getProcessOutputAndValue(
            SYGNAL_PYTHON, ["-c", "import sygnal.sygnal, sygnal.webpushpushkin"], env=dict(os.environ, **SYGNAL_ENV)
        )
        if code != 0:
            raise SkipTest(f"{SYGNAL_PYTHON} cannot import Sygnal's Web Push pushkin: {err.decode(errors='replace')[-300:]}")
        requireKind("node")

    @inlineCallbacks
    def test_webPushThroughSygnal(self) -> Inline:
        """
        crm_im's signed notification passes Sygnal's validation; Sygnal's
        Web Push pushkin encrypts it (VAPID-signed) to the subscription's
        endpoint, where it decrypts to the message's id, the peer, the
        sender, the unread count and the preview; a subscription whose
        endpoint is gone is rejected by Sygnal and deleted by crm_im,
        which stops sending to it.
        """
        pushService = PushService()
        listening = reactor.listenTCP(0, Site(pushService), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        servicePort = listening.getHost().port
        live = Subscription(f"http://127.0.0.1:{servicePort}/wp/live")
        gone = Subscription(f"http://127.0.0.1:{servicePort}/wp/gone")
        pushService.gone.add("gone")

        work = Path(self.mktemp()).resolve()
        work.mkdir(parents=True)
        vapid = ec.generate_private_key(ec.SECP256R1())
        (work / "vapid.pem").write_bytes(vapid.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        sygnalPort = freePort()
        (work / "sygnal.yaml").write_text(SYGNAL_CONFIG.format(port=sygnalPort, app=APP, key=work / "vapid.pem"))
        sygnal = self.spawn([SYGNAL_PYTHON, "-m", "sygnal.sygnal"],
                            env=dict(SYGNAL_ENV, SYGNAL_CONF=str(work / "sygnal.yaml")), cwd=work)
        try:
            yield sygnal.whenOutputContains(b"Starting listening on").addTimeout(30, reactor)
        except Exception:
            self.fail(f"Sygnal did not start:\n{sygnal.text}")

        service, url = yield serveIM(
            self, pushGateway=f"http://127.0.0.1:{sygnalPort}/_matrix/push/v1/notify",
            pushSecret="not-checked-by-sygnal", pushContent="preview", pushCoalesce=0.2)
        driver = yield startDriver("node")
        self.addCleanup(driver.quit)
        for client in ("alice", "bob"):
            yield driver.connect(client, url, transports=["websocket"])
            yield driver.emit(client, "user:login", {"id": client, "name": client.title()}, ack=True)
        for subscription in (live, gone):
            (ack,) = yield driver.emit("bob", "push:register", {
                "pushkey": subscription.pushkey, "appId": APP, "platform": "web", "data": subscription.data}, ack=True)
            self.assertEqual(ack, {"pushkey": subscription.pushkey})
        offline = driver.waitFor("alice", "status_change", predicate=lambda args: args[0]["status"] == "offline")
        yield driver.emit("bob", "user:logout", ack=True)
        yield offline

        for n in range(2):
            (receipt,) = yield driver.emit("alice", "message", {"toId": "bob", "content": f"报价单 #{n}", "id": f"w-{n}"}, ack=True)
            self.assertEqual(receipt["status"], "offline")
        try:
            yield pushService.waitFor("live", timeout=10)
            yield pushService.waitFor("gone")
        except Exception:
            self.fail(f"no Web Push message came; Sygnal said:\n{sygnal.text}")
        ((headers, body),) = pushService.to("live")
        self.assertEqual(headers["content-encoding"], [b"aes128gcm"])
        self.assertTrue(headers["authorization"][0].startswith(b"vapid t="), headers)
        payload = live.decrypt(body)
        self.assertEqual(
            {key: payload.get(key) for key in ("event_id", "room_id", "sender", "sender_display_name", "type", "unread", "content")},
            {"event_id": "w-1", "room_id": "alice", "sender": "alice", "sender_display_name": "Alice",
             "type": "crm_im.message", "unread": 2, "content": {"msgtype": "text", "body": "报价单 #1"}},
        )

        # Sygnal rejected the gone subscription: crm_im deleted it
        sender = service.pushSender
        yield settled(sender, lambda m: m.rejected.value == 1 and m.sent.value == 1)
        (receipt,) = yield driver.emit("alice", "message", {"toId": "bob", "content": "again", "id": "w-2"}, ack=True)
        yield pushService.waitFor("live", 2)
        self.assertEqual(live.decrypt(pushService.to("live")[1][1])["unread"], 3)
        yield settled(sender, lambda m: m.sent.value == 2)
        self.assertEqual(len(pushService.to("gone")), 1)
        self.assertEqual(sender.metrics.rejected.value, 1)


def settled(sender: Any, predicate: Any, timeout: float = 30) -> Deferred[None]:
    """
    Fire once C{predicate(sender.metrics)} holds, checked after each of
    the push sender's attempts.
    """
    d: Deferred[None] = Deferred()

    def check(_: str) -> None:
        if not d.called and predicate(sender.metrics):
            sender.attemptEnded.remove(check)
            d.callback(None)

    sender.attemptEnded.append(check)
    check("")
    return d.addTimeout(timeout, reactor)
