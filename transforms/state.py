"""What a run keeps so that later runs can build on it (docs/design.md, "State layout").

Every run writes `state/` next to its outputs (file names carry the run id; the
commit marker lists them, see `transforms/commit.py`):

    state/representatives/       one row per distinct normalized text (Representative)
    state/members/               every accepted row and its representative
    state/<embedder>/vectors/    each representative's unit vector and its k nearest as (id, similarity)
    state/<embedder>/<run>-params.npz     idf weights (lexical) or whitening (encoder), as used
    state/<embedder>/<run>-centroids.npz  the blocking partitions' centroids (empty: one partition)
    state/<embedder>/subcentroids/        second-level centroids of the partitions split again

With `pairs/` (every pair the run decided on, with its score) that is all a
later run needs: `--existing` embeds, places and searches only new questions and
updates the stored k nearest; `--params-from` runs over a whole corpus with the
stored parameters, representatives, vectors and scores. `STATE_FORMAT` is
checked on read.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import Iterable, Iterator, NamedTuple, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import ReadAllFromParquet

from transforms.commit import Committed
from transforms.joins import JoinByKey
from transforms.records import (
    Embedded,
    Membership,
    Representative,
    ScoredPair,
    StoredItem,
)
from transforms.vectors import SparseVector
from transforms.write import WriteRecords, arrow_id_type

STATE_FORMAT = 3  # 1: k nearest stored as similarities only; 2: as (id, similarity), vectors carry their text key;
#                  3: partitions over --max-block split by second-level centroids (kept in subcentroids/)


def representatives_schema(id_type: str) -> pa.Schema:
    ids = arrow_id_type(id_type)
    return pa.schema([("id", ids), ("text", pa.string()), ("normalized", pa.string()), ("key", pa.string()),
                      ("count", pa.int64()), ("first_time", pa.int64()), ("first_id", ids)])


def members_schema(id_type: str) -> pa.Schema:
    ids = arrow_id_type(id_type)
    return pa.schema([("id", ids), ("rep_id", ids), ("key", pa.string())])


SUB_CENTROIDS_SCHEMA = pa.schema([("partition", pa.int64()), ("index", pa.int64()),
                                  ("centroid", pa.list_(pa.float32()))])


def vectors_schema(id_type: str) -> pa.Schema:
    ids = arrow_id_type(id_type)
    return pa.schema([("id", ids), ("key", pa.string()), ("indices", pa.list_(pa.int32())),
                      ("values", pa.list_(pa.float32())), ("dim", pa.int64()),
                      ("top_ids", pa.list_(ids)), ("top_sims", pa.list_(pa.float64()))])


def vector_of(record: dict):
    values = np.asarray(record["values"], dtype=np.float32)
    if record["indices"] is None:
        return values
    return SparseVector(np.asarray(record["indices"], dtype=np.int32), values, record["dim"])


def neighbours_of(record: dict) -> list[tuple]:
    return list(zip(record["top_sims"], record["top_ids"]))


def _save_arrays(path: str, **arrays) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(array) for name, array in arrays.items()})
    with FileSystems.create(path) as handle:
        handle.write(buffer.getvalue())


def load_arrays(path: str) -> dict:
    with FileSystems.open(path) as handle:
        loaded = np.load(io.BytesIO(handle.read()))
        return {name: loaded[name] for name in loaded.files}


@dataclass
class Prior:
    """An earlier run this one builds on, checked and its small arrays loaded before the pipeline starts.

    `extend` (`--existing`): this run adds rows to it. Otherwise (`--params-from`) this run is a
    full run that takes its parameters, representatives, vectors and scores where they apply.
    """

    committed: Committed
    extend: bool
    params: dict = field(default_factory=dict)      # embedder kind -> {"idf"} or {"mean", "matrix"} or {}
    centroids: dict = field(default_factory=dict)   # embedder kind -> GivenCentroids

    def whitening(self, kind: str) -> Optional[tuple]:
        params = self.params.get(kind, {})
        return (params["mean"], params["matrix"]) if "mean" in params else None

    def files(self, folder: str) -> list[str]:
        return self.committed.paths(folder, ".parquet")


# ---- Beam glue ----

def _sub_centroids_of(element) -> tuple:
    partition, rows = element
    rows = sorted(rows, key=lambda row: row["index"])
    return partition, np.asarray([row["centroid"] for row in rows], dtype=np.float32)


def _sub_centroid_rows(element) -> Iterator[dict]:
    """(partition, centroids) -> one record per second-level centroid, as state/<kind>/subcentroids/ keeps them."""
    partition, centroids = element
    for index, centroid in enumerate(centroids):
        yield {"partition": partition, "index": index, "centroid": centroid.tolist()}


def read_sub_centroids(pbegin, label: str, paths: list[str]):
    """An earlier run's second-level centroid files -> (partition, centroids); nothing when there are none."""
    return (
        read_parquet(pbegin, label, paths)
        | f"{label}ByPartition" >> beam.Map(lambda row: (row["partition"], row))
        | f"{label}Gather" >> beam.GroupByKey()  # a partition's second level: at most max_centroids rows
        | f"{label}ToArray" >> beam.Map(_sub_centroids_of)
    )


class WriteEmbedderState(beam.PTransform):
    """(`VectorRecord`s, params, centroids, second-level centroids as (partition, array)) -> state/<kind>/.

    `prefix`: the run's file prefix in state/<kind>/ (`OutputRun.file_prefix`); the vectors and the
    second-level centroids go to the folders of `vectors_prefix` and `sub_prefix`.
    """

    def __init__(self, prefix: str, vectors_prefix: str, sub_prefix: str, id_type: str):
        super().__init__()
        self._prefix = prefix
        self._vectors_prefix = vectors_prefix
        self._sub_prefix = sub_prefix
        self._id_type = id_type

    def expand(self, inputs):
        records, params, centroids, sub_centroids = inputs
        sub_centroids | "SubCentroidRows" >> beam.FlatMap(_sub_centroid_rows) | "WriteSubCentroids" >> \
            beam.io.WriteToParquet(self._sub_prefix, SUB_CENTROIDS_SCHEMA, file_name_suffix=".parquet")
        params | "WriteParams" >> beam.Map(lambda p, path: _save_arrays(path, **p), f"{self._prefix}-params.npz")
        centroids | "WriteCentroids" >> beam.Map(
            lambda c, path: _save_arrays(path, centroids=np.zeros((0,), np.float32) if c is None else c),
            f"{self._prefix}-centroids.npz")
        return records | "WriteVectors" >> WriteRecords(self._vectors_prefix, vectors_schema(self._id_type))


class WriteRunState(beam.PTransform):
    """Representatives and memberships -> state/representatives/, state/members/ (prefixes given)."""

    def __init__(self, representatives_prefix: str, members_prefix: str, id_type: str):
        super().__init__()
        self._representatives = representatives_prefix
        self._members = members_prefix
        self._id_type = id_type

    def expand(self, inputs):
        representatives, members = inputs
        representatives | "WriteRepresentatives" >> WriteRecords(
            self._representatives, representatives_schema(self._id_type))
        return members | "WriteMembers" >> WriteRecords(self._members, members_schema(self._id_type))


def read_parquet(pbegin, label: str, paths: list[str]):
    """Rows (dicts) of these Parquet files; nothing when there are none."""
    return (pbegin | f"{label}Files" >> beam.Create(sorted(paths))
            | f"{label}Rows" >> ReadAllFromParquet())


class Stored(NamedTuple):
    """What `ReadPrior` gives, as the pipeline's own types: representatives, pairs (`ScoredPair`s), stored
    vector records and second-level centroids per embedder kind, and (extending it; else None) the
    memberships of its rows."""

    representatives: beam.PCollection
    pairs: beam.PCollection
    vectors: dict
    sub_centroids: dict
    members: Optional[beam.PCollection]


class ReadPrior(beam.PTransform):
    """An earlier run -> `Stored`."""

    def __init__(self, prior: Prior, kinds: Iterable[str]):
        super().__init__()
        self._prior = prior
        self._kinds = list(kinds)

    def expand(self, pbegin):
        prior = self._prior
        members = None
        if prior.extend:  # a run with --params-from has all its rows in its own input
            members = (read_parquet(pbegin, "ReadMembers", prior.files("state/members"))
                       | "ToMembership" >> beam.Map(lambda row: Membership(**row)))
        return Stored(
            read_parquet(pbegin, "ReadRepresentatives", prior.files("state/representatives"))
            | "ToRepresentative" >> beam.Map(lambda row: Representative(**row)),
            read_parquet(pbegin, "ReadPairs", prior.files("pairs")) | "ToScoredPair" >> beam.Map(
                lambda row: ScoredPair(**row)),
            {kind: read_parquet(pbegin, f"Read{kind.title()}Vectors", prior.files(f"state/{kind}/vectors"))
             for kind in self._kinds},
            {kind: read_sub_centroids(pbegin, f"Read{kind.title()}SubCentroids",
                                      prior.files(f"state/{kind}/subcentroids"))
             for kind in self._kinds},
            members)


def _split_stored(element, extend: bool) -> Iterable:
    """(id, {rep, record}) -> `StoredItem` (extending) or `Embedded` when the stored vector is this text's,
    else the rep (to embed)."""
    _, joined = element
    for rep in joined["rep"]:
        record = next((r for r in joined["record"] if r["key"] == rep.key), None)
        if record is None:
            yield beam.pvalue.TaggedOutput("to_embed", rep)
        elif extend:
            yield StoredItem(rep, vector_of(record), neighbours_of(record))
        else:
            yield Embedded(rep, vector_of(record))


class SplitByStoredVector(beam.PTransform):
    """(representatives, stored vector records) -> {"stored": `Embedded` with the stored vector (extending:
    `StoredItem`s, with their k nearest too), "to_embed": representatives without one}."""

    def __init__(self, extend: bool):
        super().__init__()
        self._extend = extend

    def expand(self, inputs):
        representatives, records = inputs
        return (
            {"rep": representatives, "record": records}
            | "SplitStored" >> JoinByKey(_split_stored, self._extend, keys={"rep": attrgetter("id"),
                                                                            "record": itemgetter("id")},
                                         outputs=("to_embed",), main="stored")
        )
