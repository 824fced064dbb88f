"""The local secrets store behind `environment[].from_secret` and the Secrets API.

Values live in the daemon's SQLite file inside a data folder only the daemon's user can open,
sealed under the keyring's key (runner/secret_keys.py). They leave the daemon in exactly two
ways: the step's environment, and the Secrets API's own `access` operation. Whatever a client
or a workload hands over for storing (output lines, task, step and job status details, error
details and stacks, results) goes through a `Masker` first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from runner.clock import Clock
from runner.errors import Conflict, NotFound
from runner.models import EnvironmentVariable, JobRecord, Page, PlatformJobSpec, SecretRecord, StepRecord
from runner.secret_keys import Keyring, SealError
from storage import AlreadyExists, Repository, WriteTx

log = logging.getLogger(__name__)

MASK = "********"
# Shorter values would turn ordinary text into asterisks; they are not masked (documented).
MIN_MASKED_LENGTH = 4


def split_reference(reference: str, workspace: str) -> tuple[str, str]:
    """`ws/name` or a bare `name` (the job's own workspace), as the reference parses them."""
    if "/" in reference:
        ws, _, name = reference.partition("/")
        return ws, name
    return workspace, reference


class Masker:
    """Replaces secret values with MASK in text and in JSON values.

    Each value is looked for whole and line by line: in a task's output a value spanning lines (a
    PEM key, a kubeconfig) is masked one line at a time, as its lines are stored as lines.
    Every occurrence of every fragment is found in the original text and overlapping or touching
    ones are masked as one, so two secrets that overlap leave no piece of either in clear."""

    __slots__ = ("_fragments",)

    def __init__(self, values: Iterable[str] = (), *, within_lines: bool = False) -> None:
        """`within_lines`: for text made of whole lines (a task's output), where a value that
        spans lines is masked line by line, so masking never joins or removes lines."""
        fragments: set[str] = set()
        for value in values:
            # Split as output is split into lines (on \n, then a trailing \r is dropped).
            whole = () if within_lines and "\n" in value else (value,)
            for piece in (*whole, *(line.rstrip("\r") for line in value.split("\n"))):
                if len(piece) >= MIN_MASKED_LENGTH:
                    fragments.add(piece)
        self._fragments = tuple(fragments)

    def __bool__(self) -> bool:
        return bool(self._fragments)

    def text(self, text: str) -> str:
        spans: list[tuple[int, int]] = []
        for fragment in self._fragments:
            start = text.find(fragment)
            while start >= 0:
                spans.append((start, start + len(fragment)))
                start = text.find(fragment, start + 1)
        if not spans:
            return text
        spans.sort()
        out: list[str] = []
        done = 0  # text[:done] is written out
        span_start, span_end = spans[0]
        for start, end in spans[1:]:
            if start <= span_end:
                span_end = max(span_end, end)
                continue
            out += (text[done:span_start], MASK)
            done = span_end
            span_start, span_end = start, end
        out += (text[done:span_start], MASK, text[span_end:])
        return "".join(out)

    def json(self, value: Any) -> Any:
        """`value` with every string (keys too) masked; a number that shows a value (a numeric
        secret reported as a number) becomes the masked string."""
        if not self._fragments:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(k) if isinstance(k, str) else k: self.json(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.json(v) for v in value]
        if isinstance(value, int | float) and not isinstance(value, bool):
            shown = str(value)
            masked = self.text(shown)
            return value if masked == shown else masked
        return value


NO_MASK = Masker()


class SecretService:
    """Values are sealed inside the write transaction (on the writer thread), so a rotation that
    runs between a request and its write can never leave a row sealed with a dropped key."""

    def __init__(self, store: Repository, clock: Clock, keyring: Keyring) -> None:
        self._store = store
        self._clock = clock
        self._keyring = keyring
        # One rotation at a time: a second one's new key must not be dropped by the first's end.
        self._rotation = asyncio.Lock()

    async def create(self, workspace: str, name: str, value: str, description: str | None) -> SecretRecord:
        now = self._clock.now_us()

        def insert(tx: WriteTx) -> SecretRecord | None:
            sealed = self._keyring.seal(workspace, name, value)
            try:
                tx.insert_secret(workspace, name, description, sealed.value, sealed.key_id, now)
            except AlreadyExists as exc:
                raise Conflict(str(exc)) from exc
            return tx.get_secret(workspace, name)

        created = await self._store.write(insert)
        assert created is not None
        return self._opened(created)

    async def get(self, workspace: str, name: str) -> SecretRecord:
        secret = await self._find(workspace, name)
        if secret is None:
            raise _no_such_secret(workspace, name)
        return secret

    async def list_page(self, workspace: str, page: int, page_size: int) -> Page[SecretRecord]:
        return await self._store.list_secrets(workspace, page, page_size)  # values stay sealed

    async def update(
        self, workspace: str, name: str, value: str | None, description: str | None
    ) -> SecretRecord:
        now = self._clock.now_us()

        def update(tx: WriteTx) -> SecretRecord | None:
            secret = _existing_secret(tx, workspace, name)
            stored, key_id = secret.value, secret.key_id
            if value is not None:
                sealed = self._keyring.seal(workspace, name, value)
                stored, key_id = sealed.value, sealed.key_id
            description_now = description if description is not None else secret.description
            tx.update_secret(secret.pk, description_now, stored, key_id, now)
            return tx.get_secret(workspace, name)

        updated = await self._store.write(update)
        assert updated is not None
        return self._opened(updated)

    async def delete(self, workspace: str, name: str) -> None:

        def delete(tx: WriteTx) -> None:
            tx.delete_secret(_existing_secret(tx, workspace, name).pk)

        await self._store.write(delete)

    async def rotate_keys(self) -> int:
        """Re-seal every value under a new key, then forget the keys no value uses any more;
        returns how many values were re-sealed."""
        async with self._rotation:
            self._keyring.add_current()

            def reseal(tx: WriteTx) -> tuple[int, set[str]]:
                count, used = 0, set()
                for secret in tx.all_secrets():
                    plain = self._keyring.open(secret.workspace, secret.name, secret.key_id, secret.value)
                    sealed = self._keyring.seal(secret.workspace, secret.name, plain)
                    tx.reseal_secret(secret.pk, sealed.value, sealed.key_id)
                    used.add(sealed.key_id)
                    count += 1
                return count, used

            rotated, used = await self._store.write(reseal, patient=True)
            self._keyring.keep_only(used)
            return rotated

    async def seal_stored(self) -> None:
        """At start: seal values stored before sealing existed, and drop keys no row uses (left by
        a rotation that a crash interrupted)."""

        def seal(tx: WriteTx) -> set[str]:
            used = set()
            for secret in tx.all_secrets():
                if secret.key_id is None:
                    sealed = self._keyring.seal(secret.workspace, secret.name, secret.value)
                    tx.reseal_secret(secret.pk, sealed.value, sealed.key_id)
                    used.add(sealed.key_id)
                else:
                    used.add(secret.key_id)
            return used

        self._keyring.keep_only(await self._store.write(seal, patient=True))

    async def _find(self, workspace: str, name: str) -> SecretRecord | None:
        secret = await self._store.get_secret(workspace, name)
        if secret is None:
            return None
        try:
            return self._opened(secret)
        except SealError:
            # Read just before a rotation re-sealed it and dropped the old key: read it again.
            secret = await self._store.get_secret(workspace, name)
            return None if secret is None else self._opened(secret)

    def _opened(self, secret: SecretRecord) -> SecretRecord:
        value = self._keyring.open(secret.workspace, secret.name, secret.key_id, secret.value)
        return secret.model_copy(update={"value": value})

    async def check_references(self, workspace: str, spec: PlatformJobSpec) -> None:
        """A job naming a secret that does not exist is refused at submission (409, as the reference)."""
        missing = []
        for step in spec.steps:
            for variable in step.variables:
                if variable.from_secret is None:
                    continue
                ws, name = split_reference(variable.from_secret.name, workspace)
                if await self._store.get_secret(ws, name) is None:  # existence only: stays sealed
                    missing.append(f"{ws}/{name}")
        if missing:
            raise Conflict(
                "One or more referenced secrets were not found or are not accessible: " + ", ".join(missing)
            )

    async def resolve(self, step: StepRecord) -> dict[str, str]:
        """Environment variables holding the step's secret values (raises NotFound if one vanished)."""
        env: dict[str, str] = {}
        for variable in step.spec.variables:
            if variable.from_secret is None:
                continue
            ws, name = split_reference(variable.from_secret.name, step.workspace)
            secret = await self._find(ws, name)
            if secret is None:
                raise NotFound(f"secret {ws}/{name} (for {variable.name}) no longer exists")
            env[variable.name] = secret.value
        return env

    async def values_for(self, step: StepRecord) -> list[str]:
        """The values to mask in what this step's workload prints."""
        return await self._existing_values(step.workspace, step.spec.variables)

    async def masker_for_job(self, job: JobRecord) -> Masker:
        """What masks anything stored for this job from a client or a workload: the values of
        the secrets named by any of its steps (a value may travel from one step to the next)."""
        variables = [v for step in job.platform_spec.steps for v in step.variables]
        return Masker(await self._existing_values(job.workspace, variables))

    async def _existing_values(self, workspace: str, variables: Iterable[EnvironmentVariable]) -> list[str]:
        # A secret deleted since is skipped, not a reason to mask none of the others.
        refs = {split_reference(v.from_secret.name, workspace) for v in variables if v.from_secret}
        values = []
        for ws, name in sorted(refs):
            try:
                secret = await self._find(ws, name)
            except SealError as exc:  # cannot be masked if it cannot be read: say so, go on
                log.warning("cannot mask secret %s/%s: %s", ws, name, exc)
                continue
            if secret is not None:
                values.append(secret.value)
        return values


def _no_such_secret(workspace: str, name: str) -> NotFound:
    return NotFound(f"secret {name!r} not found in workspace {workspace!r}")


def _existing_secret(tx: WriteTx, workspace: str, name: str) -> SecretRecord:
    secret = tx.get_secret(workspace, name)
    if secret is None:
        raise _no_such_secret(workspace, name)
    return secret
