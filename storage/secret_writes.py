"""The secrets' and results' part of `WriteTx` (storage/write_tx.py): their reads and writes
inside a unit of work."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from runner.models import ResultRecord, SecretRecord
from storage import queries
from storage.errors import AlreadyExists
from storage.rows import secret_record


class SecretAndResultWrites:
    _conn: sqlite3.Connection

    def _insert_unique(self, sql: str, args: Sequence[Any], taken: str) -> None:
        try:
            self._conn.execute(sql, args)
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(taken) from exc

    # ------------------------------------------------------------------------- secrets

    def get_secret(self, workspace: str, name: str) -> SecretRecord | None:
        query = queries.secret_named(workspace, name)
        return query.build(self._conn.execute(query.sql, query.args).fetchall())

    def insert_secret(
        self, workspace: str, name: str, description: str | None, value: str, key_id: str, now: int
    ) -> None:
        self._insert_unique(
            "INSERT INTO secrets (workspace, name, description, value, key_id, created_at, updated_at)"
            " VALUES (?,?,?,?,?,?,?)",
            (workspace, name, description, value, key_id, now, now),
            f"a secret named {name!r} already exists in workspace {workspace!r}",
        )

    def update_secret(
        self, pk: int, description: str | None, value: str, key_id: str | None, now: int
    ) -> None:
        self._conn.execute(
            "UPDATE secrets SET description = ?, value = ?, key_id = ?, updated_at = ? WHERE pk = ?",
            (description, value, key_id, now, pk),
        )

    def reseal_secret(self, pk: int, value: str, key_id: str) -> None:
        """A new sealed form of the same value: not a change a client sees (updated_at stays)."""
        self._conn.execute("UPDATE secrets SET value = ?, key_id = ? WHERE pk = ?", (value, key_id, pk))

    def all_secrets(self) -> list[SecretRecord]:
        return [secret_record(r) for r in self._conn.execute("SELECT * FROM secrets ORDER BY pk")]

    def delete_secret(self, pk: int) -> None:
        self._conn.execute("DELETE FROM secrets WHERE pk = ?", (pk,))

    # ------------------------------------------------------------------------- results

    def get_result(self, job_pk: int, name: str) -> ResultRecord | None:
        query = queries.result_named(job_pk, name)
        return query.build(self._conn.execute(query.sql, query.args).fetchall())

    def insert_result(
        self, *, id: str, job_pk: int, name: str, artifact_url: str, storage_type: str, now: int
    ) -> None:
        self._insert_unique(
            "INSERT INTO results (id, job_pk, name, artifact_url, artifact_storage_type, created_at,"
            " updated_at) VALUES (?,?,?,?,?,?,?)",
            (id, job_pk, name, artifact_url, storage_type, now, now),
            f"a result named {name!r} already exists for this job",
        )
