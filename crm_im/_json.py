# -*- test-case-name: tests.test_sio_packet -*-
"""
The one JSON codec of crm_im.

Everything that crosses the wire is UTF-8 JSON in C{bytes}: orjson parses
and produces bytes directly, which is what Autobahn and twisted.web want, and
it is several times faster than the standard library on the hot path. Its
limits are the ones we want on untrusted input: nesting deeper than 1024
levels, integers past 64 bits, lone surrogates and NaN are all refused.
"""

from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError


def dumps(value: Any) -> bytes:
    """
    Serialise C{value} to compact UTF-8 JSON, as C{JSON.stringify} would.
    """
    return orjson.dumps(value)


def dumpsToKeep(value: Any) -> bytes:
    """
    L{dumps}, for a result that is kept (a cache that lives as long as a
    connection or a user).

    Why: orjson builds its output in a C{bytes} of at least 4 KiB and
    hands that object back as it is, only its length set; C{sys.getsizeof}
    shows the length, but the 4 KiB block stays allocated as long as the
    result lives. A copy is allocated at its real size (a 64-byte user
    costs 128 bytes of RSS instead of 4 KiB).
    """
    return bytes(memoryview(orjson.dumps(value)))


def loads(data: bytes | str) -> Any:
    """
    Parse UTF-8 JSON.

    @raise JSONDecodeError: if C{data} is not valid JSON.
    """
    return orjson.loads(data)
