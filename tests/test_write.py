"""Writing records: columns taken from the records' fields by the schema's names, batches and tables cut as
a bundle grows, every record written once."""
import glob
from typing import NamedTuple, Optional

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

import transforms.write
from tests.helpers import RUNNER_ARGS
from transforms.write import WriteRecords


class _Row(NamedTuple):  # fields in another order than the schema's, and one the schema does not name
    path: list
    extra: str
    id: str
    score: Optional[float]


class _Id(NamedTuple):
    id: int


SCHEMA = pa.schema([("id", pa.string()), ("score", pa.float64()), ("path", pa.list_(pa.string()))])


def _write(records, prefix: str) -> list[dict]:
    with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as pipeline:
        pipeline | beam.Create(records, reshuffle=False) | WriteRecords(prefix, SCHEMA)
    files = sorted(glob.glob(prefix + "*.parquet"))
    assert files and all(pq.read_schema(f).equals(SCHEMA) for f in files)
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def test_records_are_written_by_the_schemas_names_across_batches_and_tables(tmp_path, monkeypatch):
    monkeypatch.setattr(transforms.write, "BATCH_ROWS", 3)   # a batch every 3 rows,
    monkeypatch.setattr(transforms.write, "TABLE_BYTES", 1)  # a table after every batch
    records = [_Row([f"p{i}"] * (i % 3), "not written", f"id{i}", None if i % 4 == 0 else i / 10) for i in range(10)]
    written = _write(records, str(tmp_path / "part"))
    expected = [{"id": r.id, "score": r.score, "path": r.path} for r in records]
    assert sorted(written, key=lambda row: row["id"]) == sorted(expected, key=lambda row: row["id"])


def test_a_one_column_schema_and_no_records_at_all(tmp_path):
    with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as pipeline:
        pipeline | beam.Create([_Id(5), _Id(7)]) | WriteRecords(str(tmp_path / "one"), pa.schema([("id", pa.int64())]))
    files = glob.glob(str(tmp_path / "one*.parquet"))
    assert sorted(row["id"] for f in files for row in pq.read_table(f).to_pylist()) == [5, 7]
    assert _write([], str(tmp_path / "none")) == []
