"""Human output: tables, statuses, durations. Colour only on a terminal (rich decides; NO_COLOR
is honoured), and every status also reads without colour (a word, not just a hue)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from web.cli.outcome import FINISHED

STATUS_STYLE = {
    "completed": "green",
    "active": "cyan",
    "running": "cyan",
    "pending": "blue",
    "created": "blue",
    "paused": "yellow",
    "pausing": "yellow",
    "resuming": "yellow",
    "cancelling": "magenta",
    "cancelled": "magenta",
    "error": "bold red",
}


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def styled_status(status: str) -> str:
    style = STATUS_STYLE.get(status, "")
    return f"[{style}]{status}[/]" if style else status


def parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def human_duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def job_times(job: dict[str, Any], now: datetime | None = None) -> tuple[float | None, float | None]:
    """(age, duration) in seconds: duration runs until now while the job is unfinished."""
    now = now or datetime.now(UTC)
    created, updated = parse_time(job.get("created_at")), parse_time(job.get("updated_at"))
    if created is None:
        return None, None
    end = updated if job.get("status") in FINISHED and updated is not None else now
    return (now - created).total_seconds(), (end - created).total_seconds()


def percentage(job: dict[str, Any]) -> float | None:
    details = job.get("status_details") or {}
    value = details.get("percentage_done") if isinstance(details, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return max(0.0, min(100.0, float(value)))
    return None


def progress_text(value: float | None, width: int = 10) -> str:
    if value is None:
        return ""
    filled = round(value / 100 * width)
    return f"{'█' * filled}{'░' * (width - filled)} {value:3.0f}%"


def table(*columns: str) -> Table:
    grid = Table(box=None, pad_edge=False, header_style="bold", show_edge=False)
    for column in columns:
        grid.add_column(column, no_wrap=column in ("NAME", "STATUS"))
    return grid
