# -*- test-case-name: tests.test_push -*-
"""
The push events (PUSH.md) as transport-free handlers: C{push:register},
C{push:unregister} and C{group:mute}. Registrations and mutes are durable
(L{crm_im.storage.outbox.IPushStore}) and mirrored in the
L{PushDirectory} the message path reads.
"""

from __future__ import annotations

from typing import Any, Iterable

import orjson
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from ..notify.directory import PushDirectory
from ..safelog import Logger
from ..storage.outbox import IPushStore, Pushkey
from . import conversations as rules
from . import validation
from .errors import INTERNAL, INVALID_PAYLOAD, IMError
from .groups import GroupDirectory
from .interfaces import Caller

#: Longest pushkey (Web Push endpoints and APNs tokens fit easily).
MAX_PUSHKEY = 512
MAX_APP_ID = 64
MAX_PLATFORM = 32
MAX_LANG = 16
#: Largest C{data} object, encoded.
MAX_DATA = 2048


def registration(data: Any) -> tuple[str, str, str | None, str | None, dict[str, Any] | None]:
    """
    Validate C{push:register}: C{(pushkey, appId, platform, lang, data)}.
    """
    data = validation.payloadObject(data, "push:register")
    extra = data.get("data")
    if extra is not None:
        if not isinstance(extra, dict):
            raise IMError(INVALID_PAYLOAD, "data must be an object")
        if len(orjson.dumps(extra)) > MAX_DATA:
            raise IMError(INVALID_PAYLOAD, f"data must be at most {MAX_DATA} bytes of JSON")
    return (
        validation.text(data.get("pushkey"), "pushkey", MAX_PUSHKEY, 1),
        validation.text(data.get("appId"), "appId", MAX_APP_ID, 1),
        validation.optionalText(data.get("platform"), "platform", MAX_PLATFORM),
        validation.optionalText(data.get("lang"), "lang", MAX_LANG),
        extra,
    )


class PushHandlers:
    """
    C{push:register}, C{push:unregister} and C{group:mute}.
    """

    log = Logger()

    def __init__(
        self,
        store: object,
        directory: PushDirectory,
        groups: GroupDirectory,
        clock: IReactorTime,
        maxPushkeys: int = 10,
    ) -> None:
        """
        @param store: provides L{IPushStore} (else every event is refused).
        """
        self.store = store if IPushStore.providedBy(store) else None
        self.directory = directory
        self.groups = groups
        self.clock = clock
        self.maxPushkeys = maxPushkeys

    def _store(self) -> Any:
        if self.store is None:
            raise IMError(INTERNAL, "push notifications need a durable store")
        return self.store

    async def register(self, caller: Caller, data: Any) -> dict[str, Any]:
        """
        C{push:register}: keep a pushkey for the caller (taking it from
        another user: a phone changed hands); the user's oldest pushkeys
        past the limit are dropped.
        """
        pushkey, appId, platform, lang, extra = registration(data)
        key = Pushkey(pushkey, caller.userId, appId, platform, lang, extra, int(self.clock.seconds() * 1000))
        outcome = await self._store().registerPushkey(key, self.maxPushkeys)
        self.directory.keysLeft(caller.userId, 1)
        if outcome.movedFrom is not None:
            self.directory.keysLeft(outcome.movedFrom, outcome.movedFromRemaining)
        self.log.info("[推送] {userId} registered a pushkey for {appId}", userId=caller.userId, appId=appId)
        return {"pushkey": pushkey}

    async def unregister(self, caller: Caller, data: Any) -> dict[str, Any]:
        """
        C{push:unregister}: forget one of the caller's pushkeys.
        """
        payload = validation.payloadObject(data, "push:unregister")
        pushkey = validation.text(payload.get("pushkey"), "pushkey", MAX_PUSHKEY, 1)
        remaining = await self._store().unregisterPushkey(caller.userId, pushkey)
        self.directory.keysLeft(caller.userId, remaining)
        return {"pushkey": pushkey}

    async def mute(self, caller: Caller, data: Any) -> dict[str, Any]:
        """
        C{group:mute {groupId, muted}}: a muted group notifies the caller
        only when a message mentions them.
        """
        payload = validation.payloadObject(data, "group:mute")
        groupId = validation.clientId(payload.get("groupId"), "groupId")
        muted = payload.get("muted", True)
        if not isinstance(muted, bool):
            raise IMError(INVALID_PAYLOAD, "muted must be true or false")
        rules.authorize(await self.groups.get(groupId), caller.userId, rules.READ)
        await self._store().setMute(caller.userId, groupId, muted)
        self.directory.setMuted(caller.userId, groupId, muted)
        return {"groupId": groupId, "muted": muted}

    def unmuteGone(self, groupId: str, userIds: Iterable[str]) -> None:
        """
        C{userIds} are no longer members of C{groupId}: their mutes of it
        go (else a create, mute, dissolve loop would grow them forever).
        One who joins again starts unmuted.
        """
        gone = list(userIds)
        muted = [userId for userId in gone if (userId, groupId) in self.directory.mutes]
        for userId in muted:
            self.directory.setMuted(userId, groupId, False)
        if self.store is None:
            return
        # With push off the directory was not loaded at start: mutes an
        # earlier run stored are not in it, so every gone member's goes.
        forget = muted if self.directory.loaded else gone
        if forget:
            self.store.forgetMutes(groupId, forget).addErrback(self._unmuteFailed, groupId, len(forget))

    def _unmuteFailed(self, failure: Failure, groupId: str, count: int) -> None:
        self.log.failure("forgetting {count} mutes of {groupId}", failure, groupId=groupId, count=count)
