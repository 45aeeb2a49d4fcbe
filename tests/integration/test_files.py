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
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.protocol import ClientCreator, Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers

from crm_im.uploads.service import UploadSettings
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

    @inlineCallbacks
    def test_thumbnailAskedForAtOnce(self) -> Inline:
        """
        The thumbnail of a JPEG asked for four times at once straight after
        its upload completes (while the job started on completion runs) is
        made once and served to all four, for each of twelve JPEGs (some of
        the answers were 404 'unreadable image': the jobs raced on one
        temporary file).
        """
        yield self.login("a", "alice")
        for i in range(12):
            ack = yield self.uploadFile("a", noisyJPEG(800, 600), toId="alice", fileName=f"{i}.jpg", mimeType="image/jpeg")
            url = self.url + self.service.uploads.thumbnailUrl(ack["fileId"], "image/jpeg")
            responses = yield gatherResults([treq.get(url, persistent=False) for _ in range(4)])
            bodies = yield gatherResults([response.content() for response in responses])
            refusals = [body for response, body in zip(responses, bodies) if response.code != 200]
            self.assertEqual([response.code for response in responses], [200] * 4, (i, refusals))
            self.assertEqual(len(set(bodies)), 1)
            self.assertTrue(bodies[0].startswith(b"\xff\xd8\xff"))


def noisyJPEG(width: int, height: int) -> bytes:
    """
    A JPEG of random grey noise: a different one each time, of hundreds of
    kilobytes (its thumbnail takes a while).
    """
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.effect_noise((width, height), 50).convert("RGB").save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def merge(*headers: Any) -> Any:
    """
    Header dicts merged (later ones win).
    """
    merged: Dict[bytes, Any] = {}
    for h in headers:
        merged.update(h)
    return merged


def vmHWM() -> int:
    """
    This process's peak resident memory, bytes (Linux).
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


class BoundedMemoryTests(FilesTestCase):
    """
    An upload much larger than one chunk is held a read at a time.
    """

    settings = {"maxFileSize": 256 * 1024 * 1024, "fileQuota": 0}

    @inlineCallbacks
    def test_largeUploadIsStreamed(self) -> Inline:
        """
        tus-js-client sends 96 MiB in one C{PATCH}: the server (this
        process) never holds more than a few reads of it (the sinks'
        largest buffer), its peak memory grows by far less than the file,
        and the stored bytes have the right SHA-256.
        """
        if not os.path.exists("/proc/self/status"):
            self.skipTest("needs /proc (Linux)")
        yield self.login("a", "alice")
        size = 96 * 1024 * 1024
        ack = yield self.ask("a", "file:upload", {"fileName": "big.bin", "fileSize": size, "toId": "alice"})
        before = vmHWM()
        reports = yield runTus(self.url + ack["uploadUrl"], size)
        self.assertEqual([r["event"] for r in reports if "event" in r], ["success"], reports)
        grown = vmHWM() - before
        self.assertLess(self.service.uploads.peakBuffered, 1024 * 1024)
        self.assertLess(grown, 32 * 1024 * 1024)
        record = yield self.service.fileRecords.fileRecord(ack["fileId"])
        self.assertEqual(record.sha256, hashlib.sha256(generated(size)).hexdigest())
        self.assertEqual(self.service.files.pathFor(record).getsize(), size)


class BadInputTests(FilesTestCase):
    """
    Every bad request is answered clearly (JSON C{{error, code}} over HTTP,
    the contract's codes over the socket) and harms nothing.
    """

    @inlineCallbacks
    def http(self, method: str, path: str, body: bytes = b"", headers: Any = None) -> Inline:
        """
        One request; return C{(status, headers, JSON body or bytes)}.
        """
        response = yield treq.request(
            method, self.url + path, data=body or None, headers=Headers(headers or {}), persistent=False
        )
        content = yield response.content()
        if content and response.headers.getRawHeaders(b"content-type", [b""])[0].startswith(b"application/json"):
            return response.code, response.headers, json.loads(content)
        return response.code, response.headers, content

    @inlineCallbacks
    def refused(self, client: str, event: str, payload: Any, code: str) -> Inline:
        """
        C{event} is refused with C{code}.
        """
        ack = yield self.ask(client, event, payload)
        self.assertEqual(ack.get("error", {}).get("code"), code, ack)
        return ack

    @inlineCallbacks
    def test_unfinishedUploadsBounded(self) -> Inline:
        """
        A user with 32 unfinished uploads gets C{RATE_LIMITED} for
        another, however small; finishing one makes room.
        """
        yield self.login("a", "alice")
        base = {"fileName": "a.bin", "toId": "alice", "fileSize": 1}
        opened = []
        for _ in range(UploadSettings().maxUnfinished):
            ack = yield self.ask("a", "file:upload", base)
            opened.append(ack)
        ack = yield self.refused("a", "file:upload", base, "RATE_LIMITED")
        self.assertIn("unfinished", ack["error"]["message"])
        response = yield treq.put(self.url + opened[0]["uploadUrl"], data=b"x", persistent=False)
        yield response.content()
        self.assertEqual(response.code, 204)
        ack = yield self.ask("a", "file:upload", base)
        self.assertIn("fileId", ack)

    @inlineCallbacks
    def test_socketRefusals(self) -> Inline:
        """
        C{file:upload}: a size past C{--max-file-size} or the quota (even a
        huge one) is C{TOO_LARGE}; a name with a path, a bad size or
        checksum (or an empty file's of other bytes) is C{INVALID_PAYLOAD}; a group the caller is not in is
        C{NOT_FOUND}. A file message naming an unfinished, unknown or
        someone else's file is C{NOT_FOUND}.
        """
        yield self.login("a", "alice")
        yield self.login("b", "bob")
        base = {"fileName": "a.bin", "toId": "bob"}
        yield self.refused("a", "file:upload", dict(base, fileSize=8 * 1024 * 1024 + 1), "TOO_LARGE")
        yield self.refused("a", "file:upload", dict(base, fileSize=10**18), "TOO_LARGE")
        yield self.refused("a", "file:upload", dict(base, fileSize=-1), "INVALID_PAYLOAD")
        yield self.refused("a", "file:upload", dict(base, fileSize="12"), "INVALID_PAYLOAD")
        for name in ("../../etc/passwd", "a/b", "..", "c:\\windows\\x", "a\x01b"):
            ack = yield self.refused("a", "file:upload", dict(base, fileSize=1, fileName=name), "INVALID_PAYLOAD")
            self.assertIn("plain file name", ack["error"]["message"])
        yield self.refused("a", "file:upload", dict(base, fileSize=1, sha256="xyz"), "INVALID_PAYLOAD")
        # an empty file is complete once announced: a checksum not its own is refused then
        ack = yield self.refused("a", "file:upload", dict(base, fileName="empty.txt", fileSize=0, sha256="a" * 64), "INVALID_PAYLOAD")
        self.assertIn("does not match an empty file", ack["error"]["message"])
        yield self.refused("a", "file:upload", {"fileName": "a", "fileSize": 1, "groupId": "nope"}, "NOT_FOUND")
        yield self.refused("a", "file:upload", {"fileName": "a", "fileSize": 1}, "INVALID_PAYLOAD")
        # the quota counts unfinished uploads
        for _ in range(2):
            yield self.ask("a", "file:upload", dict(base, fileSize=8 * 1024 * 1024))
        yield self.refused("a", "file:upload", dict(base, fileSize=4 * 1024 * 1024 + 1), "TOO_LARGE")

        pending = yield self.ask("a", "file:upload", dict(base, fileSize=10))
        yield self.refused("a", "message", {"type": "file", "fileId": pending["fileId"], "toId": "bob"}, "NOT_FOUND")
        yield self.refused("a", "message", {"type": "file", "fileId": "x" * 32, "toId": "bob"}, "NOT_FOUND")
        response = yield treq.put(self.url + pending["uploadUrl"], data=b"0123456789", persistent=False)
        yield response.content()
        self.assertEqual(response.code, 204)
        yield self.refused("b", "message", {"type": "file", "fileId": pending["fileId"], "toId": "alice"}, "NOT_FOUND")
        receipt = yield self.ask("a", "message", {"type": "file", "fileId": pending["fileId"], "toId": "bob"})
        self.assertEqual(receipt["status"], "delivered")

    @inlineCallbacks
    def test_httpRefusals(self) -> Inline:
        """
        tus requests: no token 401, a bad token 403, an unknown upload 404,
        a wrong offset 409, a wrong content type 415, another tus version
        412, a body past the length 413 (at once), a whole-body PUT of
        another length 400 (nothing taken); C{OPTIONS} advertises the protocol;
        C{DELETE} ends the upload (410 after) and frees the quota.
        """
        yield self.login("a", "alice")
        ack = yield self.ask("a", "file:upload", {"fileName": "a.bin", "fileSize": 100, "toId": "alice"})
        url = ack["uploadUrl"]
        path = url.split("?")[0]
        patch = merge(TUS, OCTETS)

        status, headers, _ = yield self.http("OPTIONS", path)
        self.assertEqual(status, 204)
        self.assertEqual(headers.getRawHeaders(b"tus-version"), [b"1.0.0"])
        self.assertEqual(headers.getRawHeaders(b"tus-extension"), [b"termination,expiration"])
        self.assertEqual(headers.getRawHeaders(b"tus-max-size"), [b"%d" % (8 * 1024 * 1024)])

        status, _, body = yield self.http("HEAD", path, headers=TUS)
        self.assertEqual(status, 401)
        status, _, body = yield self.http("PATCH", path, b"x", merge(patch, {b"Upload-Offset": [b"0"]}))
        self.assertEqual((status, body["code"]), (401, "UNAUTHORIZED"))
        status, _, body = yield self.http("PATCH", path + "?token=forged", b"x", merge(patch, {b"Upload-Offset": [b"0"]}))
        self.assertEqual((status, body["code"]), (403, "FORBIDDEN"))
        unknown = "u" * 32
        token = self.service.uploads.signer.uploadToken(unknown)
        status, _, body = yield self.http("HEAD", f"/api/files/{unknown}?token={token}", headers=TUS)
        self.assertEqual(status, 404)

        status, _, body = yield self.http("PATCH", url, b"abc", merge(patch, {b"Upload-Offset": [b"5"]}))
        self.assertEqual((status, body["code"]), (409, "CONFLICT"))
        status, _, body = yield self.http("PATCH", url, b"abc", merge(TUS, {b"Upload-Offset": [b"0"], b"Content-Type": [b"text/plain"]}))
        self.assertEqual(status, 415)
        status, _, body = yield self.http("PATCH", url, b"abc", merge(patch, {b"Upload-Offset": [b"0"], b"Tus-Resumable": [b"0.2.2"]}))
        self.assertEqual(status, 412)
        status, _, body = yield self.http("PATCH", url, b"abc", merge(patch, {b"Upload-Offset": [b"zero"]}))
        self.assertEqual(status, 400)
        status, _, body = yield self.http("PATCH", url, b"y" * 101, merge(patch, {b"Upload-Offset": [b"0"]}))
        self.assertEqual((status, body["code"]), (413, "TOO_LARGE"))
        # nothing was harmed: the upload is still at 0
        status, headers, _ = yield self.http("HEAD", url, headers=TUS)
        self.assertEqual((status, headers.getRawHeaders(b"upload-offset")), (200, [b"0"]))

        status, _, body = yield self.http("PUT", url, b"z" * 60, TUS)
        self.assertEqual((status, body["code"]), (400, "INVALID_PAYLOAD"))
        status, headers, _ = yield self.http("HEAD", url, headers=TUS)
        self.assertEqual(headers.getRawHeaders(b"upload-offset"), [b"0"])
        status, headers, _ = yield self.http("PATCH", url, b"z" * 60, merge(patch, {b"Upload-Offset": [b"0"]}))
        self.assertEqual((status, headers.getRawHeaders(b"upload-offset")), (204, [b"60"]))
        status, headers, _ = yield self.http("PATCH", url, b"z" * 40, merge(patch, {b"Upload-Offset": [b"60"]}))
        self.assertEqual((status, headers.getRawHeaders(b"upload-offset")), (204, [b"100"]))
        status, _, body = yield self.http("PATCH", url, b"z", merge(patch, {b"Upload-Offset": [b"100"]}))
        self.assertEqual(status, 409)

        second = yield self.ask("a", "file:upload", {"fileName": "b.bin", "fileSize": 8 * 1024 * 1024, "toId": "alice"})
        status, _, _ = yield self.http("DELETE", second["uploadUrl"], headers=TUS)
        self.assertEqual(status, 204)
        status, _, body = yield self.http("HEAD", second["uploadUrl"], headers=TUS)
        self.assertEqual(status, 410)
        status, _, body = yield self.http("PATCH", second["uploadUrl"], b"x", merge(patch, {b"Upload-Offset": [b"0"]}))
        self.assertEqual((status, body["code"]), (410, "GONE"))
        # its 8 MiB are free again: 8 + 8 + 4 MiB fit in the 20 MiB quota
        for size in (8, 8, 3):
            more = yield self.ask("a", "file:upload", {"fileName": "c.bin", "fileSize": size * 1024 * 1024, "toId": "alice"})
            self.assertIn("fileId", more)

    @inlineCallbacks
    def test_checksumMismatch(self) -> Inline:
        """
        Bytes whose SHA-256 is not the one C{file:upload} announced are
        460 and discarded; the right ones complete.
        """
        yield self.login("a", "alice")
        data = b"hello world"
        wrong = yield self.ask("a", "file:upload", {"fileName": "h.txt", "fileSize": len(data), "toId": "alice", "sha256": "0" * 64})
        status, _, body = yield self.http("PUT", wrong["uploadUrl"], data, TUS)
        self.assertEqual((status, body["code"]), (460, "CHECKSUM_MISMATCH"))
        status, _, _ = yield self.http("HEAD", wrong["uploadUrl"], headers=TUS)
        self.assertEqual(status, 410)
        right = yield self.ask(
            "a", "file:upload", {"fileName": "h.txt", "fileSize": len(data), "toId": "alice", "sha256": hashlib.sha256(data).hexdigest().upper()}
        )
        status, _, _ = yield self.http("PUT", right["uploadUrl"], data, TUS)
        self.assertEqual(status, 204)

    @inlineCallbacks
    def test_downloadRefusals(self) -> Inline:
        """
        A download with no, a forged or an expired signature is 403; an
        unknown or unfinished file 404; paths that try to leave the
        directory reach nothing.
        """
        yield self.login("a", "alice")
        ack = yield self.uploadFile("a", b"secret bytes", toId="alice")
        link = yield self.ask("a", "file:url", {"fileId": ack["fileId"]})
        url = link["fileUrl"]
        status, headers, body = yield self.http("GET", url)
        self.assertEqual((status, body), (200, b"secret bytes"))
        status, _, body = yield self.http("GET", url.split("?")[0])
        self.assertEqual((status, body["code"]), (403, "FORBIDDEN"))
        status, _, body = yield self.http("GET", url.replace("sig=", "sig=x"))
        self.assertEqual(status, 403)
        signer = self.service.uploads.signer
        fileId = ack["fileId"]
        expired = f"/api/files/{fileId}/a.bin?exp=1000&sig={signer.sign('download', fileId, 1000)}"
        status, _, body = yield self.http("GET", expired)
        self.assertEqual(status, 403)
        self.assertIn("expired", body["error"])
        other = yield self.ask("a", "file:upload", {"fileName": "p.bin", "fileSize": 5, "toId": "alice"})
        fresh = self.service.uploads.fileUrl(other["fileId"], "p.bin")
        status, _, _ = yield self.http("GET", fresh)
        self.assertEqual(status, 404)
        for path in ("/api/files/../../crm_im.sqlite3", "/api/files/%2e%2e%2f%2e%2e%2furl-secret/x", "/api/files/..%2Furl-secret"):
            status, _, body = yield self.http("GET", path)
            self.assertIn(status, (403, 404, 405), path)
            self.assertNotIn(b"crm", body if isinstance(body, bytes) else b"")


class InlineLimitsTests(FilesTestCase):
    """
    Inline C{file_transfer}s are held to C{--max-file-size} and the quota
    as uploads are, and share the quota with them.
    """

    settings = {"maxFileSize": 3000, "fileQuota": 5000, "maxPayload": 2_000_000}

    @inlineCallbacks
    def refusedTransfer(self, id: str, data: bytes) -> Inline:
        """
        C{file_transfer} C{id} from alice to bob is C{TOO_LARGE}, in its
        ack and in an C{error} event naming the message.
        """
        ack = yield self.ask("a", "file_transfer", {"id": id, "toId": "bob", "fileName": id + ".bin", "data": data})
        self.assertEqual(ack.get("error", {}).get("code"), "TOO_LARGE", ack)
        (error,) = yield self.driver.waitFor("a", "error", predicate=lambda args: args[0].get("id") == id)
        self.assertEqual((error["code"], error["event"]), ("TOO_LARGE", "file_transfer"))
        return error

    @inlineCallbacks
    def test_transfersWithinTheLimits(self) -> Inline:
        """
        A transfer past C{--max-file-size}, or one that would put its
        sender past the quota, is refused (C{TOO_LARGE}, naming the
        message): nothing is stored, relayed or in history. Uploads count
        the bytes sent inline, and a transfer sent again with the id of a
        stored one is answered from it, quota full or not.
        """
        yield self.login("a", "alice")
        yield self.login("b", "bob")
        yield self.refusedTransfer("huge", generated(500_000))
        error = yield self.refusedTransfer("big", generated(3001))
        self.assertIn("3000", error["message"])
        first = yield self.ask("a", "file_transfer", {"id": "t1", "toId": "bob", "fileName": "1.bin", "data": generated(2000)})
        self.assertEqual(first["status"], "delivered", first)
        second = yield self.ask("a", "file_transfer", {"id": "t2", "toId": "bob", "fileName": "2.bin", "data": generated(2000)})
        self.assertEqual(second["status"], "delivered", second)
        error = yield self.refusedTransfer("t3", generated(2000))
        self.assertIn("4000 of 5000", error["message"])
        again = yield self.ask("a", "file_transfer", {"id": "t1", "toId": "bob", "fileName": "1.bin", "data": generated(2000)})
        self.assertEqual((again["messageId"], again["timestamp"]), ("t1", first["timestamp"]))

        used = yield self.service.fileRecords.quotaUsed("alice")
        self.assertEqual(used, 4000)
        refusal = yield self.ask("a", "file:upload", {"fileName": "u.bin", "fileSize": 1001, "toId": "bob"})
        self.assertEqual(refusal["error"]["code"], "TOO_LARGE", refusal)
        self.assertIn("4000 of 5000", refusal["error"]["message"])
        yield self.uploadFile("a", generated(1000), toId="bob")
        yield self.refusedTransfer("t4", b"x")

        # bob was relayed the two stored transfers only (a message after
        # them is a barrier), and history holds those two
        yield self.ask("a", "message", {"toId": "bob", "content": "barrier", "id": "barrier"})
        yield self.driver.waitFor("b", "message", predicate=lambda args: args[0].get("id") == "barrier")
        self.assertEqual([args[0]["id"] for args in self.driver.events("b", "file_transfer")], ["t1", "t2"])
        page = yield self.ask("b", "get_history", {"friendId": "alice"})
        self.assertEqual([m["id"] for m in page["messages"] if m["type"] == "file"], ["t1", "t2"])


def tinyPNG() -> bytes:
    """
    A 300x200 PNG.
    """
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


class FileMessagesScenario(FilesTestCase):
    """
    File messages in groups, access by the conversation rules, inline
    transfers kept in history, thumbnails and expiry; written once, run
    with Node socket.io-client and python-socketio.
    """

    kind = "node"

    @inlineCallbacks
    def setUp(self) -> Inline:
        """
        Serve crm_im; start a driver of this case's kind.
        """
        requireKind("node")
        requireKind(self.kind)
        self.service, self.url = yield serveIM(self, **self.settings)
        self.driver = yield startDriver(self.kind)
        self.addCleanup(self.driver.quit)

    @inlineCallbacks
    def login(self, client: str, userId: str) -> Inline:
        """
        Connect C{client} (default transports) and log it in as C{userId}.
        """
        yield self.driver.connect(client, self.url)
        (ack,) = yield self.driver.emit(client, "user:login", {"id": userId, "name": userId.upper()}, ack=True)
        self.assertEqual(ack["id"], userId)

    @inlineCallbacks
    def test_groupFileAndAccess(self) -> Inline:
        """
        A member uploads for a group and sends the file there; members get
        the message with a working link and a thumbnail, and may ask for a
        fresh link; a stranger may neither upload there nor get a link.
        """
        yield self.login("a", "alice")
        yield self.login("b", "bob")
        yield self.login("c", "carol")
        group = yield self.ask("a", "group:create", {"name": "g", "memberIds": ["bob"]})
        groupId = group["id"]
        image = tinyPNG()
        ack = yield self.uploadFile("a", image, groupId=groupId, fileName="图片.png", mimeType="image/png")
        receipt = yield self.ask("a", "message", {"type": "file", "fileId": ack["fileId"], "groupId": groupId, "content": "看"})
        self.assertEqual(receipt["status"], "sent", receipt)
        (message,) = yield self.driver.waitFor("b", "message", predicate=lambda args: args[0].get("type") == "file")
        self.assertEqual((message["fileName"], message["content"], message["fileSize"]), ("图片.png", "看", len(image)))
        self.assertIn("thumbnailUrl", message)
        response = yield treq.get(self.url + message["thumbnailUrl"], persistent=False)
        thumbnail = yield response.content()
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"image/jpeg"])
        from PIL import Image
        import io

        with Image.open(io.BytesIO(thumbnail)) as opened:
            self.assertEqual(opened.size, (256, 171))
        response = yield treq.get(self.url + message["fileUrl"], persistent=False)
        self.assertEqual((yield response.content()), image)
        self.assertTrue(response.headers.getRawHeaders(b"content-disposition")[0].startswith(b"inline;"))

        link = yield self.ask("b", "file:url", {"fileId": ack["fileId"]})
        self.assertTrue(link["fileUrl"].startswith("/api/files/" + ack["fileId"]))
        refusal = yield self.ask("c", "file:url", {"fileId": ack["fileId"]})
        self.assertEqual(refusal["error"]["code"], "NOT_FOUND")
        refusal = yield self.ask("c", "file:upload", {"fileName": "x", "fileSize": 1, "groupId": groupId})
        self.assertEqual(refusal["error"]["code"], "NOT_FOUND")
        refusal = yield self.ask("c", "file:url", {"fileId": "../../etc/passwd"})
        self.assertEqual(refusal["error"]["code"], "NOT_FOUND")

    @inlineCallbacks
    def test_emptyFile(self) -> Inline:
        """
        An empty file is complete once announced: a C{PUT} of its (empty)
        whole body and a C{PATCH} of nothing at offset 0 succeed (204,
        C{Upload-Offset: 0}) rather than 409, and it is sent and downloaded
        as 0 bytes; a C{PATCH} with bytes is still refused.
        """
        yield self.login("a", "alice")
        yield self.login("b", "bob")
        ack = yield self.uploadFile("a", b"", fileName="empty.txt", toId="bob")
        url = self.url + ack["uploadUrl"]
        response = yield treq.patch(url, data=b"", persistent=False,
                                    headers={**TUS, **OCTETS, b"Upload-Offset": [b"0"]})
        yield response.content()
        self.assertEqual((response.code, response.headers.getRawHeaders(b"upload-offset")), (204, [b"0"]))
        response = yield treq.patch(url, data=b"x", persistent=False,
                                    headers={**TUS, **OCTETS, b"Upload-Offset": [b"0"]})
        yield response.content()
        self.assertEqual(response.code, 409)
        receipt = yield self.ask("a", "message", {"type": "file", "fileId": ack["fileId"], "toId": "bob"})
        self.assertEqual(receipt["status"], "delivered", receipt)
        (message,) = yield self.driver.waitFor("b", "message", predicate=lambda args: args[0].get("type") == "file")
        self.assertEqual((message["fileName"], message["fileSize"]), ("empty.txt", 0))
        response = yield treq.get(self.url + message["fileUrl"], persistent=False)
        self.assertEqual((response.code, (yield response.content())), (200, b""))

    @inlineCallbacks
    def test_roomFile(self) -> Inline:
        """
        A file sent in a chat room comes with a signed link in the room's
        recent messages to whoever joins later; only a socket in the room
        may upload for it.
        """
        yield self.login("a", "alice")
        yield self.login("b", "bob")
        room = yield self.ask("a", "room:create", {"name": "lobby", "public": True})
        roomId = room["id"]
        refusal = yield self.ask("a", "file:upload", {"fileName": "r.txt", "fileSize": 2, "roomId": roomId})
        self.assertEqual(refusal["error"]["code"], "FORBIDDEN")
        yield self.ask("a", "room:join", {"roomId": roomId})
        ack = yield self.uploadFile("a", b"hi", roomId=roomId, fileName="r.txt")
        receipt = yield self.ask("a", "message", {"type": "file", "fileId": ack["fileId"], "roomId": roomId})
        self.assertEqual(receipt["status"], "sent", receipt)
        joined = yield self.ask("b", "room:join", {"roomId": roomId})
        (message,) = [m for m in joined["messages"] if m["type"] == "file"]
        self.assertIn("sig=", message["fileUrl"])
        response = yield treq.get(self.url + message["fileUrl"], persistent=False)
        self.assertEqual((yield response.content()), b"hi")
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/octet-stream"])

    @inlineCallbacks
    def test_inlineTransferInHistory(self) -> Inline:
        """
        An inline C{file_transfer} to an online user is relayed and is also
        a C{file} message in history with a working link; sent again with
        the same id it is not stored twice; the same bytes under another id
        are one blob.
        """
        yield self.login("a", "alice")
        yield self.login("b", "bob")
        blob = bytes(range(256)) * 4
        first = yield self.ask("a", "file_transfer", {"id": "t1", "toId": "bob", "fileName": "dir/../notes.txt", "data": blob})
        self.assertEqual(first["status"], "delivered")
        (relayed,) = yield self.driver.waitFor("b", "file_transfer")
        self.assertEqual(relayed["data"], blob)
        again = yield self.ask("a", "file_transfer", {"id": "t1", "toId": "bob", "fileName": "notes.txt", "data": blob})
        self.assertEqual((again["messageId"], again["timestamp"]), ("t1", first["timestamp"]))
        yield self.ask("a", "file_transfer", {"id": "t2", "toId": "bob", "fileName": "copy.txt", "data": blob})
        page = yield self.ask("b", "get_history", {"friendId": "alice"})
        files = [m for m in page["messages"] if m["type"] == "file"]
        self.assertEqual([m["id"] for m in files], ["t1", "t2"])
        self.assertEqual(files[0]["fileName"], "notes.txt")
        response = yield treq.get(self.url + files[0]["fileUrl"], persistent=False)
        self.assertEqual((yield response.content()), blob)
        records = yield self.service.fileRecords.fileRecord(files[0]["fileId"])
        other = yield self.service.fileRecords.fileRecord(files[1]["fileId"])
        self.assertEqual(records.sha256, other.sha256)
        blobs = [p for p in self.service.files.directory.child("blobs").walk() if p.isfile()]
        self.assertEqual(len(blobs), 1)

    @inlineCallbacks
    def test_recalledFileIsGone(self) -> Inline:
        """
        A recalled file message takes its file from the other participants
        (1:1 by upload and inline, group and room): C{file:url} answers
        them C{NOT_FOUND} and history has the stub. Its uploader keeps it
        and may send it again, which gives it back. Links handed out
        before the recall are signed capabilities: they work until they
        expire.
        """
        yield self.login("a", "alice")
        yield self.login("b", "bob")
        group = yield self.ask("a", "group:create", {"name": "g", "memberIds": ["bob"]})
        room = yield self.ask("a", "room:create", {"name": "lobby", "public": True})
        yield self.ask("a", "room:join", {"roomId": room["id"]})
        where = {"direct": {"toId": "bob"}, "group": {"groupId": group["id"]}, "room": {"roomId": room["id"]}}
        sent: Dict[str, str] = {}
        for name, target in where.items():
            ack = yield self.uploadFile("a", name.encode() * 10, fileName=name + ".txt", **target)
            receipt = yield self.ask("a", "message", dict(target, type="file", fileId=ack["fileId"], id=name))
            self.assertNotIn("error", receipt)
            sent[name] = ack["fileId"]
        yield self.ask("a", "file_transfer", {"id": "inline", "toId": "bob", "fileName": "inline.txt", "data": b"inline bytes"})
        (relayed,) = yield self.driver.waitFor("b", "file_transfer")
        sent["inline"] = relayed["fileId"]
        links = {}
        for name, fileId in sent.items():
            link = yield self.ask("b", "file:url", {"fileId": fileId})
            self.assertIn("fileUrl", link, (name, link))
            links[name] = link["fileUrl"]

        for name in sent:
            ack = yield self.ask("a", "message:recall", {"messageId": name})
            self.assertEqual(ack, {"messageId": name, "recalled": True})
        for name, fileId in sent.items():
            refusal = yield self.ask("b", "file:url", {"fileId": fileId})
            self.assertEqual(refusal.get("error", {}).get("code"), "NOT_FOUND", (name, refusal))
            own = yield self.ask("a", "file:url", {"fileId": fileId})
            self.assertIn("fileUrl", own, (name, own))
        page = yield self.ask("b", "get_history", {"friendId": "alice"})
        self.assertEqual([m.get("fileId") for m in page["messages"] if m.get("recalled")], [None, None])
        # chosen: a link handed out before the recall works until it expires
        response = yield treq.get(self.url + links["direct"], persistent=False)
        self.assertEqual((response.code, (yield response.content())), (200, b"direct" * 10))

        # sent again, the file is bob's to read again
        yield self.ask("a", "message", {"type": "file", "fileId": sent["direct"], "toId": "bob", "id": "again"})
        link = yield self.ask("b", "file:url", {"fileId": sent["direct"]})
        self.assertIn("fileUrl", link)

    @inlineCallbacks
    def test_expiredFileIsGone(self) -> Inline:
        """
        A file expired by retention answers 410; its message keeps its
        name, and C{file:url} still answers (a link that answers 410).
        """
        yield self.login("a", "alice")
        ack = yield self.uploadFile("a", b"old", toId="alice", fileName="old.txt")
        yield self.ask("a", "message", {"type": "file", "fileId": ack["fileId"], "toId": "alice"})
        record = yield self.service.fileRecords.fileRecord(ack["fileId"])
        yield self.service.uploads.expire(record)
        link = yield self.ask("a", "file:url", {"fileId": ack["fileId"]})
        self.assertTrue(link.get("expired"))
        response = yield treq.get(self.url + link["fileUrl"], persistent=False)
        body = yield response.json()
        self.assertEqual((response.code, body["code"]), (410, "GONE"))
        page = yield self.ask("a", "get_history", {"friendId": "alice"})
        self.assertEqual(page["messages"][-1]["fileName"], "old.txt")


class FileMessagesNodeTests(FileMessagesScenario):
    """
    With Node's socket.io-client.
    """


class FileMessagesPythonTests(FileMessagesScenario):
    """
    With python-socketio.
    """

    kind = "python"
