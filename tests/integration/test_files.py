"""
File upload storage end to end (FILES.md) with the real L{CRMIMService} on
a loopback port: C{file:upload} over Socket.IO (Node socket.io-client),
the bytes with the stock tus-js-client (an interrupted upload resumed) and
with plain HTTP (treq) for every refusal, the C{type: 'file'} message,
signed downloads with C{Range} and their headers, C{file:url} and who may
read a file, inline C{file_transfer} kept in history, and an upload that
resumes after the server was stopped with half of it on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, Generator, List, Optional

from urllib.parse import urlsplit

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ClientCreator, Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers

from tests.integration.test_im import serveIM
from tests.support.clients import INTEROP, ClientDriver, requireKind, startDriver

Inline = Generator[Deferred[Any], Any, Any]

TUS_SCRIPT = INTEROP / "tus_upload.js"
TUS: Any = {b"Tus-Resumable": [b"1.0.0"]}
OCTETS: Any = {b"Content-Type": [b"application/offset+octet-stream"]}


def generated(size: int) -> bytes:
    """
    The bytes C{tus_upload.js} uploads: C{(i * 7 + 3) % 256}.
    """
    pattern = bytes((i * 7 + 3) % 256 for i in range(256))
    return (pattern * (size // 256 + 1))[:size]


@inlineCallbacks
def runTus(url: str, size: int, abortAfter: int = 0, chunkSize: Optional[int] = None) -> Inline:
    """
    Run tus-js-client on C{url}; return its JSON reports.
    """
    requireKind("node")
    options = {"url": url, "size": size, "abortAfter": abortAfter, "chunkSize": chunkSize}
    out, err, code = yield getProcessOutputAndValue(
        "node", [str(TUS_SCRIPT), json.dumps(options)], env=dict(os.environ), path=str(INTEROP), reactor=reactor
    )
    if code != 0:
        raise AssertionError(f"tus_upload.js exited {code}: {err.decode(errors='replace')}")
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


class _Cut(Protocol):
    def __init__(self, request: bytes, done: Deferred[None]) -> None:
        self.request = request
        self.done = done

    def connectionMade(self) -> None:
        self.transport.write(self.request)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(None)


def cutPatch(url: str, body: bytes, length: int, offset: int = 0) -> Deferred[None]:
    """
    Send a tus C{PATCH} announcing C{length} bytes with only C{body}, then
    close the connection (a mobile client losing its network).
    """
    parsed = urlsplit(url)
    target = f"{parsed.path}?{parsed.query}".encode()
    head = (
        b"PATCH %s HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: %d\r\n"
        b"Content-Type: application/offset+octet-stream\r\nContent-Length: %d\r\n\r\n"
        % (target, offset, length - offset)
    )
    done: Deferred[None] = Deferred()
    ClientCreator(reactor, _Cut, head + body, done).connectTCP(parsed.hostname, parsed.port)
    return done


class FilesTestCase(TestCase):
    """
    A server with small file limits and a Node driver.
    """

    timeout = 60
    settings: Dict[str, Any] = {"maxFileSize": 8 * 1024 * 1024, "fileQuota": 20 * 1024 * 1024}

    @inlineCallbacks
    def setUp(self) -> Inline:
        """
        Serve crm_im; start a Node driver.
        """
        requireKind("node")
        self.service, self.url = yield serveIM(self, **self.settings)
        self.driver: ClientDriver = yield startDriver("node")
        self.addCleanup(self.driver.quit)

    @inlineCallbacks
    def login(self, client: str, userId: str) -> Inline:
        """
        Connect C{client} and log it in as C{userId}.
        """
        yield self.driver.connect(client, self.url, transports=["websocket"])
        (ack,) = yield self.driver.emit(client, "user:login", {"id": userId, "name": userId.upper()}, ack=True)
        self.assertEqual(ack["id"], userId)

    @inlineCallbacks
    def ask(self, client: str, event: str, payload: Any) -> Inline:
        """
        Emit C{event} with an ack; return the ack's payload.
        """
        (ack,) = yield self.driver.emit(client, event, payload, ack=True)
        return ack

    @inlineCallbacks
    def uploadFile(self, client: str, data: bytes, **fields: Any) -> Inline:
        """
        C{file:upload}, then PUT the whole body; return the upload's ack.
        """
        payload = dict({"fileName": "a.bin", "fileSize": len(data)}, **fields)
        ack = yield self.ask(client, "file:upload", payload)
        self.assertIn("uploadUrl", ack, ack)
        response = yield treq.put(self.url + ack["uploadUrl"], data=data, headers=TUS, persistent=False)
        yield response.content()
        self.assertEqual(response.code, 204)
        return ack


class UploadFlowTests(FilesTestCase):
    """
    The socket -> tus -> message flow with real clients.
    """

    @inlineCallbacks
    def test_tusResumeThenFileMessage(self) -> Inline:
        """
        A C{PATCH} to the C{uploadUrl} C{file:upload} gave is cut off
        half-way; the stock tus-js-client, given that C{uploadUrl}, asks
        where to resume (C{HEAD}) and sends the rest; the uploader sends a C{type: 'file'} message naming the
        C{fileId}; the recipient gets it filled from the server's record
        (whatever the client wrote) with a signed C{fileUrl} that serves the
        bytes with the contract's headers.
        """
        yield self.login("a", "alice")
        yield self.login("b", "bob")
        size = 7 * 1024 * 1024 + 17
        data = generated(size)
        ack = yield self.ask(
            "a", "file:upload", {"fileName": "季度报告 final.pdf", "fileSize": size, "mimeType": "application/pdf", "toId": "bob"}
        )
        self.assertEqual(set(ack), {"fileId", "uploadUrl", "expiresAt"})
        self.assertTrue(ack["uploadUrl"].startswith("/api/files/" + ack["fileId"] + "?token="))
        # the connection drops after half the body: what arrived is kept
        half = size // 2
        yield cutPatch(self.url + ack["uploadUrl"], data[:half], size)
        reports = yield runTus(self.url + ack["uploadUrl"], size)
        events = [r["event"] for r in reports if "event" in r]
        self.assertEqual(events, ["success"], reports)
        heads = [r for r in reports if r.get("response") == "HEAD"]
        self.assertEqual(heads[0]["offset"], str(half), reports)
        patches = [r for r in reports if r.get("response") == "PATCH" and r["status"] == 204]
        self.assertEqual(len(patches), 1, reports)
        self.assertEqual(patches[0]["offset"], str(size))

        receipt = yield self.ask(
            "a",
            "message",
            {"type": "file", "fileId": ack["fileId"], "toId": "bob", "id": "f1", "fileUrl": "http://evil/", "fileName": "x.exe"},
        )
        self.assertEqual(receipt["status"], "delivered", receipt)
        (message,) = yield self.driver.waitFor("b", "message")
        self.assertEqual(message["type"], "file")
        self.assertEqual(message["fileId"], ack["fileId"])
        self.assertEqual(message["fileName"], "季度报告 final.pdf")
        self.assertEqual(message["fileSize"], size)
        self.assertEqual(message["mimeType"], "application/pdf")
        self.assertTrue(message["fileUrl"].startswith(f"/api/files/{ack['fileId']}/"), message)
        self.assertIn("sig=", message["fileUrl"])

        response = yield treq.get(self.url + message["fileUrl"], persistent=False)
        body = yield response.content()
        self.assertEqual(response.code, 200)
        self.assertEqual(body, data)
        headers = response.headers
        self.assertEqual(headers.getRawHeaders(b"etag"), [b'"%s"' % hashlib.sha256(data).hexdigest().encode()])
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/pdf"])
        self.assertEqual(
            headers.getRawHeaders(b"content-disposition"),
            [b"attachment; filename=\"____ final.pdf\"; filename*=UTF-8''%E5%AD%A3%E5%BA%A6%E6%8A%A5%E5%91%8A%20final.pdf"],
        )
        self.assertEqual(headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])
        self.assertEqual(headers.getRawHeaders(b"content-security-policy"), [b"sandbox"])
        self.assertEqual(headers.getRawHeaders(b"accept-ranges"), [b"bytes"])

        # history carries the file message with a fresh link
        page = yield self.ask("b", "get_history", {"friendId": "alice"})
        (stored,) = page["messages"]
        self.assertEqual((stored["fileId"], stored["fileSize"]), (ack["fileId"], size))
        self.assertIn("sig=", stored["fileUrl"])

    @inlineCallbacks
    def test_rangesAndConditionalRequests(self) -> Inline:
        """
        A download answers C{Range} with 206 and C{Content-Range}, an
        unsatisfiable range with 416, a matching C{If-None-Match} with 304;
        an image is C{inline}, an SVG an C{attachment}.
        """
        yield self.login("a", "alice")
        data = generated(10_000)
        ack = yield self.uploadFile("a", data, toId="alice", fileName="photo.png", mimeType="image/png")
        (url,) = [(yield self.ask("a", "file:url", {"fileId": ack["fileId"]}))["fileUrl"]]
        response = yield treq.get(self.url + url, headers=Headers({b"Range": [b"bytes=100-199"]}), persistent=False)
        body = yield response.content()
        self.assertEqual(response.code, 206)
        self.assertEqual(body, data[100:200])
        self.assertEqual(response.headers.getRawHeaders(b"content-range"), [b"bytes 100-199/10000"])
        self.assertTrue(response.headers.getRawHeaders(b"content-disposition")[0].startswith(b"inline;"))
        response = yield treq.get(self.url + url, headers=Headers({b"Range": [b"bytes=20000-"]}), persistent=False)
        yield response.content()
        self.assertEqual(response.code, 416)
        etag = hashlib.sha256(data).hexdigest().encode()
        response = yield treq.get(self.url + url, headers=Headers({b"If-None-Match": [b'"' + etag + b'"']}), persistent=False)
        yield response.content()
        self.assertEqual(response.code, 304)
        svg = yield self.uploadFile("a", b"<svg xmlns='http://www.w3.org/2000/svg'/>", toId="alice", fileName="x.svg", mimeType="image/svg+xml")
        link = yield self.ask("a", "file:url", {"fileId": svg["fileId"]})
        response = yield treq.get(self.url + link["fileUrl"], persistent=False)
        yield response.content()
        self.assertTrue(response.headers.getRawHeaders(b"content-disposition")[0].startswith(b"attachment;"))
        self.assertNotIn("thumbnailUrl", link)
