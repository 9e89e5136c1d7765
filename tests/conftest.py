"""Shared fixtures: a tiny random cross-encoder and the shared labelled pairs."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from samples.make_sample import build_rows
from tests.model_factory import make_random_model

SHARED_DATA = Path(os.environ.get("QDEDUP_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

# The in-process runner: DirectRunner would first try to download the Prism runner.
RUNNER_ARGS = ["--runner=FnApiRunner"]


def lcqmc_pairs(limit: int | None = None) -> list[tuple[str, str, int]]:
    path = SHARED_DATA / "lcqmc" / "dev.tsv"
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (set QDEDUP_SHARED_DATA)")
    with open(path, encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle]
    pairs = [(a, b, int(label)) for a, b, label in rows]
    return pairs[:limit] if limit else pairs


def bq_pairs(limit: int | None = None) -> list[tuple[str, str, int]]:
    path = SHARED_DATA / "bq" / "dev.csv"
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (set QDEDUP_SHARED_DATA)")
    with open(path, encoding="utf-8-sig", newline="") as handle:
        pairs = [(r["sentence1"], r["sentence2"], int(r["label"])) for r in csv.DictReader(handle)]
    return pairs[:limit] if limit else pairs


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
    """A random 2-layer BERT pair classifier whose vocabulary covers the test texts."""
    texts = [t for a, b, _ in lcqmc_pairs(400) for t in (a, b)]
    texts += [t for _, t in build_rows() if isinstance(t, str)]
    return make_random_model(str(tmp_path_factory.mktemp("tiny_model")), texts)


def break_scorer(monkeypatch, model_dir: str, token: str | None = None) -> None:
    """Makes the scorer's forward pass fail on every batch holding `token` (on every batch if None), the
    way a kernel or a device fails, for the pipeline's workers in this process."""
    import transforms.score
    load_classifier = transforms.score.load_classifier
    poison = None if token is None else transforms.score.load_tokenizer(model_dir).convert_tokens_to_ids(token)

    def fragile(settings):
        classifier = load_classifier(settings)
        model = classifier.model

        def forward(**batch):
            if poison is None or bool((batch["input_ids"] == poison).any()):
                raise RuntimeError("kernel failed: CUDA error: device-side assert triggered")
            return model(**batch)
        classifier.model = forward
        return classifier
    monkeypatch.setattr(transforms.score, "load_classifier", fragile)
