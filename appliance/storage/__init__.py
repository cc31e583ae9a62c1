"""Storage of the auth service: the :class:`Storage` interface and its SQLite implementation."""
from .base import (NO_TOTP_COUNTER, CARecord, ca_id, InviteRecord, LoginAttempt, NodeRecord, Storage, StorageError,
                   TokenRecord, UserRecord)
from .sqlite import SQLiteStorage

__all__ = ["NO_TOTP_COUNTER", "CARecord", "InviteRecord", "LoginAttempt", "NodeRecord", "SQLiteStorage", "Storage",
           "StorageError", "TokenRecord", "UserRecord", "ca_id"]
