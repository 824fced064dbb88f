"""GET W/jobs: paging, sorting and the deepObject filter as the official SDK encodes it."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from yarl import URL

from tests.conftest import Api, assert_422, shell, step
from tests.helpers import ts

PAGINATION_FIELDS = {"page", "page_size", "current_page_size", "total_pages", "total_results"}
JOB_FIELDS = {
    "id",
    "attempt_id",
    "name",
    "workspace",
    "project",
    "description",
    "source",
    "spec",
    "platform_spec",
    "fileset",
    "output_location",
    "status",
    "status_details",
    "error_details",
    "created_at",
    "updated_at",
    "ownership",
    "custom_fields",
}


# --------------------------------------------------------------------------------- helpers


async def raw(api: Api, query: str = "", workspace: str | None = None) -> tuple[int, Any]:
    """GET W/jobs with the query string exactly as written (already percent-encoded)."""
    ws = workspace if workspace is not None else api.workspace
    url = URL(f"{api.base_url}/apis/jobs/v2/workspaces/{ws}/jobs{'?' + query if query else ''}", encoded=True)
    async with api.session.get(url) as resp:
        assert resp.content_type == "application/json", await resp.text()
        return resp.status, await resp.json()


async def list_jobs(api: Api, query: str = "", workspace: str | None = None) -> dict[str, Any]:
    status, page = await raw(api, query, workspace)
    assert status == 200, page
    return page  # type: ignore[no-any-return]


def sdk(params: dict[str, str]) -> str:
    """The SDK's encoding: urllib's urlencode, so [ ] $ , : + are all percent-encoded."""
    return urlencode(params)


def names(page: dict[str, Any]) -> list[str]:
    return [item["name"] for item in page["data"]]


async def done(api: Api, name: str, *, ok: bool = True, **extra: Any) -> dict[str, Any]:
    await api.create_job([step("only", "true" if ok else "false")], name=name, **extra)
    return await api.wait_job(name)


async def cancel(api: Api, name: str) -> None:
    status, body = await api.request("POST", f"/jobs/{name}/cancel")
    assert status == 200, body
    assert (await api.wait_job(name))["status"] == "cancelled"


@pytest.fixture
async def statuses(api: Api) -> Any:
    """Three jobs: ok completed, bad error, runs active."""
    await done(api, "ok")
    await done(api, "bad", ok=False)
    await api.create_job([shell("hold", "sleep 30")], name="runs")
    await api.wait_job("runs", {"active"})
    yield api
    await cancel(api, "runs")


@pytest.fixture
async def named(api: Api) -> Any:
    """Jobs with varied names, sources and projects (in creation order)."""
    await done(api, "alpha-one", source="zeta", project="p1")
    await done(api, "alpha-two", source="alpha", project="p1")
    await done(api, "beta-one", source="mid", project="p2")
    await done(api, "x_y-1", source="mid")
    await done(api, "xay-1", source="mid")
    return api


# --------------------------------------------------------------------------------- envelope, paging


async def test_defaults_and_envelope(api: Api) -> None:
    for i in range(12):
        await api.create_job([step("only", "true")], name=f"job-{i:02d}")
    page = await list_jobs(api)
    # As the reference's (exclude_none): no filter, no `filter` key.
    assert set(page) == {"data", "pagination", "sort"}
    assert page["pagination"] == {
        "page": 1,
        "page_size": 10,
        "current_page_size": 10,
        "total_pages": 2,
        "total_results": 12,
    }
    assert page["sort"] == "-created_at"
    assert names(page) == [f"job-{i:02d}" for i in range(11, 1, -1)]
    second = await list_jobs(api, "page=2")
    assert names(second) == ["job-01", "job-00"]
    assert second["pagination"]["current_page_size"] == 2
    for i in range(12):
        await api.wait_job(f"job-{i:02d}")


async def test_items_have_no_nulls(api: Api) -> None:
    await done(api, "plain")
    await done(api, "rich", project="p", description="d", ownership={"o": 1}, custom_fields={"c": 2})
    page = await list_jobs(api)
    by_name = {item["name"]: item for item in page["data"]}
    for item in by_name.values():
        assert all(value is not None for value in item.values()), item
        assert set(item) <= JOB_FIELDS
        assert {"id", "name", "workspace", "source", "status", "platform_spec", "fileset"} <= set(item)
    assert "project" not in by_name["plain"]
    assert by_name["rich"]["project"] == "p"
    assert by_name["rich"]["custom_fields"] == {"c": 2}
    # GET of one job keeps its nulls (only the lists drop them).
    status, single = await api.request("GET", "/jobs/plain")
    assert status == 200 and set(single) == JOB_FIELDS and single["project"] is None


async def test_empty_list(api: Api) -> None:
    page = await list_jobs(api, "page=4&page_size=3")
    assert page["data"] == []
    assert page["pagination"] == {
        "page": 4,
        "page_size": 3,
        "current_page_size": 0,
        "total_pages": 1,
        "total_results": 0,
    }


async def test_pages_and_past_the_end(api: Api) -> None:
    for i in range(5):
        await done(api, f"job-{i}")
    seen: list[str] = []
    for number, size in ((1, 2), (2, 2), (3, 1)):
        page = await list_jobs(api, f"page={number}&page_size=2&sort=created_at")
        assert page["pagination"] == {
            "page": number,
            "page_size": 2,
            "current_page_size": size,
            "total_pages": 3,
            "total_results": 5,
        }
        seen += names(page)
    assert seen == [f"job-{i}" for i in range(5)]
    page = await list_jobs(api, "page=9&page_size=2")
    assert page["data"] == [] and page["pagination"]["total_results"] == 5
    assert page["pagination"]["total_pages"] == 3


# --------------------------------------------------------------------------------- sorting


async def test_every_sort(named: Api) -> None:
    created = ["alpha-one", "alpha-two", "beta-one", "x_y-1", "xay-1"]
    assert names(await list_jobs(named, "sort=created_at")) == created
    assert names(await list_jobs(named, "sort=-created_at")) == created[::-1]
    for sort in ("created_at", "-created_at", "updated_at", "-updated_at"):
        page = await list_jobs(named, f"sort={sort}")
        assert page["sort"] == sort
        stamps = [ts(item[sort.lstrip("-")]) for item in page["data"]]
        assert stamps == sorted(stamps, reverse=sort.startswith("-")), sort
    by_source = await list_jobs(named, "sort=source")
    assert [item["source"] for item in by_source["data"]] == ["alpha", "mid", "mid", "mid", "zeta"]
    assert by_source["sort"] == "source"
    by_source_desc = await list_jobs(named, "sort=-source")
    assert [item["source"] for item in by_source_desc["data"]] == ["zeta", "mid", "mid", "mid", "alpha"]


async def test_updated_at_order_differs_from_created_at(api: Api) -> None:
    await api.create_job([shell("hold", "sleep 30")], name="first")
    await api.wait_job("first", {"active"})
    await done(api, "second")
    await cancel(api, "first")
    assert names(await list_jobs(api, "sort=created_at")) == ["first", "second"]
    assert names(await list_jobs(api, "sort=updated_at")) == ["second", "first"]
    assert names(await list_jobs(api, "sort=-updated_at")) == ["first", "second"]


# --------------------------------------------------------------------------------- name / source / project


async def test_name_eq(named: Api) -> None:
    page = await list_jobs(named, sdk({"filter[name]": "beta-one"}))
    assert names(page) == ["beta-one"]
    assert page["filter"] == {"name": {"$eq": "beta-one"}}
    assert page["pagination"]["total_results"] == 1
    assert names(await list_jobs(named, sdk({"filter[name][$eq]": "alpha-two"}))) == ["alpha-two"]
    assert names(await list_jobs(named, "filter[name]=beta")) == []


async def test_name_like_is_case_insensitive_substring(named: Api) -> None:
    page = await list_jobs(named, sdk({"filter[name][$like]": "ALPHA", "sort": "created_at"}))
    assert names(page) == ["alpha-one", "alpha-two"]
    assert page["filter"] == {"name": {"$like": "ALPHA"}}
    assert names(await list_jobs(named, sdk({"filter[name][$like]": "-one", "sort": "created_at"}))) == [
        "alpha-one",
        "beta-one",
    ]
    # The operator may be written without `$`; LIKE wildcards are literal.
    assert names(await list_jobs(named, "filter[name][like]=Ha-T")) == ["alpha-two"]
    assert names(await list_jobs(named, sdk({"filter[name][$like]": "x_y"}))) == ["x_y-1"]
    assert names(await list_jobs(named, sdk({"filter[name][$like]": "%"}))) == []


async def test_name_in_and_nin(named: Api) -> None:
    page = await list_jobs(named, sdk({"filter[name][$in]": "alpha-one,beta-one", "sort": "created_at"}))
    assert names(page) == ["alpha-one", "beta-one"]
    assert page["filter"] == {"name": {"$in": ["alpha-one", "beta-one"]}}
    page = await list_jobs(named, sdk({"filter[name][$nin]": "alpha-one,beta-one", "sort": "created_at"}))
    assert names(page) == ["alpha-two", "x_y-1", "xay-1"]
    assert page["pagination"]["total_results"] == 3
    # A bare comma list means any-of.
    assert sorted(names(await list_jobs(named, "filter[name]=xay-1,x_y-1"))) == ["x_y-1", "xay-1"]


async def test_name_operators_combined(named: Api) -> None:
    query = sdk({"filter[name][$like]": "alpha", "filter[name][$in]": "alpha-one,beta-one"})
    assert names(await list_jobs(named, query)) == ["alpha-one"]
    query = sdk({"filter[name][$like]": "one", "filter[name][$nin]": "beta-one"})
    assert names(await list_jobs(named, query)) == ["alpha-one"]


async def test_source_and_project(named: Api) -> None:
    page = await list_jobs(named, sdk({"filter[source]": "mid", "sort": "created_at"}))
    assert names(page) == ["beta-one", "x_y-1", "xay-1"]
    assert page["filter"] == {"source": {"$eq": "mid"}}
    assert names(await list_jobs(named, sdk({"filter[source][$like]": "ET"}))) == ["alpha-one"]
    page = await list_jobs(named, sdk({"filter[project]": "p1", "sort": "created_at"}))
    assert names(page) == ["alpha-one", "alpha-two"]
    query = sdk({"filter[project]": "p1", "filter[source]": "alpha", "filter[name][$like]": "alpha"})
    assert names(await list_jobs(named, query)) == ["alpha-two"]
    assert names(await list_jobs(named, sdk({"filter[project][$nin]": "p1", "sort": "created_at"}))) == [
        "beta-one",
        "x_y-1",
        "xay-1",
    ]


async def test_json_filter_parameter(named: Api) -> None:
    query = sdk({"filter": '{"name": {"$like": "alpha"}, "project": "p1"}', "sort": "created_at"})
    assert names(await list_jobs(named, query)) == ["alpha-one", "alpha-two"]


# --------------------------------------------------------------------------------- status


async def test_status_scalar(statuses: Api) -> None:
    page = await list_jobs(statuses, sdk({"filter[status]": "active"}))
    assert names(page) == ["runs"]
    assert page["filter"] == {"status": {"$eq": "active"}}
    assert page["pagination"]["total_results"] == 1
    assert page["pagination"]["total_pages"] == 1
    assert names(await list_jobs(statuses, "filter[status]=completed")) == ["ok"]
    assert names(await list_jobs(statuses, "filter[status]=paused")) == []


async def test_status_comma_list_means_any_of(statuses: Api) -> None:
    page = await list_jobs(statuses, sdk({"filter[status]": "active,error", "sort": "created_at"}))
    assert names(page) == ["bad", "runs"]
    assert page["filter"] == {"status": {"$in": ["active", "error"]}}
    page = await list_jobs(statuses, "filter%5Bstatus%5D=completed%2Cerror&sort=created_at")
    assert names(page) == ["ok", "bad"]
    page = await list_jobs(statuses, "filter[status]=active&filter[status]=completed&sort=created_at")
    assert names(page) == ["ok", "runs"]
    page = await list_jobs(statuses, sdk({"filter[status][$in]": "error,completed", "sort": "created_at"}))
    assert names(page) == ["ok", "bad"]


async def test_total_results_counts_after_the_status_filter(statuses: Api) -> None:
    page = await list_jobs(statuses, "filter[status]=completed,error&page_size=1")
    assert page["pagination"] == {
        "page": 1,
        "page_size": 1,
        "current_page_size": 1,
        "total_pages": 2,
        "total_results": 2,
    }
    page = await list_jobs(statuses, "filter[status]=cancelled")
    assert page["pagination"]["total_results"] == 0
    assert page["pagination"]["total_pages"] == 1


async def test_status_with_other_filters(statuses: Api) -> None:
    assert names(await list_jobs(statuses, "filter[status]=error&filter[name][$like]=ba")) == ["bad"]
    assert names(await list_jobs(statuses, "filter[status]=error&filter[name]=ok")) == []


# --------------------------------------------------------------------------------- dates


async def test_created_at_range_as_the_sdk_encodes_it(api: Api) -> None:
    first = await done(api, "first")
    second = await done(api, "second")
    third = await done(api, "third")

    old = sdk({"filter[created_at][$gte]": "2024-01-02T03:04:05+00:00", "sort": "created_at"})
    assert "%2B00%3A00" in old and "%5B%24gte%5D" in old
    assert names(await list_jobs(api, old)) == ["first", "second", "third"]
    future = (datetime.now().astimezone() + timedelta(days=1)).isoformat()
    assert names(await list_jobs(api, sdk({"filter[created_at][$gte]": future}))) == []
    assert names(await list_jobs(api, sdk({"filter[created_at][$lte]": "2024-01-02T03:04:05+00:00"}))) == []

    # Bounds are inclusive, at microsecond precision.
    gte = ts(second["created_at"]).isoformat()
    page = await list_jobs(api, sdk({"filter[created_at][$gte]": gte, "sort": "created_at"}))
    assert names(page) == ["second", "third"]
    assert page["filter"] == {"created_at": {"$gte": gte}}
    lte = ts(second["created_at"]).isoformat()
    assert names(await list_jobs(api, sdk({"filter[created_at][$lte]": lte, "sort": "created_at"}))) == [
        "first",
        "second",
    ]
    both = sdk({"filter[created_at][$gte]": gte, "filter[created_at][$lte]": lte})
    assert names(await list_jobs(api, both)) == ["second"]
    # Other offsets and the Z form name the same instants.
    shifted = ts(third["created_at"]).astimezone(datetime.fromisoformat("2024-01-01T00:00:00+05:30").tzinfo)
    assert names(await list_jobs(api, sdk({"filter[created_at][$gte]": shifted.isoformat()}))) == ["third"]
    assert names(await list_jobs(api, sdk({"filter[created_at][gte]": third["created_at"]}))) == ["third"]
    assert first["created_at"] < second["created_at"]


async def test_updated_at_range(api: Api) -> None:
    first = await done(api, "first")
    second = await done(api, "second")
    assert ts(first["updated_at"]) < ts(second["updated_at"])
    query = sdk({"filter[updated_at][$gte]": ts(second["updated_at"]).isoformat()})
    assert names(await list_jobs(api, query)) == ["second"]
    query = sdk({"filter[updated_at][$lte]": ts(first["updated_at"]).isoformat()})
    assert names(await list_jobs(api, query)) == ["first"]
    query = sdk(
        {
            "filter[updated_at][$gte]": ts(first["created_at"]).isoformat(),
            "filter[created_at][$lte]": ts(first["created_at"]).isoformat(),
        }
    )
    assert names(await list_jobs(api, query)) == ["first"]


# --------------------------------------------------------------------------------- workspaces


async def test_workspace_isolation(api: Api) -> None:
    a = replace(api, workspace="team-a")
    b = replace(api, workspace="team-b")
    await done(a, "same")
    await done(b, "same")
    await done(a, "only-a")
    page_a = await list_jobs(api, "sort=created_at", workspace="team-a")
    assert names(page_a) == ["same", "only-a"]
    assert {item["workspace"] for item in page_a["data"]} == {"team-a"}
    page_b = await list_jobs(api, workspace="team-b")
    assert names(page_b) == ["same"] and page_b["data"][0]["workspace"] == "team-b"
    assert (await list_jobs(api, workspace="nobody"))["data"] == []
    assert names(await list_jobs(api, "filter[workspace]=team-a", workspace="team-a")) == ["only-a", "same"]
    assert (await list_jobs(api, "filter[workspace]=team-b", workspace="team-a"))["data"] == []


# --------------------------------------------------------------------------------- 422


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ("filter[foo]=x", ["query", "filter", "foo"]),
        ("filter[id]=x", ["query", "filter", "id"]),
        ("filter[name][$regex]=x", ["query", "filter", "name", "$regex"]),
        ("filter[status]=running", ["query", "filter", "status", "$eq"]),
        ("filter%5Bstatus%5D=active%2Cbogus", ["query", "filter", "status", "$in", 1]),
        ("filter[created_at][$gte]=notadate", ["query", "filter", "created_at", "$gte"]),
        ("filter[updated_at][$lte]=2024-13-45", ["query", "filter", "updated_at", "$lte"]),
        ("filter[created_at][$like]=x", ["query", "filter", "created_at", "$like"]),
        ("filter=%7Bbad", ["query", "filter"]),
        ("sort=name", ["query", "sort"]),
        ("sort=status", ["query", "sort"]),
        ("page=0", ["query", "page"]),
        ("page=-1", ["query", "page"]),
        ("page=abc", ["query", "page"]),
        ("page=99999999999999999999", ["query", "page"]),
        ("page_size=0", ["query", "page_size"]),
        ("page_size=abc", ["query", "page_size"]),
    ],
)
async def test_invalid_queries_are_422(api: Api, query: str, loc: list[str | int]) -> None:
    status, body = await raw(api, query)
    assert status == 422, body
    detail = assert_422(body)
    assert loc in [error["loc"] for error in detail], detail


async def test_invalid_workspace_is_422(api: Api) -> None:
    status, body = await raw(api, workspace="bad!ws")
    assert status == 422
    assert assert_422(body)[0]["loc"] == ["path", "workspace"]
