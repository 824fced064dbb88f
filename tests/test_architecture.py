"""Imports point one way: web -> runner -> storage, with runner/models.py as the shared leaf."""

from __future__ import annotations

import ast
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


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_import_direction() -> None:
    problems = []
    for package in ("runner", "storage", "web"):
        for path in _modules(package):
            rel = path.relative_to(ROOT).as_posix()
            for name in _imports(path):
                top = name.split(".")[0]
                if name.startswith("aiosqlite") and package != "storage":
                    problems.append(f"{rel}: aiosqlite outside storage/")
                if name.startswith("aiohttp.web") and package != "web":
                    problems.append(f"{rel}: aiohttp.web outside web/")
                if name.startswith("aiodocker") and rel != "runner/executors/docker.py":
                    problems.append(f"{rel}: aiodocker outside the docker executor")
                if package == "storage" and top == "runner" and not name.startswith("runner.models"):
                    problems.append(f"{rel}: storage may import only runner.models, not {name}")
                if package in ("storage", "runner") and top == "web":
                    problems.append(f"{rel}: {package} imports web")
                if rel == "runner/models.py" and top in ("runner", "storage", "web"):
                    problems.append(f"{rel}: the leaf module imports {name}")
    assert problems == []


def test_sql_lives_in_storage() -> None:
    offenders = []
    for package in ("runner", "web"):
        for path in _modules(package):
            text = path.read_text()
            if any(keyword in text for keyword in ("SELECT ", "INSERT INTO", "UPDATE steps", "DELETE FROM")):
                offenders.append(path.relative_to(ROOT).as_posix())
    assert offenders == []


def test_docker_client_is_not_imported_at_daemon_start() -> None:
    import subprocess
    import sys

    code = "import sys, web.cli, web.app, runner.daemon; print('aiodocker' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"
