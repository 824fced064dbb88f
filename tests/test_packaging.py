"""The wheel takes no common import names: built from this checkout, installed in a fresh venv
beside `web.py` (a PyPI package that owns the name `web`), used from a project that has its own
`storage/`, `web/` and `runner/` packages: the user's imports get the user's modules, and
`localjobs serve`, `localjobs run` and the pytest plugin work there."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.daemon_process import READY, REPO_ROOT, clean_environment

_PIP_TIMEOUT_S = 400


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout_s: float = 120) -> str:
    done = subprocess.run(
        argv, cwd=cwd, env=env or clean_environment(), capture_output=True, text=True, timeout=timeout_s
    )
    assert done.returncode == 0, f"$ {' '.join(argv)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _project(root: Path) -> Path:
    project = root / "project"
    for package in ("storage", "web", "runner"):
        (project / package).mkdir(parents=True)
        (project / package / "__init__.py").write_text(f"OWNER = 'the user ({package})'\n")
    (project / "test_user.py").write_text(
        textwrap.dedent(
            """
            import runner, storage, web

            def test_own_packages_and_the_fixture(localjobs):
                assert storage.OWNER == "the user (storage)"
                assert web.OWNER == "the user (web)" and runner.OWNER == "the user (runner)"
                job = localjobs.run("echo", "from the plugin")
                assert job["status"] == "completed"
                assert localjobs.logs(job["name"]) == ["from the plugin"]
            """
        )
    )
    return project


@pytest.mark.timeout(900)
def test_the_wheel_installs_beside_web_py_and_works_in_a_project_with_its_own_packages(
    tmp_path: Path,
) -> None:
    dist = tmp_path / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO_ROOT)],
        tmp_path,
        timeout_s=_PIP_TIMEOUT_S,
    )
    (wheel,) = dist.glob("localjobs-*.whl")
    venv = tmp_path / "venv"
    _run([sys.base_prefix + "/bin/python3", "-m", "venv", str(venv)], tmp_path)
    python = str(venv / "bin" / "python")
    _run(
        [python, "-m", "pip", "install", "-q", str(wheel), "web.py", "pytest"],
        tmp_path,
        timeout_s=_PIP_TIMEOUT_S,
    )
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).strip()
    installed = sorted(
        p.name for p in Path(site).iterdir() if p.name in ("runner", "storage", "web", "localjobs")
    )
    assert installed == ["localjobs", "web"]  # `web` is web.py's; localjobs' packages live in localjobs/
    web_py = _run([python, "-c", "import web; print(hasattr(web, 'application'))"], tmp_path).strip()
    assert web_py == "True"  # web.py's own package, untouched

    project = _project(tmp_path)
    env = clean_environment({"LOCALJOBS_DATA_DIR": str(tmp_path / "data"), "NO_COLOR": "1"})
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    owners = _run([python, "-c", "import storage, web; print(storage.OWNER, '|', web.OWNER)"], project, env)
    assert owners.strip() == "the user (storage) | the user (web)"

    out_path, err_path = tmp_path / "serve.out", tmp_path / "serve.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        serve = subprocess.Popen(
            [str(venv / "bin" / "localjobs"), "serve", "--port", "0"],
            cwd=project,
            env=env,
            stdout=out,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 60
        while not READY.search(out_path.read_text()):
            assert serve.poll() is None, err_path.read_text()
            assert time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.05)
        ran = _run([str(venv / "bin" / "localjobs"), "run", "--", "echo", "hi from the wheel"], project, env)
        assert ran == "hi from the wheel\n"
        _dashboard_is_served(READY.search(out_path.read_text()).group(1))  # type: ignore[union-attr]
    finally:
        serve.terminate()
        serve.wait(timeout=30)

    tests = _run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"], project, env, timeout_s=300
    )
    assert "1 passed" in tests

    _run([python, "-m", "pip", "uninstall", "-y", "-q", "web.py"], tmp_path)
    assert "Usage" in _run([str(venv / "bin" / "localjobs"), "--help"], project, env)


def _dashboard_is_served(url: str) -> None:
    """The dashboard's pages and files are package data: the wheel must carry them."""
    with urllib.request.urlopen(f"{url}/static/jobs.js", timeout=30) as resp:
        assert resp.status == 200 and b"List Jobs" in resp.read()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{url}/", timeout=30)
    assert refused.value.code == 401 and b'action="/login"' in refused.value.read()
