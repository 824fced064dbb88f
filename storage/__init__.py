"""SQLite storage: schema, migrations and the one repository object."""

from storage.errors import AlreadyExists, StorageError, StorageUnavailable
from storage.repository import Repository, WriteTx

__all__ = ["AlreadyExists", "Repository", "StorageError", "StorageUnavailable", "WriteTx"]
