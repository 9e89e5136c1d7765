"""Writers for groups/, pairs/, rejected/ and lineage/ (docs/design.md, "write").

Ids keep the input's type (int64 or string) in every output, so analytics can
join on them without casts. Every file a run writes starts with its run id
(`transforms/commit.py` says why).
"""
from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.parquetio import WriteToParquet


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


class WriteRecords(beam.PTransform):
    """NamedTuples -> Parquet files `<prefix>-00000-of-000NN.parquet` with a fixed schema."""

    def __init__(self, prefix: str, schema: pa.Schema):
        super().__init__()
        self._prefix = prefix
        self._schema = schema

    def expand(self, records):
        return (
            records
            | "AsDict" >> beam.Map(lambda record: record._asdict())
            | "WriteParquet" >> WriteToParquet(self._prefix, self._schema, file_name_suffix=".parquet")
        )
