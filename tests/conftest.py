"""Shared fixtures: the sample corpus, a tiny random cross-encoder, and one reference run of qdedup."""
from __future__ import annotations

import tests.worker_cores  # noqa: F401  (first, before numpy, torch and faiss load: this worker's cores)

# isort: split
import contextlib
import fcntl
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.local_runner import read_beam_introspection_once
from pipelines.random_model import make_random_model
from samples.make_sample import build_rows
from tests.helpers import run_qdedup

# What Beam reads off DoFns, functions and options, read once in this process, as a local run's launcher and
# worker processes do (`local_runner.read_beam_introspection_once`): also for the pipelines tests build alone.
read_beam_introspection_once()


@contextlib.contextmanager
def _made_once(tmp_path_factory, name: str):
    """(folder, whether it is still to be made) for a folder every pytest-xdist worker of this session sees
    (the per-worker base's parent); the first worker to ask makes it while the others wait."""
    root = tmp_path_factory.getbasetemp()
    if root.name.startswith("popen-gw"):
        root = root.parent
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = root / f"{name}.done"
        yield root / name, not done.exists()
        done.touch()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """The sample rows plus a second file whose text column is not a string column (one copy per session,
    so every worker's outputs name the same source files)."""
    rows = build_rows()
    with _made_once(tmp_path_factory, "corpus") as (directory, to_make):
        if to_make:
            directory.mkdir(exist_ok=True)  # a worker that failed half way may have left it
            pq.write_table(pa.table({"id": pa.array([r[0] for r in rows], pa.int64()),
                                     "question": pa.array([r[1] for r in rows], pa.string())}),
                           directory / "a.parquet")
            pq.write_table(pa.table({"id": pa.array([3001, 3002], pa.int64()), "question": [7, 8]}),
                           directory / "b.parquet")
    return directory, rows + [(3001, 7), (3002, 8)]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A random 2-layer BERT pair classifier (its vocabulary holds every CJK ideograph)."""
    with _made_once(tmp_path_factory, "tiny_model") as (directory, to_make):
        if to_make:
            make_random_model(str(directory))
    return str(directory)


@pytest.fixture(scope="session")
def reference_run(corpus, tiny_model, tmp_path_factory):
    """(output directory, report) of one default run over `corpus`, made once per test session (whichever
    worker asks first runs it; the others read it). Tests only read it."""
    directory, _ = corpus
    with _made_once(tmp_path_factory, "reference_run") as (folder, to_make):
        if to_make:
            run_qdedup(directory / "*.parquet", folder / "out", tiny_model)
    return folder / "out", json.loads((folder / "out" / "report.json").read_text())
