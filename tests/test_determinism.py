"""Same input and configuration, same outputs, to the last bit: across runs, runner modes, and bundles the
runner retries (batches are packed from shards of the inputs, never from bundles)."""
import pyarrow.parquet as pq
import pytest

from tests.helpers import MULTI_PROCESSING, run_qdedup

pytestmark = pytest.mark.e2e  # every test here runs qdedup end to end

# Parts compared, with the columns that identify a record.
PARTS = {
    "groups": ("id",),
    "pairs": ("id_a", "id_b"),
    "rejected": ("source", "reason", "row"),
    "lineage": ("group_id", "previous_group_id"),
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


@pytest.mark.parametrize("mode", [MULTI_PROCESSING,
                                  ["--runner=BundleBasedDirectRunner"]], ids=["multi_processing", "bundle_based"])
def test_other_runner_modes_give_the_same_outputs(reference_run, corpus, tiny_model, tmp_path, mode):
    out, report = reference_run
    directory, _ = corpus
    other = run_qdedup(directory / "*.parquet", tmp_path / "other", tiny_model, *mode)
    assert_same(outputs(out), outputs(tmp_path / "other"))
    assert {k: other[k] for k in COUNTS} == {k: report[k] for k in COUNTS}


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
    _fail_first_call(transforms.normalize, "choose_representative", monkeypatch, failures)
    _fail_first_call(transforms.block, "knn_lists", monkeypatch, failures)
    _fail_first_call(transforms.cluster, "summarize_group", monkeypatch, failures)
    _fail_first_call(transforms.inference.PackedBatchHandler, "run_inference", monkeypatch, failures)
    retried = run_qdedup(directory / "*.parquet", tmp_path / "retried", tiny_model, "--runner=BundleBasedDirectRunner")
    assert sorted(failures) == ["choose_representative", "knn_lists", "run_inference", "summarize_group"]
    assert_same(outputs(out), outputs(tmp_path / "retried"))
    assert {k: retried[k] for k in COUNTS} == {k: report[k] for k in COUNTS}
