"""report.json's counts: counted as metrics, read back after the run, derived counts and the checks."""
import threading
import time

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.report import (
    COUNTED,
    build_report,
    lowest_failure,
    read_problem,
    run_counts,
    run_totals,
    written_rows,
)
from tests.helpers import MULTI_PROCESSING, RUNNER_ARGS
from transforms.metrics import StageTimer, count_elements


@pytest.mark.slow
@pytest.mark.parametrize("mode", [[], MULTI_PROCESSING], ids=["in-process", "two-processes"])
def test_counts_are_exact_through_flattens_and_late_stages(mode):
    """Every element of every bundle is counted, whichever process and stage produced it: collections of
    several stages flattened, and one produced only after a shuffle."""
    pipeline = beam.Pipeline(options=PipelineOptions([*RUNNER_ARGS, *mode]))
    numbers = pipeline | "Numbers" >> beam.Create(range(5000)) | "Spread" >> beam.Reshuffle()
    grouped = (numbers | "ByTen" >> beam.Map(lambda n: (n % 10, n)) | "Group" >> beam.GroupByKey()
               | "Sizes" >> beam.MapTuple(lambda key, values: sum(1 for _ in values)))
    both = (numbers, grouped) | "Both" >> beam.Flatten()
    numbers | "CountIn" >> count_elements("rows_in")
    both | "CountOut" >> count_elements("rows_out", size=lambda n: n)
    grouped | "CountGroups" >> count_elements("groups")
    result = pipeline.run()
    result.wait_until_finish()
    counts = run_counts(result)
    assert set(counts) == {*COUNTED, "largest_group"}
    assert (counts["rows_in"], counts["rows_out"], counts["groups"]) == (5000, 5010, 10)
    assert counts["largest_group"] == 4999 and counts["pairs_total"] == 0  # the largest size seen; uncounted: 0


def _spin(seconds: float) -> None:
    until = time.process_time() + seconds
    while time.process_time() < until:
        pass


class _TimedWork(beam.DoFn):
    """Waits inside one stage while it sleeps, inside another while a helper thread works (as torch's pool does),
    and in a third works itself after a helper's work, timed by its own thread's clock."""

    def process(self, element):
        with StageTimer("asleep"):
            time.sleep(0.3)
        with StageTimer("helped"):
            helper = threading.Thread(target=_spin, args=(0.3,))
            helper.start()
            helper.join()
        with StageTimer("own thread", helpers=False):  # the helper's CPU is not the thread's
            helper = threading.Thread(target=_spin, args=(0.3,))
            helper.start()
            helper.join()
            _spin(0.2)
        yield element


def test_stage_cpu_seconds_count_helper_threads_and_not_waiting():
    """A stage's wall seconds cannot tell a model's helper threads at work from a sleep; its CPU seconds can."""
    pipeline = beam.Pipeline(options=PipelineOptions(RUNNER_ARGS))
    pipeline | beam.Create([0]) | beam.ParDo(_TimedWork())
    result = pipeline.run()
    result.wait_until_finish()
    totals = run_totals({}, result)
    wall, cpu = totals["stage_seconds"], totals["stage_cpu_seconds"]
    assert wall["asleep"] >= 0.3 and cpu["asleep"] < 0.1
    assert wall["helped"] >= 0.25 and cpu["helped"] >= 0.25
    assert wall["own thread"] >= 0.45 and 0.15 <= cpu["own thread"] < 0.45


def test_no_metrics_at_all_is_told_apart_from_zero_counts():
    class NoMetrics:
        def metrics(self):
            raise NotImplementedError

    assert run_counts(NoMetrics()) is None


def test_a_step_that_read_another_number_than_was_made_is_a_problem():
    whole = {"blocking_questions": 7, "collections_read": {"blocking_questions/AssignPartitions": 7,
                                                           "blocking_questions/SampleForCentroids": 7}}
    assert read_problem(whole) is None
    assert read_problem({"blocking_questions": 0}) is None  # nothing read later: nothing to check
    short = {**whole, "collections_read": {**whole["collections_read"], "blocking_questions/SampleForCentroids": 6}}
    assert read_problem(short).startswith("SampleForCentroids read 6 elements of blocking_questions but 7 were made")
    repeated = {**whole, "collections_read": {"blocking_questions/AssignPartitions": 8}}
    assert "AssignPartitions read 8" in read_problem(repeated)
    assert "but None were made" in read_problem({"collections_read": {"uncounted/Step": 1}})


def test_build_report_derives_exact_duplicates_and_checks_the_accounting():
    counts = {"rows_in": 10, "rows_existing": 2, "rows_out": 9, "rows_rejected": 3, "rows_accepted": 9,
              "representatives": 6, "first_failure": ("row", "{}", "read", "null_id", "")}
    report = build_report(counts, {"threshold": 0.5})
    assert report["exact_duplicates"] == 3 and report["accounting_ok"]
    assert report["first_failure"]["reason"] == "null_id"
    assert not build_report({**counts, "rows_out": 8}, {})["accounting_ok"]


def test_written_rows_and_the_lowest_failure_are_read_from_the_run_files(tmp_path):
    rejected = [
        {"kind": "row", "row": "a.parquet:0", "stage": "read", "reason": "null_id", "detail": ""},
        {"kind": "pair", "row": "7|9", "stage": "score", "reason": "model_error", "detail": "nan"},
        {"kind": "question", "row": "5", "stage": "embed", "reason": "model_error", "detail": "oom"},
        {"kind": "pair", "row": "3|4", "stage": "score", "reason": "model_error", "detail": "nan"},
    ]
    paths = []
    for i, rows in enumerate((rejected[:2], rejected[2:])):
        paths.append(str(tmp_path / f"run-0000{i}-of-00002.parquet"))
        pq.write_table(pa.Table.from_pylist(rows), paths[-1], row_group_size=1)
    files = {"rejected": paths}
    assert written_rows(files, "rejected") == 4 and written_rows(files, "groups") == 0
    assert lowest_failure(files) == ("pair", "3|4", "score", "model_error", "nan")  # rows are not model failures
    assert lowest_failure({"rejected": paths[:1]}) == ("pair", "7|9", "score", "model_error", "nan")
