"""
Tests for L{crm_im.http}: query-string parsing and the CORS policy on their
own (the Engine.IO endpoint's use of them is in L{tests.test_eio_resource}).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from crm_im.http import CORSPolicy, QueryError, parseQuery


class ParseQueryTests(SynchronousTestCase):
    """
    Tests for L{parseQuery}.
    """

    def test_firstValue(self) -> None:
        """
        L{parseQuery} takes the first value of each argument, keeps blank
        ones and decodes percent-escapes as UTF-8.
        """
        self.assertEqual(
            parseQuery(b"/e/?EIO=4&transport=polling&EIO=3&t=&x=%C3%A9"),
            {"EIO": "4", "transport": "polling", "t": "", "x": "é"},
        )
        self.assertEqual(parseQuery(b"/e/"), {})

    def test_notUTF8(self) -> None:
        """
        A query that is not UTF-8 raises L{QueryError}, a L{ValueError}.
        """
        self.assertRaises(QueryError, parseQuery, b"/e/?x=\xff")
        self.assertTrue(issubclass(QueryError, ValueError))


class CORSPolicyTests(SynchronousTestCase):
    """
    Tests for L{CORSPolicy}.
    """

    def test_anyOrigin(self) -> None:
        """
        Without a list every origin is allowed, as C{*} without
        credentials.
        """
        policy = CORSPolicy()
        request = DummyRequest([b""])
        request.requestHeaders.setRawHeaders(b"origin", [b"https://a.example"])
        policy.apply(request)
        self.assertTrue(policy.allows(b"https://a.example"))
        self.assertEqual(request.responseHeaders.getRawHeaders(b"access-control-allow-origin"), [b"*"])
        self.assertIsNone(request.responseHeaders.getRawHeaders(b"access-control-allow-credentials"))

    def test_listedOrigin(self) -> None:
        """
        With a list, an allowed origin is reflected with credentials; any
        other gets no allow header.
        """
        policy = CORSPolicy(("https://a.example",))
        allowed = DummyRequest([b""])
        allowed.requestHeaders.setRawHeaders(b"origin", [b"https://a.example"])
        policy.apply(allowed)
        self.assertEqual(
            allowed.responseHeaders.getRawHeaders(b"access-control-allow-origin"), [b"https://a.example"]
        )
        self.assertEqual(allowed.responseHeaders.getRawHeaders(b"access-control-allow-credentials"), [b"true"])
        other = DummyRequest([b""])
        other.requestHeaders.setRawHeaders(b"origin", [b"https://b.example"])
        policy.apply(other)
        self.assertFalse(policy.allows(b"https://b.example"))
        self.assertIsNone(other.responseHeaders.getRawHeaders(b"access-control-allow-origin"))

    def test_preflight(self) -> None:
        """
        A preflight is answered 204 with the methods and the requested
        headers.
        """
        request = DummyRequest([b""])
        request.requestHeaders.setRawHeaders(b"access-control-request-headers", [b"x-token"])
        self.assertEqual(CORSPolicy().preflight(request), b"")
        self.assertEqual(request.responseCode, 204)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"access-control-allow-headers"), [b"x-token"])
