"""SQLite storage: schema, migrations and the one repository object (storage/repository.py says
which module of the package holds what)."""

from storage.errors import AlreadyExists, Gone, StorageError, StorageUnavailable
from storage.repository import Repository
from storage.write_tx import WriteTx

__all__ = ["AlreadyExists", "Gone", "Repository", "StorageError", "StorageUnavailable", "WriteTx"]
