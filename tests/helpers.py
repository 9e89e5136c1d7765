"""What several test modules share: the shared labelled data, running qdedup, reading its outputs."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.cli import main
from pipelines.dedup import build_pipeline
from pipelines.options import QdedupOptions
from pipelines.preflight import check_run, output_run
from pipelines.recall import read_labelled_pairs
from transforms.coders import pickled_list

# The repository checkout (presets, samples, the package).
ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("QDEDUP_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

# The in-process runner: DirectRunner would first try to download the Prism runner.
RUNNER_ARGS = ["--runner=FnApiRunner"]
MULTI_PROCESSING = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]


def shared_data(relative: str) -> Path:
    """A file of the shared labelled data; its absence fails the test, naming the setting, unless
    QDEDUP_ALLOW_MISSING_DATA=1 (then the test is skipped, and says so)."""
    path = SHARED_DATA / relative
    if not path.exists():
        message = (f"shared data not found at {path}: set QDEDUP_SHARED_DATA to the folder holding "
                   "lcqmc/dev.tsv (or QDEDUP_ALLOW_MISSING_DATA=1 to skip the tests that need it)")
        if os.environ.get("QDEDUP_ALLOW_MISSING_DATA") == "1":
            pytest.skip(message)
        pytest.fail(message, pytrace=False)
    return path


def lcqmc_pairs(limit: int | None = None) -> list[tuple[str, str, int]]:
    """LCQMC's dev pairs (text_a, text_b, label), the first `limit` of them."""
    pairs = read_labelled_pairs(str(shared_data("lcqmc/dev.tsv")))
    return pairs[:limit] if limit else pairs


def read_part(out, part):
    return pq.read_table(out / part).to_pylist()


def write_questions(rows, path):
    """(id, text) rows -> a Parquet file with int64 ids, its folder made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": pa.array([r[0] for r in rows], pa.int64()),
                             "question": pa.array([r[1] for r in rows], pa.string())}), path)


def group_members(out) -> dict:
    """{group_id: set of member ids} of a run."""
    groups = {}
    for row in read_part(out, "groups"):
        groups.setdefault(row["group_id"], set()).add(row["id"])
    return groups


def run_qdedup(input_pattern, out, model, *extra):
    """`qdedup run` on the in-process runner; asserts it succeeded and returns its report."""
    argv = ["run", "--input", str(input_pattern), "--output", str(out), "--scorer-model", model,
            *RUNNER_ARGS, *extra]
    assert main(argv) == 0
    return json.loads((out / "report.json").read_text())


@contextlib.contextmanager
def qdedup_pipeline(input_pattern, out, model, *extra):
    """`qdedup run`'s pipeline for these flags, built inside its output run, without the launcher's report:
    run it inside the block to write, or only look at it. Yields (pipeline, output run)."""
    pipeline_options = PipelineOptions(["--input", str(input_pattern), "--output", str(out), "--scorer-model",
                                        str(model), *extra])
    options = pipeline_options.view_as(QdedupOptions)
    with output_run(options) as run:
        launch = check_run(options, pipeline_options)
        pipeline = beam.Pipeline(options=pipeline_options)
        build_pipeline(pipeline, options, launch.info.id_type, launch.configuration, run, launch.prior,
                       launch.previous_groups)
        yield pipeline, run


def built_pipeline(input_pattern, out, model, *extra):
    """The `qdedup run` pipeline for these flags on the in-process runner, built and never run (nothing is
    committed)."""
    with qdedup_pipeline(input_pattern, out, model, *RUNNER_ARGS, *extra) as (pipeline, _):
        return pipeline


def snapshot(root) -> dict:
    """{relative path: bytes} of every file under root."""
    found = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, root)] = handle.read()
    return found


def reference_scores(model_dir, pairs):
    """The model card's usage: one pair at a time, no padding."""
    import torch
    from transformers import BertForSequenceClassification, BertTokenizer
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    model = BertForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return [float(torch.softmax(model(**tokenizer(a, b, return_tensors="pt")).logits, dim=-1)[0, 1])
                for a, b in pairs]


def break_scorer(monkeypatch, model_dir: str, token: str | None = None, overflow: bool = False) -> None:
    """Makes the scorer's forward pass fail on every batch holding `token` (on every batch if None), the
    way a kernel or a device fails, for the pipeline's workers in this process; with `overflow`, the pairs
    holding it score NaN instead, the way half precision overflows."""
    import torch

    import transforms.score
    from transforms.sources import load_tokenizer
    forward = transforms.score.positive_probability
    poison = None if token is None else load_tokenizer(model_dir).convert_tokens_to_ids(token)

    def fragile(model, batch, label):
        ids = batch["input_ids"]
        holding = (ids == poison).any(dim=1) if poison is not None else torch.ones(len(ids), dtype=torch.bool)
        if overflow:
            scores = forward(model, batch, label)
            scores[holding.numpy()] = float("nan")
            return scores
        if bool(holding.any()):
            raise RuntimeError("kernel failed: CUDA error: device-side assert triggered")
        return forward(model, batch, label)
    monkeypatch.setattr(transforms.score, "positive_probability", fragile)


class Lazy:
    """A re-iterable that makes its values anew each time, holding none: a hot key's grouped values as
    Dataflow pages them in. `make()` returns a fresh iterator."""

    def __init__(self, make):
        self._make = make

    def __iter__(self):
        return iter(self._make())


def dealt_shard(*sides, size: int = 1000) -> tuple:
    """A shard (0, its grouped values) as `joins.DealIntoShards` makes it: side i's items under tag i, in pickled
    lists of up to `size`. The lists are pickled here, once, as the runner holds a shard's values (bytes, not
    records), so that a test measuring what a function holds while it walks them counts none of it. A side is
    an iterable, or a function making one (to give many items without holding them as records)."""
    lists = []
    for tag, items in enumerate(sides):
        chunk = []
        for item in (items() if callable(items) else items):
            chunk.append(item)
            if len(chunk) == size:
                lists.append((tag, pickled_list(chunk)))
                chunk = []
        if chunk:
            lists.append((tag, pickled_list(chunk)))
    return 0, lists


def peak_bytes(fn):
    """(fn(), the most bytes Python allocated at once while it ran)."""
    import tracemalloc
    tracemalloc.start()
    try:
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, peak


def watch_tokenizer(monkeypatch, heard) -> None:
    """Every tokenizer qdedup loads has a fast backend that calls `heard(way, texts)` ("one" for `encode`,
    "batch" for `encode_batch`) before it tokenizes: to fail on some texts, or to note them (the runner
    works on a pickled copy of `heard`: note to a file, not to a variable)."""
    import transforms.sources
    load_tokenizer = transforms.sources.load_tokenizer

    class Watched:
        def __init__(self, backend):
            self._backend = backend

        def __getattr__(self, name):
            return getattr(self._backend, name)

        def encode(self, text, *args, **kwargs):
            heard("one", [text])
            return self._backend.encode(text, *args, **kwargs)

        def encode_batch(self, texts, *args, **kwargs):
            heard("batch", texts)
            return self._backend.encode_batch(texts, *args, **kwargs)

    def watched(name):
        tokenizer = load_tokenizer(name)
        backend = Watched(tokenizer.backend_tokenizer)
        tokenizer.__class__ = type("Watched", (tokenizer.__class__,), {"backend_tokenizer": backend})
        return tokenizer

    monkeypatch.setattr(transforms.sources, "load_tokenizer", watched)
