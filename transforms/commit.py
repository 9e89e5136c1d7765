"""A run's output is replaced only by a run that finished: no run, failed, killed or in place, destroys
the output it would replace.

Every output directory is laid out the same way:

    OUT/groups/<run>-00000-of-00004.parquet   (pairs/, rejected/, lineage/, state/ likewise)
    OUT/report.json, OUT/report.html
    OUT/_SUCCESS                              the commit marker, written last

`_SUCCESS` is JSON naming the run that committed (`run_id`), listing every file of the output
(`files`, relative paths) and holding the run's report. A directory is a qdedup output only when
it has the marker, and its files are exactly those it lists: that is the rule for qdedup's own
readers (`--existing`, `--previous-groups`, `--params-from`, `evaluate`) and for downstream ones.

How a run takes the place of the previous one:

- local disks: the run writes a staging folder beside OUT (`.<name>.qdedup-<run>`) and, once it
  has finished, exchanges it with OUT in one atomic rename (Linux `renameat2(RENAME_EXCHANGE)`;
  elsewhere two renames, and a run killed between them is undone by the next run on OUT);
- object stores (gs://, s3://, any Beam filesystem), where a folder cannot be swapped: the run
  writes its files into OUT under names that carry its run id, next to the previous run's files,
  and commits by writing `_SUCCESS` (one object write, atomic); files that the marker does not list
  are then deleted. Until then the previous marker still lists the previous run's files, all present.

Two runs never write one OUT at once: on local disks the second cannot take the lock file beside
OUT (`.<name>.qdedup-lock`, held with flock by the launching process, released when it exits
however it exits); on object stores each run writes a lease object `OUT/_lease-<run>.json`, keeps
it fresh while it runs, and refuses to start when it sees another fresh lease.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import posixpath
import re
import secrets
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple, Optional, Sequence

import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.errors import QdedupError
from transforms.paths import canonical, is_remote, join, read_json, write_atomically, write_json

_LOG = logging.getLogger(__name__)

MARKER = "_SUCCESS"
OUTPUT_FORMAT = 2            # 1: outputs before the commit marker; 2: _SUCCESS lists the files
PARTS = ("groups", "pairs", "rejected", "lineage", "explain", "state")
REPORTS = ("report.json", "report.html")
# Entries qdedup writes in an output directory (evaluation.json: `qdedup evaluate`'s default).
KNOWN_ENTRIES = (*PARTS, *REPORTS, MARKER, "evaluation.json")
LEASE_PREFIX = "_lease-"
LEASE_SECONDS = 600          # a lease not refreshed for this long belongs to a launcher that died
LEASE_REFRESH_SECONDS = 60
_RUN = r"\d{8}T\d{6}-[0-9a-f]{6}"      # what new_run_id makes
RUN_ID = re.compile(f"^{_RUN}$")
_RUN_FILE = re.compile(f"^{_RUN}-")      # a file a run wrote


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def _listing(root: str) -> list:
    """FileMetadata of every file under root (nothing when root does not exist)."""
    try:
        found = FileSystems.match([join(root, "**")])[0].metadata_list
    except Exception:
        return []
    return [m for m in found if not m.path.endswith("/")]


def _relative(root: str, path: str) -> str:
    prefix = root.rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else path


@dataclass(frozen=True)
class Committed:
    """A finished output, as its commit marker describes it."""

    root: str
    run_id: str
    files: tuple[str, ...]   # relative to root
    report: dict

    @property
    def configuration(self) -> dict:
        return self.report.get("configuration", {})

    def paths(self, folder: str, suffix: str = "") -> list[str]:
        """Absolute paths of the listed files under `folder` (e.g. "groups", "state/lexical/vectors")."""
        prefix = folder.rstrip("/") + "/"
        return [join(self.root, f) for f in self.files
                if f.startswith(prefix) and "/" not in f[len(prefix):] and f.endswith(suffix)]

    def path(self, folder: str, suffix: str) -> str:
        """The one listed file under `folder` ending in `suffix`."""
        found = self.paths(folder, suffix)
        if len(found) != 1:
            raise QdedupError(f"{self.root}: expected one {folder}/*{suffix} in {MARKER}, found {len(found)}")
        return found[0]


def read_committed(path: str, option: str) -> Committed:
    """The output at `path` (a directory written by `qdedup run`), refused unless its run committed."""
    root = canonical(path)
    marker = join(root, MARKER)
    try:
        content = read_json(marker)
    except FileNotFoundError:
        content = None
    except Exception as exc:
        raise QdedupError(f"{option} {path!r}: its {MARKER} cannot be read ({exc})") from exc
    if content is None:
        legacy = [m for m in _listing(root) if _relative(root, m.path).split("/")[0] in PARTS]
        hint = ("it has outputs but no commit marker: the run that wrote them did not finish, or predates "
                "qdedup's commit marker (rerun it)") if legacy else "no qdedup run finished there"
        raise QdedupError(f"{option} {path!r} has no {MARKER}: {hint}")
    if content.get("format") != OUTPUT_FORMAT:
        raise QdedupError(f"{option} {path!r} has output format {content.get('format')!r}, this qdedup reads "
                          f"format {OUTPUT_FORMAT}: rerun it with this version")
    return Committed(root, content["run_id"], tuple(content["files"]), content.get("report", {}))


def add_to_output(path: str, option: str, files: dict) -> None:
    """Writes `files` ({relative path: bytes}) into the committed output at `path` and lists them in its
    marker (`qdedup evaluate`'s evaluation.json and redrawn report.html): under the output's lock, so no
    run replaces the output meanwhile; each file replaced whole, the marker last. The next run on the
    output removes them with the rest."""
    root = canonical(path)
    lock = _Lease(root, option) if is_remote(root) else _LocalLock(root, option)
    lock.acquire(new_run_id())
    try:
        committed = read_committed(root, option)
        marker = read_json(join(committed.root, MARKER))
        for relative, data in files.items():
            write_atomically(join(committed.root, relative), data)
        marker["files"] = sorted(set(marker["files"]) | set(files))
        write_atomically(join(committed.root, MARKER),
                         json.dumps(marker, ensure_ascii=False, indent=2, sort_keys=True).encode("utf-8"))
    finally:
        lock.release()


def parquet_rows(paths: Sequence[str], columns: list[str]) -> Iterator[dict]:
    """The rows of Parquet files, local or remote, a row group at a time (never a whole file held)."""
    for path in sorted(paths):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            parquet = pq.ParquetFile(handle)
            for group in range(parquet.num_row_groups):
                yield from parquet.read_row_group(group, columns=columns).to_pylist()


def committed_root(path: str) -> str:
    """`--previous-groups` may name a run's output directory or its groups/ folder."""
    root = canonical(path)
    return posixpath.dirname(root) if posixpath.basename(root) == "groups" else root


# ---- the lock -------------------------------------------------------------------------------------------

class _LocalLock:
    """flock on a file beside OUT: released by the kernel when the launcher exits, however it exits."""

    def __init__(self, root: str, name: str):
        self._root = root
        self._name = name
        self._path = os.path.join(os.path.dirname(root), f".{os.path.basename(root)}.qdedup-lock")
        self._handle = None

    def acquire(self, run_id: str) -> None:
        os.makedirs(os.path.dirname(self._path), exist_ok=True)
        handle = open(self._path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise QdedupError(f"{self._name} {self._root} is being written by another qdedup run ({holder}); "
                              "wait for it to end")
        handle.seek(0)
        handle.truncate()
        handle.write(f"run {run_id}, pid {os.getpid()} on {socket.gethostname()}, since {_now()}")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


class _Lease:
    """A lease object in OUT, kept fresh by a thread of the launcher; a fresh lease of another run refuses."""

    def __init__(self, root: str, name: str):
        self._root = root
        self._name = name
        self._path: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _write(self, run_id: str) -> None:
        write_json(self._path, {"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname(),
                                 "refreshed": _now()})

    def acquire(self, run_id: str) -> None:
        self._path = join(self._root, f"{LEASE_PREFIX}{run_id}.json")
        self._write(run_id)
        now = time.time()
        others = [m for m in _listing(self._root)
                  if posixpath.basename(m.path).startswith(LEASE_PREFIX) and m.path != self._path
                  and now - (m.last_updated_in_seconds or 0) < LEASE_SECONDS]
        if others:  # both refuse when two start together: never both go on
            FileSystems.delete([self._path])
            self._path = None
            raise QdedupError(f"{self._name} {self._root} is being written by another qdedup run "
                              f"({posixpath.basename(others[0].path)}); wait for it to end")
        self._thread = threading.Thread(target=self._refresh, args=(run_id,), daemon=True)
        self._thread.start()

    def _refresh(self, run_id: str) -> None:
        while not self._stop.wait(LEASE_REFRESH_SECONDS):
            try:
                self._write(run_id)
            except Exception as exc:  # a missed refresh is retried; the lease lasts LEASE_SECONDS
                _LOG.warning("could not refresh the lease %s: %s", self._path, exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._path is not None:
            with contextlib.suppress(Exception):
                FileSystems.delete([self._path])
            self._path = None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---- local folder exchange ------------------------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(a: str, b: str) -> bool:
    """Atomically swaps two directories (Linux renameat2); False where the system or filesystem cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), a)


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- one run writing --output ---------------------------------------------------------------------------

class OutputNames(NamedTuple):
    """How refusals name the output and the permission to replace it (`qdedup run` gives its flags)."""

    output: str = "output"
    overwrite: str = "overwrite=True"


@dataclass
class OutputRun:
    """Where one run writes, and how its output takes the place of the previous one.

    Use as a context manager around everything that reads or writes the output: entering takes the
    lock and checks the directory; `commit` makes the run's output the directory's; leaving without
    a commit leaves the previous output as it was.
    """

    output: str
    overwrite: bool = False
    run_id: str = field(default_factory=new_run_id)
    names: OutputNames = field(default_factory=lambda: OutputNames())

    def __post_init__(self):
        self.root = canonical(self.output)
        self.remote = is_remote(self.root)
        name = posixpath.basename(self.root)
        if not name:
            raise QdedupError(f"{self.names.output} {self.output!r} must name a directory below a root")
        self._siblings = os.path.join(os.path.dirname(self.root), f".{name}.qdedup-") if not self.remote else None
        self.write_root = self.root if self.remote else f"{self._siblings}{self.run_id}"
        self._lock = (_Lease if self.remote else _LocalLock)(self.root, self.names.output)

    @property
    def failed_root(self) -> str:
        """Where a local run that failed leaves what it wrote (rejected/ among it), for a look."""
        return self.root if self.remote else f"{self._siblings}failed"

    @property
    def draft_report(self) -> str:
        """Where the pipeline leaves its counts for the launcher to complete into report.json."""
        return join(self.write_root, f"{self.run_id}-report.json")

    def file_prefix(self, *parts: str) -> str:
        """`write_root/parts.../<run>`: the prefix of every file this run writes there."""
        return join(self.write_root, *parts, self.run_id)

    def __enter__(self) -> "OutputRun":
        self._lock.acquire(self.run_id)
        try:
            self._recover()
            self._check()
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()

    # -- before the run

    def _recover(self) -> None:
        """Undo what a killed local run left: OUT moved aside between two renames; staging folders."""
        if self.remote:
            return
        previous = f"{self._siblings}previous"
        if os.path.isdir(previous):
            if not os.path.exists(self.root):
                os.rename(previous, self.root)
                _LOG.warning("restored %s: a run was killed while replacing it", self.root)
            else:
                shutil.rmtree(previous)
        parent, stem = os.path.dirname(self.root), os.path.basename(self._siblings)
        for entry in os.listdir(parent) if os.path.isdir(parent) else []:
            if entry.startswith(stem) and RUN_ID.match(entry[len(stem):]):
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)

    def _check(self) -> None:
        """OUT is new, empty, or a qdedup output that this run may replace (`overwrite`)."""
        if not self.remote and os.path.exists(self.root) and not os.path.isdir(self.root):
            raise QdedupError(f"{self.names.output} {self.output!r} is a file, not a directory")
        listing = _listing(self.root)
        foreign = sorted({_relative(self.root, m.path).split("/")[0] for m in listing} - set(KNOWN_ENTRIES))
        # Leases, and (on an object store) the report draft a killed run left, are qdedup's own too.
        foreign = [f for f in foreign if not f.startswith(LEASE_PREFIX) and not _RUN_FILE.match(f)]
        if foreign:
            raise QdedupError(f"{self.names.output} {self.output!r} holds {foreign[0]!r}, which qdedup did not write; "
                              "give a new or empty directory (a run replaces the whole directory)")
        held = [m for m in listing if not self.remote or not _RUN_FILE.match(posixpath.basename(m.path))
                or posixpath.basename(m.path) == MARKER]
        held = [m for m in held if not posixpath.basename(m.path).startswith(LEASE_PREFIX)]
        if held and not self.overwrite:
            raise QdedupError(f"{self.names.output} {self.output!r} already holds a qdedup run; pass "
                              f"{self.names.overwrite} to replace it once this run has finished (nothing is "
                              "deleted before), or choose another directory")

    # -- after the run

    def written(self) -> list[str]:
        """Relative paths of the files this run wrote (Beam's temporary files left out)."""
        files = []
        for metadata in _listing(self.write_root):
            relative = _relative(self.write_root, metadata.path)
            name = posixpath.basename(relative)
            if name.startswith(self.run_id + "-") and "beam-temp" not in relative:
                files.append(relative)
        return sorted(files)

    def commit(self, report: dict, html: str) -> None:
        """Makes this run's files the output of OUT: marker last, then the previous run's files go."""
        files = [f for f in self.written() if f != posixpath.basename(self.draft_report)]
        marker = {"format": OUTPUT_FORMAT, "run_id": self.run_id, "committed": _now(),
                  "files": sorted(files + list(REPORTS)), "report": report}
        if self.remote:
            write_json(join(self.root, MARKER), marker)   # the commit: one object write
            self._write_reports(self.root, report, html)
            self._delete_unlisted(set(marker["files"]))
            return
        self._write_reports(self.write_root, report, html)
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.draft_report)
        temporary = join(self.write_root, MARKER + ".tmp")
        write_json(temporary, marker)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.rename(temporary, join(self.write_root, MARKER))
        _fsync_directory(self.write_root)
        self._swap()

    def _write_reports(self, root: str, report: dict, html: str) -> None:
        write_json(join(root, "report.json"), report)
        with FileSystems.create(join(root, "report.html")) as handle:
            handle.write(html.encode("utf-8"))

    def _swap(self) -> None:
        if not os.path.exists(self.root):
            os.rename(self.write_root, self.root)
        elif exchange(self.write_root, self.root):
            shutil.rmtree(self.write_root)              # now the previous output
        else:  # two renames; _recover undoes a kill between them
            previous = f"{self._siblings}previous"
            os.rename(self.root, previous)
            os.rename(self.write_root, self.root)
            shutil.rmtree(previous)
        _fsync_directory(os.path.dirname(self.root))

    def _delete_unlisted(self, listed: set) -> None:
        stale = []
        for metadata in _listing(self.root):
            relative = _relative(self.root, metadata.path)
            if relative.split("/")[0] in PARTS and relative not in listed:
                stale.append(metadata.path)
            elif _RUN_FILE.match(relative) and relative.endswith("-report.json"):
                stale.append(metadata.path)
            elif relative == "evaluation.json":  # `qdedup evaluate` of the run this one replaces
                stale.append(metadata.path)
        if stale:
            FileSystems.delete(stale)

    def keep_failed(self) -> str:
        """A run that will not commit: its files stay where they can be looked at; returns where."""
        if self.remote or not os.path.isdir(self.write_root):
            return self.failed_root
        shutil.rmtree(self.failed_root, ignore_errors=True)
        os.rename(self.write_root, self.failed_root)
        return self.failed_root
