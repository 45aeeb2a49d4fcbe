"""
Tests for L{crm_im.im.conversations}: the membership rules of a group as a
table (every action, for every kind of caller), who may remove whom, who
inherits a group, and who may recall a message when.

Pure: the rules are functions of the state they are given.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from crm_im.im import conversations as rules
from crm_im.im.errors import FORBIDDEN, NOT_FOUND, IMError
from crm_im.storage.interface import ADMIN, MEMBER, OWNER, GroupRecord, GroupState, MemberRecord, StoredMessage

ALLOWED = "allowed"

#: The kinds of caller, as columns of the table.
CALLERS = ("owner", "admin", "member", "former", "stranger", "no group")

#: action -> verdict per caller (in the order of L{CALLERS}), written out
#: from GROUPS.md and docs/groups.md rather than derived from
#: L{rules.PERMISSIONS}, so that a change of the rules shows here.
TABLE: dict[str, tuple[str, str, str, str, str, str]] = {
    rules.SEND: (ALLOWED, ALLOWED, ALLOWED, FORBIDDEN, NOT_FOUND, NOT_FOUND),
    rules.READ: (ALLOWED, ALLOWED, ALLOWED, FORBIDDEN, NOT_FOUND, NOT_FOUND),
    rules.INFO: (ALLOWED, ALLOWED, ALLOWED, NOT_FOUND, NOT_FOUND, NOT_FOUND),
    rules.LEAVE: (ALLOWED, ALLOWED, ALLOWED, FORBIDDEN, NOT_FOUND, NOT_FOUND),
    rules.UPDATE: (ALLOWED, ALLOWED, FORBIDDEN, FORBIDDEN, NOT_FOUND, NOT_FOUND),
    rules.ADD_MEMBERS: (ALLOWED, ALLOWED, FORBIDDEN, FORBIDDEN, NOT_FOUND, NOT_FOUND),
    rules.REMOVE_MEMBERS: (ALLOWED, ALLOWED, FORBIDDEN, FORBIDDEN, NOT_FOUND, NOT_FOUND),
    rules.RECALL_ANY: (ALLOWED, ALLOWED, FORBIDDEN, FORBIDDEN, NOT_FOUND, NOT_FOUND),
    rules.SET_ROLE: (ALLOWED, FORBIDDEN, FORBIDDEN, FORBIDDEN, NOT_FOUND, NOT_FOUND),
    rules.DISSOLVE: (ALLOWED, FORBIDDEN, FORBIDDEN, FORBIDDEN, NOT_FOUND, NOT_FOUND),
}


def groupState() -> GroupState:
    """
    A group with an owner, an admin and a member, and one former member.
    """
    record = GroupRecord("g1", "Team", None, "olga", "olga", None, 1000)
    members = {
        "olga": MemberRecord("olga", OWNER, 1000, 1),
        "adam": MemberRecord("adam", ADMIN, 1000, 2),
        "mona": MemberRecord("mona", MEMBER, 1000, 3),
    }
    return GroupState(record, members, frozenset({"fred"}), 7)


#: The user id of each kind of caller in L{groupState}.
USER_OF = {"owner": "olga", "admin": "adam", "member": "mona", "former": "fred", "stranger": "sam", "no group": "olga"}


def message(fromId: str = "mona", serverTimestamp: int = 1_000_000, **kwargs: object) -> StoredMessage:
    """
    A stored group message sent by C{fromId} at C{serverTimestamp}.
    """
    fields: dict[str, object] = dict(
        seq=5,
        id="m1",
        fromId=fromId,
        fromName=fromId.title(),
        toId=None,
        topic=None,
        type="text",
        content="hi",
        fileUrl=None,
        fileName=None,
        clientTimestamp=None,
        serverTimestamp=serverTimestamp,
        delivered=True,
        groupId="g1",
    )
    fields.update(kwargs)
    return StoredMessage(**fields)  # type: ignore[arg-type]


class AuthorizeTableTests(SynchronousTestCase):
    """
    L{rules.authorize} against the table of every action for every kind of
    caller: a member of each role, a former member, a stranger, and a group
    that does not exist (or was dissolved: the store gives L{None} for both).
    """

    def verdict(self, action: str, caller: str) -> str:
        """
        What L{rules.authorize} decides for C{caller} taking C{action}:
        L{ALLOWED} or the refusal's code.
        """
        state = None if caller == "no group" else groupState()
        userId = USER_OF[caller]
        try:
            member = rules.authorize(state, userId, action)
        except IMError as error:
            return error.code
        self.assertEqual(member.userId, userId)
        return ALLOWED

    def test_tableCoversEveryAction(self) -> None:
        """
        The table has a row for each action the rules know, and no other:
        a new action cannot be added without deciding it here too.
        """
        self.assertEqual(set(TABLE), set(rules.PERMISSIONS))

    def test_table(self) -> None:
        """
        Every action x caller gets the verdict of the table; all mismatches
        are reported at once.
        """
        mismatches = []
        for action, row in sorted(TABLE.items()):
            for caller, expected in zip(CALLERS, row):
                got = self.verdict(action, caller)
                if got != expected:
                    mismatches.append(f"{action} by {caller}: expected {expected}, got {got}")
        self.assertEqual(mismatches, [])

    def test_returnsTheMembership(self) -> None:
        """
        An allowed caller gets their own membership back, role included, so
        that handlers decide further (who may remove whom) on it.
        """
        state = groupState()
        self.assertEqual(rules.authorize(state, "adam", rules.UPDATE), state.members["adam"])

    def test_formerMemberAfterRejoining(self) -> None:
        """
        A user who is both in C{former} and a current member (re-added) is
        treated as the member they are now.
        """
        state = groupState()
        state = GroupState(state.group, state.members, state.former | {"mona"}, state.lastSeq)
        self.assertEqual(rules.authorize(state, "mona", rules.SEND).role, MEMBER)

    def test_notFoundNeverNamesTheGroup(self) -> None:
        """
        A stranger is told the same thing whether or not the group exists,
        so a private group's existence is not revealed.
        """
        errors = []
        for state in (groupState(), None):
            try:
                rules.authorize(state, "sam", rules.INFO)
            except IMError as error:
                errors.append((error.code, error.message))
        self.assertEqual(errors[0], errors[1])
        self.assertEqual(rules.groupNotFound().code, NOT_FOUND)


class MayRemoveTests(SynchronousTestCase):
    """
    L{rules.mayRemove}: nobody removes the owner; an admin removes only
    plain members; the owner removes admins and members.
    """

    def test_table(self) -> None:
        """
        Every actor role x target role.
        """
        expected = {
            (OWNER, OWNER): False,
            (OWNER, ADMIN): True,
            (OWNER, MEMBER): True,
            (ADMIN, OWNER): False,
            (ADMIN, ADMIN): False,
            (ADMIN, MEMBER): True,
            (MEMBER, OWNER): False,
            (MEMBER, ADMIN): False,
            (MEMBER, MEMBER): False,
        }
        got = {(actor, target): rules.mayRemove(actor, target) for actor, target in expected}
        self.assertEqual(got, expected)


class SuccessorTests(SynchronousTestCase):
    """
    L{rules.successor}: who owns a group after its owner leaves.
    """

    def test_longestServingAdmin(self) -> None:
        """
        An admin inherits before any member, even members who joined
        earlier; among admins the one who joined first.
        """
        members = [
            MemberRecord("olga", OWNER, 100, 1),
            MemberRecord("mona", MEMBER, 100, 2),
            MemberRecord("late", ADMIN, 300, 4),
            MemberRecord("early", ADMIN, 200, 3),
        ]
        self.assertEqual(rules.successor(members, "olga"), "early")

    def test_longestServingMember(self) -> None:
        """
        Without an admin, the member who joined first inherits.
        """
        members = [
            MemberRecord("olga", OWNER, 100, 1),
            MemberRecord("newer", MEMBER, 500, 3),
            MemberRecord("older", MEMBER, 200, 2),
        ]
        self.assertEqual(rules.successor(members, "olga"), "older")

    def test_tieBrokenByOrder(self) -> None:
        """
        Members who joined in the same millisecond are ranked by the order
        they were added in (C{order}), not by id or by position.
        """
        members = [
            MemberRecord("olga", OWNER, 100, 1),
            MemberRecord("aaron", MEMBER, 100, 3),
            MemberRecord("zoe", MEMBER, 100, 2),
        ]
        self.assertEqual(rules.successor(members, "olga"), "zoe")

    def test_leaverExcluded(self) -> None:
        """
        The one leaving never inherits, even though they joined first.
        """
        members = [MemberRecord("olga", ADMIN, 1, 1), MemberRecord("mona", MEMBER, 5, 2)]
        self.assertEqual(rules.successor(members, "olga"), "mona")

    def test_nobodyLeft(self) -> None:
        """
        The last member leaving leaves no heir (the group is dissolved).
        """
        self.assertIsNone(rules.successor([MemberRecord("olga", OWNER, 1, 1)], "olga"))
        self.assertIsNone(rules.successor([], "olga"))


class MayRecallTests(SynchronousTestCase):
    """
    L{rules.mayRecall}: the sender within the window (its edge included);
    a group's owner and admins at any time; nobody else.
    """

    def test_senderAtTheEdgeOfTheWindow(self) -> None:
        """
        Exactly C{window} seconds after sending the sender may still
        recall; one millisecond later not.
        """
        sent = message(serverTimestamp=1_000_000)
        self.assertTrue(rules.mayRecall(sent, "mona", None, 1_000_000, 120))
        self.assertTrue(rules.mayRecall(sent, "mona", None, 1_120_000, 120))
        self.assertFalse(rules.mayRecall(sent, "mona", None, 1_120_001, 120))

    def test_senderAsGroupMember(self) -> None:
        """
        A plain member's role gives nothing more than being the sender:
        their own message within the window only.
        """
        sent = message(serverTimestamp=1_000_000)
        self.assertTrue(rules.mayRecall(sent, "mona", MEMBER, 1_120_000, 120))
        self.assertFalse(rules.mayRecall(sent, "mona", MEMBER, 1_120_001, 120))

    def test_systemMessagesNever(self) -> None:
        """
        Nobody recalls a system message (the record of who joined, left
        or renamed what): not its owner or admins, not at once.
        """
        system = message(fromId="olga", type="system")
        for role in (OWNER, ADMIN, MEMBER, None):
            self.assertFalse(rules.mayRecall(system, "olga", role, 1_000_000, 120))

    def test_fractionalWindow(self) -> None:
        """
        A window given in fractions of a second is honoured to the
        millisecond.
        """
        sent = message(serverTimestamp=1_000_000)
        self.assertTrue(rules.mayRecall(sent, "mona", None, 1_000_500, 0.5))
        self.assertFalse(rules.mayRecall(sent, "mona", None, 1_000_501, 0.5))

    def test_zeroWindow(self) -> None:
        """
        A window of 0 s allows a recall only in the millisecond of sending.
        """
        sent = message(serverTimestamp=1_000_000)
        self.assertTrue(rules.mayRecall(sent, "mona", None, 1_000_000, 0))
        self.assertFalse(rules.mayRecall(sent, "mona", None, 1_000_001, 0))

    def test_othersMessage(self) -> None:
        """
        Someone else's message: not by a plain member nor without a role,
        even within the window.
        """
        sent = message(fromId="mona", serverTimestamp=1_000_000)
        self.assertFalse(rules.mayRecall(sent, "bob", None, 1_000_000, 120))
        self.assertFalse(rules.mayRecall(sent, "bob", MEMBER, 1_000_000, 120))

    def test_ownerAndAdminsAnyTime(self) -> None:
        """
        A group's owner and admins recall anyone's message long after the
        window closed.
        """
        sent = message(fromId="mona", serverTimestamp=1_000_000)
        later = 1_000_000 + 10 * 24 * 3600 * 1000
        self.assertTrue(rules.mayRecall(sent, "olga", OWNER, later, 120))
        self.assertTrue(rules.mayRecall(sent, "adam", ADMIN, later, 120))
