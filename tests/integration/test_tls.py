"""
TLS: crm_im on an C{ssl:} endpoint serves C{https://} and C{wss://} with a
certificate made in the test (self-signed, subjectAltName C{localhost} and
C{127.0.0.1}).

Clients verify it: treq through an L{Agent} whose trust root is that
certificate (service-identity checks the name), Node's socket.io-client
with C{ca}, python-socketio with the same CA file (the driver maps C{ca}).
A client that does not trust the certificate, or that reaches it under a
name it does not carry, is refused by its own TLS stack.
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import Any, Dict, Generator, List, Tuple

import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.ssl import Certificate
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, ResponseFailed

from tests.integration.test_im import serveIM
from tests.support.clients import ClientDriver, DriverTestMixin

Inline = Generator[Deferred[Any], Any, Any]


def selfSigned(names: Tuple[str, ...] = ("localhost",),
               addresses: Tuple[str, ...] = ("127.0.0.1",)) -> Tuple[bytes, bytes]:
    """
    A self-signed P-256 certificate for C{names} and C{addresses}.

    @return: C{(key PEM, certificate PEM)}.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    alternatives: List[x509.GeneralName] = [x509.DNSName(name) for name in names]
    alternatives += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    keyPEM = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    return keyPEM, certificate.public_bytes(serialization.Encoding.PEM)


class TLSScenario(DriverTestMixin):
    """
    crm_im over TLS, for one client kind.

    @cvar transports: the client transports to run the flow on.
    """

    transports: List[str] = ["websocket"]

    @inlineCallbacks
    def setUp(self) -> Inline:
        """
        Write a certificate and key, serve on C{ssl:0}.
        """
        key, self.certificatePEM = selfSigned()
        directory = FilePath(self.mktemp())
        directory.makedirs()
        directory.child("key.pem").setContent(key)
        directory.child("cert.pem").setContent(self.certificatePEM)
        listen = ("ssl:0:interface=127.0.0.1:privateKey={}:certKey={}".format(
            directory.child("key.pem").path.replace(":", "\\:"),
            directory.child("cert.pem").path.replace(":", "\\:")),)
        self.service, url = yield serveIM(self, listen=listen)
        self.port = self.service.ports[0].getHost().port
        self.url = f"https://localhost:{self.port}"

    def trustingClient(self) -> treq.client.HTTPClient:
        """
        treq trusting only the test certificate, verifying names.
        """
        policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(self.certificatePEM))
        return treq.client.HTTPClient(Agent(reactor, contextFactory=policy))

    @inlineCallbacks
    def test_https(self) -> Inline:
        """
        C{GET /} over https with the name (and the address) verified.
        """
        client = self.trustingClient()
        for url in (self.url, f"https://127.0.0.1:{self.port}"):
            response = yield client.get(url + "/")
            body = yield response.json()
            self.assertEqual((response.code, body["status"]), (200, "running"))

    @inlineCallbacks
    def test_untrusted(self) -> Inline:
        """
        A client that does not trust the certificate (the system's roots)
        fails the handshake.
        """
        yield self.assertFailure(treq.get(self.url + "/", persistent=False), ResponseFailed)

    @inlineCallbacks
    def test_flow(self) -> Inline:
        """
        Two clients log in and exchange a message and its receipt over TLS
        (C{wss://}, or C{https://} long-polling).
        """
        driver: ClientDriver = yield self.startDriver()
        opts: Dict[str, Any] = {"transports": self.transports, "ca": self.certificatePEM.decode("ascii")}
        for client in ("a", "b"):
            report = yield driver.connect(client, self.url, **opts)
            self.assertEqual(report["transport"], self.transports[-1])
            (ack,) = yield driver.emit(client, "user:login", {"id": client, "name": client.upper()},
                                       ack=True)
            self.assertEqual(ack["id"], client)
        (receipt,) = yield driver.emit("a", "message", {"toId": "b", "content": "over tls"}, ack=True)
        self.assertEqual(receipt["status"], "delivered")
        (message,) = yield driver.waitFor("b", "message")
        self.assertEqual((message["fromId"], message["content"]), ("a", "over tls"))
        transports = {s.transportName for s in self.service.sio.engine.sessions.values()}
        self.assertEqual(transports, {self.transports[-1]})

    @inlineCallbacks
    def test_unverifiedClientRefused(self) -> Inline:
        """
        Without the CA, the client's own TLS stack refuses the server.
        """
        driver: ClientDriver = yield self.startDriver()
        from tests.support.clients import ConnectError

        yield self.assertFailure(
            driver.connect("x", self.url, transports=self.transports, timeout=5), ConnectError)
        self.assertEqual(len(self.service.sio.engine.sessions), 0)


class TLSNodeWebSocketTests(TLSScenario, TestCase):
    """
    Node's socket.io-client over C{wss://}.
    """

    kind = "node"


class TLSNodePollingTests(TLSScenario, TestCase):
    """
    Node's socket.io-client over C{https://} long-polling only.
    """

    kind = "node"
    transports = ["polling"]


class TLSPythonTests(TLSScenario, TestCase):
    """
    python-socketio: C{https://} polling upgraded to C{wss://}.
    """

    kind = "python"
    transports = ["polling", "websocket"]
