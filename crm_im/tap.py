# -*- test-case-name: tests.test_tap -*-
"""
C{twistd crm_im}: the command-line options and L{makeService}, shared by the
twistd plugin and C{crm_im.tac}.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from .config import Config

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


def _positive(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise usage.UsageError(f"--{name} must be an integer, not {value!r}")
    if number <= 0:
        raise usage.UsageError(f"--{name} must be positive")
    return number


class Options(usage.Options):
    """
    Options of C{twistd crm_im}.
    """

    synopsis = "[options]"
    longdesc = (
        "Serve the CRM IM Socket.IO server (Engine.IO v4 / Socket.IO v5, "
        "long-polling and WebSocket) with a durable SQLite message store."
    )
    optFlags = [
        ["quiet", "q", "Do not log a line per event (also: QUIET=1 in the environment)."],
    ]
    optParameters = [
        ["port", "p", None, "TCP port to listen on (default: $PORT or 8080).", str],
        ["data-dir", "d", "crm_im-data", "Directory for the SQLite database and the file store."],
        ["ping-interval", None, 25000, "Milliseconds between server PINGs."],
        ["ping-timeout", None, 20000, "Milliseconds to wait for a PONG."],
        ["max-payload", None, 1_000_000, "Largest packet or HTTP body, in bytes."],
        ["connect-timeout", None, 45000, "Milliseconds a client may take to connect to a namespace."],
        ["max-message-length", None, 65536, "Longest text message content, in characters."],
        ["presence-grace", None, 0, "Seconds a user stays online after the last device disconnects."],
        ["sqlite-synchronous", None, "FULL", "SQLite synchronous pragma: FULL (survives power loss) or NORMAL."],
        ["shutdown-grace", None, 2, "Seconds to wait on stop for clients to collect server:shutdown."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["cors-origin"] = []

    def opt_listen(self, description: str) -> None:
        """
        Listen on this Twisted endpoint (repeatable), e.g. tcp:8080,
        ssl:8443:privateKey=key.pem:certKey=cert.pem, systemd:domain=INET:index=0.
        Overrides --port.
        """
        self["listen"].append(description)

    def opt_cors_origin(self, origin: str) -> None:
        """
        Allow this browser origin (repeatable); without any, every origin
        is allowed (*), without credentials.
        """
        self["cors-origin"].append(origin)

    def postOptions(self) -> None:
        port = self["port"] if self["port"] is not None else os.environ.get("PORT")
        listen = list(self["listen"])
        if not listen:
            number = _positive("port", port) if port is not None else 8080
            if number > 65535:
                raise usage.UsageError("--port must be at most 65535")
            listen = [f"tcp:{number}"]
        try:
            grace = float(self["presence-grace"])
            shutdownGrace = float(self["shutdown-grace"])
        except ValueError:
            raise usage.UsageError("--presence-grace and --shutdown-grace must be numbers")
        if grace < 0 or shutdownGrace < 0:
            raise usage.UsageError("--presence-grace and --shutdown-grace must not be negative")
        synchronous = str(self["sqlite-synchronous"]).upper()
        if synchronous not in _SYNCHRONOUS:
            raise usage.UsageError(f"--sqlite-synchronous must be one of {', '.join(_SYNCHRONOUS)}")
        quiet = self["quiet"] or os.environ.get("QUIET") == "1"
        self.config = Config(
            listen=tuple(listen),
            dataDir=self["data-dir"],
            corsOrigins=tuple(self["cors-origin"]) or None,
            pingInterval=_positive("ping-interval", self["ping-interval"]),
            pingTimeout=_positive("ping-timeout", self["ping-timeout"]),
            maxPayload=_positive("max-payload", self["max-payload"]),
            connectTimeout=_positive("connect-timeout", self["connect-timeout"]),
            maxMessageLength=_positive("max-message-length", self["max-message-length"]),
            presenceGrace=grace,
            sqliteSynchronous=synchronous,
            logEvents=not quiet,
            shutdownGrace=shutdownGrace,
        )


def _exitZeroAfterShutdown(reactor: Any) -> None:
    """
    Make a clean stop exit 0 (contract section 10).

    Since Twisted 20.3, twistd kills itself again with the signal that
    stopped the reactor (C{reactor._exitSignal}), so a server stopped by
    SIGTERM after a clean shutdown would end "killed by SIGTERM".  The
    shutdown triggers have run (the service stopped) when this clears it.
    """

    def clear() -> None:
        if getattr(reactor, "_exitSignal", None) is not None:
            setattr(reactor, "_exitSignal", None)

    reactor.addSystemEventTrigger("after", "shutdown", clear)


def makeService(options: Options) -> IService:
    """
    Build the crm_im service from parsed options.
    """
    from twisted.internet import reactor

    from .server import CRMIMService

    _exitZeroAfterShutdown(reactor)
    return CRMIMService(options.config, reactor)
