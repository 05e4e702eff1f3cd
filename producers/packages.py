"""A job's local code, shipped as Ray ships it (seed 002: "If `working_dir` is a local directory,
it will be automatically zipped and uploaded").

Ray's own client zips a local `working_dir` (or a `py_modules` entry), uploads it to the one
cluster it talks to (`PUT /api/packages/gcs/<name>`) and sends the job with `gcs://<name>`. An
rmcs job waits in a queue for a cluster not chosen yet, and a cluster forgets a package no job
uses within minutes. So the helper zips the directory here, uploads it once to rmcs
(`PUT /api/v1/packages/<name>`: kept in the status store, shared by every daemon of a group),
and the job names `gcs://<name>`; the daemon uploads the package to the cluster it dispatches
the job to, when that cluster does not have it, just before the POST.

The zip is made the same way each time from the same files (sorted, with fixed times), so its
name, the SHA-1 of its bytes, changes only with the content. `.git` directories are left out,
and so are paths matching the runtime_env's `excludes` (shell patterns, on the path relative to
the directory, or on any part of it). A `.zip` file is sent as it is.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import zipfile
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

PACKAGE_NAME = re.compile(r"_ray_pkg_[0-9a-f]{40}\.zip")
PACKAGE_URI = re.compile(r"gcs://(_ray_pkg_[0-9a-f]{40}\.zip)")
MAX_PACKAGE_BYTES = 100 * 1024 * 1024  # the daemon's `max_package_bytes` default
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_SKIPPED_DIRS = frozenset({".git"})


def package_name(data: bytes) -> str:
    return f"_ray_pkg_{hashlib.sha1(data).hexdigest()}.zip"


def is_local(value: Any) -> bool:
    """A runtime_env location that is a path on this machine rather than a URI."""
    return isinstance(value, str) and bool(value) and "://" not in value


def local_paths(runtime_env: Mapping[str, Any]) -> list[tuple[str, int | None, str]]:
    """The local paths a runtime_env names: (key, index in py_modules or None, path)."""
    found: list[tuple[str, int | None, str]] = []
    if is_local(runtime_env.get("working_dir")):
        found.append(("working_dir", None, runtime_env["working_dir"]))
    modules = runtime_env.get("py_modules")
    if isinstance(modules, list):
        found.extend(("py_modules", i, m) for i, m in enumerate(modules) if is_local(m))
    return found


def pack(path: str | os.PathLike[str], *, parent: bool = False, excludes: Sequence[str] = (),
         limit: int = MAX_PACKAGE_BYTES) -> bytes:
    """The zip of a directory (its contents at the top, or the directory itself with `parent`,
    as Ray packs `py_modules`), or a `.zip` file's bytes. ValueError says what is wrong."""
    root = Path(path).expanduser()
    if root.is_file() and root.suffix == ".zip":
        data = root.read_bytes()
        if len(data) > limit:
            raise ValueError(f"{path}: {len(data)} bytes, more than the limit of {limit}")
        return data
    if not root.is_dir():
        raise ValueError(f"{path} is neither a directory nor a .zip file on this machine")
    buf = io.BytesIO()
    size = 0
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for file, name in _files(root, root.parent if parent else root, excludes):
            info = zipfile.ZipInfo(name, _FIXED_TIME)
            info.external_attr = (file.stat().st_mode & 0o777 | stat.S_IFREG) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            data = file.read_bytes()
            size += len(data)
            if size > limit:
                raise ValueError(f"{path} holds more than {limit} bytes (the package limit)")
            z.writestr(info, data)
    data = buf.getvalue()
    if len(data) > limit:
        raise ValueError(f"{path} zips to {len(data)} bytes, more than the limit of {limit}")
    return data


def _files(root: Path, base: Path, excludes: Sequence[str]) -> Iterator[tuple[Path, str]]:
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames
                             if d not in _SKIPPED_DIRS and not _excluded((here / d).relative_to(root), excludes))
        for name in sorted(filenames):
            file = here / name
            rel = file.relative_to(root)
            if file.is_file() and not _excluded(rel, excludes):
                yield file, file.relative_to(base).as_posix()


def _excluded(rel: Path, excludes: Sequence[str]) -> bool:
    text = rel.as_posix()
    return any(fnmatchcase(text, p.strip("/")) or any(fnmatchcase(part, p.strip("/")) for part in rel.parts)
               for p in excludes)


def with_uris(runtime_env: Mapping[str, Any], uris: Mapping[tuple[str, int | None], str]) -> dict[str, Any]:
    """`runtime_env` with each local path replaced by its package's URI (`local_paths` keys)."""
    out = dict(runtime_env)
    for (key, index), uri in uris.items():
        if index is None:
            out[key] = uri
        else:
            modules = list(out[key])
            modules[index] = uri
            out[key] = modules
    return out
