# -*- test-case-name: tests.test_rest_admin -*-
"""
Who is an admin (ADMIN.md): the shared C{--admin-token}, or in C{--auth jwt}
mode a token whose claims hold C{role: "admin"} (or C{roles} containing
C{admin}); failures are rate limited per client address, loopback
included. Shared by the admin HTTP API, C{/api/publish} and the Socket.IO
Admin UI namespace.
"""

from __future__ import annotations

import hmac

from twisted.internet.interfaces import IReactorTime

from ..auth import AuthenticationError, IAuthenticator
from ..im.admin import Actor
from ..limits import FailureLimiter

#: Failed attempts per address per minute, and at once, before 429.
FAILURES_PER_MINUTE = 10
FAILURE_BURST = 10

#: The role an admin JWT claims.
ADMIN_ROLE = "admin"


class AdminRefused(Exception):
    """
    Credentials refused.

    @ivar status: the HTTP status: 401 (wrong or missing), 403 (a valid
        token that is not an admin's), 429 (too many failures).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class AdminAuthenticator:
    """
    Check admin credentials.
    """

    def __init__(
        self,
        clock: IReactorTime,
        token: str | None = None,
        jwt: IAuthenticator | None = None,
        limiter: FailureLimiter | None = None,
    ) -> None:
        """
        @param token: the shared admin token, if configured.
        @param jwt: the JWT authenticator, in C{--auth jwt} mode.
        """
        self.clock = clock
        self._token = token.encode("utf-8") if token else None
        self.jwt = jwt
        self.limiter = limiter if limiter is not None else FailureLimiter(FAILURES_PER_MINUTE, FAILURE_BURST)

    @property
    def configured(self) -> bool:
        """
        Whether any admin credential can work (else the admin API is 404).
        """
        return self._token is not None or self.jwt is not None

    def check(self, token: str | None, address: str) -> Actor:
        """
        The admin presenting C{token} from C{address}.

        @raise AdminRefused: 429 while C{address} has failed too often, 401
            for a missing or wrong token, 403 for a valid JWT without the
            admin role.
        """
        now = self.clock.seconds()
        if not self.limiter.allowed(address, now):
            raise AdminRefused(429, "too many failed attempts; try again in a minute")
        if token:
            if self._token is not None and hmac.compare_digest(token.encode("utf-8"), self._token):
                return Actor("token", address)
            if self.jwt is not None:
                try:
                    claims = self.jwt.verify(token)
                except AuthenticationError:
                    pass
                else:
                    if ADMIN_ROLE in claims.roles:
                        return Actor(claims.subject, address)
                    raise AdminRefused(403, "this token does not hold the admin role")
        self.limiter.failed(address, now)
        raise AdminRefused(401, "admin credentials required" if not token else "wrong admin credentials")


def bearerToken(header: bytes | None) -> str | None:
    """
    The token of an C{Authorization: Bearer <token>} header.
    """
    if not header:
        return None
    scheme, _, value = header.decode("latin-1").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None
