"""
Storage: messages, offline queues, read state and files, durably.

The application codes against L{IMessageStore} and L{IFileStore}. The
implementations: L{SQLiteMessageStore} (one SQLite file, group commit),
L{PostgresMessageStore} (a PostgreSQL database several nodes may share),
L{MemoryMessageStore} (a fake for tests) and L{DiskFileStore} (files on disk,
records in the message store's database through L{IFileMetadata}).
"""

from .database import Database
from .engines import BaseEngine, SQLiteEngine
from .files import DiskFileStore, isFileId, newFileId
from .interface import (
    ADMIN,
    DIRECT,
    GROUP,
    MEMBER,
    OWNER,
    ROOM,
    FileRecord,
    GroupChange,
    GroupRecord,
    GroupState,
    GroupSummary,
    IConversationStore,
    MemberRecord,
    RoomRecord,
    directConversation,
    groupConversation,
    roomConversation,
    HistoryPage,
    IFileMetadata,
    IFileStore,
    IMessageStore,
    NewMessage,
    StoreClosedError,
    StoredMessage,
    StoreOutcome,
    conversationKey,
)
from .memory import MemoryMessageStore
from .postgres import PostgresMessageStore, storeFor
from .sqlite import SQLiteMessageStore
from .store import SQLMessageStore

__all__ = [
    "ADMIN",
    "DIRECT",
    "GROUP",
    "MEMBER",
    "OWNER",
    "ROOM",
    "GroupChange",
    "GroupRecord",
    "GroupState",
    "GroupSummary",
    "IConversationStore",
    "MemberRecord",
    "RoomRecord",
    "directConversation",
    "groupConversation",
    "roomConversation",
    "BaseEngine",
    "Database",
    "DiskFileStore",
    "FileRecord",
    "HistoryPage",
    "IFileMetadata",
    "IFileStore",
    "IMessageStore",
    "MemoryMessageStore",
    "NewMessage",
    "SQLMessageStore",
    "SQLiteEngine",
    "SQLiteMessageStore",
    "PostgresMessageStore",
    "storeFor",
    "StoreClosedError",
    "StoreOutcome",
    "StoredMessage",
    "conversationKey",
    "isFileId",
    "newFileId",
]
