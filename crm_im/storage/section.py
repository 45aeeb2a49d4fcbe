"""
L{StoreSection}: the base of a store module that is not mixed into the SQL
message store but rides on it (the file records, the recovery records):
its reads go to the store's pool and its writes into the store's group
commit, so that a write shares the commit (and the fsync) of the messages
around it.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred

from .database import Transaction

_R = TypeVar("_R")


class StoreSection:
    """
    A store module on a L{crm_im.storage.store.SQLMessageStore}.
    """

    def __init__(self, store: Any) -> None:
        """
        @param store: a L{crm_im.storage.store.SQLMessageStore} (anything
            with its C{_read} and C{_write}).
        """
        self._store = store

    def _readTxn(self, desc: str, func: Callable[[Transaction], _R]) -> Deferred[_R]:
        result: Deferred[_R] = self._store._read(desc, func)
        return result

    def _writeTxn(self, desc: str, func: Callable[[Transaction], _R]) -> Deferred[_R]:
        result: Deferred[_R] = self._store._write(desc, func)
        return result
