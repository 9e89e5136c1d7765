"""What a run keeps so that later runs can build on it (`--existing`, `--params-from`).

Every run writes `state/` next to its outputs (file names carry the run id; the
commit marker lists them, see `transforms/commit.py`):

    state/representatives/       one row per distinct normalized text (Representative)
    state/members/               every accepted row and its representative
    state/<embedder>/vectors/    each representative's unit vector and its k nearest as (id, similarity)
    state/<embedder>/<run>-params.npz     idf weights (lexical) or whitening (encoder), as used
    state/<embedder>/<run>-centroids.npz  the blocking partitions' centroids (empty: one partition)

With `pairs/` (every pair the run decided on, with its score) that is all a
later run needs: `--existing` embeds, places and searches only new questions and
updates the stored k nearest; `--params-from` runs over a whole corpus with the
stored parameters, representatives, vectors and scores. `STATE_FORMAT` is
checked on read.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Iterable, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import ReadAllFromParquet

from transforms.block import Given
from transforms.commit import Committed, read_committed
from transforms.embed import SparseVector
from transforms.errors import QdedupError
from transforms.normalize import Membership, Representative
from transforms.score import ScoredPair
from transforms.write import WriteRecords, arrow_id_type

STATE_FORMAT = 2  # 1: k nearest stored as similarities only; 2: as (id, similarity), vectors carry their text key

# Options whose values the reused parts of an earlier run depend on (its parameters, vectors and scores);
# `fingerprints` and `scoring_precision` are filled in at launch.
REUSED_OPTIONS = ("lexical_dim", "encoder_pooling", "encoder_whiten", "max_length", "symmetric",
                  "positive_label", "scoring_precision", "fingerprints")
# ... and, for an extension, the options that shaped its stored k nearest and representatives too.
EXTENSION_OPTIONS = REUSED_OPTIONS + ("top_k", "min_similarity", "probes", "id_column", "text_column",
                                      "canonical", "timestamp_column")


def representatives_schema(id_type: str) -> pa.Schema:
    ids = arrow_id_type(id_type)
    return pa.schema([("id", ids), ("text", pa.string()), ("normalized", pa.string()), ("key", pa.string()),
                      ("count", pa.int64()), ("first_time", pa.int64()), ("first_id", ids)])


def members_schema(id_type: str) -> pa.Schema:
    ids = arrow_id_type(id_type)
    return pa.schema([("id", ids), ("rep_id", ids), ("key", pa.string())])


def vectors_schema(id_type: str) -> pa.Schema:
    ids = arrow_id_type(id_type)
    return pa.schema([("id", ids), ("key", pa.string()), ("indices", pa.list_(pa.int32())),
                      ("values", pa.list_(pa.float32())), ("dim", pa.int64()),
                      ("top_ids", pa.list_(ids)), ("top_sims", pa.list_(pa.float64()))])


def vector_record(rep_id, key: str, vector, neighbours: Iterable[tuple]) -> dict:
    if isinstance(vector, SparseVector):
        indices, values, dim = vector.indices.tolist(), vector.values.tolist(), vector.dim
    else:
        indices, values, dim = None, vector.tolist(), len(vector)
    neighbours = list(neighbours)
    return {"id": rep_id, "key": key, "indices": indices, "values": values, "dim": dim,
            "top_ids": [nid for _, nid in neighbours], "top_sims": [sim for sim, _ in neighbours]}


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


def _load_arrays(path: str) -> dict:
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
    centroids: dict = field(default_factory=dict)   # embedder kind -> Given

    def whitening(self, kind: str) -> Optional[tuple]:
        params = self.params.get(kind, {})
        return (params["mean"], params["matrix"]) if "mean" in params else None

    def files(self, folder: str) -> list[str]:
        return self.committed.paths(folder, ".parquet")


def differing_option(earlier: dict, now: dict, names: Iterable[str]) -> Optional[str]:
    """The first option whose value differs between two configurations, in words; None if all agree."""
    for name in names:
        if name == "fingerprints":
            for model in sorted(set(earlier.get(name) or {}) | set(now.get(name) or {})):
                before, after = (earlier.get(name) or {}).get(model), (now.get(name) or {}).get(model)
                if before != after:
                    return (f"another {model} model (fingerprint {str(before)[:12]}, this run's "
                            f"{str(after)[:12]}: its weights, vocabulary or config differ)")
        elif earlier.get(name) != now.get(name):
            return f"--{name.replace('_', '-')}={earlier.get(name)!r}, this run has {now.get(name)!r}"
    return None


def load_prior(path: str, extend: bool, configuration: dict, kinds: Iterable[str]) -> Prior:
    """Checks that `path` is a committed run whose state this run can use with its options; loads its arrays."""
    option = "--existing" if extend else "--params-from"
    committed = read_committed(path, option)
    state_format = committed.report.get("state_format")
    if state_format != STATE_FORMAT:
        raise QdedupError(f"{option} {path!r} has state format {state_format!r}, this qdedup needs "
                          f"{STATE_FORMAT}: run once in full (it can keep ids with --previous-groups)")
    earlier = committed.configuration
    differs = differing_option(earlier, configuration, EXTENSION_OPTIONS if extend else REUSED_OPTIONS)
    if differs:
        raise QdedupError(f"{option} {path!r} was made with {differs}: its "
                          + ("state and scores are only valid with the same options; keep them, or run in full "
                             "without --existing" if extend else
                             "parameters, vectors and scores are only valid with the same options"))
    prior = Prior(committed, extend)
    for kind in kinds:
        try:
            prior.params[kind] = _load_arrays(committed.path(f"state/{kind}", "-params.npz"))
            centroids = _load_arrays(committed.path(f"state/{kind}", "-centroids.npz"))["centroids"]
        except Exception as exc:
            raise QdedupError(f"{option} {path!r}: state/{kind}/ is missing or unreadable ({exc}); "
                              f"it was made without the {kind} embedder") from exc
        prior.centroids[kind] = Given(centroids if centroids.size else None)
    return prior


# ---- Beam glue ----

def _vector_records(element) -> Iterable[dict]:
    rep_id, joined = element
    neighbours = next(iter(joined["neighbours"]), [])
    for key, vector in joined["vector"]:
        yield vector_record(rep_id, key, vector, neighbours)


class WriteEmbedderState(beam.PTransform):
    """(vectors as (id, (key, vector)), neighbours as (id, `Neighbours`), params, centroids) -> state/<kind>/.

    `prefix`: the run's file prefix in state/<kind>/ (`OutputRun.file_prefix`).
    """

    def __init__(self, prefix: str, folder_prefix: str, id_type: str):
        super().__init__()
        self._prefix = prefix
        self._vectors_prefix = folder_prefix
        self._id_type = id_type

    def expand(self, inputs):
        vectors, neighbours, params, centroids = inputs
        params | "WriteParams" >> beam.Map(lambda p, path: _save_arrays(path, **p), f"{self._prefix}-params.npz")
        centroids | "WriteCentroids" >> beam.Map(
            lambda c, path: _save_arrays(path, centroids=np.zeros((0,), np.float32) if c is None else c),
            f"{self._prefix}-centroids.npz")
        return (
            {"vector": vectors, "neighbours": neighbours}
            | "JoinNeighbours" >> beam.CoGroupByKey()
            | "VectorRecords" >> beam.FlatMap(_vector_records)
            | "WriteVectors" >> beam.io.WriteToParquet(self._vectors_prefix, vectors_schema(self._id_type),
                                                       file_name_suffix=".parquet")
        )


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


class ReadPrior(beam.PTransform):
    """An earlier run -> {"representatives", "pairs", "vectors": {kind: stored vector records}}, and, for an
    extension, "members", as the pipeline's own types."""

    def __init__(self, prior: Prior, kinds: Iterable[str]):
        super().__init__()
        self._prior = prior
        self._kinds = list(kinds)

    def expand(self, pbegin):
        prior = self._prior
        read = {
            "representatives": read_parquet(pbegin, "ReadRepresentatives", prior.files("state/representatives"))
            | "ToRepresentative" >> beam.Map(lambda row: Representative(**row)),
            "pairs": read_parquet(pbegin, "ReadPairs", prior.files("pairs"))
            | "ToScoredPair" >> beam.Map(lambda row: ScoredPair(**row)),
            "vectors": {kind: read_parquet(pbegin, f"Read{kind.title()}Vectors", prior.files(f"state/{kind}/vectors"))
                        for kind in self._kinds},
        }
        if prior.extend:  # a run with --params-from has all its rows in its own input
            read["members"] = (read_parquet(pbegin, "ReadMembers", prior.files("state/members"))
                               | "ToMembership" >> beam.Map(lambda row: Membership(**row)))
        return read


def _split_stored(element, extend: bool) -> Iterable:
    """(id, {rep, record}) -> (rep, vector[, neighbours]) when the stored vector is this text's, else the rep
    (to embed)."""
    _, joined = element
    records = list(joined["record"])
    for rep in joined["rep"]:
        record = next((r for r in records if r["key"] == rep.key), None)
        if record is None:
            yield beam.pvalue.TaggedOutput("to_embed", rep)
        elif extend:
            yield rep, vector_of(record), neighbours_of(record)
        else:
            yield rep, vector_of(record)


class SplitByStoredVector(beam.PTransform):
    """(representatives, stored vector records) -> {"stored": items with their stored vector (and, extending,
    their k nearest), "to_embed": representatives without one}."""

    def __init__(self, extend: bool):
        super().__init__()
        self._extend = extend

    def expand(self, inputs):
        representatives, records = inputs
        return (
            {"rep": representatives | "RepById" >> beam.Map(lambda rep: (rep.id, rep)),
             "record": records | "RecordById" >> beam.Map(lambda record: (record["id"], record))}
            | "JoinStoredVector" >> beam.CoGroupByKey()
            | "SplitStored" >> beam.FlatMap(_split_stored, self._extend).with_outputs("to_embed", main="stored")
        )
