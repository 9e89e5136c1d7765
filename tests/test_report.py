"""report.json's counts: counted in one combine, derived counts and the accounting check."""
from pipelines.dedup import CountEach
from pipelines.report import build_report


def test_count_each_counts_every_name_it_was_given_in_one_combine():
    count = CountEach(["rows_in", "groups", "rows_existing"])
    parts = [count.create_accumulator() for _ in range(2)]
    for name in ["rows_in", "groups", "rows_in"]:
        parts[0] = count.add_input(parts[0], name)
    parts[1] = count.add_input(parts[1], "rows_in")
    merged = count.merge_accumulators(parts)
    assert count.extract_output(merged) == {"rows_in": 3, "groups": 1, "rows_existing": 0}  # uncounted: 0


def test_build_report_derives_exact_duplicates_and_checks_the_accounting():
    counts = {"rows_in": 10, "rows_existing": 2, "rows_out": 9, "rows_rejected": 3, "rows_accepted": 9,
              "representatives": 6, "first_failure": ("row", "{}", "read", "null_id", "")}
    report = build_report(counts, {"threshold": 0.5})
    assert report["exact_duplicates"] == 3 and report["accounting_ok"]
    assert report["first_failure"]["reason"] == "null_id"
    assert not build_report({**counts, "rows_out": 8}, {})["accounting_ok"]
