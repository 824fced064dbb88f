"""The dashboard's HTML pages: files in `templates/` with `{{name}}` holes, filled HTML-escaped.

The pages carry no data (the page's JavaScript fetches it from the API), only a few words the
server chooses (the login form's message, where to go after it), so a template engine would add
a dependency for a handful of substitutions; `render` refuses a hole it was not given a value for.
"""

from __future__ import annotations

import html
import re
from functools import cache
from pathlib import Path

from aiohttp import web

from web.dashboard.headers import PAGE

TEMPLATES = Path(__file__).resolve().parent / "templates"
_HOLE = re.compile(r"\{\{(\w+)\}\}")


@cache
def _template(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def render(name: str, **values: str) -> str:
    def fill(match: re.Match[str]) -> str:
        return html.escape(values[match.group(1)], quote=True)

    return _HOLE.sub(fill, _template(name))


def page(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8", headers=PAGE)
