# -*- test-case-name: tests.test_safelog -*-
"""
Log lines that a client cannot forge.

The event lines name what clients chose: a login's C{name}, the C{toId} of
a message, a pushkey's C{appId}, an E2E C{deviceId}, and in C{open} mode
user ids. Written as they came, a newline in one starts what looks like a
line of its own in Twisted's text log (only indented by a tab), a carriage
return or an ANSI escape rewrites what a terminal running C{tail -f} or
C{journalctl} shows, and a log shipper splitting on line breaks takes the
rest for a new record (CWE-117). L{Logger} writes every control character
of a string field as its Python escape instead (C{\\n}, C{\\x1b}, ...), for
the text and the JSON logs alike; the IM's loggers are this one.
"""

from __future__ import annotations

import re

from twisted.logger import Logger as _TwistedLogger
from twisted.logger import LogLevel

#: C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(match: re.Match[str]) -> str:
    # (none of these is a quote: repr writes each as its escape)
    return repr(match.group())[1:-1]


def printable(text: str) -> str:
    """
    C{text} with its control characters written as escapes (unchanged,
    the same object, when it has none: the usual case costs one scan).
    """
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(_escaped, text)


def _printableFields(fields: dict[str, object]) -> None:
    # (str.isprintable, in C, passes the usual field at once: this runs for
    # the per-message line too)
    for key, value in fields.items():
        if value.__class__ is str and not value.isprintable() and not key.startswith("log_"):
            fields[key] = printable(value)


class Logger(_TwistedLogger):
    """
    A L{twisted.logger.Logger} whose events carry their string fields
    through L{printable}. Only the fields: the format is the code's own.

    Each level's method emits itself, as Twisted's does through C{emit}:
    an C{emit} override under it would pack the fields into a dict once
    more per line (~1 us of the per-message line).
    """

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        _printableFields(kwargs)
        _TwistedLogger.emit(self, level, format, **kwargs)

    def debug(self, format: str | None = None, **kwargs: object) -> None:
        _printableFields(kwargs)
        _TwistedLogger.emit(self, LogLevel.debug, format, **kwargs)

    def info(self, format: str | None = None, **kwargs: object) -> None:
        _printableFields(kwargs)
        _TwistedLogger.emit(self, LogLevel.info, format, **kwargs)

    def warn(self, format: str | None = None, **kwargs: object) -> None:
        _printableFields(kwargs)
        _TwistedLogger.emit(self, LogLevel.warn, format, **kwargs)

    def error(self, format: str | None = None, **kwargs: object) -> None:
        _printableFields(kwargs)
        _TwistedLogger.emit(self, LogLevel.error, format, **kwargs)

    def critical(self, format: str | None = None, **kwargs: object) -> None:
        _printableFields(kwargs)
        _TwistedLogger.emit(self, LogLevel.critical, format, **kwargs)
