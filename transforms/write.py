"""Writers for groups/, pairs/, rejected/ and lineage/ (docs/design.md, "write").

Ids keep the input's type (int64 or string) in every output, so analytics can
join on them without casts. Every file a run writes starts with its run id
(`transforms/commit.py` says why).
"""
from __future__ import annotations

import logging
import operator
import posixpath

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.parquetio import WriteToParquetBatched
from apache_beam.transforms.window import GlobalWindows

from transforms.logs import Progress

_LOG = logging.getLogger(__name__)


def arrow_id_type(id_type: str) -> pa.DataType:
    return {"int64": pa.int64(), "string": pa.string()}[id_type]


def groups_schema(id_type: str) -> pa.Schema:
    ids = arrow_id_type(id_type)
    return pa.schema([("id", ids), ("group_id", ids), ("canonical_id", ids),
                      ("group_size", pa.int64()), ("match_kind", pa.string()),
                      ("min_edge_score", pa.float64()), ("mean_edge_score", pa.float64()),
                      ("group_since_run", pa.int64())])


def lineage_schema(id_type: str) -> pa.Schema:
    ids = arrow_id_type(id_type)
    return pa.schema([("group_id", ids), ("previous_group_id", ids), ("event", pa.string()),
                      ("rows_moved", pa.int64())])


def pairs_schema(id_type: str) -> pa.Schema:
    ids = arrow_id_type(id_type)
    return pa.schema([("id_a", ids), ("id_b", ids), ("score", pa.float64()), ("similarity", pa.float64()),
                      ("source", pa.string()), ("reused", pa.bool_())])


def explain_schema(id_type: str) -> pa.Schema:
    ids = arrow_id_type(id_type)
    return pa.schema([("id", ids), ("group_id", ids), ("canonical_id", ids), ("kind", pa.string()),
                      ("path_ids", pa.list_(ids)), ("path_scores", pa.list_(pa.float64())),
                      ("path_sources", pa.list_(pa.string())), ("lowest_score", pa.float64()),
                      ("weakest_id_a", ids), ("weakest_id_b", ids), ("weakest_score", pa.float64()),
                      ("weakest_source", pa.string())])


REJECTED_SCHEMA = pa.schema([("row", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
                             ("source", pa.string()), ("stage", pa.string()), ("kind", pa.string())])


# A bundle's records become a record batch every BATCH_ROWS rows and a table (one row group or more) every
# TABLE_BYTES of batches, as Beam's WriteToParquet does; a worker holds at most that much per writer.
BATCH_ROWS = 10_000
TABLE_BYTES = 64 * 1024 * 1024


class _RecordsToTables(beam.DoFn):
    """NamedTuples, or lists of them (`batched`), -> Arrow tables of the schema, a column at a time.

    Beam's WriteToParquet takes one dict a row and appends its fields one by one; records already hold
    their fields, so a batch's columns come from one `zip` (in a 30k-row run's profile: 0.1% of the samples
    against 2.1%).
    """

    def __init__(self, schema: pa.Schema, name: str, batched: bool = False):
        self._schema = schema
        self._name = name
        self._batched = batched

    def setup(self):
        self._fields = operator.attrgetter(*self._schema.names)
        self._progress = Progress(_LOG, f"writing {self._name}", "rows")

    def start_bundle(self):
        self._rows, self._batches, self._bytes = [], [], 0

    def process(self, element):
        if self._batched:
            self._progress.add(len(element))
            self._rows += map(self._fields, element)
        else:
            self._progress.add()
            self._rows.append(self._fields(element))
        if len(self._rows) >= BATCH_ROWS:
            self._to_batch()
            if self._bytes >= TABLE_BYTES:
                yield self._table()

    def finish_bundle(self):
        if self._rows:
            self._to_batch()
        if self._batches:
            yield GlobalWindows.windowed_value_at_end_of_window(self._table())

    def _to_batch(self):
        columns = zip(*self._rows) if len(self._schema) > 1 else [self._rows]  # one name: attrgetter gives values
        batch = pa.RecordBatch.from_arrays([pa.array(list(column), type=field.type)
                                            for column, field in zip(columns, self._schema)], schema=self._schema)
        self._rows = []
        self._batches.append(batch)
        self._bytes += batch.nbytes

    def _table(self) -> pa.Table:
        table = pa.Table.from_batches(self._batches, schema=self._schema)
        self._batches, self._bytes = [], 0
        return table


class WriteRecords(beam.PTransform):
    """NamedTuples (fields named as the schema's columns), or lists of them (`batched`: scored batches), ->
    Parquet files `<prefix>-00000-of-000NN.parquet` with a fixed schema. Given a tuple of PCollections
    (records made in parts), each part is made into tables on its own and only the tables are flattened:
    a Flatten of the records would copy each once more (the local runner gives a Flatten a stage)."""

    def __init__(self, prefix: str, schema: pa.Schema, batched: bool = False):
        super().__init__()
        self._prefix = prefix
        self._schema = schema
        self._batched = batched

    def expand(self, records):
        prefix = self._prefix
        to_tables = _RecordsToTables(self._schema, posixpath.basename(posixpath.dirname(prefix)), self._batched)
        if isinstance(records, tuple):
            tables = (tuple(part | f"ToTables{i}" >> beam.ParDo(to_tables) for i, part in enumerate(records))
                      | "AllTables" >> beam.Flatten())
        else:
            tables = records | "ToTables" >> beam.ParDo(to_tables)
        return tables | "WriteParquet" >> WriteToParquetBatched(prefix, self._schema, file_name_suffix=".parquet")
