# -*- test-case-name: tests.test_http -*-
"""
The query string of a request URI, parsed once and the same way for every
resource.
"""

from __future__ import annotations

from urllib.parse import parse_qsl


class QueryError(ValueError):
    """
    A query string that is not UTF-8.
    """


def parseQuery(uri: bytes) -> dict[str, str]:
    """
    The query arguments of C{uri}, first value of each. (twisted.web would
    also parse form bodies into C{request.args}; Engine.IO must not.)

    @raise QueryError: if the query is not UTF-8.
    """
    _, _, query = uri.partition(b"?")
    try:
        pairs = parse_qsl(query.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise QueryError("query string is not UTF-8")
    result: dict[str, str] = {}
    for key, value in pairs:
        result.setdefault(key, value)
    return result
