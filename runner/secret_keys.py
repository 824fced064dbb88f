"""The key that seals secret values in the database, and its rotation.

Values are sealed with AES-256-GCM under the keyring's current key, bound to the secret's
workspace and name (a sealed value copied onto another row does not open). The keyring is a
private file (default `<data-dir>/secrets.key`, 0600), apart from the database: a copy of
`localjobs.db` alone (a backup, a file attached to a bug report) holds no readable value. With
the key beside the database in the same private folder, it does not protect against someone
who can read that folder; `LOCALJOBS_SECRETS_KEY_FILE` can put the key elsewhere.

Rotation makes a new key the current one and writes the file holding both keys before any row
is re-sealed; the old key leaves the file only once every row is sealed with the new one. A
crash at any point leaves every row openable.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runner.access import read_private, write_private
from runner.errors import CannotStart, Conflict

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_PREFIX = "lj1:"
_NONCE_BYTES = 12
_KEY_BYTES = 32


class SealError(Conflict):
    """A stored value does not open with the keyring (its key file was replaced, or the value was
    damaged): the stored state cannot serve the request (409), whatever the request."""


@dataclass(frozen=True)
class Sealed:
    key_id: str
    value: str


@dataclass(frozen=True)
class _Keys:
    current: str
    keys: dict[str, bytes]


class Keyring:
    """Seals and opens values; rotation swaps one immutable set of keys for another, so that a
    seal on the writer thread always sees a whole set."""

    def __init__(self, path: Path, keys: _Keys) -> None:
        self._path = path
        self._keys = keys

    @classmethod
    def load(cls, path: Path) -> Keyring:
        """The keyring at `path`, made (with one new key) if there is none yet."""
        text = read_private(path, "secrets key file")
        if text is None:
            key_id = _new_id()
            keys = _Keys(current=key_id, keys={key_id: secrets.token_bytes(_KEY_BYTES)})
            write_private(path, _encode(keys))
            return cls(path, keys)
        return cls(path, _decode(path, text))

    @property
    def current_key_id(self) -> str:
        return self._keys.current

    def seal(self, workspace: str, name: str, value: str) -> Sealed:
        keys = self._keys
        nonce = secrets.token_bytes(_NONCE_BYTES)
        box = _aead(keys.keys[keys.current]).encrypt(nonce, value.encode(), _bound_to(workspace, name))
        return Sealed(keys.current, _PREFIX + base64.urlsafe_b64encode(nonce + box).decode())

    def open(self, workspace: str, name: str, key_id: str | None, stored: str) -> str:
        if key_id is None:  # written before values were sealed (sealed at the next start)
            return stored
        key = self._keys.keys.get(key_id)
        if key is None or not stored.startswith(_PREFIX):
            raise SealError(f"secret {workspace}/{name} is sealed with key {key_id}, which the keyring lacks")
        from cryptography.exceptions import InvalidTag

        try:
            raw = base64.urlsafe_b64decode(stored[len(_PREFIX) :])
            plain = _aead(key).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _bound_to(workspace, name))
        except (InvalidTag, ValueError, binascii.Error) as exc:
            raise SealError(f"secret {workspace}/{name} does not open with key {key_id}") from exc
        return plain.decode()

    def add_current(self) -> str:
        """A new current key, written to the file (beside the old ones) before it is used."""
        key_id = _new_id()
        keys = _Keys(current=key_id, keys={**self._keys.keys, key_id: secrets.token_bytes(_KEY_BYTES)})
        write_private(self._path, _encode(keys))
        self._keys = keys
        return key_id

    def keep_only(self, used: set[str]) -> None:
        """Drop every key but the current one and those still sealing a row."""
        wanted = used | {self._keys.current}
        if set(self._keys.keys) <= wanted:
            return
        kept = {k: v for k, v in self._keys.keys.items() if k in wanted}
        keys = _Keys(current=self._keys.current, keys=kept)
        write_private(self._path, _encode(keys))
        self._keys = keys


def _aead(key: bytes) -> AESGCM:
    # Imported at the first seal or open: `cryptography` is ~7 MB of the daemon's RSS, and a
    # daemon whose jobs use no secret never needs it.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def _bound_to(workspace: str, name: str) -> bytes:
    return f"{workspace}\0{name}".encode()


def _new_id() -> str:
    return f"k-{secrets.token_hex(6)}"


def _encode(keys: _Keys) -> str:
    return json.dumps(
        {"current": keys.current, "keys": {k: base64.b64encode(v).decode() for k, v in keys.keys.items()}}
    )


def _decode(path: Path, text: str) -> _Keys:
    try:
        data = json.loads(text)
        keys = {str(k): base64.b64decode(v, validate=True) for k, v in data["keys"].items()}
        current = str(data["current"])
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise CannotStart(f"the secrets key file {path} is damaged: {exc}") from exc
    if current not in keys or any(len(v) != _KEY_BYTES for v in keys.values()):
        raise CannotStart(f"the secrets key file {path} is damaged: no valid current key")
    return _Keys(current=current, keys=keys)
