"""The local secrets store behind `environment[].from_secret` and the Secrets API.

Values live in the daemon's SQLite file inside a data folder only the daemon's user can open.
They leave the daemon in exactly two ways: the step's environment, and the Secrets API's own
`access` operation. Anything a workload prints or reports is masked before it is stored.
"""

from __future__ import annotations

from collections.abc import Iterable

from runner.clock import Clock
from runner.errors import Conflict, NotFound
from runner.models import Page, PlatformJobSpec, SecretRecord, StepRecord
from storage import AlreadyExists, Repository, WriteTx

MASK = "********"
# Shorter values would turn ordinary text into asterisks; they are not masked (documented).
MIN_MASKED_LENGTH = 4


def split_reference(reference: str, workspace: str) -> tuple[str, str]:
    """`ws/name` or a bare `name` (the job's own workspace), as the reference parses them."""
    if "/" in reference:
        ws, _, name = reference.partition("/")
        return ws, name
    return workspace, reference


def mask(text: str, values: Iterable[str]) -> str:
    for value in values:
        if len(value) >= MIN_MASKED_LENGTH and value in text:
            text = text.replace(value, MASK)
    return text


class SecretService:
    def __init__(self, store: Repository, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def create(self, workspace: str, name: str, value: str, description: str | None) -> SecretRecord:
        now = self._clock.now_us()

        def insert(tx: WriteTx) -> SecretRecord | None:
            try:
                tx.insert_secret(workspace, name, description, value, now)
            except AlreadyExists as exc:
                raise Conflict(str(exc)) from exc
            return tx.get_secret(workspace, name)

        created = await self._store.write(insert)
        assert created is not None
        return created

    async def get(self, workspace: str, name: str) -> SecretRecord:
        secret = await self._store.get_secret(workspace, name)
        if secret is None:
            raise _no_such_secret(workspace, name)
        return secret

    async def list_page(self, workspace: str, page: int, page_size: int) -> Page[SecretRecord]:
        return await self._store.list_secrets(workspace, page, page_size)

    async def update(
        self, workspace: str, name: str, value: str | None, description: str | None
    ) -> SecretRecord:
        now = self._clock.now_us()

        def update(tx: WriteTx) -> SecretRecord | None:
            secret = _existing_secret(tx, workspace, name)
            tx.update_secret(
                secret.pk,
                description if description is not None else secret.description,
                value if value is not None else secret.value,
                now,
            )
            return tx.get_secret(workspace, name)

        updated = await self._store.write(update)
        assert updated is not None
        return updated

    async def delete(self, workspace: str, name: str) -> None:

        def delete(tx: WriteTx) -> None:
            tx.delete_secret(_existing_secret(tx, workspace, name).pk)

        await self._store.write(delete)

    async def check_references(self, workspace: str, spec: PlatformJobSpec) -> None:
        """A job naming a secret that does not exist is refused at submission (409, as the reference)."""
        missing = []
        for step in spec.steps:
            for variable in step.environment:
                if variable.from_secret is None:
                    continue
                ws, name = split_reference(variable.from_secret.name, workspace)
                if await self._store.get_secret(ws, name) is None:
                    missing.append(f"{ws}/{name}")
        if missing:
            raise Conflict(
                "One or more referenced secrets were not found or are not accessible: " + ", ".join(missing)
            )

    async def resolve(self, step: StepRecord) -> dict[str, str]:
        """Environment variables holding the step's secret values (raises NotFound if one vanished)."""
        env: dict[str, str] = {}
        for variable in step.spec.environment:
            if variable.from_secret is None:
                continue
            ws, name = split_reference(variable.from_secret.name, step.workspace)
            secret = await self._store.get_secret(ws, name)
            if secret is None:
                raise NotFound(f"secret {ws}/{name} (for {variable.name}) no longer exists")
            env[variable.name] = secret.value
        return env

    async def values_for(self, step: StepRecord) -> list[str]:
        """The values to mask in what this step's workload prints or reports."""
        try:
            return list((await self.resolve(step)).values())
        except NotFound:
            return []


def _no_such_secret(workspace: str, name: str) -> NotFound:
    return NotFound(f"secret {name!r} not found in workspace {workspace!r}")


def _existing_secret(tx: WriteTx, workspace: str, name: str) -> SecretRecord:
    secret = tx.get_secret(workspace, name)
    if secret is None:
        raise _no_such_secret(workspace, name)
    return secret
