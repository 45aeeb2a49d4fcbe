# -*- test-case-name: tests.test_push -*-
"""
The push rules as pure functions: who of a group is notified
(L{groupRecipients}), what the gateway is told (L{notificationBody}, the
Matrix Push Gateway API's C{notification}), how a gateway answer is taken
(L{classify}) and when a failed notification is tried again
(L{retryDelay}).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import AbstractSet, Any, Callable, Iterable

import attrs

from ..storage.interface import StoredMessage
from ..storage.outbox import PushPlan

#: C{--push-content}: no message text (the default) or its first characters.
CONTENT_NONE = "none"
CONTENT_PREVIEW = "preview"
CONTENT_MODES = (CONTENT_NONE, CONTENT_PREVIEW)
#: Characters of a text a preview carries.
PREVIEW_LENGTH = 100
#: The notification C{type} of a message.
MESSAGE_TYPE = "crm_im.message"

#: Seconds before the first retry; each retry waits twice as long as the
#: one before, up to L{MAX_RETRY_DELAY}.
FIRST_RETRY_DELAY = 1.0
MAX_RETRY_DELAY = 600.0
#: Each delay is shortened by up to this fraction, at random, so that
#: notifications failed together are not retried together.
RETRY_JITTER = 0.25
#: Seconds after its message a notification is given up.
GIVE_UP_AFTER = 24 * 3600.0

SENT = "sent"
RETRY = "retry"
DROP = "drop"


@attrs.frozen
class PushSettings:
    """
    @ivar gateway: the Push Gateway API URL (C{.../_matrix/push/v1/notify}).
    @ivar secret: the HMAC key of C{X-CRM-IM-Signature}, if any (kept out
        of C{repr}).
    @ivar coalesce: seconds during which a user's notifications merge.
    @ivar content: L{CONTENT_NONE} or L{CONTENT_PREVIEW}.
    @ivar concurrency: gateway requests in flight at most.
    @ivar timeout: seconds a gateway request may take.
    @ivar maxOutbox: outbox rows kept at most (the oldest are dropped).
    @ivar maxPushkeys: pushkeys per user.
    @ivar grace: the presence grace period, seconds (a user is notified
        only once it is over).
    @ivar giveUpAfter: seconds after its message a notification is given
        up.
    """

    gateway: str
    secret: bytes | None = attrs.field(default=None, repr=False)
    coalesce: float = 1.0
    content: str = CONTENT_NONE
    concurrency: int = 16
    timeout: float = 10.0
    maxOutbox: int = 100_000
    maxPushkeys: int = 10
    grace: float = 0.0
    giveUpAfter: float = GIVE_UP_AFTER


def groupRecipients(
    members: Iterable[str],
    groupId: str,
    senderId: str,
    pushUsers: AbstractSet[str],
    connected: Callable[[str], bool],
    mutes: AbstractSet[tuple[str, str]],
    mentions: AbstractSet[str],
) -> tuple[str, ...]:
    """
    The members of a group to notify of a message: not its sender, with a
    pushkey, with no connected device, and, if they muted the group, only
    when mentioned.
    """
    return tuple(
        userId
        for userId in members
        if userId != senderId
        and userId in pushUsers
        and not connected(userId)
        and ((userId, groupId) not in mutes or userId in mentions)
    )


def retryDelay(attempt: int, random: float) -> float:
    """
    Seconds to wait before retry number C{attempt} (1, 2, ...):
    L{FIRST_RETRY_DELAY} doubling up to L{MAX_RETRY_DELAY}, shortened by up
    to L{RETRY_JITTER} of itself.

    @param random: a number in M{[0, 1)}.
    """
    base = min(FIRST_RETRY_DELAY * 2.0 ** max(attempt - 1, 0), MAX_RETRY_DELAY)
    return base * (1.0 - RETRY_JITTER * random)


def classify(code: int) -> str:
    """
    What to do after a gateway answered with HTTP C{code}: L{SENT},
    L{RETRY} (5xx and 429) or L{DROP} (any other code).
    """
    if 200 <= code < 300:
        return SENT
    if code >= 500 or code == 429:
        return RETRY
    return DROP


def preview(message: StoredMessage) -> dict[str, Any] | None:
    """
    The C{content} of a preview: the first L{PREVIEW_LENGTH} characters of
    a text, or a file's name; nothing for any other kind (system messages,
    and an encrypted kind, which never carries content).
    """
    if message.type == "text":
        return {"msgtype": "text", "body": message.content[:PREVIEW_LENGTH]}
    if message.type == "file":
        return {"msgtype": "file", "body": (message.fileName or "")[:PREVIEW_LENGTH]}
    return None


def notificationType(message: StoredMessage) -> str:
    """
    The notification C{type}: L{MESSAGE_TYPE}, or the event's name for an
    event a back end published with C{POST /api/publish} (kept as a
    C{system} message of action C{publish}).
    """
    system = message.system
    if message.type == "system" and system is not None and system.get("action") == "publish":
        event = system.get("event")
        if isinstance(event, str) and event:
            return event
    return MESSAGE_TYPE


def notificationBody(plan: PushPlan, content: str) -> dict[str, Any]:
    """
    The Push Gateway API request body notifying C{plan.userId} of the
    latest message of C{plan} (the count covers them all).

    @param content: L{CONTENT_NONE} or L{CONTENT_PREVIEW}.
    """
    message = plan.messages[-1]
    notification: dict[str, Any] = {
        "event_id": message.id,
        "room_id": message.groupId if message.groupId is not None else message.fromId,
        "type": notificationType(message),
        "sender": message.fromId,
        "sender_display_name": message.fromName,
        "prio": "high",
        "counts": {"unread": plan.unread},
        "devices": [
            {
                "app_id": key.appId,
                "pushkey": key.pushkey,
                "pushkey_ts": key.createdAt // 1000,
                "data": key.data if key.data is not None else {},
            }
            for key in plan.pushkeys
        ],
    }
    if message.groupId is not None and message.groupId in plan.groupNames:
        notification["room_name"] = plan.groupNames[message.groupId]
    if content == CONTENT_PREVIEW:
        shown = preview(message)
        if shown is not None:
            notification["content"] = shown
    return {"notification": notification}


def signature(secret: bytes, body: bytes) -> bytes:
    """
    The C{X-CRM-IM-Signature} header value for C{body}.
    """
    return b"sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest().encode("ascii")
