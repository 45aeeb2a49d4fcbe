# -*- test-case-name: tests.test_tap -*-
"""
What an operator sees when the server starts or cannot: the data directory
checked before anything is built, a failure to start said in one line and
turned into exit status 1, addresses written as C{host:port}, and the JWT
key's length judged once, at start.

Used by L{crm_im.tap} (before the service exists) and L{crm_im.server}
(while it starts).
"""

from __future__ import annotations

import errno
import os
import tempfile
import warnings
from typing import Any

from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger(namespace="crm_im.server.CRMIMService")


class DataDirError(Exception):
    """
    The data directory cannot be used; the message says why.
    """


def checkDataDir(path: str) -> str:
    """
    Make sure C{path} is a directory this process can create files in
    (creating it if needed, readable by its owner only), before anything is
    built on it; warn if other users of the machine may read it.

    @return: its absolute path.
    @raise DataDirError: if it is not usable.
    """
    absolute = os.path.abspath(path)
    try:
        # Only its owner may look in: it holds every message and file.
        os.makedirs(absolute, mode=0o700, exist_ok=True)
        if not os.path.isdir(absolute):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        # access() is not enough (read-only file systems, root): try it.
        with tempfile.TemporaryFile(dir=absolute):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        if isinstance(error, FileExistsError) or error.errno == errno.ENOTDIR:
            reason = "it is not a directory"
        raise DataDirError(f"data directory {absolute} is not usable: {reason}") from None
    mode = os.stat(absolute).st_mode & 0o777
    if mode & 0o077:
        # (an operator's directory: said, not changed behind their back)
        log.warn(
            "data directory {path} is open to other users of this machine (mode {mode:o}):"
            " it holds every message and file; chmod 700 it (systemd: StateDirectoryMode=0700)",
            path=absolute,
            mode=mode,
        )
    return absolute


def hostPort(address: Any) -> str:
    """
    An address as an operator writes it: C{host:port}, C{[v6]:port}, or a
    UNIX socket's path (not C{IPv4Address(type='TCP', ...)}).
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    name = getattr(address, "name", None)
    if name is not None:
        return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    return str(address)


def startFailureReason(failure: Failure) -> str | None:
    """
    The one-line reason of an expected start-up failure (a port that is
    taken or forbidden, a file that cannot be opened), or C{None} for a bug
    (whose traceback is worth logging).
    """
    value = failure.value
    if isinstance(value, CannotListenError):
        interface = value.interface or "*"
        where = f"[{interface}]:{value.port}" if ":" in interface else f"{interface}:{value.port}"
        cause = value.socketError
        if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
            return f"cannot listen on {where}: the address is already in use (another server on that port?)"
        if isinstance(cause, OSError) and cause.errno == errno.EACCES:
            return f"cannot listen on {where}: permission denied (a port below 1024 needs privileges)"
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
        return f"cannot listen on {where}: {reason}"
    if isinstance(value, DataDirError):
        return str(value)
    from .crypto.keys import KeyFileError
    from .storage.database import KeysMissingError, SchemaTooNewError, StoreUnavailableError

    if isinstance(value, (KeyFileError, KeysMissingError)):
        # encryption at rest: a key file that cannot be used, or one that
        # lacks a key the database was written with
        return str(value)
    if isinstance(value, (StoreUnavailableError, SchemaTooNewError)):
        # the store's file or server, or a database a newer crm_im upgraded
        return str(value)
    if isinstance(value, OSError):
        where = f": {value.filename}" if value.filename else ""
        return f"{value.strerror or value}{where}"
    return None


def logStartFailure(failure: Failure) -> None:
    """
    Log why the server could not start: one line for what an operator
    fixes, the traceback for anything else.
    """
    reason = startFailureReason(failure)
    if reason is None:
        log.failure("crm_im could not start", failure)
    else:
        log.critical("crm_im could not start: {reason}", reason=reason)


def stopAndExit(reactor: Any, status: int = 1) -> None:
    """
    Stop the reactor (now, or as soon as it runs) and end the process with
    C{status} once the shutdown triggers ran: twistd itself would exit 0,
    and a supervisor would not know the server is not serving.
    """

    def stop() -> None:
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, status)
        reactor.stop()

    if reactor.running:
        stop()
    else:
        reactor.callWhenRunning(stop)


class FailedStart(Service):
    """
    Stands in for the server when it could not even be built (an unusable
    data directory): starting it logs why and ends the process with
    status 1, through the log the operator configured.
    """

    def __init__(self, reactor: Any, failure: Failure) -> None:
        self.reactor = reactor
        self.failure = failure

    def startService(self) -> None:
        super().startService()
        logStartFailure(self.failure)
        stopAndExit(self.reactor)


def jwtKeyProblems(authenticator: Any) -> list[str]:
    """
    What PyJWT would warn about the configured key at every token check
    (C{InsecureKeyLengthWarning}: an HMAC secret shorter than the hash, an
    RSA key under 2048 bits), found once at start.
    """
    key = getattr(authenticator, "key", None)
    algorithms = getattr(authenticator, "algorithms", ())
    if key is None or not algorithms:
        return []
    try:
        from jwt.algorithms import get_default_algorithms
    except ImportError:  # pragma: no cover - PyJWT is a dependency
        return []
    known = get_default_algorithms()
    problems = []
    for name in algorithms:
        algorithm = known.get(name)
        check = getattr(algorithm, "check_key_length", None)
        if algorithm is None or check is None:
            continue
        try:
            problem = check(algorithm.prepare_key(key))
        except Exception:
            continue
        if problem:
            problems.append(f"{name}: {problem}")
    return problems


def warnAboutJWTKey(authenticator: Any) -> list[str]:
    """
    Log the key's problems (L{jwtKeyProblems}) as start-up warnings, and
    silence PyJWT's own warning for them: said once here, not at the first
    login with a path into site-packages.
    """
    problems = jwtKeyProblems(authenticator)
    for problem in problems:
        log.warn("JWT key too short for its algorithm: {problem}", problem=problem)
    if problems:
        try:
            from jwt.warnings import InsecureKeyLengthWarning
        except ImportError:  # pragma: no cover - older PyJWT did not warn
            return problems
        warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)
    return problems
