# -*- test-case-name: tests.integration.test_ops -*-
"""
JSON log output for journald, ELK and the like: one JSON object per line.

Use it with twistd's own C{--logger} option, which takes a factory of log
observers::

    twistd -n --logger crm_im.logging.logger crm_im ...

Each line has C{time} (ISO-8601 UTC with ms), C{level}, C{namespace},
C{message} (the formatted text) and the event's own keyword fields that are
plain JSON values (C{sid}, C{userId}, C{remote}, ...); a failure adds
C{traceback}. Twisted's private keys (C{log_*}) are left out.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, formatEvent

from ._json import dumps
from .web.status import isoTimestamp

_PLAIN = (str, int, float, bool, type(None))


def eventAsJSON(event: LogEvent) -> str:
    """
    One log event as one line of JSON (with the newline).
    """
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": isoTimestamp(event.get("log_time") or 0.0),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", ""),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in record or key in ("format", "message", "time", "system"):
            continue
        if isinstance(value, _PLAIN):
            record[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:
            record["traceback"] = repr(failure)
    return dumps(record).decode("utf-8") + "\n"


def jsonLineObserver(stream: IO[str]) -> ILogObserver:
    """
    An observer writing each event to C{stream} as a line of JSON.
    """
    return FileLogObserver(stream, eventAsJSON)


def logger() -> ILogObserver:
    """
    The observer for C{twistd --logger crm_im.logging.logger}: JSON lines
    on standard output (journald collects it under systemd).
    """
    return jsonLineObserver(sys.stdout)
