# -*- test-case-name: tests.test_im_conversations -*-
"""
Where a conversation's membership is decided: who belongs to a group and
with which role, and who may send, read, manage and recall, for every
conversation kind (1:1, group, room). Pure functions of the state they are
given; the handlers load the state and act on the verdict.

The group rules, as a table (L{PERMISSIONS}): every member may send, read
and see the group; owners and admins may rename it, add and remove members
and recall anyone's message at any time; only the owner may change roles
and dissolve it. An admin removes only plain members; nobody removes the
owner. A user who was never a member, or a group that does not exist or
was dissolved, is C{NOT_FOUND} (a private group's existence is never
revealed); a former member is C{FORBIDDEN}, except for C{info}.
"""

from __future__ import annotations

from typing import Iterable

from ..storage.interface import ADMIN, MEMBER, OWNER, GroupState, MemberRecord, StoredMessage
from .errors import FORBIDDEN, NOT_FOUND, IMError

SEND = "send"
READ = "read"
INFO = "info"
LEAVE = "leave"
UPDATE = "update"
ADD_MEMBERS = "add_members"
REMOVE_MEMBERS = "remove_members"
SET_ROLE = "set_role"
DISSOLVE = "dissolve"
RECALL_ANY = "recall_any"

#: action -> the roles that may take it
PERMISSIONS: dict[str, frozenset[str]] = {
    SEND: frozenset({OWNER, ADMIN, MEMBER}),
    READ: frozenset({OWNER, ADMIN, MEMBER}),
    INFO: frozenset({OWNER, ADMIN, MEMBER}),
    LEAVE: frozenset({OWNER, ADMIN, MEMBER}),
    UPDATE: frozenset({OWNER, ADMIN}),
    ADD_MEMBERS: frozenset({OWNER, ADMIN}),
    REMOVE_MEMBERS: frozenset({OWNER, ADMIN}),
    SET_ROLE: frozenset({OWNER}),
    DISSOLVE: frozenset({OWNER}),
    RECALL_ANY: frozenset({OWNER, ADMIN}),
}

#: actions for which a former member learns nothing either
_FORMER_SEES_NOTHING = frozenset({INFO})


def groupNotFound() -> IMError:
    """
    The refusal for a group the caller may not know of.
    """
    return IMError(NOT_FOUND, "no such group")


def authorize(state: GroupState | None, userId: str, action: str) -> MemberRecord:
    """
    May C{userId} take C{action} in the group?

    @return: the caller's membership.
    @raise IMError: C{NOT_FOUND} or C{FORBIDDEN}.
    """
    if state is None:
        raise groupNotFound()
    member = state.members.get(userId)
    if member is None:
        if userId in state.former and action not in _FORMER_SEES_NOTHING:
            raise IMError(FORBIDDEN, "you are not a member of this group any more")
        raise groupNotFound()
    if member.role not in PERMISSIONS[action]:
        raise IMError(FORBIDDEN, f"a group {member.role} may not {action.replace('_', ' ')}")
    return member


def mayRemove(actorRole: str, targetRole: str) -> bool:
    """
    May a member with C{actorRole} remove one with C{targetRole}? Nobody
    removes the owner; an admin removes only plain members.
    """
    if targetRole == OWNER:
        return False
    if actorRole == OWNER:
        return True
    return actorRole == ADMIN and targetRole == MEMBER


def successor(members: Iterable[MemberRecord], leaving: str) -> str | None:
    """
    Who owns a group after its owner C{leaving} goes: the longest-serving
    admin, else the longest-serving member, else nobody.
    """
    others = sorted((m for m in members if m.userId != leaving), key=lambda m: (m.joinedAt, m.order))
    for member in others:
        if member.role == ADMIN:
            return member.userId
    return others[0].userId if others else None


def mayRecall(
    message: StoredMessage, userId: str, role: str | None, nowMs: int, windowSeconds: float
) -> bool:
    """
    May C{userId} (with C{role} in the message's group, if it is a group
    message) recall C{message} now? Its sender within the window; a group's
    owner and admins at any time. Nobody recalls a system message: it is
    the record of who joined, left or renamed what.
    """
    if message.type == "system":
        return False
    if role is not None and role in PERMISSIONS[RECALL_ANY]:
        return True
    return message.fromId == userId and nowMs - message.serverTimestamp <= windowSeconds * 1000
