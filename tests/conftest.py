"""Shared fixtures: the sample corpus, a tiny random cross-encoder, and one reference run of qdedup."""
from __future__ import annotations

import fcntl
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.random_model import make_random_model
from samples.make_sample import build_rows
from tests.helpers import run_qdedup


def _shared_folder(tmp_path_factory, name: str):
    """A folder all pytest-xdist workers of this session see (the per-worker base's parent), and its lock."""
    root = tmp_path_factory.getbasetemp()
    if root.name.startswith("popen-gw"):
        root = root.parent
    return root / name, root / f"{name}.lock"


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """The sample rows plus a second file whose text column is not a string column."""
    directory = tmp_path_factory.mktemp("corpus")
    rows = build_rows()
    pq.write_table(pa.table({"id": pa.array([r[0] for r in rows], pa.int64()),
                             "question": pa.array([r[1] for r in rows], pa.string())}),
                   directory / "a.parquet")
    pq.write_table(pa.table({"id": pa.array([3001, 3002], pa.int64()), "question": [7, 8]}),
                   directory / "b.parquet")
    return directory, rows + [(3001, 7), (3002, 8)]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A random 2-layer BERT pair classifier (its vocabulary holds every CJK ideograph)."""
    return make_random_model(str(tmp_path_factory.mktemp("tiny_model")))


@pytest.fixture(scope="session")
def reference_run(corpus, tiny_model, tmp_path_factory):
    """(output directory, report) of one default run over `corpus`, made once per test session (whichever
    worker asks first runs it; the others read it). Tests only read it."""
    folder, lock = _shared_folder(tmp_path_factory, "reference_run")
    directory, _ = corpus
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if not (folder / "out" / "report.json").exists():
            run_qdedup(directory / "*.parquet", folder / "out", tiny_model)
    return folder / "out", json.loads((folder / "out" / "report.json").read_text())
