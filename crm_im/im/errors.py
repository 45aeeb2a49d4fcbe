"""
The refusals of the contract (section 3): codes and the exception that
carries one from a validator or handler to the socket that caused it.
"""

from __future__ import annotations

from typing import Any

NOT_LOGGED_IN = "NOT_LOGGED_IN"
INVALID_PAYLOAD = "INVALID_PAYLOAD"
UNAUTHORIZED = "UNAUTHORIZED"
FORBIDDEN = "FORBIDDEN"
TOO_LARGE = "TOO_LARGE"
RATE_LIMITED = "RATE_LIMITED"
ALREADY_LOGGED_IN = "ALREADY_LOGGED_IN"
INTERNAL = "INTERNAL"
#: GROUPS.md: an unknown group, room, message or file, or one the caller may
#: not see (a private thing's existence is never revealed).
NOT_FOUND = "NOT_FOUND"
#: The admin API only: a request that matches more than one thing where it
#: must name one (a message id that several senders used; HTTP 409).
CONFLICT = "CONFLICT"


class IMError(Exception):
    """
    A refusal: sent as event C{error} C{{message, code, event, id?}} and, if
    the client asked for an ack, as C{{"error": {message, code}}}.
    """

    def __init__(self, code: str, message: str, id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id

    def event(self, event: str) -> dict[str, Any]:
        """
        The payload of the C{error} event.
        """
        payload: dict[str, Any] = {"message": self.message, "code": self.code, "event": event}
        if self.id is not None:
            payload["id"] = self.id
        return payload

    def ack(self) -> dict[str, Any]:
        """
        The acknowledgement payload.
        """
        return {"error": {"message": self.message, "code": self.code}}
