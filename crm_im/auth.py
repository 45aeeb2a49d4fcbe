# -*- test-case-name: tests.test_auth -*-
"""
Who a client is: the authentication modes of contract section 2.

An L{IAuthenticator} turns a bearer token into L{Claims} or refuses it with
L{AuthenticationError}. L{OpenAuthenticator} is the original server's
trust-whoever-connects mode; L{JWTAuthenticator} verifies JSON Web Tokens
with PyJWT (HS256 with a shared secret, RS256/ES256 with a public key).

Time comes from the injected clock, not from PyJWT's own C{datetime.now}:
PyJWT is asked to check signature, issuer and audience, and this module
checks C{exp} and C{nbf} against C{clock.seconds()}, so expiry is testable
with a L{task.Clock} and agrees with the expiry deadlines swept during a
connection (L{crm_im.im.tokens}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import jwt
from twisted.internet.interfaces import IReactorTime
from zope.interface import Attribute, Interface, implementer

if TYPE_CHECKING:
    from .config import Config

#: The modes C{--auth} accepts.
OPEN = "open"
JWT = "jwt"
MODES = (OPEN, JWT)

#: Algorithms per kind of key; C{none} and mixing kinds are never allowed.
SECRET_ALGORITHMS = ("HS256",)
PUBLIC_KEY_ALGORITHMS = ("RS256", "ES256")

#: The longest token looked at (the same bound as C{user:login}'s C{token}).
MAX_TOKEN = 8192


class AuthenticationError(Exception):
    """
    A token was refused; C{message} says why in words a client developer
    can act on (never echoing the token).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@attrs.frozen
class Claims:
    """
    What a verified token says.

    @ivar subject: the user id (C{sub}), as a string.
    @ivar expiresAt: C{exp} in seconds since the epoch, or C{None} if the
        token never expires.
    @ivar roles: its C{role} and C{roles} claims (the admin API admits
        C{admin}).
    """

    subject: str
    expiresAt: float | None
    roles: frozenset[str] = frozenset()


class IAuthenticator(Interface):
    """
    Verifies bearer tokens.
    """

    mode = Attribute("The mode's name: C{'open'} or C{'jwt'}.")
    required = Attribute("Whether a client must present a token to log in.")

    def verify(token: str) -> Claims:
        """
        Verify C{token}.

        @raise AuthenticationError: if it is missing, malformed, forged,
            expired or meant for someone else.
        """


@implementer(IAuthenticator)
class OpenAuthenticator:
    """
    The original's mode: no token needed; a token that is sent is ignored.
    """

    mode = OPEN
    required = False

    def verify(self, token: str) -> Claims:
        """
        Open mode verifies nothing.

        @raise AuthenticationError: always; callers check C{required} first.
        """
        raise AuthenticationError("this server does not verify tokens (auth mode 'open')")


@implementer(IAuthenticator)
class JWTAuthenticator:
    """
    Verifies JSON Web Tokens.

    @ivar key: the HS256 secret or the public key.
    @ivar algorithms: the algorithms accepted for that key.
    @ivar issuer: the required C{iss}, if any.
    @ivar audience: the required C{aud}, if any.
    @ivar leeway: seconds of clock skew tolerated on C{exp} and C{nbf}.
    @ivar requireExp: whether a token without C{exp} is refused (else it
        never expires).
    """

    mode = JWT
    required = True

    def __init__(
        self,
        clock: IReactorTime,
        key: Any,
        algorithms: tuple[str, ...],
        issuer: str | None = None,
        audience: str | None = None,
        leeway: float = 0.0,
        requireExp: bool = False,
    ) -> None:
        if not algorithms:
            raise ValueError("at least one algorithm is needed")
        self.clock = clock
        self.key = key
        self.algorithms = algorithms
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.requireExp = requireExp

    @classmethod
    def withSecret(cls, clock: IReactorTime, secret: str, **kwargs: Any) -> "JWTAuthenticator":
        """
        HS256 with a shared secret.
        """
        if not secret:
            raise ValueError("the JWT secret must not be empty")
        return cls(clock, secret, SECRET_ALGORITHMS, **kwargs)

    @classmethod
    def withPublicKey(cls, clock: IReactorTime, pem: bytes, **kwargs: Any) -> "JWTAuthenticator":
        """
        RS256 or ES256 with a PEM public key (or certificate).

        @raise ValueError: if C{pem} is not a usable public key.
        """
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
        from cryptography.x509 import load_pem_x509_certificate

        try:
            if b"BEGIN CERTIFICATE" in pem:
                key: Any = load_pem_x509_certificate(pem).public_key()
            else:
                key = load_pem_public_key(pem)
        except ValueError as error:
            raise ValueError(f"not a PEM public key or certificate: {error}") from None
        # One algorithm per key type: a token cannot pick another family.
        if isinstance(key, rsa.RSAPublicKey):
            algorithms: tuple[str, ...] = ("RS256",)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            algorithms = ("ES256",)
        else:
            raise ValueError(f"unsupported public key type {type(key).__name__}; use RSA (RS256) or EC P-256 (ES256)")
        return cls(clock, key, algorithms, **kwargs)

    def verify(self, token: str) -> Claims:
        """
        Check signature, algorithm, C{iss}, C{aud}, C{sub}, C{exp} and
        C{nbf}.
        """
        if not isinstance(token, str) or not token:
            raise AuthenticationError("a token is required")
        if len(token) > MAX_TOKEN:
            raise AuthenticationError("the token is too long")
        options: dict[str, Any] = {
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_aud": self.audience is not None,
            "verify_iss": self.issuer is not None,
            # Checked below, where an integer id is accepted as a string.
            "verify_sub": False,
            "require": ["sub", "exp"] if self.requireExp else ["sub"],
        }
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.InvalidSignatureError:
            raise AuthenticationError("invalid token: bad signature") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationError("invalid token: wrong audience") from None
        except jwt.InvalidIssuerError:
            raise AuthenticationError("invalid token: wrong issuer") from None
        except jwt.MissingRequiredClaimError as error:
            raise AuthenticationError(f"invalid token: no {error.claim!r} claim") from None
        except jwt.InvalidAlgorithmError:
            raise AuthenticationError("invalid token: algorithm not allowed") from None
        except jwt.InvalidKeyError:
            raise AuthenticationError("invalid token: not signed with the configured key") from None
        except jwt.PyJWTError:
            raise AuthenticationError("invalid token: malformed") from None
        subject = claims.get("sub")
        if isinstance(subject, int) and not isinstance(subject, bool):
            subject = str(subject)
        if not isinstance(subject, str) or not subject or len(subject) > 128:
            raise AuthenticationError("invalid token: 'sub' must be a user id")
        now = self.clock.seconds()
        expiresAt = _numericClaim(claims, "exp")
        if expiresAt is not None and now >= expiresAt + self.leeway:
            raise AuthenticationError("token expired")
        notBefore = _numericClaim(claims, "nbf")
        if notBefore is not None and now + self.leeway < notBefore:
            raise AuthenticationError("token not valid yet")
        return Claims(subject=subject, expiresAt=expiresAt, roles=_roles(claims))


def _roles(claims: dict[str, Any]) -> frozenset[str]:
    """
    The roles a token claims: C{role} (a string) and C{roles} (a list of
    strings); the admin API admits C{admin}.
    """
    roles = set()
    role = claims.get("role")
    if isinstance(role, str):
        roles.add(role)
    listed = claims.get("roles")
    if isinstance(listed, list):
        roles.update(r for r in listed if isinstance(r, str))
    return frozenset(roles)


def _numericClaim(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AuthenticationError(f"invalid token: {name!r} must be a number")
    return float(value)


def tokenFromAuth(auth: Any) -> str | None:
    """
    The token of a Socket.IO CONNECT auth object (C{{token}}), if it has one.

    @raise AuthenticationError: if C{token} is there but not a string.
    """
    if not isinstance(auth, dict):
        return None
    token = auth.get("token")
    if token is None:
        return None
    if not isinstance(token, str):
        raise AuthenticationError("auth.token must be a string")
    return token


def authenticatorFor(config: "Config", clock: IReactorTime) -> IAuthenticator:
    """
    The authenticator C{config} asks for.

    @raise ValueError: if JWT mode lacks a key, or the key is unusable.
    """
    if config.auth == OPEN:
        return OpenAuthenticator()
    if config.auth != JWT:
        raise ValueError(f"unknown auth mode {config.auth!r}; use one of {', '.join(MODES)}")
    options: dict[str, Any] = dict(
        issuer=config.jwtIssuer, audience=config.jwtAudience, leeway=config.jwtLeeway, requireExp=config.jwtRequireExp
    )
    if config.jwtPublicKey is not None:
        if config.jwtSecret is not None:
            raise ValueError("give either a JWT secret or a public key, not both")
        return JWTAuthenticator.withPublicKey(clock, config.jwtPublicKey, **options)
    if config.jwtSecret is None:
        raise ValueError("JWT mode needs --jwt-secret (or $CRM_IM_JWT_SECRET) or --jwt-public-key")
    return JWTAuthenticator.withSecret(clock, config.jwtSecret, **options)
