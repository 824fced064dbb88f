"""Query-string parsing: paging, and the `filter` of List Jobs and List Steps in every form the
reference accepts.

The reference (`make_filter_dep`, nemo_platform_plugin/api) reads a filter in three forms:

- bracket (deepObject) keys, what the official SDK sends: `filter[status]=active,error`,
  `filter[name][$like]=x`, `filter[created_at][gte]=...` (`$` may be left out of an operator; a
  comma-joined value is a list; a value starting with `{` or `[` is JSON; an empty value is null);
- `filter=<JSON object>`, Mongo style: `{"status": {"$in": ["active"]}, "name": "x"}`, with
  `$and`, `$or` and `$not`;
- `filter=<text>`, its text grammar (`TEXT_GRAMMAR`, in web/query/text.py):
  `status:"error" AND name~"train"`.

Each form becomes one expression tree (`Condition` / `Logical`, what the reference calls a
FilterOperation), echoed in the list's `filter` exactly as the reference's `to_dict` echoes its tree.
The tree is then lowered to what the store evaluates (`JobFilter`, `StepFilter`: per field, a set of
statuses, one time range, or a string condition of eq / in / nin / one substring), with the
reference's meaning: `status` and the constant fields (`workspace`, `entity_type`) are evaluated
over their values, so any combination of operators on them is exact. A tree the store cannot
express (an OR across two fields, a NOT of a substring match, ...) is a 422 that says so, never a
different answer.

Where localjobs departs on purpose (README, "Differences"): a bare list (`filter[status]=a,b`,
`{"status": ["a","b"]}`) means any-of, not "equal to the list"; List Steps applies a plain `filter=`
(JSON or text) where the reference ignores it; a plain `filter=` and bracket keys together are both
applied (the reference drops the brackets); `$nin` lets a null through, as the store's NOT IN does
(a job without a project is "not in p1"); a misspelt status is a 422, not an empty page; errors are
422 with a `loc` (the reference answers 400).

The package, one job a module: `paging` (page, page_size, sort); `tree` (the expression tree, its
echo, the 422); `documents` (bracket keys and JSON objects to a tree); `text` (the text grammar's
parser); `conditions` (per-field conditions and their algebra); `lowering` (a tree to those
conditions); `filters` (List Jobs' and List Steps' filters, built from the others).
"""

from web.query.documents import bracket_tree, deep_object, document_tree
from web.query.filters import parse_jobs_filter, parse_steps_filter
from web.query.paging import MAX_PAGE_SIZE, JobsQuery, Paging, StepsQuery, parse_paging
from web.query.text import TEXT_GRAMMAR, TextFilterError, parse_text, unquote
from web.query.tree import COMPARISONS, Condition, Expr, Logical, to_echo

__all__ = [
    "COMPARISONS",
    "MAX_PAGE_SIZE",
    "TEXT_GRAMMAR",
    "Condition",
    "Expr",
    "JobsQuery",
    "Logical",
    "Paging",
    "StepsQuery",
    "TextFilterError",
    "bracket_tree",
    "deep_object",
    "document_tree",
    "parse_jobs_filter",
    "parse_paging",
    "parse_steps_filter",
    "parse_text",
    "to_echo",
    "unquote",
]
