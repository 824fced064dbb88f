"""A secret value goes in through every path that stores what a client or a workload hands over,
and comes out of no jobs API response."""

from __future__ import annotations

import json
from typing import Any

from runner.secrets import MASK, Masker
from tests.conftest import Api, shell

SECRETS = "/apis/secrets/v2/workspaces/default/secrets"
# Lower case: it is also used inside a result's name, which must be a valid name.
VALUE = "s3cr3t-value-9f8e7d"
# A key as a file holds it: on several lines, so never on one line of output.
MULTI = "-----BEGIN TEST KEY-----\nQUJDREVGR0hJSktMTU5PUA\nUVJTVFVWV1hZWjAxMjM0\n-----END TEST KEY-----\n"
# Named only by the job's second step, which never runs: masked all the same (the job's secrets).
LATER = "later-secret-5a4b3c"
NUMBER = "73914682"


def _pieces() -> list[str]:
    """What must appear nowhere: every value, and every line of the multi-line one."""
    return [VALUE, LATER, NUMBER, *(line for line in MULTI.split("\n") if line)]


async def _create_secret(api: Api, name: str, value: str) -> None:
    status, body = await api.request("POST", f"{api.base_url}{SECRETS}", json={"name": name, "value": value})
    assert status == 201, body


async def test_no_write_path_stores_a_secret_value(api: Api) -> None:
    for name, value in (("one", VALUE), ("key", MULTI), ("later", LATER), ("number", NUMBER)):
        await _create_secret(api, name, value)
    env = [
        {"name": "ONE", "from_secret": {"name": "one"}},
        {"name": "KEY", "from_secret": {"name": "key"}},
        {"name": "NUMBER", "from_secret": {"name": "number"}},
    ]
    script = (
        'echo "one=$ONE"; printf "%s" "$KEY"; printf "%s" "$KEY" >&2; '
        'printf "crlf:%s\\r\\n" "$ONE"; echo "n=$NUMBER"; echo printed; echo printed >&2; sleep 30'
    )
    first = shell("first", script, environment=env)
    second = shell("second", "true", environment=[{"name": "L", "from_secret": {"name": "later"}}])
    created = await api.create_job([first, second], name="leaky")

    # Output, including a value on several lines (each of its lines is masked).
    lines = await api.logs_until(
        "leaky", lambda lines: {"printed", "[stderr] printed"} <= set(lines), "both printed"
    )
    stdout = [line for line in lines if not line.startswith("[stderr] ")]  # in order per stream
    assert stdout == [f"one={MASK}", *[MASK] * 4, f"crlf:{MASK}", f"n={MASK}", "printed"]
    assert [line for line in lines if line not in stdout] == [f"[stderr] {MASK}"] * 4 + ["[stderr] printed"]

    # Task PUT (a workload reporting), with error details and stack.
    _, tasks = await api.request("GET", "/jobs/leaky/steps/first/tasks")
    task = tasks["data"][0]["name"]
    status, put = await api.request(
        "PUT",
        f"/jobs/leaky/steps/first/tasks/{task}",
        json={
            "status": "active",
            "status_details": {"token": VALUE, VALUE: "as a key", "key": MULTI, "n": int(NUMBER)},
            "error_details": {"nested": [{"key": MULTI}], "later": LATER},
            "error_stack": f"Traceback:\n  token={VALUE}\n{MULTI}",
        },
    )
    assert status == 200, put
    assert put["status_details"]["token"] == MASK and put["status_details"][MASK] == "as a key"
    assert put["status_details"]["n"] == MASK
    assert put["error_stack"] == f"Traceback:\n  token={MASK}\n{MASK}"

    # The job's status details, from a client.
    status, _ = await api.request(
        "PATCH", "/jobs/leaky/status-details", json={"patched": VALUE, "key": MULTI, "later": LATER}
    )
    assert status == 200

    # A result whose name and path show a value: stored masked, like everything else.
    fileset = created["fileset"]
    status, result = await api.request(
        "POST",
        f"/jobs/leaky/results/r-{VALUE}",
        json={"artifact_url": f"default/{fileset}#out/{VALUE}.bin", "artifact_storage_type": "fileset"},
    )
    assert status == 201, result
    assert result["name"] == f"r-{MASK}"
    assert result["artifact_url"] == f"default/{fileset}#out/{MASK}.bin"

    # The step's status, from a client: status and error details (with a stack), ending the job.
    status, patched = await api.request(
        "PATCH",
        "/jobs/leaky/steps/first/status",
        json={
            "status": "error",
            "status_details": {"why": f"saw {VALUE}"},
            "error_details": {"message": MULTI, "error_stack": f"at line 3\n{VALUE}", "l": [LATER]},
            "error_stack": VALUE,  # not a field of a step: ignored
        },
    )
    assert status == 200, patched
    assert patched["error_details"]["error_stack"] == f"at line 3\n{MASK}"
    job = await api.wait_job("leaky")
    assert job["status"] == "error"
    assert job["error_details"]["message"] == MASK
    assert job["status_details"]["patched"] == MASK

    responses: list[Any] = [created, put, result, patched, job]
    for path in (
        "/jobs/leaky",
        "/jobs/leaky/status",
        "/jobs",
        "/jobs/leaky/steps",
        "/jobs/-/steps",
        "/jobs/leaky/steps/first",
        "/jobs/leaky/steps/first/tasks",
        f"/jobs/leaky/steps/first/tasks/{task}",
        "/jobs/leaky/results",
        f"/jobs/leaky/results/r-{MASK}",
        "/jobs/leaky/logs",
    ):
        status, body = await api.request("GET", path)
        assert status == 200, (path, body)
        responses.append(body)
    async with api.session.get(
        f"{api.ws}/jobs/leaky/logs", params={"follow": "true"}, headers=api.headers
    ) as resp:
        assert resp.status == 200
        responses.append(await resp.text())
    shown = json.dumps(responses)
    assert MASK in shown
    for piece in _pieces():
        assert piece not in shown, piece


def test_overlapping_values_leave_no_piece_in_clear() -> None:
    masker = Masker(["xxabcd", "abcdyy"])
    assert masker.text("<xxabcdyy>") == f"<{MASK}>"
    assert masker.text("xxabcd abcdyy") == f"{MASK} {MASK}"


def test_multi_line_values_are_masked_whole_and_line_by_line() -> None:
    masker = Masker(["first-line\r\nab\nthird-line\n"])
    assert masker.text("a first-line\r\nab\nthird-line\n z") == f"a {MASK} z"
    assert masker.text("first-line") == MASK
    assert masker.text("third-line!") == f"{MASK}!"
    assert masker.text("ab") == "ab"  # too short a line: would turn ordinary text into asterisks


def test_json_is_masked_in_keys_values_and_numbers() -> None:
    masker = Masker(["12345678", "secret-x"])
    value = {"secret-x": [1, True, None, 12345678, 12345678.5, {"k": "a secret-x b"}]}
    assert masker.json(value) == {MASK: [1, True, None, MASK, f"{MASK}.5", {"k": f"a {MASK} b"}]}
    assert Masker(["abc"]).json({"abc": "abc"}) == {"abc": "abc"}  # shorter than 4: left as is
