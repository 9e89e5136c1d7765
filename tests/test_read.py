import collections
import itertools

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from pipelines.preflight import inspect_input
from tests.helpers import RUNNER_ARGS, dealt_shard, peak_bytes
from transforms.errors import QdedupError, RejectedRow, row_as_json
from transforms.read import ReadQuestions, first_occurrences, row_groups, validate_row
from transforms.records import Columns

COLUMNS = Columns("id", "question")


@pytest.mark.parametrize("row_id, text, reason", [
    (None, "问题", "null_id"),
    ("  ", "问题", "empty_id"),
    (1, None, "null_text"),
    (1, 42, "text_not_string"),
    (1, b"bytes", "text_not_string"),
    (1, "", "empty_text"),
    (1, " \t\u3000 ", "empty_text"),
    (1, "长" * 11, "text_too_long"),
    (1, "坏\ud800字", "invalid_unicode"),
])
def test_validate_row_reasons(row_id, text, reason):
    assert validate_row(row_id, text, max_text_chars=10)[0] == reason


def test_validate_row_accepts_good_rows():
    assert validate_row(1, "正常的问题", 10) is None
    assert validate_row("a-1", "长" * 10, 10) is None


def test_rejected_row_json_keeps_cjk_readable_and_survives_lone_surrogates():
    assert RejectedRow.of({"id": 1, "question": "问题"}, "f#0", "r", "d").row == '{"id": 1, "question": "问题"}'
    assert "\\ud800" in row_as_json({"question": "坏\ud800"})


def _write(path, table):
    pq.write_table(table, path)
    return str(path)


def test_inspect_input_reports_files_rows_and_id_type(tmp_path):
    _write(tmp_path / "a.parquet", pa.table({"id": [1, 2], "question": ["a", "b"]}))
    _write(tmp_path / "b.parquet", pa.table({"id": pa.array([3], pa.int32()), "question": ["c"]}))
    info = inspect_input(str(tmp_path / "*.parquet"), COLUMNS)
    assert (len(info.files), info.rows, info.id_type) == (2, 3, "int64")


def test_no_matching_files_is_an_error_naming_the_pattern(tmp_path):
    with pytest.raises(QdedupError, match="matches no files"):
        inspect_input(str(tmp_path / "nothing-*.parquet"), COLUMNS)


def test_missing_column_names_column_file_and_option(tmp_path):
    path = _write(tmp_path / "a.parquet", pa.table({"id": [1], "text": ["a"]}))
    with pytest.raises(QdedupError, match=r"a\.parquet has no column 'question'.*--text-column"):
        inspect_input(path, COLUMNS)


def test_corrupt_file_is_named(tmp_path):
    _write(tmp_path / "good.parquet", pa.table({"id": [1], "question": ["a"]}))
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(QdedupError, match=r"bad\.parquet is not a readable Parquet file"):
        inspect_input(str(tmp_path / "*.parquet"), COLUMNS)


def test_id_types_must_be_integer_or_string_and_agree(tmp_path):
    path = _write(tmp_path / "f.parquet", pa.table({"id": [1.5], "question": ["a"]}))
    with pytest.raises(QdedupError, match="ids must be integers or strings"):
        inspect_input(path, COLUMNS)
    (tmp_path / "f.parquet").unlink()
    _write(tmp_path / "a.parquet", pa.table({"id": [1], "question": ["a"]}))
    _write(tmp_path / "b.parquet", pa.table({"id": ["x"], "question": ["b"]}))
    with pytest.raises(QdedupError, match="id column types differ"):
        inspect_input(str(tmp_path / "*.parquet"), COLUMNS)


def test_timestamp_columns_must_be_times_of_one_kind(tmp_path):
    import datetime
    timed = Columns("id", "question", "asked")
    _write(tmp_path / "a.parquet", pa.table({"id": [1], "question": ["a"], "asked": [datetime.date(2026, 1, 1)]}))
    assert inspect_input(str(tmp_path / "*.parquet"), timed).rows == 1
    _write(tmp_path / "b.parquet", pa.table({"id": [2], "question": ["b"], "asked": [20260101]}))
    with pytest.raises(QdedupError, match="timestamp columns .* differ between files"):
        inspect_input(str(tmp_path / "*.parquet"), timed)
    with pytest.raises(QdedupError, match="has no column 'asked_at'.*--timestamp-column"):
        inspect_input(str(tmp_path / "*.parquet"), Columns("id", "question", "asked_at"))


def test_a_file_is_read_row_group_by_row_group_with_its_row_numbers(tmp_path):
    """Each row group is a work item of its own; rows keep their number within the file."""
    path = tmp_path / "q.parquet"
    pq.write_table(pa.table({"id": list(range(100, 110)), "question": [f"问题{i}" for i in range(10)]}), path,
                   row_group_size=3)
    pq.write_table(pa.table({"id": [200], "question": ["另一个问题"]}), tmp_path / "r.parquet")
    groups = row_groups(str(path))
    assert [(g.index, g.first_row, g.rows) for g in groups] == [(0, 0, 3), (1, 3, 3), (2, 6, 3), (3, 9, 1)]
    expected = [(100 + i, f"问题{i}", f"{path}#{i}") for i in range(10)]
    expected.append((200, "另一个问题", f"{tmp_path}/r.parquet#0"))
    with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as pipeline:
        read = pipeline | ReadQuestions(str(tmp_path / "*.parquet"), COLUMNS, 1000)
        assert_that(read.questions | beam.FlatMap(iter) | beam.Map(lambda q: (q.id, q.text, q.source)),
                    equal_to(expected))
        assert_that(read.rows | beam.CombineGlobally(sum), equal_to([11]), label="RowsIn")


def test_a_damaged_row_group_sets_aside_its_rows_and_the_others_are_read(tmp_path):
    path = tmp_path / "q.parquet"
    pq.write_table(pa.table({"id": list(range(10)), "question": [f"问题{i}" for i in range(10)]}), path,
                   row_group_size=5, compression="none")
    column = pq.ParquetFile(path).metadata.row_group(0).column(1)
    data = bytearray(path.read_bytes())
    data[column.data_page_offset:column.data_page_offset + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as pipeline:
        read = pipeline | ReadQuestions(str(path), COLUMNS, 1000)
        assert_that(read.questions | beam.FlatMap(iter) | beam.Map(lambda q: q.source),
                    equal_to([f"{path}#{i}" for i in range(5, 10)]))
        assert_that(read.rejected | beam.Map(lambda r: (r.source, r.reason)),
                    equal_to([(f"{path}#{i}", "unreadable_row") for i in range(5)]), label="Rejected")


def test_an_id_repeated_20k_times_keeps_its_first_row_without_listing_them():
    """One id's rows arrive in one shard's grouped lists: walked twice, never listed (20k rows as records: ~5 MB);
    the first by file path, then row, wins, and every other is rejected naming it. An id an extended run holds
    rejects all of its rows."""
    copies = 20_000
    rows = lambda: ((7, f"问题{i}", None, f"f{i % 3}", copies - i) for i in range(copies))  # noqa: E731
    element = dealt_shard(lambda: itertools.chain(rows(), [(8, "别的问题", None, "f9", 0)]), [8])

    def walk():
        kept, rejected = [], collections.Counter()
        for out in first_occurrences(element, COLUMNS, 1000):
            if isinstance(out, beam.pvalue.TaggedOutput):
                rejected[(out.value.reason, out.value.detail)] += 1
            else:
                assert len(out) <= 1000
                kept.extend(out)
        return kept, rejected

    (kept, rejected), peak = peak_bytes(walk)
    assert peak < 1_000_000, peak
    first = min(range(copies), key=lambda i: (f"f{i % 3}", copies - i))  # f0, the highest i: the lowest row
    assert [(q.id, q.text, q.source) for q in kept] == [(7, f"问题{first}", f"f0#{copies - first}")]
    assert rejected == {("duplicate_id", f"id already used by f0#{copies - first}"): copies - 1,
                        ("duplicate_id", "id already used by a row of the run this one extends"): 1}


def test_ids_dealt_over_many_shards_keep_the_same_first_rows(tmp_path):
    """With shards of 2 ids, ids repeated across files and row groups meet in their shard: the same questions
    and rejections as one shard."""
    for name, ids in (("a", [1, 2, 3, 4, 2, 5, 6]), ("b", [6, 7, 1, 8, 9, 10])):
        pq.write_table(pa.table({"id": ids, "question": [f"{name}问题{i}" for i in range(len(ids))]}),
                       tmp_path / f"{name}.parquet", row_group_size=2)
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    expected = ([(1, f"{a}#0"), (2, f"{a}#1"), (3, f"{a}#2"), (4, f"{a}#3"), (5, f"{a}#5"), (6, f"{a}#6"),
                 (7, f"{b}#1"), (8, f"{b}#3"), (9, f"{b}#4"), (10, f"{b}#5")])
    duplicates = [(f"{a}#4", f"id already used by {a}#1"), (f"{b}#0", f"id already used by {a}#6"),
                  (f"{b}#2", f"id already used by {a}#0")]
    for shard_keys in (2, 1000):
        with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as pipeline:
            read = pipeline | ReadQuestions(str(tmp_path / "*.parquet"), COLUMNS, 1000, shard_keys=shard_keys)
            lists = read.questions | beam.combiners.Count.Globally() | beam.Map(lambda n: n > 1)
            assert_that(lists, equal_to([shard_keys == 2]), label="Lists")  # 13 ids in 7 shards, or in one
            assert_that(read.questions | beam.FlatMap(iter) | beam.Map(lambda q: (q.id, q.source)),
                        equal_to(expected))
            assert_that(read.rejected | beam.Map(lambda r: (r.source, r.detail)), equal_to(duplicates),
                        label="Rejected")
