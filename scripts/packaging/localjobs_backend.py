"""The build backend: setuptools, with the wheel's packages under one private parent, `localjobs`.

The repository keeps `runner/`, `storage/` and `web/` at the top (the layout asked for, and what
mypy, ruff and pytest see in a checkout). Installed under those names they would take three
common import names from every user (`pip install web.py` and localjobs would overwrite each
other's `web/__init__.py`; a project's own `storage/` package would shadow ours). So a wheel is
built from a staged copy in which the three packages live in `localjobs/` and every import of
them is rewritten to match (`from runner.x import y` -> `from localjobs.runner.x import y`); the
entry points follow. Editable installs (`pip install -e .`, for working in the checkout) and
sdists are setuptools' own, from the tree as it is.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools

ROOT = Path(__file__).resolve().parent.parent.parent
PACKAGES = ("runner", "storage", "web")
PARENT = "localjobs"
_NAMES = "|".join(PACKAGES)
_FROM_IMPORT = re.compile(rf"^(\s*)from ({_NAMES})([.\s])", re.MULTILINE)
_BARE_IMPORT = re.compile(rf"^(\s*)import ({_NAMES})\s*$", re.MULTILINE)
_DOTTED_IMPORT = re.compile(rf"^\s*import ({_NAMES})\.", re.MULTILINE)
_PUBLIC_INIT = '''"""localjobs: a local NVIDIA NeMo Platform Jobs API v2 daemon.

`LocalJobs` / `AsyncLocalJobs` start and stop one from Python code (see the README)."""

from typing import Any

__all__ = ["AsyncLocalJobs", "LocalJobs"]


def __getattr__(name: str) -> Any:
    # Lazy: the task launcher imports localjobs.runner... and must stay standard-library only.
    if name in __all__:
        from localjobs.web import testing

        return getattr(testing, name)
    raise AttributeError(name)
'''


def rewrite_imports(source: str, path: str = "?") -> str:
    if _DOTTED_IMPORT.search(source):
        # `import runner.x` binds `runner`; no rewrite keeps every later use working.
        raise RuntimeError(f"{path}: use `from {PACKAGES[0]}.x import y`, not `import {PACKAGES[0]}.x`")
    source = _BARE_IMPORT.sub(rf"\1from {PARENT} import \2", source)
    return _FROM_IMPORT.sub(rf"\1from {PARENT}.\2\3", source)


def _packages(staging: Path) -> list[str]:
    found = [PARENT]
    for init in sorted((staging / PARENT).rglob("__init__.py")):
        found.append(".".join(init.parent.relative_to(staging).parts))
    return found


def _pyproject(text: str, packages: list[str]) -> str:
    text = re.sub(r"^packages = \[.*\]$", f"packages = {packages!r}".replace("'", '"'), text, flags=re.M)
    for package in PACKAGES:
        text = re.sub(rf'^(\w+ = "){package}([.:])', rf"\g<1>{PARENT}.{package}\2", text, flags=re.M)
        # package-data keys: `"web.dashboard" = [...]`
        text = re.sub(rf'^"{package}([."])', rf'"{PARENT}.{package}\1', text, flags=re.M)
    return text


@contextmanager
def _staged() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="localjobs-wheel-") as tmp:
        staging = Path(tmp)
        for name in ("README.md",):
            shutil.copy2(ROOT / name, staging / name)
        parent = staging / PARENT
        parent.mkdir()
        (parent / "__init__.py").write_text(_PUBLIC_INIT)
        for package in PACKAGES:
            shutil.copytree(
                ROOT / package, parent / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        for module in parent.rglob("*.py"):
            module.write_text(rewrite_imports(module.read_text(), str(module)))
        pyproject = _pyproject((ROOT / "pyproject.toml").read_text(), _packages(staging))
        (staging / "pyproject.toml").write_text(pyproject)
        cwd = os.getcwd()
        os.chdir(staging)
        try:
            yield staging
        finally:
            os.chdir(cwd)


def build_wheel(
    wheel_directory: str, config_settings: dict[str, Any] | None = None, metadata_directory: str | None = None
) -> str:
    wheel_directory = os.path.abspath(wheel_directory)
    with _staged():
        return _setuptools.build_wheel(wheel_directory, config_settings)


def prepare_metadata_for_build_wheel(
    metadata_directory: str, config_settings: dict[str, Any] | None = None
) -> str:
    metadata_directory = os.path.abspath(metadata_directory)
    with _staged():
        return _setuptools.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    return _setuptools.get_requires_for_build_wheel(config_settings)


build_sdist = _setuptools.build_sdist
get_requires_for_build_sdist = _setuptools.get_requires_for_build_sdist
build_editable = _setuptools.build_editable
get_requires_for_build_editable = _setuptools.get_requires_for_build_editable
prepare_metadata_for_build_editable = _setuptools.prepare_metadata_for_build_editable
