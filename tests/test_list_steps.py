"""GET W/jobs/{name}/steps: the List Steps contract of the seed page, over real HTTP."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from yarl import URL

from tests.conftest import Api, assert_422, shell, step
from tests.helpers import ts

SEED_ORDER = [
    "id",
    "job",
    "attempt_id",
    "fileset",
    "workspace",
    "name",
    "step_spec",
    "status",
    "status_details",
    "error_details",
    "auth_context",
    "created_at",
    "updated_at",
]
ITEM_FIELDS = set(SEED_ORDER)
PAGINATION_FIELDS = {"page", "page_size", "current_page_size", "total_pages", "total_results"}
STATUSES = {
    "created",
    "pending",
    "active",
    "cancelled",
    "cancelling",
    "error",
    "completed",
    "paused",
    "pausing",
    "resuming",
}


# --------------------------------------------------------------------------------- helpers


async def raw(api: Api, path_and_query: str, workspace: str | None = None) -> tuple[int, Any]:
    """GET a URL exactly as written (already percent-encoded), with no re-quoting by the client."""
    ws = workspace if workspace is not None else api.workspace
    url = URL(f"{api.base_url}/apis/jobs/v2/workspaces/{ws}{path_and_query}", encoded=True)
    async with api.session.get(url) as resp:
        assert resp.content_type == "application/json", await resp.text()
        return resp.status, await resp.json()


async def list_steps(
    api: Api, job: str = "-", query: str = "", workspace: str | None = None
) -> dict[str, Any]:
    status, page = await raw(api, f"/jobs/{job}/steps{'?' + query if query else ''}", workspace)
    assert status == 200, page
    return page  # type: ignore[no-any-return]


def names(page: dict[str, Any]) -> list[tuple[str, str]]:
    return [(item["job"], item["name"]) for item in page["data"]]


async def cancel(api: Api, name: str) -> None:
    status, body = await api.request("POST", f"/jobs/{name}/cancel")
    assert status == 200, body
    job = await api.wait_job(name)
    assert job["status"] == "cancelled", job


async def sequential_job(api: Api, name: str, count: int, **extra: Any) -> None:
    """A completed job with `count` steps, created one after the other."""
    await api.create_job([step(f"s{i:02d}", "true") for i in range(count)], name=name, **extra)
    job = await api.wait_job(name)
    assert job["status"] == "completed", job


@pytest.fixture
async def mixed(api: Api) -> Any:
    """Four steps in three jobs: runs/hold active, ok/one + ok/two completed, bad/boom error."""
    await api.create_job([shell("hold", "sleep 30")], name="runs", source="src-a")
    await api.create_job([step("one", "true"), step("two", "true")], name="ok", source="src-a")
    await api.create_job([step("boom", "false")], name="bad", source="src-b")
    assert (await api.wait_job("ok"))["status"] == "completed"
    assert (await api.wait_job("bad"))["status"] == "error"
    await api.wait_job("runs", {"active"})
    # The job turns active with its step; wait for the step row itself too.
    for _ in range(200):
        status, hold = await api.request("GET", "/jobs/runs/steps/hold")
        if hold["status"] == "active":
            break
        await asyncio.sleep(0.02)
    assert hold["status"] == "active", hold
    yield api
    await cancel(api, "runs")


# --------------------------------------------------------------------------------- envelope and items


async def test_envelope_and_defaults(api: Api) -> None:
    await sequential_job(api, "solo", 1)
    page = await list_steps(api, "solo")
    assert set(page) == {"data", "pagination", "sort", "filter"}
    assert page["pagination"] == {
        "page": 1,
        "page_size": 25,
        "current_page_size": 1,
        "total_pages": 1,
        "total_results": 1,
    }
    assert set(page["pagination"]) == PAGINATION_FIELDS
    assert page["sort"] == "created_at"
    assert page["filter"] == {"job": "solo"}


async def test_empty_list_has_one_page_and_no_filter(api: Api) -> None:
    # No filter: the reference echoes `filter: null`, which its exclude_none leaves out.
    page = await list_steps(api)
    assert page == {
        "data": [],
        "pagination": {
            "page": 1,
            "page_size": 25,
            "current_page_size": 0,
            "total_pages": 1,
            "total_results": 0,
        },
        "sort": "created_at",
    }


async def test_unknown_job_lists_nothing(api: Api) -> None:
    await sequential_job(api, "solo", 1)
    page = await list_steps(api, "no-such-job")
    assert page["data"] == []
    assert page["pagination"]["total_results"] == 0
    assert page["pagination"]["total_pages"] == 1
    assert page["filter"] == {"job": "no-such-job"}


async def test_item_fields_and_values(api: Api) -> None:
    job = await api.create_job(
        [
            step(
                "first",
                "true",
                environment=[{"name": "A", "value": "1"}],
                config={"k": "v"},
                lifecycle={"staleness_timeout_seconds": 5},
            )
        ],
        name="fields",
    )
    await api.wait_job("fields")
    page = await list_steps(api, "fields")
    [item] = page["data"]
    # Exactly the seed's fields, in the seed's order, and no nulls.
    assert list(item) == SEED_ORDER
    assert all(value is not None for value in item.values()), item
    assert item["id"].startswith("platform-job-step-")
    assert item["job"] == "fields"
    assert item["attempt_id"] == job["attempt_id"]
    assert item["fileset"] == job["fileset"] == "job-fileset-fields"
    assert item["workspace"] == "default"
    assert item["name"] == "first"
    assert item["status"] == "completed"
    assert isinstance(item["status_details"], dict)
    assert item["error_details"] == {}
    assert isinstance(item["auth_context"], dict)
    assert isinstance(item["auth_context"]["principal_id"], str)
    assert item["step_spec"] == {
        "name": "first",
        "environment": [{"name": "A", "value": "1"}],
        "executor": {"provider": "subprocess", "profile": "default", "command": ["true"]},
        "config": {"k": "v"},
        "lifecycle": {"staleness_timeout_seconds": 5},
    }
    assert ts(item["created_at"]) <= ts(item["updated_at"])
    assert item["created_at"].endswith("Z") and item["updated_at"].endswith("Z")
    # The step read on its own agrees with the list item.
    status, single = await api.request("GET", "/jobs/fields/steps/first")
    assert status == 200
    assert single["id"] == item["id"]
    assert single["status"] == item["status"]
    assert single["created_at"] == item["created_at"]
    assert single["updated_at"] == item["updated_at"]


async def test_output_location_adds_artifact_base_path(api: Api) -> None:
    # Not on the seed page, but in jobs-openapi.yaml: present only when output_location is set.
    await api.create_job([step("first", "true")], name="exported", output_location="my-out")
    await api.wait_job("exported")
    [item] = (await list_steps(api, "exported"))["data"]
    assert item["fileset"] == "my-out"
    assert item["artifact_base_path"] == "jobs/exported"
    assert list(item) == [*SEED_ORDER[:4], "artifact_base_path", *SEED_ORDER[4:]]


async def test_error_step_carries_error_details(api: Api) -> None:
    await api.create_job([shell("boom", "exit 4")], name="broken")
    await api.wait_job("broken")
    [item] = (await list_steps(api, "broken"))["data"]
    assert item["status"] == "error"
    assert item["error_details"], item
    assert all(value is not None for value in item.values()), item


# --------------------------------------------------------------------------------- pagination


async def test_pagination_over_several_pages(api: Api) -> None:
    await sequential_job(api, "many", 5)
    seen: list[str] = []
    for number, expected in ((1, 2), (2, 2), (3, 1)):
        page = await list_steps(api, "many", f"page={number}&page_size=2")
        assert page["pagination"] == {
            "page": number,
            "page_size": 2,
            "current_page_size": expected,
            "total_pages": 3,
            "total_results": 5,
        }
        assert len(page["data"]) == expected
        seen.extend(item["name"] for item in page["data"])
    assert seen == ["s00", "s01", "s02", "s03", "s04"]


async def test_page_size_dividing_total_exactly(api: Api) -> None:
    await sequential_job(api, "even", 4)
    page = await list_steps(api, "even", "page=2&page_size=2")
    assert page["pagination"]["total_pages"] == 2
    assert page["pagination"]["current_page_size"] == 2
    assert [item["name"] for item in page["data"]] == ["s02", "s03"]


async def test_page_past_the_end(api: Api) -> None:
    await sequential_job(api, "few", 3)
    page = await list_steps(api, "few", "page=7&page_size=2")
    assert page["data"] == []
    assert page["pagination"] == {
        "page": 7,
        "page_size": 2,
        "current_page_size": 0,
        "total_pages": 2,
        "total_results": 3,
    }


async def test_page_past_the_end_with_nothing_at_all(api: Api) -> None:
    page = await list_steps(api, "-", "page=3&page_size=5")
    assert page["data"] == []
    assert page["pagination"] == {
        "page": 3,
        "page_size": 5,
        "current_page_size": 0,
        "total_pages": 1,
        "total_results": 0,
    }


async def test_large_page_size_holds_everything(api: Api) -> None:
    await sequential_job(api, "few", 3)
    page = await list_steps(api, "few", "page_size=1000")
    assert page["pagination"]["total_pages"] == 1
    assert page["pagination"]["current_page_size"] == 3


async def test_paging_agrees_with_one_big_page_for_every_sort(api: Api) -> None:
    await sequential_job(api, "pager", 5)
    for sort in ("created_at", "-created_at", "updated_at", "-updated_at"):
        whole = [item["id"] for item in (await list_steps(api, "pager", f"sort={sort}"))["data"]]
        paged: list[str] = []
        for number in (1, 2, 3):
            page = await list_steps(api, "pager", f"sort={sort}&page={number}&page_size=2")
            assert page["sort"] == sort
            paged.extend(item["id"] for item in page["data"])
        assert paged == whole, sort
        assert len(set(whole)) == 5


# --------------------------------------------------------------------------------- sorting


async def test_every_sort_follows_the_timestamps(api: Api) -> None:
    # "late" is created first but updated last (cancelled after "early" finished), so the
    # created_at and updated_at orders disagree.
    await api.create_job([shell("hold", "sleep 30")], name="late")
    await api.wait_job("late", {"active"})
    await sequential_job(api, "early", 2)
    await cancel(api, "late")

    by_created = (await list_steps(api, "-", "sort=created_at"))["data"]
    assert [(i["job"], i["name"]) for i in by_created] == [
        ("late", "hold"),
        ("early", "s00"),
        ("early", "s01"),
    ]

    for sort in ("created_at", "-created_at", "updated_at", "-updated_at"):
        page = await list_steps(api, "-", f"sort={sort}")
        assert page["sort"] == sort
        field = sort.lstrip("-")
        stamps = [ts(item[field]) for item in page["data"]]
        assert stamps == sorted(stamps, reverse=sort.startswith("-")), (sort, stamps)
        assert len(stamps) == 3

    by_updated = (await list_steps(api, "-", "sort=updated_at"))["data"]
    assert (by_updated[-1]["job"], by_updated[-1]["name"]) == ("late", "hold")
    by_updated_desc = (await list_steps(api, "-", "sort=-updated_at"))["data"]
    assert (by_updated_desc[0]["job"], by_updated_desc[0]["name"]) == ("late", "hold")
    by_created_desc = (await list_steps(api, "-", "sort=-created_at"))["data"]
    assert [i["id"] for i in by_created_desc] == [i["id"] for i in reversed(by_created)]


# --------------------------------------------------------------------------------- filters


async def test_filter_status_single_value_as_the_sdk_sends_it(mixed: Api) -> None:
    page = await list_steps(mixed, "-", "filter%5Bstatus%5D=active")
    assert names(page) == [("runs", "hold")]
    assert page["filter"] == {"status": ["active"]}
    assert page["pagination"]["total_results"] == 1


async def test_filter_status_plain_brackets(mixed: Api) -> None:
    page = await list_steps(mixed, "-", "filter[status]=completed")
    assert names(page) == [("ok", "one"), ("ok", "two")]
    assert page["filter"] == {"status": ["completed"]}


async def test_filter_status_comma_list(mixed: Api) -> None:
    page = await list_steps(mixed, "-", "filter[status]=active,error")
    assert sorted(names(page)) == [("bad", "boom"), ("runs", "hold")]
    assert page["filter"] == {"status": ["active", "error"]}
    assert page["pagination"]["total_results"] == 2


async def test_filter_status_sdk_encoded_comma_list(mixed: Api) -> None:
    page = await list_steps(mixed, "-", "filter%5Bstatus%5D=active%2Ccompleted")
    assert sorted(names(page)) == [("ok", "one"), ("ok", "two"), ("runs", "hold")]
    assert page["filter"] == {"status": ["active", "completed"]}


async def test_filter_status_repeated_keys(mixed: Api) -> None:
    page = await list_steps(mixed, "-", "filter[status]=active&filter[status]=error")
    assert sorted(names(page)) == [("bad", "boom"), ("runs", "hold")]
    assert sorted(page["filter"]["status"]) == ["active", "error"]
    page = await list_steps(mixed, "-", "filter[status]=active,error&filter[status]=completed")
    assert page["pagination"]["total_results"] == 4


async def test_filter_status_matching_nothing(mixed: Api) -> None:
    page = await list_steps(mixed, "-", "filter[status]=paused")
    assert page["data"] == []
    assert page["pagination"]["total_results"] == 0
    assert page["pagination"]["total_pages"] == 1


async def test_filter_job(mixed: Api) -> None:
    page = await list_steps(mixed, "-", "filter[job]=ok")
    assert names(page) == [("ok", "one"), ("ok", "two")]
    assert page["filter"] == {"job": "ok"}
    page = await list_steps(mixed, "-", "filter%5Bjob%5D=bad")
    assert names(page) == [("bad", "boom")]


async def test_filter_source(mixed: Api) -> None:
    page = await list_steps(mixed, "-", "filter[source]=src-a")
    assert sorted(names(page)) == [("ok", "one"), ("ok", "two"), ("runs", "hold")]
    assert page["filter"] == {"source": "src-a"}
    page = await list_steps(mixed, "-", "filter[source]=src-b")
    assert names(page) == [("bad", "boom")]
    page = await list_steps(mixed, "-", "filter[source]=nobody")
    assert page["data"] == []


async def test_filters_combined(mixed: Api) -> None:
    page = await list_steps(mixed, "-", "filter[source]=src-a&filter[status]=completed")
    assert names(page) == [("ok", "one"), ("ok", "two")]
    assert page["filter"] == {"source": "src-a", "status": ["completed"]}
    page = await list_steps(mixed, "-", "filter[source]=src-a&filter[status]=active,error")
    assert names(page) == [("runs", "hold")]
    page = await list_steps(mixed, "-", "filter[job]=ok&filter[status]=active")
    assert page["data"] == []
    page = await list_steps(mixed, "-", "filter[job]=bad&filter[source]=src-b&filter[status]=error")
    assert names(page) == [("bad", "boom")]
    assert page["filter"] == {"job": "bad", "source": "src-b", "status": ["error"]}
    page = await list_steps(mixed, "-", "filter[job]=bad&filter[source]=src-a")
    assert page["data"] == []


async def test_filters_with_paging_and_sort(mixed: Api) -> None:
    page = await list_steps(
        mixed, "-", "filter%5Bstatus%5D=active%2Ccompleted&sort=-created_at&page=2&page_size=2"
    )
    assert page["pagination"] == {
        "page": 2,
        "page_size": 2,
        "current_page_size": 1,
        "total_pages": 2,
        "total_results": 3,
    }
    assert page["sort"] == "-created_at"
    assert names(page) == [("runs", "hold")]


async def test_path_job_forces_the_job_filter(mixed: Api) -> None:
    page = await list_steps(mixed, "ok")
    assert names(page) == [("ok", "one"), ("ok", "two")]
    assert page["filter"] == {"job": "ok"}
    # A different filter[job] cannot widen or redirect the path's job.
    page = await list_steps(mixed, "ok", "filter[job]=bad")
    assert names(page) == [("ok", "one"), ("ok", "two")]
    assert page["filter"] == {"job": "ok"}
    page = await list_steps(mixed, "ok", "filter[status]=completed&filter[source]=src-a")
    assert names(page) == [("ok", "one"), ("ok", "two")]
    assert page["filter"] == {"job": "ok", "status": ["completed"], "source": "src-a"}
    page = await list_steps(mixed, "ok", "filter[status]=error")
    assert page["data"] == []


async def test_dash_lists_steps_of_every_job(mixed: Api) -> None:
    page = await list_steps(mixed, "-")
    assert "filter" not in page
    assert page["pagination"]["total_results"] == 4
    assert {item["job"] for item in page["data"]} == {"runs", "ok", "bad"}
    assert sorted(names(page)) == [("bad", "boom"), ("ok", "one"), ("ok", "two"), ("runs", "hold")]
    assert names(page)[0] == ("runs", "hold")
    stamps = [ts(item["created_at"]) for item in page["data"]]
    assert stamps == sorted(stamps)
    for item in page["data"]:
        assert set(item) == ITEM_FIELDS
        assert item["status"] in STATUSES


async def test_empty_filter_values_mean_no_condition(mixed: Api) -> None:
    # The reference reads `filter[x]=` as None; it neither filters nor shows up in the echo.
    page = await list_steps(mixed, "-", "filter[status]=&filter[job]=&filter[source]=")
    assert page["pagination"]["total_results"] == 4
    assert "filter" not in page
    page = await list_steps(mixed, "-", "filter[status]=&filter[status]=error")
    assert names(page) == [("bad", "boom")]
    assert page["filter"] == {"status": ["error"]}
    page = await list_steps(mixed, "ok", "filter[job]=")
    assert page["filter"] == {"job": "ok"}
    assert page["pagination"]["total_results"] == 2
    status, body = await raw(mixed, "/jobs/-/steps?filter[bogus]=")
    assert status == 422
    assert ["query", "filter", "bogus"] in [error["loc"] for error in assert_422(body)]


async def test_json_filter_parameter(mixed: Api) -> None:
    page = await list_steps(mixed, "-", 'filter={"status":["error"],"source":"src-b"}')
    assert names(page) == [("bad", "boom")]
    assert page["filter"] == {"status": ["error"], "source": "src-b"}


# --------------------------------------------------------------------------------- workspaces


async def test_workspace_isolation_and_dash_workspace(api: Api) -> None:
    a = replace(api, workspace="team-a")
    b = replace(api, workspace="team-b")
    await sequential_job(a, "shared", 1)
    await sequential_job(b, "shared", 2)
    await sequential_job(a, "only-a", 1)

    page_a = await list_steps(api, "-", workspace="team-a")
    assert sorted(names(page_a)) == [("only-a", "s00"), ("shared", "s00")]
    assert {item["workspace"] for item in page_a["data"]} == {"team-a"}
    page_b = await list_steps(api, "-", workspace="team-b")
    assert names(page_b) == [("shared", "s00"), ("shared", "s01")]
    assert {item["workspace"] for item in page_b["data"]} == {"team-b"}

    assert (await list_steps(api, "only-a", workspace="team-b"))["data"] == []
    assert (await list_steps(api, "-", workspace="nobody"))["data"] == []
    assert len((await list_steps(api, "shared", workspace="team-a"))["data"]) == 1

    every = await list_steps(api, "-", workspace="-")
    assert every["pagination"]["total_results"] == 4
    assert {item["workspace"] for item in every["data"]} == {"team-a", "team-b"}
    across = await list_steps(api, "shared", workspace="-")
    assert across["pagination"]["total_results"] == 3
    assert {item["job"] for item in across["data"]} == {"shared"}
    filtered = await list_steps(api, "-", "filter[job]=only-a", workspace="-")
    assert names(filtered) == [("only-a", "s00")]
    assert filtered["data"][0]["workspace"] == "team-a"


async def test_controller_style_query_across_workspaces(api: Api) -> None:
    other = replace(api, workspace="other")
    await sequential_job(api, "here", 1)
    await sequential_job(other, "there", 1)
    page = await list_steps(api, "-", "filter%5Bstatus%5D=completed&sort=updated_at", workspace="-")
    assert sorted(names(page)) == [("here", "s00"), ("there", "s00")]
    assert page["sort"] == "updated_at"


async def test_invalid_workspace_is_422(api: Api) -> None:
    status, body = await raw(api, "/jobs/-/steps", workspace="bad!ws")
    assert status == 422
    [error] = assert_422(body)
    assert error["loc"] == ["path", "workspace"]


# --------------------------------------------------------------------------------- 422


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ("filter[status]=running", ["query", "filter", "status", 0]),
        ("filter%5Bstatus%5D=active%2Cbogus", ["query", "filter", "status", 1]),
        ("filter[status]=ACTIVE", ["query", "filter", "status", 0]),
        ("filter[name]=x", ["query", "filter", "name"]),
        ("filter[job][$eq]=x", ["query", "filter", "job"]),
        ("sort=name", ["query", "sort"]),
        ("sort=-source", ["query", "sort"]),
        ("sort=", ["query", "sort"]),
        ("page=0", ["query", "page"]),
        ("page=-1", ["query", "page"]),
        ("page=abc", ["query", "page"]),
        ("page=1.5", ["query", "page"]),
        ("page=99999999999999999999", ["query", "page"]),
        ("page_size=0", ["query", "page_size"]),
        ("page_size=-3", ["query", "page_size"]),
        ("page_size=abc", ["query", "page_size"]),
        ("page_size=99999999999999999999", ["query", "page_size"]),
    ],
)
async def test_invalid_queries_are_422(api: Api, query: str, loc: list[str | int]) -> None:
    status, body = await raw(api, f"/jobs/-/steps?{query}")
    assert status == 422, body
    detail = assert_422(body)
    assert loc in [error["loc"] for error in detail], detail


async def test_invalid_status_on_a_named_job_is_422(api: Api) -> None:
    await sequential_job(api, "solo", 1)
    status, body = await raw(api, "/jobs/solo/steps?filter%5Bstatus%5D=done")
    assert status == 422
    assert_422(body)


async def test_malformed_json_filter_is_422(api: Api) -> None:
    status, body = await raw(api, "/jobs/-/steps?filter=%7Bnot-json")
    assert status == 422
    assert_422(body)
    status, body = await raw(api, "/jobs/-/steps?filter=%5B1%5D")
    assert status == 422
    assert_422(body)
