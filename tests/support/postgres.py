"""
PostgreSQL for tests: a schema or a database of their own on the server the
machine runs (C{$CRM_IM_TEST_POSTGRES}, by default
C{postgresql://postgres@127.0.0.1:5432/test}), dropped when the test ends.

Unreachable, the test is skipped with the reason, or fails when C{CI=true}
(CI runs PostgreSQL, and a silent skip there would hide a broken store).
"""

from __future__ import annotations

import os
import uuid
from typing import Any
from unittest import SkipTest
from urllib.parse import quote, urlsplit, urlunsplit

#: The server and database tests connect to for administration.
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"

_reachable: str | None | bool = False  # False: not tried yet; str: why not


def adminURL() -> str:
    """
    Where tests connect to make their schemas and databases.
    """
    return os.environ.get("CRM_IM_TEST_POSTGRES") or DEFAULT_URL


def _whyUnreachable() -> str | None:
    """
    Why PostgreSQL cannot be used here, or L{None} (tried once per run).
    """
    global _reachable
    if _reachable is False:
        try:
            import psycopg

            with psycopg.connect(adminURL(), connect_timeout=5, autocommit=True) as conn:
                conn.execute("SELECT 1")
            _reachable = None
        except Exception as error:
            _reachable = f"PostgreSQL at {adminURL()} unusable: {error}".strip()
    assert _reachable is None or isinstance(_reachable, str)
    return _reachable


def requirePostgres() -> None:
    """
    Skip the calling test when PostgreSQL is unreachable, or fail it when
    C{CI=true}.

    @raise SkipTest: outside CI.
    @raise RuntimeError: on CI.
    """
    reason = _whyUnreachable()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        raise RuntimeError(reason + " (CI=true: PostgreSQL is required)")
    raise SkipTest(reason + " (set CRM_IM_TEST_POSTGRES to another server)")


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(adminURL(), connect_timeout=5, autocommit=True) as conn:
        conn.execute(sql)


def _withParameter(url: str, key: str, value: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}{key}={quote(value, safe='')}"


def newSchemaURL(testCase: Any) -> str:
    """
    Make an empty schema for C{testCase}, dropped (with everything in it)
    when the test ends, and return a URL whose connections work in it.

    Register it before the store's own cleanup (cleanups run last first),
    so that the store is closed when the schema goes.
    """
    requirePostgres()
    schema = "crm_im_t_" + uuid.uuid4().hex[:16]
    _admin(f"CREATE SCHEMA {schema}")
    testCase.addCleanup(_admin, f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    return _withParameter(adminURL(), "options", f"-csearch_path={schema}")


def newDatabaseURL(testCase: Any) -> str:
    """
    Make an empty database for C{testCase} (for server processes, which
    take a plain URL), dropped when the test ends, and return its URL.
    """
    requirePostgres()
    name = "crm_im_t_" + uuid.uuid4().hex[:16]
    _admin(f"CREATE DATABASE {name}")
    testCase.addCleanup(_admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    parts = urlsplit(adminURL())
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))
