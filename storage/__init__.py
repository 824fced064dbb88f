"""SQLite storage: schema, migrations and the one repository object."""

from storage.errors import AlreadyExists, Gone, StorageError, StorageUnavailable
from storage.repository import Repository, WriteTx

__all__ = ["AlreadyExists", "Gone", "Repository", "StorageError", "StorageUnavailable", "WriteTx"]
