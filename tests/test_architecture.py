"""Imports point one way: web -> runner -> storage, with the runner/models/ package as the shared leaf."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _source(module: str) -> Path | None:
    """The file of one of our modules (a package: its __init__.py), None for anything else."""
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


# Which of our packages each package may import; every one may also import the leaf
# package runner/models/. tests/ and scripts/ may import anything; nothing else imports web.
_MAY_IMPORT = {
    "web": {"web", "runner"},
    "runner": {"runner", "storage"},
    "storage": {"storage"},
}
_OURS = ("runner", "storage", "web")


def _direction_problems(rel: str, names: set[str]) -> list[str]:
    """What `rel` (a path under runner/, storage/ or web/) may not import among `names`."""
    package = rel.split("/")[0]
    problems = []
    for name in sorted(names):
        top = name.split(".")[0]
        if name.startswith("aiosqlite") and package != "storage":
            problems.append(f"{rel}: aiosqlite outside storage/")
        if name.startswith("aiohttp.web") and package != "web":
            problems.append(f"{rel}: aiohttp.web outside web/")
        if name.startswith("aiodocker") and rel not in (
            "runner/executors/docker.py",
            "runner/executors/docker_workload.py",
            "runner/executors/docker_output.py",
        ):
            problems.append(f"{rel}: aiodocker outside the docker executor")
        if top not in _OURS:
            continue
        within_leaf = name == "runner.models" or name.startswith("runner.models.")
        if rel.startswith("runner/models/") and not within_leaf:
            problems.append(f"{rel}: the leaf package imports {name}")
        elif top not in _MAY_IMPORT[package] and not (name + ".").startswith("runner.models."):
            problems.append(f"{rel}: {package} may not import {name}")
    return problems


def test_import_direction() -> None:
    problems = []
    for package in _OURS:
        for path in _modules(package):
            problems += _direction_problems(path.relative_to(ROOT).as_posix(), _imports(path))
    assert problems == []


def test_the_leaf_package_imports_its_modules_absolutely() -> None:
    """The leaf rule above reads absolute imports only: a relative one would slip past it."""
    relative = []
    for path in _modules("runner/models"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                relative.append(path.relative_to(ROOT).as_posix())
    assert _modules("runner/models") and relative == []


def test_the_import_check_sees_every_direction() -> None:
    assert _direction_problems("web/errors.py", {"runner.errors", "runner.models", "web.app"}) == []
    assert _direction_problems("web/errors.py", {"storage", "storage.StorageError"}) == [
        "web/errors.py: web may not import storage",
        "web/errors.py: web may not import storage.StorageError",
    ]
    assert _direction_problems("runner/service.py", {"storage", "runner.models"}) == []
    assert _direction_problems("runner/service.py", {"web.serialize"}) == [
        "runner/service.py: runner may not import web.serialize"
    ]
    assert _direction_problems("storage/reads.py", {"runner.models", "runner.models.JobRecord"}) == []
    assert _direction_problems("storage/reads.py", {"runner.errors", "web"}) == [
        "storage/reads.py: storage may not import runner.errors",
        "storage/reads.py: storage may not import web",
    ]
    assert _direction_problems("runner/models/specs.py", {"storage", "runner.models.ids"}) == [
        "runner/models/specs.py: the leaf package imports storage"
    ]


def test_storage_errors_reach_web_through_runner_errors_only_when_used() -> None:
    """runner.errors re-exports storage's root error on first use: client commands import
    runner.errors (through runner.datadir) without loading the store."""
    import subprocess

    code = (
        "import sys, runner.datadir, runner.errors; print('storage' in sys.modules, 'aiosqlite' in sys.modules);"
        " from runner.errors import StorageError; import storage; print(StorageError is storage.StorageError)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False", "True"]


def test_modules_stay_small() -> None:
    """One job per module (#11): none of runner/, storage/, web/ grows back into a god module.
    The one exception is data: the reference's documents, generated (web/openapi_reference.py)."""
    big = {
        path.relative_to(ROOT).as_posix(): lines
        for package in _OURS
        for path in _modules(package)
        if (lines := len(path.read_text().splitlines())) > 400
        and path.relative_to(ROOT).as_posix() != "web/openapi_reference.py"
    }
    assert big == {}


def test_sql_lives_in_storage() -> None:
    offenders = []
    for package in ("runner", "web"):
        for path in _modules(package):
            text = path.read_text()
            if any(keyword in text for keyword in ("SELECT ", "INSERT INTO", "UPDATE steps", "DELETE FROM")):
                offenders.append(path.relative_to(ROOT).as_posix())
    assert offenders == []


def test_libraries_only_some_jobs_need_are_not_imported_at_daemon_start() -> None:
    """Docker's client, the cipher of secrets (~7 MB of RSS), YAML for a profiles file, tar for
    folder results and the reference's OpenAPI text load when first used: the idle daemon's RSS."""
    import subprocess
    import sys

    lazy = ["aiodocker", "cryptography", "yaml", "tarfile", "web.openapi_reference"]
    code = f"import sys, web.cli, web.app, runner.daemon; print([m for m in {lazy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


_LAUNCHER = "runner.executors.host.launcher"
_PROTOCOL = "runner.executors.host.protocol"


def test_the_launcher_program_imports_only_the_standard_library() -> None:
    """The launcher runs as `python -S -P -m runner.executors.host.launcher` (no site packages:
    psutil, pydantic, aiohttp are not there). Its modules, everything of ours they import, and
    the __init__ of every package on the way (Python runs those first) import the standard
    library only."""
    problems, seen, todo = [], set(), [_LAUNCHER]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        path = _source(module)
        assert path is not None, module
        for name in _imports(path):
            top = name.split(".")[0]
            if top in ("runner", "storage", "web"):
                if _source(name) is not None:  # else an attribute of a module listed too
                    todo.append(name)
            elif top not in sys.stdlib_module_names:
                problems.append(f"{path.relative_to(ROOT).as_posix()}: imports {name}")
    assert problems == []
    assert {_PROTOCOL, "runner.executors.host.spawn", "runner.executors.host.leftovers"} <= seen


def test_the_launcher_protocol_is_a_leaf_of_the_standard_library() -> None:
    """Both ends import it (the launcher and the daemon's client): it imports nothing of ours."""
    path = _source(_PROTOCOL)
    assert path is not None
    names = _imports(path)
    assert names and all(name.split(".")[0] in sys.stdlib_module_names for name in names), names


def test_every_package_is_in_the_wheel() -> None:
    """pyproject.toml lists the packages by name: a new sub-package left out would be missing from
    an installed localjobs (and only there)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        init.parent.relative_to(ROOT).as_posix().replace("/", ".")
        for package in _OURS
        for init in (ROOT / package).rglob("__init__.py")
    }
    assert found == listed
