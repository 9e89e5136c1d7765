"""What a run keeps so that the next one can extend it (`qdedup run --existing PREV_OUT`).

Every run writes `state/` next to its outputs:

    state/representatives/   one row per distinct normalized text (Representative)
    state/members/           every accepted row and its representative
    state/<embedder>/vectors/  each representative's unit vector and its k best similarities
    state/<embedder>/params.npz     idf weights (lexical) or whitening (encoder), as used
    state/<embedder>/centroids.npy  the blocking partitions' centroids (empty: one partition)

With `pairs/` (every pair ever scored) and `groups/` (ids to keep), that is all
an extension needs: new questions are embedded with the stored parameters,
placed in the stored partitions, searched against the stored vectors, and only
their pairs are scored.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Iterable, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import ReadFromParquet

from transforms.block import BlockingSettings, radius
from transforms.embed import SparseVector
from transforms.errors import QdedupError
from transforms.normalize import Membership, Representative
from transforms.score import ScoredPair
from transforms.write import WriteRecords, arrow_id_type, output_path, read_json

# Options an extension must share with the run it extends: they shape the stored state.
STATE_OPTIONS = ("embedders", "lexical_dim", "encoder_pooling", "encoder_whiten", "top_k", "min_similarity",
                 "id_column", "text_column", "canonical", "timestamp_column")


def representatives_schema(id_type: str) -> pa.Schema:
    ids = arrow_id_type(id_type)
    return pa.schema([("id", ids), ("text", pa.string()), ("normalized", pa.string()), ("key", pa.string()),
                      ("count", pa.int64()), ("first_time", pa.int64()), ("first_id", ids)])


def members_schema(id_type: str) -> pa.Schema:
    ids = arrow_id_type(id_type)
    return pa.schema([("id", ids), ("rep_id", ids), ("key", pa.string())])


def vectors_schema(id_type: str) -> pa.Schema:
    return pa.schema([("id", arrow_id_type(id_type)), ("indices", pa.list_(pa.int32())),
                      ("values", pa.list_(pa.float32())), ("dim", pa.int64()), ("top_sims", pa.list_(pa.float64()))])


def vector_record(rep_id, vector, top_sims: Iterable[float]) -> dict:
    if isinstance(vector, SparseVector):
        indices, values, dim = vector.indices.tolist(), vector.values.tolist(), vector.dim
    else:
        indices, values, dim = None, vector.tolist(), len(vector)
    return {"id": rep_id, "indices": indices, "values": values, "dim": dim, "top_sims": list(top_sims)}


def vector_of(record: dict):
    values = np.asarray(record["values"], dtype=np.float32)
    if record["indices"] is None:
        return values
    return SparseVector(np.asarray(record["indices"], dtype=np.int32), values, record["dim"])


def state_path(output: str, *parts: str) -> str:
    path = output_path(output, "state")
    for part in parts:
        path = output_path(path, part)
    return path


def _save_array(path: str, **arrays) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(array) for name, array in arrays.items()})
    with FileSystems.create(path) as handle:
        handle.write(buffer.getvalue())


def _load_arrays(path: str) -> dict:
    with FileSystems.open(path) as handle:
        loaded = np.load(io.BytesIO(handle.read()))
        return {name: loaded[name] for name in loaded.files}


@dataclass
class ExistingRun:
    """A previous run's output directory, checked and its small arrays loaded, before the pipeline starts."""

    output: str
    params: dict = field(default_factory=dict)      # embedder kind -> {"idf"} or {"mean", "matrix"} or {}
    centroids: dict = field(default_factory=dict)   # embedder kind -> array or None (one partition)

    def whitening(self, kind: str) -> Optional[tuple]:
        params = self.params.get(kind, {})
        return (params["mean"], params["matrix"]) if "mean" in params else None


def load_existing(output: str, options: dict, kinds: Iterable[str]) -> ExistingRun:
    """Checks that `output` is a complete qdedup run made with compatible options; loads its arrays."""
    try:
        report = read_json(output_path(output, "report.json"))
    except Exception as exc:
        raise QdedupError(f"--existing {output!r} has no readable report.json ({exc}); "
                          "give the output directory of a finished qdedup run") from exc
    configuration = report.get("configuration", {})
    for name in STATE_OPTIONS:
        if configuration.get(name) != options.get(name):
            flag = "--" + name.replace("_", "-")
            raise QdedupError(f"--existing {output!r} was made with {flag}={configuration.get(name)!r}, this run has "
                              f"{options.get(name)!r}: an extension must keep it (or run in full without --existing)")
    existing = ExistingRun(output)
    for kind in kinds:
        try:
            existing.params[kind] = _load_arrays(state_path(output, kind, "params.npz"))
            centroids = _load_arrays(state_path(output, kind, "centroids.npz"))["centroids"]
        except Exception as exc:
            raise QdedupError(f"--existing {output!r}: state/{kind}/ is missing or unreadable ({exc}); "
                              "the run that wrote it did not finish, or predates incremental runs") from exc
        existing.centroids[kind] = centroids if centroids.size else None
    return existing


# ---- Beam glue ----

def _write_params(params: dict, path: str) -> None:
    _save_array(path, **params)


def _write_centroids(centroids: Optional[np.ndarray], path: str) -> None:
    _save_array(path, centroids=np.zeros((0,), np.float32) if centroids is None else centroids)


def _vector_records(element) -> Iterable[dict]:
    rep_id, joined = element
    sims = next(iter(joined["sims"]), [])
    for vector in joined["vector"]:
        yield vector_record(rep_id, vector, sims)


class WriteEmbedderState(beam.PTransform):
    """(vectors as (id, vector), top sims as (id, sims), params, centroids) -> state/<kind>/."""

    def __init__(self, output: str, kind: str, id_type: str):
        super().__init__()
        self._output = output
        self._kind = kind
        self._id_type = id_type

    def expand(self, inputs):
        vectors, top_sims, params, centroids = inputs
        params | "WriteParams" >> beam.Map(_write_params, state_path(self._output, self._kind, "params.npz"))
        centroids | "WriteCentroids" >> beam.Map(
            _write_centroids, state_path(self._output, self._kind, "centroids.npz"))
        return (
            {"vector": vectors, "sims": top_sims}
            | "JoinSims" >> beam.CoGroupByKey()
            | "VectorRecords" >> beam.FlatMap(_vector_records)
            | "WriteVectors" >> beam.io.WriteToParquet(
                state_path(self._output, self._kind, "vectors", "part"), vectors_schema(self._id_type),
                file_name_suffix=".parquet")
        )


class WriteRunState(beam.PTransform):
    """Representatives and memberships -> state/representatives/, state/members/."""

    def __init__(self, output: str, id_type: str):
        super().__init__()
        self._output = output
        self._id_type = id_type

    def expand(self, inputs):
        representatives, members = inputs
        state = state_path(self._output)
        representatives | "WriteRepresentatives" >> WriteRecords(
            state, "representatives", representatives_schema(self._id_type))
        return members | "WriteMembers" >> WriteRecords(state, "members", members_schema(self._id_type))


class ReadExisting(beam.PTransform):
    """An existing run -> {"representatives", "members", "pairs"} as the pipeline's own types."""

    def __init__(self, output: str):
        super().__init__()
        self._output = output

    def expand(self, pbegin):
        out = self._output
        return {
            "representatives": pbegin | "ReadRepresentatives" >> ReadFromParquet(
                state_path(out, "representatives", "*.parquet"))
            | "ToRepresentative" >> beam.Map(lambda row: Representative(**row)),
            "members": pbegin | "ReadMembers" >> ReadFromParquet(state_path(out, "members", "*.parquet"))
            | "ToMembership" >> beam.Map(lambda row: Membership(**row)),
            "pairs": pbegin | "ReadPairs" >> ReadFromParquet(output_path(output_path(out, "pairs"), "*.parquet"))
            | "ToScoredPair" >> beam.Map(lambda row: ScoredPair(**row)),
        }


def _existing_item(element, settings: BlockingSettings) -> Iterable[tuple]:
    _, joined = element
    for rep in joined["rep"]:
        for record in joined["vector"]:
            yield rep, vector_of(record), radius(record["top_sims"], settings), record["top_sims"]


def _merged_sims(element, k: int) -> Iterable[tuple]:
    rep_id, joined = element
    for rep, vector, _, sims in joined["item"]:
        found = [s for found in joined["found"] for s in found]
        yield rep_id, vector, sorted([*sims, *found], reverse=True)[:k]


class ReadExistingVectors(beam.PTransform):
    """state/<kind>/vectors joined with representatives -> (rep, vector, radius, top sims)."""

    def __init__(self, output: str, kind: str, settings: BlockingSettings):
        super().__init__()
        self._output = output
        self._kind = kind
        self._settings = settings

    def expand(self, representatives):
        records = (
            representatives.pipeline
            | "ReadVectors" >> ReadFromParquet(state_path(self._output, self._kind, "vectors", "*.parquet"))
            | "VectorById" >> beam.Map(lambda record: (record["id"], record))
        )
        return (
            {"rep": representatives | "RepById" >> beam.Map(lambda rep: (rep.id, rep)), "vector": records}
            | "JoinVectors" >> beam.CoGroupByKey()
            | "ExistingItem" >> beam.FlatMap(_existing_item, self._settings)
        )


def update_top_sims(existing, found, k: int, label: str):
    """Existing (rep, vector, radius, sims) + newly found (id, sims) -> (id, vector), (id, k best sims)."""
    merged = (
        {"item": existing | f"{label}ItemById" >> beam.Map(lambda item: (item[0].id, item)), "found": found}
        | f"{label}JoinFound" >> beam.CoGroupByKey()
        | f"{label}MergeSims" >> beam.FlatMap(_merged_sims, k)
    )
    return (merged | f"{label}Vector" >> beam.Map(lambda m: (m[0], m[1])),
            merged | f"{label}Sims" >> beam.Map(lambda m: (m[0], m[2])))
