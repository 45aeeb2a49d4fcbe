# -*- test-case-name: tests.test_eio_resource -*-
"""
The HTTP long-polling transport on twisted.web.

A GET is held open (C{NOT_DONE_YET}) until the session has something to
send; a POST carries packets in. All session logic lives in
L{EngineIOSession}; this module only adapts twisted.web requests to it.
"""

from __future__ import annotations

from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from .interfaces import IPollRequest
from .server import BAD_REQUEST, EngineIOError
from .session import EngineIOSession

_TEXT = b"text/plain; charset=UTF-8"


@implementer(IPollRequest)
class PollRequest:
    """
    A held GET, answered once.
    """

    __slots__ = ("request", "finished")

    def __init__(self, request: IRequest) -> None:
        self.request = request
        self.finished = False

    def respond(self, body: bytes) -> None:
        """
        Write C{body} as the answer and finish the request.
        """
        if self.finished:
            return
        self.finished = True
        request = self.request
        request.setHeader(b"content-type", _TEXT)
        request.setHeader(b"content-length", b"%d" % (len(body),))
        request.write(body)
        request.finish()


def refuse(request: IRequest, error: EngineIOError) -> bytes:
    """
    Answer C{request} with an Engine.IO error: its status and JSON body.
    """
    request.setResponseCode(error.status)
    request.setHeader(b"content-type", b"application/json")
    return error.body()


def renderPoll(session: EngineIOSession, request: IRequest) -> bytes | int:
    """
    Serve a GET of a polling session.
    """
    poll = PollRequest(request)

    def gone(reason: Failure) -> None:
        poll.finished = True
        session.pollGone(poll)

    if not session.pollArrived(poll):
        return refuse(request, BAD_REQUEST)
    if not poll.finished:
        request.notifyFinish().addErrback(gone)  # type: ignore[attr-defined]
    return NOT_DONE_YET


def renderPost(session: EngineIOSession, request: IRequest, body: bytes) -> bytes:
    """
    Serve a POST of a polling session.
    """
    if not session.payloadReceived(body):
        return refuse(request, BAD_REQUEST)
    request.setHeader(b"content-type", b"text/html")
    return b"ok"
