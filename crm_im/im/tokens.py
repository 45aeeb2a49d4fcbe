# -*- test-case-name: tests.test_auth -*-
"""
Tokens during a connection: which socket proved which identity, until when.

L{TokenGate} sits between the IM application and an L{IAuthenticator}. It
checks the token of a Socket.IO CONNECT (C{auth.token}), of C{user:login}
and of C{auth:refresh}; remembers each socket's verified L{Claims}; charges
failed checks to the client's address (L{FailureLimiter}); and keeps one
expiry deadline per socket on a L{DeadlineWheel} (one sweep for all
sockets, never a timer each). When a socket's token expires without a
refresh, C{expired(sid)} is called and the application disconnects it.

In open mode (C{authenticator.required} false) the gate checks nothing and
keeps nothing.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable

from twisted.internet.interfaces import IReactorTime

from ..auth import AuthenticationError, Claims, IAuthenticator, tokenFromAuth
from ..timers import DeadlineWheel
from ..limits import FailureLimiter
from .errors import RATE_LIMITED, UNAUTHORIZED, IMError

_TOO_MANY = "too many failed authentication attempts from this address; try again later"


class TokenGate:
    """
    Token checks and expiry for the sockets of one application.

    @ivar claims: the verified claims of each socket, by sid.
    """

    def __init__(
        self,
        authenticator: IAuthenticator,
        clock: IReactorTime,
        expired: Callable[[str], object],
        failures: FailureLimiter,
        onFailure: Callable[[], object] = lambda: None,
    ) -> None:
        """
        @param expired: called with the sid of a socket whose token expired.
        @param failures: the failed attempts per address.
        @param onFailure: called once per refused token (for metrics).
        """
        self.authenticator = authenticator
        self.clock = clock
        self.failures = failures
        self.claims: dict[str, Claims] = {}
        self.expired = expired
        self._onFailure = onFailure
        self._wheel = DeadlineWheel(clock, self._deadlinePassed)

    @property
    def required(self) -> bool:
        """
        Whether clients must authenticate.
        """
        return bool(self.authenticator.required)

    def start(self) -> None:
        """
        Start sweeping expiry deadlines.
        """
        self._wheel.start()

    def stop(self) -> None:
        """
        Stop sweeping.
        """
        self._wheel.stop()

    def pendingExpiries(self) -> int:
        """
        How many sockets have an expiry deadline.
        """
        return len(self._wheel)

    # ---- checks

    def _verify(self, token: str, address: str) -> Claims:
        now = self.clock.seconds()
        if not self.failures.allowed(address, now):
            self._onFailure()
            raise IMError(RATE_LIMITED, _TOO_MANY)
        try:
            return self.authenticator.verify(token)
        except AuthenticationError as error:
            self.failures.failed(address, now)
            self._onFailure()
            raise IMError(UNAUTHORIZED, error.message)

    def _refused(self, address: str) -> IMError:
        self.failures.failed(address, self.clock.seconds())
        self._onFailure()
        return IMError(UNAUTHORIZED, "the token is for another user")

    def _keep(self, sid: str, claims: Claims) -> None:
        self.claims[sid] = claims
        if claims.expiresAt is None:
            self._wheel.cancel(sid)
        else:
            self._wheel.set(sid, max(0.0, claims.expiresAt - self.clock.seconds()))

    def connected(self, sid: str, auth: Any, address: str) -> None:
        """
        Check the token of a CONNECT's auth object, if it carries one (a
        client may also bring its token with C{user:login}).

        @raise IMError: C{UNAUTHORIZED} or C{RATE_LIMITED} if the token is
            refused (the gateway answers the CONNECT with CONNECT_ERROR).
        """
        if not self.required:
            return
        try:
            token = tokenFromAuth(auth)
            if token is None:
                return
            claims = self._verify(token, address)
        except AuthenticationError as error:
            raise IMError(UNAUTHORIZED, error.message)
        self._keep(sid, claims)

    def login(self, sid: str, userId: str, token: str | None, address: str) -> None:
        """
        Check that socket C{sid} may log in as C{userId}: with C{token} if
        given, else with the token of its CONNECT.

        @raise IMError: C{UNAUTHORIZED} (or C{RATE_LIMITED}) if not.
        """
        if not self.required:
            return
        if token is not None:
            claims = self._verify(token, address)
        else:
            found = self.claims.get(sid)
            if found is None:
                raise IMError(UNAUTHORIZED, "a token is required: connect with auth {token} or log in with token")
            claims = found
        if claims.subject != userId:
            raise self._refused(address)
        self._keep(sid, claims)

    def refresh(self, sid: str, token: Any, userId: str | None, address: str) -> dict[str, Any]:
        """
        C{auth:refresh}: replace the socket's token with a fresh one for the
        same user.

        @param userId: the logged-in user, if any; else the subject of the
            socket's current token, if any, must match.
        @return: the ack payload C{{userId, expiresAt}} (ms, or C{None}).
        """
        if not self.required:
            return {"userId": userId, "expiresAt": None}
        if not isinstance(token, str) or not token:
            raise IMError(UNAUTHORIZED, "auth:refresh expects {token}")
        claims = self._verify(token, address)
        current = self.claims.get(sid)
        expected = userId if userId is not None else (current.subject if current is not None else None)
        if expected is not None and claims.subject != expected:
            raise self._refused(address)
        self._keep(sid, claims)
        expiresAt = None if claims.expiresAt is None else int(claims.expiresAt * 1000)
        return {"userId": claims.subject, "expiresAt": expiresAt}

    def forget(self, sid: str) -> None:
        """
        Drop what is known of a socket that went.
        """
        if self.claims.pop(sid, None) is not None:
            self._wheel.cancel(sid)

    def _deadlinePassed(self, sid: Hashable) -> None:
        assert isinstance(sid, str)
        claims = self.claims.get(sid)
        if claims is None or claims.expiresAt is None:
            return
        if claims.expiresAt > self.clock.seconds():
            # Refreshed in the meantime (set again), or swept early.
            self._wheel.set(sid, claims.expiresAt - self.clock.seconds())
            return
        del self.claims[sid]
        self.expired(sid)
