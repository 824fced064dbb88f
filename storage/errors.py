"""Errors raised by storage. sqlite3 errors never leave this package untranslated."""

from __future__ import annotations


class StorageError(Exception):
    """Root of every storage error."""


class AlreadyExists(StorageError):
    """A unique name is already taken."""


class StorageUnavailable(StorageError):
    """The database file could not be opened, migrated or written."""


class Gone(StorageError):
    """What a write refers to no longer exists (e.g. its job was deleted meanwhile)."""
