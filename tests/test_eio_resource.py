"""
Tests for L{crm_im.engineio.resource}, L{crm_im.engineio.polling},
L{crm_im.http.cors} (as the endpoint applies it) and L{crm_im.engineio.site}: the Engine.IO endpoint
over HTTP, driven through L{treq.testing.StubTreq}, and the bounded request
of L{EngineIOSite} over a L{StringTransport}.
"""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from crm_im._json import loads
from crm_im.engineio.config import EngineIOConfig
from crm_im.engineio.packet import messageFrame
from crm_im.engineio.resource import EngineIOResource
from crm_im.engineio.server import (
    BAD_HANDSHAKE_METHOD,
    BAD_REQUEST,
    UNKNOWN_SID,
    UNKNOWN_TRANSPORT,
    UNSUPPORTED_PROTOCOL_VERSION,
    EngineIOError,
    EngineIOServer,
)
from crm_im.engineio.session import CLOSED, OPEN
from crm_im.engineio.site import EngineIOSite

from .test_eio_session import RecordingApp, sequentialSids

BASE = "http://example.com/engine.io/"


class ResourceTestMixin:
    """
    An L{EngineIOResource} mounted at C{/engine.io/}, behind a StubTreq.
    """

    config = EngineIOConfig(maxPayload=1000)

    def setUp(self) -> None:
        self.clock = Clock()
        self.app = RecordingApp()
        self.engine = EngineIOServer(self.app, self.clock, self.config, newSid=sequentialSids())
        self.engine.start()
        root = Resource()
        root.putChild(b"engine.io", EngineIOResource(self.engine, self.clock))
        self.treq = StubTreq(root)

    def request(self, method: str, query: str = "", body: bytes | None = None,
                headers: dict[bytes, list[bytes]] | None = None) -> tuple[Any, bytes]:
        """
        Make a request and return the response and its body; the request
        must have been answered.
        """
        d = self.treq.request(method, BASE + ("?" + query if query else ""), data=body, headers=headers)
        self.treq.flush()
        response = self.successResultOf(d)  # type: ignore[attr-defined]
        content = self.successResultOf(self.treq.content(response))  # type: ignore[attr-defined]
        return response, content

    def header(self, response: Any, name: bytes) -> bytes | None:
        """
        The one value of header C{name}, or C{None}.
        """
        values = response.headers.getRawHeaders(name)
        if values is None:
            return None
        assert len(values) == 1, values
        return values[0]  # type: ignore[no-any-return]

    def handshake(self) -> str:
        """
        Open a polling session; its sid.
        """
        response, body = self.request("GET", "EIO=4&transport=polling")
        assert response.code == 200, (response.code, body)
        return loads(body[1:])["sid"]  # type: ignore[no-any-return]

    def assertRefused(self, response: Any, body: bytes, status: int, code: int, message: str) -> None:
        """
        C{response} is the official Engine.IO refusal.
        """
        self.assertEqual(response.code, status)  # type: ignore[attr-defined]
        self.assertEqual(self.header(response, b"content-type"), b"application/json")  # type: ignore[attr-defined]
        self.assertEqual(loads(body), {"code": code, "message": message})  # type: ignore[attr-defined]


class PollingResourceTests(ResourceTestMixin, SynchronousTestCase):
    """
    Long-polling through the resource.
    """

    def test_handshake(self) -> None:
        """
        A handshake GET answers 200 C{text/plain; charset=UTF-8} with the
        OPEN packet, and CORS C{*} by default.
        """
        response, body = self.request("GET", "EIO=4&transport=polling&t=NxYz")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, b"content-type"), b"text/plain; charset=UTF-8")
        self.assertEqual(self.header(response, b"access-control-allow-origin"), b"*")
        self.assertEqual(body[:2], b"0{")
        fields = loads(body[1:])
        self.assertEqual(fields["sid"], "sid1")
        self.assertEqual(fields["upgrades"], ["websocket"])
        self.assertEqual(fields["maxPayload"], 1000)
        self.assertEqual(self.app.opened[0].remoteAddress, "127.0.0.1")

    def test_postAndGet(self) -> None:
        """
        A POST answers C{ok} and hands the messages to the application; a
        GET collects what the application sent.
        """
        sid = self.handshake()
        response, body = self.request("POST", "EIO=4&transport=polling&sid=" + sid, b"4hello\x1e4world")
        self.assertEqual((response.code, body), (200, b"ok"))
        self.assertEqual(self.header(response, b"content-type"), b"text/html")
        self.assertEqual([data for _, data, _ in self.app.messages], [b"hello", b"world"])
        self.engine.sessions[sid].send(messageFrame(b"back"))
        response, body = self.request("GET", "EIO=4&transport=polling&sid=" + sid)
        self.assertEqual((response.code, body), (200, b"4back"))
        self.assertEqual(self.header(response, b"content-type"), b"text/plain; charset=UTF-8")

    def test_heldGet(self) -> None:
        """
        A GET with nothing to send is held until the application sends.
        """
        sid = self.handshake()
        d = self.treq.get(BASE + "?EIO=4&transport=polling&sid=" + sid)
        self.treq.flush()
        self.assertNoResult(d)
        session = self.engine.sessions[sid]
        session.send(messageFrame(b"a"))
        session.send(messageFrame(b"b"))
        self.clock.advance(0)
        self.treq.flush()
        response = self.successResultOf(d)
        self.assertEqual(self.successResultOf(self.treq.content(response)), b"4a\x1e4b")

    def test_secondConcurrentGet(self) -> None:
        """
        A second GET while one is held gets 400 Bad request; the held one
        gets CLOSE and the session is gone.
        """
        sid = self.handshake()
        d = self.treq.get(BASE + "?EIO=4&transport=polling&sid=" + sid)
        self.treq.flush()
        response, body = self.request("GET", "EIO=4&transport=polling&sid=" + sid)
        self.assertRefused(response, body, 400, 3, "Bad request")
        held = self.successResultOf(d)
        self.assertEqual(self.successResultOf(self.treq.content(held)), b"1")
        self.assertNotIn(sid, self.engine.sessions)

    def test_malformedPost(self) -> None:
        """
        A malformed POST body gets 400 and closes the session.
        """
        sid = self.handshake()
        response, body = self.request("POST", "EIO=4&transport=polling&sid=" + sid, b"9nope")
        self.assertRefused(response, body, 400, 3, "Bad request")
        self.assertEqual(self.app.closed[0][1], "parse error")

    def test_postOverMaxPayload(self) -> None:
        """
        A POST body over maxPayload gets 413 and closes the session.
        """
        sid = self.handshake()
        response, body = self.request("POST", "EIO=4&transport=polling&sid=" + sid, b"4" + b"x" * 1000)
        self.assertRefused(response, body, 413, 3, "Payload too large")
        self.assertEqual(self.app.messages, [])
        self.assertEqual(self.app.opened[0].state, CLOSED)
        self.assertEqual(self.app.closed[0][1], "transport error")

    def test_postAtMaxPayload(self) -> None:
        """
        A POST body of exactly maxPayload bytes is accepted.
        """
        sid = self.handshake()
        response, body = self.request("POST", "EIO=4&transport=polling&sid=" + sid, b"4" + b"x" * 999)
        self.assertEqual((response.code, body), (200, b"ok"))

    def test_errors(self) -> None:
        """
        Bad requests get the official status and JSON body.
        """
        sid = self.handshake()
        table = [
            ("GET", "transport=polling", 400, 5, "Unsupported protocol version"),
            ("GET", "EIO=3&transport=polling", 400, 5, "Unsupported protocol version"),
            ("GET", "EIO=4&transport=carrier-pigeon", 400, 0, "Transport unknown"),
            ("GET", "EIO=4", 400, 0, "Transport unknown"),
            ("GET", "EIO=4&transport=polling&sid=unknown", 400, 1, "Session ID unknown"),
            ("POST", "EIO=4&transport=polling", 400, 2, "Bad handshake method"),
            ("GET", "EIO=4&transport=websocket", 400, 3, "Bad request"),
            ("GET", "EIO=4&transport=websocket&sid=" + sid, 400, 3, "Bad request"),
            ("PUT", "EIO=4&transport=polling&sid=" + sid, 400, 3, "Bad request"),
        ]
        for method, query, status, code, message in table:
            with self.subTest(method=method, query=query):
                response, body = self.request(method, query)
                self.assertRefused(response, body, status, code, message)
                self.assertEqual(self.header(response, b"access-control-allow-origin"), b"*")
        self.assertEqual(self.engine.sessions[sid].state, OPEN)
        # The refusals raised were fresh copies: a template raised again and
        # again would chain every refused request's frames (and the request
        # itself) onto its traceback, for the life of the process.
        for template in (UNKNOWN_TRANSPORT, UNKNOWN_SID, BAD_HANDSHAKE_METHOD, BAD_REQUEST,
                         UNSUPPORTED_PROTOCOL_VERSION):
            self.assertIsNone(template.__traceback__, template)

    def test_badOriginHeader(self) -> None:
        """
        An Origin with characters that could split headers is refused.
        """
        response, body = self.request("GET", "EIO=4&transport=polling", headers={b"origin": [b"http://a\x01b"]})
        self.assertRefused(response, body, 400, 3, "Bad request")


class CORSTests(ResourceTestMixin, SynchronousTestCase):
    """
    CORS with an explicit origin list.
    """

    config = EngineIOConfig(corsOrigins=("https://crm.example", "http://localhost:3000"))

    def test_allowedOriginReflected(self) -> None:
        """
        An allowed origin is reflected, with credentials and C{Vary}.
        """
        response, _ = self.request("GET", "EIO=4&transport=polling", headers={b"origin": [b"https://crm.example"]})
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, b"access-control-allow-origin"), b"https://crm.example")
        self.assertEqual(self.header(response, b"access-control-allow-credentials"), b"true")
        self.assertEqual(self.header(response, b"vary"), b"Origin")

    def test_disallowedOrigin(self) -> None:
        """
        A disallowed origin gets no C{Access-Control-Allow-Origin} (the
        browser hides the answer) but still C{Vary}.
        """
        response, _ = self.request("GET", "EIO=4&transport=polling", headers={b"origin": [b"https://evil.example"]})
        self.assertIsNone(self.header(response, b"access-control-allow-origin"))
        self.assertIsNone(self.header(response, b"access-control-allow-credentials"))
        self.assertEqual(self.header(response, b"vary"), b"Origin")

    def test_errorsCarryCORS(self) -> None:
        """
        Refusals carry the CORS headers too, so a browser can read them.
        """
        response, body = self.request("GET", "EIO=4&transport=nope", headers={b"origin": [b"http://localhost:3000"]})
        self.assertEqual(response.code, 400)
        self.assertEqual(self.header(response, b"access-control-allow-origin"), b"http://localhost:3000")

    def test_preflight(self) -> None:
        """
        C{OPTIONS} is answered 204 with the allowed methods and the
        requested headers, whatever the query.
        """
        response, body = self.request(
            "OPTIONS",
            "EIO=4&transport=polling",
            headers={
                b"origin": [b"https://crm.example"],
                b"access-control-request-method": [b"POST"],
                b"access-control-request-headers": [b"content-type, x-token"],
            },
        )
        self.assertEqual((response.code, body), (204, b""))
        self.assertEqual(self.header(response, b"access-control-allow-origin"), b"https://crm.example")
        self.assertEqual(self.header(response, b"access-control-allow-methods"), b"GET, POST, OPTIONS")
        self.assertEqual(self.header(response, b"access-control-allow-headers"), b"content-type, x-token")
        self.assertEqual(self.header(response, b"access-control-allow-credentials"), b"true")
        self.assertEqual(self.engine.sessions, {})


class DefaultCORSTests(ResourceTestMixin, SynchronousTestCase):
    """
    CORS with the default policy (any origin).
    """

    def test_preflight(self) -> None:
        """
        The default preflight allows any origin, without credentials.
        """
        response, body = self.request("OPTIONS", headers={b"origin": [b"https://any.example"]})
        self.assertEqual(response.code, 204)
        self.assertEqual(self.header(response, b"access-control-allow-origin"), b"*")
        self.assertIsNone(self.header(response, b"access-control-allow-credentials"))
        self.assertIsNone(self.header(response, b"access-control-allow-headers"))


class BoundedRequestTests(SynchronousTestCase):
    """
    L{EngineIOSite}'s requests refuse oversize bodies before reading them.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.app = RecordingApp()
        self.config = EngineIOConfig(maxPayload=1000)
        self.engine = EngineIOServer(self.app, self.reactor, self.config)
        root = Resource()
        root.putChild(b"engine.io", EngineIOResource(self.engine, self.reactor))
        self.site = EngineIOSite(root, self.config, reactor=self.reactor)

    def connect(self) -> tuple[Any, StringTransport]:
        """
        A connection to the site over a L{StringTransport}.
        """
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(transport)
        return protocol, transport

    def test_contentLengthTooLarge(self) -> None:
        """
        A Content-Length past the bound gets 413 and the connection is
        closed right after the headers, without reading the body.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"POST /engine.io/?EIO=4&transport=polling&sid=x HTTP/1.1\r\n"
            b"Host: example.com\r\nContent-Length: 50000000\r\n\r\n"
        )
        response = transport.value()
        self.assertTrue(response.startswith(b"HTTP/1.1 413 "), response)
        self.assertIn(b'{"code":3,"message":"Payload too large"}', response)
        self.assertTrue(transport.disconnecting)
        protocol.dataReceived(b"x" * 100000)
        self.assertEqual(transport.value(), response)
        self.assertEqual(self.app.messages, [])

    def test_chunkedTooLarge(self) -> None:
        """
        A chunked body is refused as soon as it passes the bound.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"POST /engine.io/?EIO=4&transport=polling&sid=x HTTP/1.1\r\n"
            b"Host: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(6):
            protocol.dataReceived(b"3e8\r\n" + b"x" * 1000 + b"\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "), transport.value())
        self.assertTrue(transport.disconnecting)

    def test_withinBound(self) -> None:
        """
        Requests within the bound are served normally.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"GET /engine.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: example.com\r\n\r\n"
        )
        response = transport.value()
        self.assertTrue(response.startswith(b"HTTP/1.1 200 "), response)
        head, body = response.split(b"\r\n\r\n", 1)
        self.assertEqual(body[:2], b"0{")
        self.assertIn(b"\r\nContent-Length: %d\r\n" % (len(body),), head + b"\r\n")
        sid = loads(body[1:])["sid"]
        transport.clear()
        body = b"4hello"
        protocol.dataReceived(
            b"POST /engine.io/?EIO=4&transport=polling&sid=%s HTTP/1.1\r\nHost: example.com\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (sid.encode(), len(body), body)
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value())
        self.assertEqual([data for _, data, _ in self.app.messages], [b"hello"])
        self.assertFalse(transport.disconnecting)

    def test_bodiesNotParsedAsForms(self) -> None:
        """
        A POST's body is not parsed as a form: twisted.web would parse its
        C{Content-Type} through the C{email} package first (about 170 us
        and a new class per request, on every long-polling POST), and
        Engine.IO, like every resource of crm_im, reads its bodies itself.
        """
        from twisted.web import http

        parsed: list[bytes] = []
        realParse = http._parseContentType

        def recordingParse(line: bytes) -> bytes:
            parsed.append(line)
            return realParse(line)

        self.patch(http, "_parseContentType", recordingParse)
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"GET /engine.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: example.com\r\n\r\n"
        )
        sid = loads(transport.value().split(b"\r\n\r\n", 1)[1][1:])["sid"]
        transport.clear()
        body = b"4a=b"
        protocol.dataReceived(
            b"POST /engine.io/?EIO=4&transport=polling&sid=%s HTTP/1.1\r\nHost: example.com\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (sid.encode(), len(body), body)
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value())
        self.assertEqual([data for _, data, _ in self.app.messages], [b"a=b"])
        self.assertEqual(parsed, [])

    def test_siteSettings(self) -> None:
        """
        The site's idle timeout outlasts a held poll, its request body bound
        follows maxPayload, and it keeps no access log.
        """
        self.assertGreaterEqual(self.site.timeOut, (25000 + 20000) // 1000)
        self.assertEqual(self.site.requestFactory.maxBody, 1000 + 4096)
        self.site.log(None)  # does nothing
        explicit = EngineIOSite(Resource(), self.config, maxBody=10)
        self.assertEqual(explicit.requestFactory.maxBody, 10)
