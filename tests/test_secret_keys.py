"""Secret values sealed at rest, the key rotation (POST /apis/secrets/v2/rotate-encryption-keys),
and what a restart, an interrupted rotation or a lost key file leaves."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import aiohttp
import pytest
from nmp.core.secrets.api.v2.admin.schemas import PlatformSecretAdminRotationResponse

from runner.errors import CannotStart
from runner.secret_keys import Keyring
from tests.conftest import Api, api_for, running_server, shell
from web.app import Server

SECRETS = "/apis/secrets/v2/workspaces/default/secrets"
ROTATE = "/apis/secrets/v2/rotate-encryption-keys"
VALUES = {"db-password": "clear-text-db-Value-0123", "hf-token": "hf_clear_Token_4567"}


def _stored_bytes(tmp_path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (tmp_path / "data").glob("localjobs.db*"))


def _rows(tmp_path: Path) -> dict[str, tuple[str, str | None]]:
    with sqlite3.connect(tmp_path / "data" / "localjobs.db") as conn:
        return {
            name: (value, key) for name, value, key in conn.execute("SELECT name, value, key_id FROM secrets")
        }


def _key_ids(tmp_path: Path) -> tuple[str, set[str]]:
    data = json.loads((tmp_path / "data" / "secrets.key").read_text())
    return data["current"], set(data["keys"])


async def _create_all(api: Api) -> None:
    for name, value in VALUES.items():
        status, _ = await api.request("POST", f"{api.base_url}{SECRETS}", json={"name": name, "value": value})
        assert status == 201


async def _value(api: Api, name: str) -> tuple[int, dict[str, str]]:
    return await api.request("GET", f"{api.base_url}{SECRETS}/{name}/access")


async def test_values_are_sealed_in_the_database_and_open_through_access(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv, api_for(srv) as api:
        await _create_all(api)
        status, _ = await api.request(
            "PATCH", f"{api.base_url}{SECRETS}/hf-token", json={"value": "hf_updated_Token_8910"}
        )
        assert status == 200
        assert (await _value(api, "db-password"))[1]["value"] == VALUES["db-password"]
        assert (await _value(api, "hf-token"))[1]["value"] == "hf_updated_Token_8910"
        stored = _stored_bytes(tmp_path)
        for value in [*VALUES.values(), "hf_updated_Token_8910"]:
            assert value.encode() not in stored
    current, keys = _key_ids(tmp_path)
    assert keys == {current}
    assert {key for _, key in _rows(tmp_path).values()} == {current}
    assert (tmp_path / "data" / "secrets.key").stat().st_mode & 0o777 == 0o600


async def test_rotation_reseals_every_value_and_forgets_the_old_key(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv, api_for(srv) as api:
        await _create_all(api)
        old_key, _ = _key_ids(tmp_path)
        before = _rows(tmp_path)
        status, body = await api.request("POST", f"{api.base_url}{ROTATE}")
        assert status == 202, body
        PlatformSecretAdminRotationResponse.model_validate(body, strict=True)
        assert body == {"rotated_secrets": 2, "success": True}
        new_key, keys = _key_ids(tmp_path)
        assert new_key != old_key and keys == {new_key}
        after = _rows(tmp_path)
        assert all(after[name][1] == new_key and after[name][0] != before[name][0] for name in VALUES)
        for name, value in VALUES.items():
            assert (await _value(api, name))[1]["value"] == value
        # A step still gets the value (and it is still masked in what it prints).
        step = shell("use", 'echo "pw=$PW"')
        step["environment"] = [{"name": "PW", "from_secret": {"name": "db-password"}}]
        await api.create_job([step], name="after-rotation")
        assert (await api.wait_job("after-rotation"))["status"] == "completed"
        assert await api.logs("after-rotation") == ["pw=********"]
    async with running_server(tmp_path) as srv, api_for(srv) as api:  # and after a restart
        assert (await _value(api, "hf-token"))[1]["value"] == VALUES["hf-token"]


async def test_rotating_an_empty_store_rotates_nothing(api: Api) -> None:
    status, body = await api.request("POST", f"{api.base_url}{ROTATE}")
    assert (status, body) == (202, {"rotated_secrets": 0, "success": True})


async def test_rotation_needs_the_token(server: Server) -> None:
    async with aiohttp.ClientSession() as session, session.post(f"{server.base_url}{ROTATE}") as resp:
        assert resp.status == 401


async def test_a_rotation_cut_short_by_a_crash_leaves_every_value_readable(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv, api_for(srv) as api:
        await _create_all(api)
    old_key, _ = _key_ids(tmp_path)
    # The crash: the new key is in the file, no row is re-sealed yet.
    Keyring.load(tmp_path / "data" / "secrets.key").add_current()
    async with running_server(tmp_path) as srv, api_for(srv) as api:
        for name, value in VALUES.items():
            assert (await _value(api, name))[1]["value"] == value
        # Still needed by every row: the old key stays until a rotation re-seals them.
        _, keys = _key_ids(tmp_path)
        assert old_key in keys
        await api.request("POST", f"{api.base_url}{ROTATE}")
    current, keys = _key_ids(tmp_path)
    assert keys == {current}


async def test_values_stored_before_sealing_are_sealed_at_start(tmp_path: Path) -> None:
    async with running_server(tmp_path):
        pass
    with sqlite3.connect(tmp_path / "data" / "localjobs.db") as conn:  # what an older localjobs wrote
        conn.execute(
            "INSERT INTO secrets (workspace, name, description, value, key_id, created_at, updated_at)"
            " VALUES ('default', 'legacy', NULL, 'legacy-Plain-Value-42', NULL, 1, 1)"
        )
    async with running_server(tmp_path) as srv, api_for(srv) as api:
        assert (await _value(api, "legacy"))[1]["value"] == "legacy-Plain-Value-42"
    value, key = _rows(tmp_path)["legacy"]
    assert key == _key_ids(tmp_path)[0] and "legacy-Plain-Value-42" not in value


async def test_a_lost_key_file_is_a_clear_409_never_a_500(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv, api_for(srv) as api:
        await _create_all(api)
    (tmp_path / "data" / "secrets.key").unlink()
    async with running_server(tmp_path) as srv, api_for(srv) as api:
        status, body = await _value(api, "db-password")
        assert status == 409
        assert "key" in body["detail"] and VALUES["db-password"] not in json.dumps(body)
        status, body = await api.request("POST", f"{api.base_url}{ROTATE}")
        assert status == 409, body
        # The secret can be set again, and then it works.
        status, _ = await api.request(
            "PATCH", f"{api.base_url}{SECRETS}/db-password", json={"value": "set-again-Value-77"}
        )
        assert status == 200
        assert (await _value(api, "db-password"))[1]["value"] == "set-again-Value-77"


async def test_a_key_file_others_can_read_is_refused_at_start(tmp_path: Path) -> None:
    async with running_server(tmp_path):
        pass
    os.chmod(tmp_path / "data" / "secrets.key", 0o644)
    with pytest.raises(CannotStart, match="private"):
        async with running_server(tmp_path):
            pass


async def test_the_key_file_can_live_outside_the_data_dir(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "localjobs.key"
    key_file.parent.mkdir(mode=0o700)
    async with running_server(tmp_path, secrets_key_file=key_file) as srv, api_for(srv) as api:
        await _create_all(api)
    assert key_file.exists() and not (tmp_path / "data" / "secrets.key").exists()


async def test_rotations_at_the_same_time_never_lose_a_key(tmp_path: Path) -> None:
    import asyncio

    async with running_server(tmp_path) as srv, api_for(srv) as api:
        await _create_all(api)
        answers = await asyncio.gather(*(api.request("POST", f"{api.base_url}{ROTATE}") for _ in range(4)))
        assert list(answers) == [(202, {"rotated_secrets": 2, "success": True})] * 4
        for name, value in VALUES.items():
            assert (await _value(api, name))[1]["value"] == value
    current, keys = _key_ids(tmp_path)
    assert keys == {current}
