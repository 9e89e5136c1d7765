"""Same input and configuration, same outputs, to the last bit: across runs, runner modes, and bundles the
runner retries (batches are packed from shards of the inputs, never from bundles)."""
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import worker_handlers

from tests.helpers import MULTI_PROCESSING, qdedup_pipeline, run_qdedup

pytestmark = pytest.mark.e2e  # every test here runs qdedup end to end

# Parts compared, with the columns that identify a record.
PARTS = {
    "groups": ("id",),
    "pairs": ("id_a", "id_b"),
    "rejected": ("source", "reason", "row"),
    "lineage": ("group_id", "previous_group_id"),
    "explain": ("id",),
    "state/representatives": ("id",),
    "state/members": ("id",),
    "state/lexical/vectors": ("id",),
}
COUNTS = ("rows_in", "rows_rejected", "rows_out", "exact_duplicates", "candidate_pairs", "pairs_scored",
          "resplit_pairs_scored", "components_resplit", "groups", "largest_group")


def outputs(out) -> dict:
    tables = {}
    for part, key in PARTS.items():
        rows = pq.read_table(out / part).to_pylist()
        tables[part] = sorted(rows, key=lambda row: tuple(str(row[k]) for k in key))
    return tables


def assert_same(mine: dict, theirs: dict) -> None:
    for part in PARTS:
        assert len(mine[part]) == len(theirs[part]), part
        for a, b in zip(mine[part], theirs[part]):
            assert a == b, (part, a, b)


def test_two_runs_give_identical_outputs(reference_run, corpus, tiny_model, tmp_path):
    out, report = reference_run
    directory, _ = corpus
    again = run_qdedup(directory / "*.parquet", tmp_path / "again", tiny_model)
    assert_same(outputs(out), outputs(tmp_path / "again"), )
    assert {k: again[k] for k in COUNTS} == {k: report[k] for k in COUNTS}


def test_shards_of_a_few_keys_give_identical_outputs(reference_run, corpus, tiny_model, tmp_path):
    """Reading (each id's first row) and collapsing exact copies, dealt into shards of 7 keys (the sample's
    ~400 rows: dozens of shards) instead of one: the same outputs and counts."""
    out, report = reference_run
    directory, _ = corpus
    again = run_qdedup(directory / "*.parquet", tmp_path / "sharded", tiny_model, "--join-shard-keys", "7")
    assert_same(outputs(out), outputs(tmp_path / "sharded"))
    assert {k: again[k] for k in COUNTS} == {k: report[k] for k in COUNTS}


def test_two_worker_processes_give_the_same_outputs_and_keep_library_noise_quiet(reference_run, corpus, tiny_model,
                                                                                 tmp_path, capfd, monkeypatch):
    out, report = reference_run
    directory, _ = corpus
    capfd.readouterr()
    monkeypatch.setattr(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", 1000)  # Beam's own, which loses elements
    other = run_qdedup(directory / "*.parquet", tmp_path / "other", tiny_model, *MULTI_PROCESSING)
    assert worker_handlers.DATA_BUFFER_TIME_LIMIT_MS == 0  # the launcher turned the timed flush off (test_local_runner)
    assert_same(outputs(out), outputs(tmp_path / "other"))
    assert {k: other[k] for k in COUNTS} == {k: report[k] for k in COUNTS}
    # The worker processes' own lines (theirs go straight to the terminal): qdedup's, in the launcher's format,
    # and nothing else: no library's INFO, no harness start-up line, no warning of an import or a main session.
    err = capfd.readouterr().err
    assert "INFO transforms.read: read rows" in err
    ours = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING) (qdedup|transforms\.\w+|pipelines\.\w+): ")
    assert [line for line in err.splitlines() if line.strip() and not ours.match(line)] == []


def _fail_first_call(module, name, monkeypatch, failures: list):
    original = getattr(module, name)

    def flaky(*args, **kwargs):
        if name not in failures:
            failures.append(name)
            raise RuntimeError(f"simulated worker failure in {name}")
        return original(*args, **kwargs)
    monkeypatch.setattr(module, name, flaky)


def test_bundles_retried_after_a_worker_failure_lose_and_duplicate_nothing(reference_run, corpus, tiny_model,
                                                                          tmp_path, monkeypatch):
    """The bundle-based runner retries a failed bundle, as Dataflow does; the outputs must not change."""
    import transforms.block
    import transforms.cluster
    import transforms.inference
    import transforms.normalize

    out, report = reference_run
    directory, _ = corpus
    failures: list = []
    _fail_first_call(transforms.normalize, "collapse_shard", monkeypatch, failures)
    _fail_first_call(transforms.block, "knn_lists", monkeypatch, failures)
    _fail_first_call(transforms.cluster, "summarize_group", monkeypatch, failures)
    _fail_first_call(transforms.inference.PackedBatchHandler, "run_inference", monkeypatch, failures)
    retried = _pipeline_alone(directory / "*.parquet", tmp_path / "retried", tiny_model,
                              "--runner=BundleBasedDirectRunner")
    assert sorted(failures) == ["collapse_shard", "knn_lists", "run_inference", "summarize_group"]
    assert_same(outputs(out), outputs(retried))


def _pipeline_alone(input_pattern, output, model, *extra) -> Path:
    """`qdedup run`'s pipeline without the launcher's report and its checks (`qdedup run` refuses the
    bundle-based runner, which drops some metrics); returns the folder it wrote."""
    with qdedup_pipeline(input_pattern, output, model, *extra) as (pipeline, out):
        pipeline.run().wait_until_finish()
    return Path(out.write_root)
