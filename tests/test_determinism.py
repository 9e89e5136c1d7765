"""Same input and configuration, same outputs, to the last bit: across runs, runner modes, and bundles the
runner retries (batches are packed from shards of the inputs, never from bundles)."""
import pyarrow.parquet as pq
import pytest

from tests.test_pipeline import run_qdedup

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


@pytest.fixture(scope="module")
def reference(corpus, tiny_model, tmp_path_factory):
    directory, _ = corpus
    out = tmp_path_factory.mktemp("reference") / "out"
    return out, run_qdedup(directory / "*.parquet", out, tiny_model)


def test_two_runs_give_identical_outputs(reference, corpus, tiny_model, tmp_path):
    out, report = reference
    directory, _ = corpus
    again = run_qdedup(directory / "*.parquet", tmp_path / "again", tiny_model)
    assert_same(outputs(out), outputs(tmp_path / "again"), )
    assert {k: again[k] for k in COUNTS} == {k: report[k] for k in COUNTS}


@pytest.mark.parametrize("mode", [["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
                                  ["--runner=BundleBasedDirectRunner"]], ids=["multi_processing", "bundle_based"])
def test_other_runner_modes_give_the_same_outputs(reference, corpus, tiny_model, tmp_path, mode):
    out, report = reference
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


def test_bundles_retried_after_a_worker_failure_lose_and_duplicate_nothing(reference, corpus, tiny_model,
                                                                          tmp_path, monkeypatch):
    """The bundle-based runner retries a failed bundle, as Dataflow does; the outputs must not change."""
    import transforms.block
    import transforms.cluster
    import transforms.normalize
    import transforms.score

    out, report = reference
    directory, _ = corpus
    failures: list = []
    _fail_first_call(transforms.normalize, "choose_representative", monkeypatch, failures)
    _fail_first_call(transforms.block, "knn_lists", monkeypatch, failures)
    _fail_first_call(transforms.cluster, "summarize_group", monkeypatch, failures)
    _fail_first_call(transforms.score.PairScorer, "run_inference", monkeypatch, failures)
    retried = run_qdedup(directory / "*.parquet", tmp_path / "retried", tiny_model, "--runner=BundleBasedDirectRunner")
    assert sorted(failures) == ["choose_representative", "knn_lists", "run_inference", "summarize_group"]
    assert_same(outputs(out), outputs(tmp_path / "retried"))
    assert {k: retried[k] for k in COUNTS} == {k: report[k] for k in COUNTS}
