"""Fileset references in `artifact_url`, read the way the reference's fileset parser reads them.

    fileset://ws/fs[#path]   URL form
    [ws/]fs#path             hash form (`fs#` and `fs#/` name the whole fileset)
    [ws/]fs                  the whole fileset
    ws/fs/path/...           legacy form: three or more segments without `#`

A missing workspace is the job's. A path's leading slashes are dropped (it is always inside the
fileset). Whether the reference names this job's fileset, and whether the path stays inside it,
is the results service's to judge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from runner.errors import Unprocessable

_URL_SCHEME = "fileset://"


@dataclass(frozen=True)
class FilesetRef:
    workspace: str
    fileset: str
    path: PurePosixPath  # PurePosixPath(".") for the whole fileset

    @property
    def whole_fileset(self) -> bool:
        return self.path == PurePosixPath(".")


def parse_fileset_ref(ref: str, default_workspace: str) -> FilesetRef:
    text = ref.removeprefix(_URL_SCHEME).lstrip("/")
    if not text:
        raise Unprocessable(f"artifact_url {ref!r} names no fileset")
    if "#" in text:
        head, _, inner = text.partition("#")
        workspace, _, fileset = head.rpartition("/")
    else:
        segments = text.split("/")
        if len(segments) == 1:
            workspace, fileset, inner = "", segments[0], ""
        elif len(segments) == 2:
            workspace, fileset, inner = segments[0], segments[1], ""
        else:  # legacy
            workspace, fileset, inner = segments[0], segments[1], "/".join(segments[2:])
    if not fileset:
        raise Unprocessable(f"artifact_url {ref!r} names no fileset")
    path = PurePosixPath(inner.lstrip("/") or ".")
    if ".." in path.parts:
        raise Unprocessable(f"artifact path {inner!r} must stay inside the fileset (no '..')")
    return FilesetRef(workspace=workspace or default_workspace, fileset=fileset, path=path)
