"""The reference's filter forms on List Jobs and List Steps: text (`filter=status:"error"`), JSON and
brackets, with the reference's own parser and evaluator as the judge.

- Syntax: web.query's text parser gives the reference's tree (`parse_text_filter(...).to_dict()`) for
  every input, including its lexer's corners; it fails where the reference's fails.
- Meaning: for the same query string, a real daemon lists exactly the jobs that the reference's own
  pipeline (`make_filter_dep(PlatformJobsListFilter)`, then its in-memory evaluator over each job,
  as its dispatcher does) accepts.
"""

from __future__ import annotations

import json
import random
import warnings
from typing import Any
from urllib.parse import urlencode

import pytest
from multidict import MultiDict
from nemo_platform_plugin.api.filter import parse_bracket_filter, parse_json_filter
from nemo_platform_plugin.api.parsed_filter import make_filter_dep
from nemo_platform_plugin.api.text_filter import TextFilterTransformer, parse_text_filter
from nemo_platform_plugin.in_memory_filter import InMemoryFilterRepository
from nemo_platform_plugin.jobs.openapi_utils import parse_deep_object
from nmp.core.jobs.api.v2.jobs.schemas import PlatformJobsListFilter
from starlette.datastructures import QueryParams
from starlette.requests import Request
from yarl import URL

from tests.conftest import Api, assert_422, shell, step
from web.query import TextFilterError, bracket_tree, document_tree, parse_text, to_echo, unquote


def _reference_tree(text: str) -> dict[str, Any] | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an unknown escape warns in Python, as in production
        try:
            tree: dict[str, Any] = parse_text_filter(text).to_dict()
        except Exception:
            return None
    return tree


def _our_tree(text: str) -> dict[str, Any] | None:
    try:
        return to_echo(parse_text(text))
    except TextFilterError:
        return None


# --------------------------------------------------------------------------------- syntax

CASES = [
    # The reference's own documented examples (nemo_platform_plugin/api/text_filter.py)...
    'name:"llama"',
    "created>1620310503",
    'email~"amy"',
    '-currency:"jpy"',
    'status:"active" AND amount>500',
    'currency:"usd" OR currency:"eur"',
    'metadata["key"]:"value"',
    'data.nested.key:"value"',
    "url:null",
    '(name:"a" OR name:"b") AND status:"active"',
    '-(name:"llama" AND status:"draft")',
    'status IN ["active", "pending"]',
    'status NOT IN ["deleted", "archived"]',
    'created>"2024-01-01"',
    'created>="2024-01-01T10:00:00Z"',
    'created>"2024-01-01" AND created<"2024-12-31"',
    # ... and its corners: precedence, juxtaposition, keyword case and keywords inside names.
    'a:"x" b:"y" OR c:"z"',
    'x:"a" OR y:"b" OR (z:"c" AND -w:"d")',
    'STATUS:"x" oR b:"y" aNd c:"z"',
    'a:"x" order:"y"',
    'a:"x" ANDROID:"y"',
    'and:"x"',
    'null:"x"',
    'a:nullx:"y"',
    'a NOTIN ["x"]',
    "a in []",
    'a IN [null, 1, 2.5, "s"]',
    "a:-5",
    "a:1.5",
    "a:01",
    'a:"x"-b:"y"',
    'a:"x"(b:"y" OR c:"z")',
    '  a : "x"  ',
    'a . b:"x"',
    "a>=1 a<=2 a>3 a<4",
    'm["k"] NOT IN ["x"]',
    # Escapes, as a Python string literal reads them, and the reference's fallback for bad ones.
    'a:"\\n\\t\\u00e9\\x41\\101\\N{BULLET}"',
    'a:"\\"q\\""',
    'a:"\\x4"',
    'a:"\\N{no such name}"',
    'a:"\\d"',
    'a:"\\777"',
    'a:"line\nbreak"',
    'a:"é"',
    # Errors on both sides.
    "",
    "a",
    "a:",
    'a:"x" AND',
    'a:"x")',
    '(a:"x"',
    '--a:"x"',
    "a:x",
    'a IN ["x",]',
    "a:5.",
    'a:"x" OR OR b:"y"',
]


@pytest.mark.parametrize("text", CASES)
def test_text_parses_as_the_references(text: str) -> None:
    assert _our_tree(text) == _reference_tree(text)


def _generated(rnd: random.Random) -> str:
    """A random text filter from the grammar, sometimes damaged."""
    names = ["a", "status", "name", "orx", "andy", "in_x", "NOTE", "nullable", "_x9", "In"]
    strings = ['"x"', '""', '"a b"', '"\\""', '"\\\\"', '"\\u00e9"', '"\\x41"', '"\\101"', '"\\q"', '"\\x4"']

    def ws() -> str:
        return rnd.choice(["", " ", "  ", "\t", "\n"])

    def value() -> str:
        return rnd.choice([*strings, "null", "NULL", "5", "-5", "2.5", "0"])

    def field() -> str:
        k = rnd.random()
        if k < 0.6:
            return rnd.choice(names)
        if k < 0.8:
            return ".".join(rnd.choice(names) for _ in range(rnd.randint(2, 3)))
        return f"{rnd.choice(names)}[{rnd.choice(strings)}]"

    def atom(depth: int) -> str:
        k = rnd.random()
        if k < 0.15 and depth < 3:
            return "(" + ws() + expr(depth + 1) + ws() + ")"
        if k < 0.3:
            items = ",".join(ws() + value() + ws() for _ in range(rnd.randint(0, 3)))
            return f"{field()} {rnd.choice(['IN', 'in', 'NOT IN', 'not  in'])}{ws()}[{items}]"
        return field() + ws() + rnd.choice([":", "~", ">", ">=", "<", "<="]) + ws() + value()

    def unary(depth: int) -> str:
        return ("-" + ws() if rnd.random() < 0.2 else "") + atom(depth)

    def conj(depth: int) -> str:
        return "".join(
            [unary(depth)]
            + [rnd.choice([" AND ", " and ", " ", "  "]) + unary(depth) for _ in range(rnd.randint(0, 2))]
        )

    def expr(depth: int) -> str:
        return "".join(
            [conj(depth)] + [rnd.choice([" OR ", " or "]) + conj(depth) for _ in range(rnd.randint(0, 2))]
        )

    text = expr(0)
    if rnd.random() < 0.3:
        i = rnd.randrange(len(text))
        text = (
            text[:i]
            + rnd.choice(["", " ", "(", ")", '"', "-", "AND", "OR", ",", "]", "["])
            + text[i + rnd.randint(0, 2) :]
        )
    return text


def test_generated_text_filters_parse_as_the_references() -> None:
    rnd = random.Random(20261128)
    parsed = 0
    for _ in range(3000):
        text = _generated(rnd)
        ours = _our_tree(text)
        assert ours == _reference_tree(text), text
        parsed += ours is not None
    assert parsed > 1500  # most are valid: the comparison is not only of errors


@pytest.mark.parametrize(
    "token",
    [
        '""',
        '"abc"',
        '"\\\\"',
        '"\\a\\b\\f\\v\\r\\0"',
        '"\\12x"',
        '"\\U0001F600"',
        '"\\U00110000"',
        '"\\u12"',
        '"\\N{"',
        '"a\\\rb"',
        '"\x00"',
    ],
)
def test_strings_unquote_as_the_references(token: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = TextFilterTransformer._unquote_string(token)
    assert unquote(token) == expected


# --------------------------------------------------------------------------------- JSON and brackets

DOCUMENTS = [
    {"name": "x"},
    {"name": {"$like": "a", "$nin": ["b", "c"]}},
    {"name": {"$in": "a,b"}},
    {"status": {"$eq": "active"}, "source": "s"},
    {"$or": [{"name": "a"}, {"name": {"$like": "b"}}]},
    {"$and": [{"status": "error"}, {"$not": {"name": "x"}}]},
    {"$not": {"status": "completed"}},
    {"name": {"$or": [{"$eq": "a"}, {"$eq": "b"}]}},
    {"name": {"$not": {"$like": "a"}}},
    {"created_at": {"$gte": "2024-01-01T00:00:00Z", "$lt": "2025-01-01"}},
]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_json_filters_read_as_the_references(document: dict[str, Any]) -> None:
    tree = document_tree(document, [])
    assert tree is not None
    assert to_echo(tree) == parse_json_filter(json.dumps(document)).to_dict()


QUERIES = [
    [("filter[name]", "x")],
    [("filter[name][$like]", "x")],
    [("filter[name][like]", "x"), ("filter[name][nin]", "a,b")],
    [("filter[created_at][gte]", "2024-01-01"), ("filter[created_at][$lte]", "2024-02-01")],
    [("filter[status][$in]", '["active","error"]')],
    [("filter[name]", '{"$like": "x"}')],
    [("filter[name][$in]", "a, b")],
]


@pytest.mark.parametrize("pairs", QUERIES)
def test_bracket_filters_read_as_the_references(pairs: list[tuple[str, str]]) -> None:
    tree = bracket_tree(MultiDict(pairs))
    assert tree is not None
    reference = parse_bracket_filter(parse_deep_object("filter", QueryParams(pairs))).to_dict()
    # The reference takes the keys from a set: the order of its conditions varies from run to run.
    assert _unordered(to_echo(tree)) == _unordered(reference)


def _unordered(echo: dict[str, Any]) -> Any:
    if list(echo) == ["$and"]:
        return sorted(json.dumps(item, sort_keys=True) for item in echo["$and"])
    return echo


def test_a_bare_list_is_any_of_not_equality() -> None:
    # localjobs (README, differences): the reference compares the status to the whole list.
    tree = bracket_tree(MultiDict([("filter[status]", "active,error")]))
    assert tree is not None and to_echo(tree) == {"status": {"$in": ["active", "error"]}}
    reference = parse_bracket_filter(parse_deep_object("filter", QueryParams("filter[status]=active,error")))
    assert reference.to_dict() == {"status": {"$eq": ["active", "error"]}}


# --------------------------------------------------------------------------------- meaning


async def _reference_names(query: str, jobs: list[dict[str, Any]]) -> list[str] | None:
    """The jobs the reference lists for `query`: its filter pipeline, then its in-memory evaluation of
    each job (status lives on the attempt; the rest as its entity store keeps it). None: refused."""
    request = Request({"type": "http", "query_string": query.encode(), "headers": []})
    try:
        parsed = await make_filter_dep(PlatformJobsListFilter)(request)
    except Exception:
        return None
    names = []
    for job in jobs:
        entity = {
            "id": job["id"],
            "name": job["name"],
            "workspace": job["workspace"],
            "project": job.get("project"),
            "entity_type": "platform_job",
            "data": {"source": job["source"], "status": job["status"], "description": job.get("description")},
        }
        if parsed.operation is None or parsed.operation.apply(InMemoryFilterRepository(entity)):
            names.append(job["name"])
    return names


async def _our_names(api: Api, query: str) -> tuple[int, Any]:
    url = URL(f"{api.ws}/jobs?{query}&page_size=100&sort=created_at", encoded=True)
    async with api.session.get(url) as resp:
        body = await resp.json()
    if resp.status != 200:
        return resp.status, body
    return 200, [item["name"] for item in body["data"]]


@pytest.fixture
async def jobs(api: Api) -> Any:
    """Jobs of every outcome, names, sources and projects (in creation order)."""
    await api.create_job([step("only", "true")], name="train-alpha", source="train", project="p1")
    await api.create_job([step("only", "false")], name="train-beta", source="train", project="p2")
    await api.create_job([step("only", "true")], name="eval-alpha", source="eval")
    await api.create_job([shell("hold", "sleep 30")], name="eval-held", source="eval", project="p1")
    await api.wait_job("eval-held", {"active"})
    await api.create_job([shell("hold", "sleep 30")], name="cancelled-one", source="ci")
    await api.wait_job("cancelled-one", {"active"})
    assert (await api.request("POST", "/jobs/cancelled-one/cancel"))[0] == 200
    for name in ("train-alpha", "train-beta", "eval-alpha", "cancelled-one"):
        await api.wait_job(name)
    yield api
    await api.request("POST", "/jobs/eval-held/cancel")
    await api.wait_job("eval-held")


TEXT_FILTERS = [
    'status:"error"',
    'status:"completed"',
    '-status:"completed"',
    'status IN ["error", "cancelled"]',
    'status NOT IN ["error", "cancelled"]',
    'status~"CAN"',
    'status>"d"',
    '(status:"completed" OR status:"error") AND -status:"error"',
    '-(status:"completed" OR status:"active")',
    'name:"train-alpha"',
    'name~"ALPHA"',
    'name~"alpha" status:"completed"',
    'name~"alpha" AND -name:"eval-alpha"',
    'name:"train-alpha" OR name:"eval-held"',
    'name IN ["train-beta", "eval-alpha", "nobody"]',
    'name NOT IN ["train-beta"] AND source:"train"',
    '-name:"train-beta" AND -name:"eval-alpha"',
    'source:"eval" project:"p1"',
    'project:"p1" OR project:"p2"',
    'project IN ["p2"]',
    'workspace:"default" AND source:"ci"',
    'workspace:"other"',
    'entity_type:"platform_job" status:"active"',
    'name:"a" name:"b"',
    'status:"completed" OR (status:"error" AND status:"active")',
    "name:null",
    '-name:null AND source:"ci"',
    'name~"a" (name:"train-alpha" OR name:"eval-held")',
]


@pytest.mark.parametrize("text", TEXT_FILTERS)
async def test_text_filters_list_what_the_reference_lists(jobs: Api, text: str) -> None:
    listed = await _list_all(jobs)
    query = urlencode({"filter": text})
    expected = await _reference_names(query, listed)
    status, ours = await _our_names(jobs, query)
    assert expected is not None, text
    assert status == 200, ours
    assert ours == expected, text


async def _list_all(api: Api) -> list[dict[str, Any]]:
    status, page = await api.request("GET", "/jobs?page_size=100&sort=created_at")
    assert status == 200
    return page["data"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "query",
    [
        {"filter": '{"status": {"$in": ["error", "cancelled"]}}'},
        {"filter": '{"$or": [{"name": "train-alpha"}, {"name": {"$in": ["eval-held", "x"]}}]}'},
        {"filter": '{"name": {"$not": {"$eq": "train-alpha"}}, "source": "train"}'},
        {"filter": '{"$not": {"status": {"$in": ["completed", "error"]}}}'},
        {"filter[status]": "error"},
        {"filter[status][$nin]": "completed,error"},
        {"filter[name][like]": "alpha", "filter[source]": "train"},
    ],
)
async def test_json_and_bracket_filters_list_what_the_reference_lists(
    jobs: Api, query: dict[str, str]
) -> None:
    listed = await _list_all(jobs)
    encoded = urlencode(query)
    expected = await _reference_names(encoded, listed)
    status, ours = await _our_names(jobs, encoded)
    assert expected is not None and status == 200, ours
    assert ours == expected


async def test_the_echo_is_the_references_tree(jobs: Api) -> None:
    text = 'name~"alpha" AND (status:"completed" OR -status:"error") source:"train"'
    status, page = await jobs.request("GET", "/jobs", params={"filter": text})
    assert status == 200, page
    assert page["filter"] == _reference_tree(text)
    assert [item["name"] for item in page["data"]] == ["train-alpha"]


async def test_dates_in_text(api: Api) -> None:
    first = await api.create_job([step("only", "true")], name="first")
    second = await api.create_job([step("only", "true")], name="second")
    for name in ("first", "second"):
        await api.wait_job(name)
    cases = {
        f'created_at>="{second["created_at"]}"': ["second"],
        f'created_at>"{first["created_at"]}"': ["second"],
        f'created_at<"{second["created_at"]}"': ["first"],
        f'created_at>="{first["created_at"]}" OR created_at>="{second["created_at"]}"': ["first", "second"],
        f'created_at:"{first["created_at"]}"': ["first"],
        f'-created_at<"{second["created_at"]}"': ["second"],
        'created_at>"2000-01-01" created_at<"2000-01-02"': [],
        "created_at>946684800": ["first", "second"],  # a number: seconds since the epoch
    }
    for text, expected in cases.items():
        status, names = await _our_names(api, urlencode({"filter": text}))
        assert (status, names) == (200, expected), text


# --------------------------------------------------------------------------------- refused


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('name:"a" OR source:"b"', "an OR across fields (name, source)"),
        ('-(name:"a" AND source:"b")', "a negation of conditions on several fields"),
        ('-name~"a"', "a negated substring match"),
        ('name~"a" OR name:"b"', "an OR with a substring match"),
        ('name~"a" name~"b"', "more than one substring match"),
        ("project:null", "a test for a missing project"),
        ('created_at<"2024-01-01" OR created_at>"2025-01-01"', "several separate ranges"),
        ('id:"platform-job-x"', "by id"),
        ('data.source:"x"', "nested"),
        ('bogus:"x"', "unknown filter field 'bogus'"),
        ('name>"a"', "applies to created_at and updated_at only"),
        ('status:"running"', "Input should be"),
        ('created_at~"2024"', "does not apply to created_at"),
        ('created_at>"soon"', "datetime"),
        ("name:5", "valid string"),
        ('status:"error" AND', "position 18"),
        ("status=error", "neither a JSON object nor a valid text filter"),
        ('name:"\\ud800"', "unpaired surrogate"),
    ],
)
async def test_what_localjobs_cannot_evaluate_is_a_422_that_says_why(api: Api, text: str, says: str) -> None:
    status, body = await api.request("GET", "/jobs", params={"filter": text})
    assert status == 422, body
    detail = assert_422(body)
    assert any(says in error["msg"] for error in detail), detail
    assert all(error["loc"][:2] == ["query", "filter"] for error in detail), detail


async def test_nin_on_project_keeps_jobs_without_one(jobs: Api) -> None:
    # localjobs (README, differences): the reference's $nin leaves out jobs that have no project.
    status, names = await _our_names(jobs, urlencode({"filter": 'project NOT IN ["p1"]'}))
    assert (status, names) == (200, ["train-beta", "eval-alpha", "cancelled-one"])
    listed = await _list_all(jobs)
    assert await _reference_names(urlencode({"filter": 'project NOT IN ["p1"]'}), listed) == ["train-beta"]


# --------------------------------------------------------------------------------- List Steps


async def test_text_and_json_filters_on_list_steps(jobs: Api) -> None:
    # The reference ignores a plain `filter=` on List Steps; localjobs applies it (README).
    status, page = await jobs.request("GET", "/jobs/-/steps", params={"filter": 'status:"error"'})
    assert status == 200, page
    assert [(s["job"], s["status"]) for s in page["data"]] == [("train-beta", "error")]
    assert page["filter"] == {"status": ["error"]}
    status, page = await jobs.request(
        "GET", "/jobs/-/steps", params={"filter": 'source:"eval" AND status IN ["active", "completed"]'}
    )
    assert status == 200, page
    assert sorted(s["job"] for s in page["data"]) == ["eval-alpha", "eval-held"]
    assert page["filter"] == {"status": ["active", "completed"], "source": "eval"}
    status, page = await jobs.request(
        "GET", "/jobs/train-alpha/steps", params={"filter": '-status:"completed"'}
    )
    assert status == 200 and page["data"] == [], page
    assert page["filter"] == {"job": "train-alpha", "status": [s for s in _ALL if s != "completed"]}
    # Contradictions list nothing; bracket and text together are both applied.
    status, page = await jobs.request(
        "GET", "/jobs/-/steps?filter%5Bstatus%5D=error&filter=" + urlencode({"x": 'status:"completed"'})[2:]
    )
    assert status == 200 and page["data"] == [] and page["pagination"]["total_results"] == 0, page
    status, page = await jobs.request(
        "GET", "/jobs/-/steps", params={"filter": 'job:"train-alpha" job:"eval-alpha"'}
    )
    assert status == 200 and page["data"] == [], page
    for refused in ('job~"train"', 'name:"x"', 'job:"a" OR status:"error"'):
        status, body = await jobs.request("GET", "/jobs/-/steps", params={"filter": refused})
        assert status == 422, (refused, body)
        assert_422(body)


_ALL = [
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
]
