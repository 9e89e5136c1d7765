"""Paths on local disks and on Beam filesystems (gs://, s3://, ...), spelled one way.

Beam is imported where a file is opened, not on import: the model-feeding core
(`transforms/feeding.py`, through `sources.py`) loads on machines without Beam.
"""
from __future__ import annotations

import json
import os
import posixpath


def is_remote(path: str) -> bool:
    """gs://, s3:// and any other Beam filesystem; local paths are not."""
    return "://" in path


def canonical(path: str) -> str:
    """One spelling per location: `.`/`..`, repeated and trailing slashes, and (locally) symlinks resolved."""
    if is_remote(path):
        scheme, rest = path.split("://", 1)
        lead = "/" if rest.startswith("/") else ""
        return f"{scheme}://{lead}{posixpath.normpath('/' + rest).lstrip('/')}"
    return os.path.realpath(os.path.abspath(os.path.expanduser(path)))


def join(root: str, *parts: str) -> str:
    from apache_beam.io.filesystems import FileSystems
    path = root
    for part in parts:
        path = FileSystems.join(path, part) if is_remote(path) else posixpath.join(path, part)
    return path


def read_json(path: str) -> dict:
    from apache_beam.io.filesystems import FileSystems
    with FileSystems.open(path) as handle:
        return json.loads(handle.read().decode("utf-8"))


def write_json(path: str, content: dict) -> None:
    from apache_beam.io.filesystems import FileSystems
    with FileSystems.create(path) as handle:
        handle.write(json.dumps(content, ensure_ascii=False, indent=2, sort_keys=True).encode("utf-8"))


def write_atomically(path: str, data: bytes) -> None:
    """Replaces the file at `path` whole: locally a file beside it renamed over it; on object stores one
    object write (atomic there)."""
    from apache_beam.io.filesystems import FileSystems
    if is_remote(path):
        with FileSystems.create(path) as handle:
            handle.write(data)
        return
    staging = f"{path}.{os.getpid()}.partial"
    try:
        with open(staging, "wb") as handle:
            handle.write(data)
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.remove(staging)
