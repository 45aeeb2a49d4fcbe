# -*- test-case-name: tests.test_filestore -*-
"""
The records of stored files in SQL (the bytes are files on disk,
L{crm_im.storage.files}).
"""

from __future__ import annotations

import attrs

from .database import Transaction
from .interface import FileRecord

_FILE_COLUMNS = "file_id, from_id, to_id, file_name, mime_type, size, created_at"


def recordFile_txn(txn: Transaction, record: FileRecord) -> None:
    """
    Insert a file record.
    """
    txn.execute(
        f"INSERT INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        attrs.astuple(record),
    )


def fileRecord_txn(txn: Transaction, fileId: str) -> FileRecord | None:
    """
    The record of C{fileId}, if any.
    """
    txn.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE file_id = ?", (fileId,))
    row = txn.fetchone()
    return None if row is None else FileRecord(*row)
