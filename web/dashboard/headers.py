"""The headers every dashboard response carries: what the browser may load, and who may frame it."""

from __future__ import annotations

# Only this origin's own scripts, styles and images, and fetch() to this origin: no inline script
# (an injected string could not run), no outside request, no framing by another site (a framed page
# could be clicked through: clickjacking of the cancel and delete buttons).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

COMMON = {
    "X-Content-Type-Options": "nosniff",
    # The login URL carries the token: no page of ours tells another site where it came from (not
    # no-referrer: with it a browser sends `Origin: null` on the login form, which is refused).
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}

PAGE = {
    **COMMON,
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    # A page depends on the login state: never kept, never shared by a cache.
    "Cache-Control": "no-store",
}
