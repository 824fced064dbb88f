"""Whether the browser tests can run: Playwright (from PyPI) driving the system's Chromium
(Debian's package; scripts/setup_browser.sh installs it), never a browser Playwright downloads."""

from __future__ import annotations

import importlib.util
import os
import shutil

from tests.helpers import require

CHROMIUM = os.environ.get("LOCALJOBS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def browser_ready() -> str | None:
    """None when Playwright imports and the Chromium binary is there; otherwise why not."""
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (scripts/setup.sh installs the dev extra)"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (run scripts/setup_browser.sh, or set LOCALJOBS_CHROMIUM)"
    return None


def require_browser() -> None:
    """Skip only when explicitly allowed (LOCALJOBS_SKIP_BROWSER=1); otherwise a missing browser fails."""
    require(browser_ready(), switch="LOCALJOBS_SKIP_BROWSER", what="browser", needs="Chromium and Playwright")
