"""The records that travel between the pipeline's stages, and the few rules that belong to a record.

Every stage module imports its vocabulary from here (and vectors from `transforms/vectors.py`), so no
stage imports another. The data flow they follow is in `docs/design.md`.
"""
from __future__ import annotations

from typing import Any, Iterable, NamedTuple, Optional, Union

import numpy as np

from transforms.vectors import SparseVector


class Columns(NamedTuple):
    """The input's column names."""

    id: str
    text: str
    timestamp: Optional[str] = None  # read only when the canonical member is the earliest row


class Question(NamedTuple):
    """An accepted row. `source` is 'path#row' (row counted from 0 within the file).

    `timestamp` is microseconds since the epoch for timestamp and date columns,
    the value itself for integer columns, None when the row has none.
    """

    id: object
    text: str
    source: str
    normalized: str = ""
    timestamp: Optional[int] = None

    def row(self, columns: Columns) -> dict:
        return {columns.id: self.id, columns.text: self.text}


class Representative(NamedTuple):
    """The question that stands for all rows sharing one normalized text."""

    id: object
    text: str
    normalized: str
    key: str
    count: int
    first_time: Optional[int] = None  # the earliest timestamp among the rows with this text,
    first_id: object = None           # and that row's id (the lowest id on a tie or without timestamps)


class Membership(NamedTuple):
    """An accepted row and the representative of its exact-duplicate cluster."""

    id: object
    rep_id: object
    key: str


def earliest_key(time: Optional[int], row_id: object) -> tuple:
    """Sort key of 'earliest': rows without a timestamp come last, ties go to the lowest id."""
    return time is None, time or 0, row_id


Neighbours = list  # [(similarity, id)], best first: higher similarity, then lower id; at most top_k


class Embedded(NamedTuple):
    """A representative and its unit vector (dense, or a `SparseVector`), as an embedder gives it."""

    rep: Representative
    vector: Any


class StoredItem(NamedTuple):
    """A representative an earlier run embedded: its stored vector and its k nearest (`Neighbours`)."""

    rep: Representative
    vector: Any
    neighbours: Neighbours


class VectorRecord(NamedTuple):
    """A row of state/<kind>/vectors/, its fields the schema's columns: arrays stay arrays until the writer
    makes Arrow columns of a batch of them (a list of floats a row took 16-24 µs a vector to write, an
    array 3)."""

    id: object
    key: str
    indices: Optional[np.ndarray]  # None for a dense vector
    values: np.ndarray
    dim: int
    top_ids: list
    top_sims: list


def vector_record(rep_id, key: str, vector, neighbours: Neighbours) -> VectorRecord:
    """A question's vector and its k nearest (`Neighbours`) as the row state/<kind>/vectors/ keeps."""
    top_ids, top_sims = [nid for _, nid in neighbours], [sim for sim, _ in neighbours]
    if isinstance(vector, SparseVector):
        return VectorRecord(rep_id, key, vector.indices, vector.values, vector.dim, top_ids, top_sims)
    return VectorRecord(rep_id, key, None, vector, len(vector), top_ids, top_sims)


class GivenCentroids(NamedTuple):
    """Blocking centroids from an earlier run (`centroids` None: it had one partition)."""

    centroids: Any


class CandidatePair(NamedTuple):
    """A pair to score. Texts are None where blocking did not see them (an extended run's stored lists):
    the scoring stage fetches them for the pairs it has to score. In a run, a text is mostly its token
    ids for the scorer, as bytes (`score.TokenizeAhead`): each question is tokenized once, not in each pair."""

    id_a: object
    id_b: object
    text_a: Optional[Union[str, bytes]]
    text_b: Optional[Union[str, bytes]]
    similarity: Optional[float]
    source: str = "lexical"


class Edge(NamedTuple):
    """A scored pair at or above the threshold inside a group, as chaining control hands it on."""

    a: object
    b: object
    score: float
    source: str


class ScoredPair(NamedTuple):
    """A pair with its cross-encoder score, as pairs/ holds it. `reused`: the score was made by an earlier run
    this one builds on (`--existing`, `--params-from`), not by this run."""

    id_a: object
    id_b: object
    score: float
    similarity: Optional[float]
    source: str
    reused: bool = False


def pairs_in(batch: list) -> list:
    """A scored batch's pairs, for a step that takes them one by one (`beam.FlatMap(pairs_in)`). Scoring gives
    its pairs in lists (`score.Scored`): a step a list passes costs what a step a pair passes would."""
    return batch


# ---- Candidate pairs from neighbour lists: the rule blocking's `DistinctCandidates` and scoring's shards
# (`score.ScoreNeighbours`) share, so that a pair is made the same way wherever it is made ----

def pairs_of(element) -> Iterable[tuple[tuple, tuple]]:
    """A question's neighbours as ((id_a, id_b), (similarity, text_a, text_b)), id_a < id_b.

    The value is a bare tuple: the in-process runner holds every value of the distinct step's shuffle
    decoded, once from each end of a pair, and a `CandidatePair` would add its ids, its source and
    its class name to each; `candidate_pair` makes the record once the pair is one.
    """
    query_id, (query_text, best) = element
    for nid, (sim, ntext) in best.items():
        if query_id < nid:
            yield (query_id, nid), (sim, query_text, ntext)
        else:
            yield (nid, query_id), (sim, ntext, query_text)


def one_pair(value: Optional[tuple], other: tuple) -> tuple:
    """The same pair found twice (from both of its ends, or by two embedders): (similarity, text_a, text_b)
    with the highest similarity and every text that is known."""
    if value is None:
        return other
    return (max(value[0], other[0]), value[1] if value[1] is not None else other[1],
            value[2] if value[2] is not None else other[2])


def candidate_pair(element: tuple, source: str) -> CandidatePair:
    """((id_a, id_b), (similarity, text_a, text_b)) and the embedders that found it -> the record scoring takes."""
    (id_a, id_b), (sim, text_a, text_b) = element
    return CandidatePair(id_a, id_b, text_a, text_b, sim, source)


def found_pairs(element, source: str) -> list[tuple]:
    """A question's neighbours -> (pair, (similarity, text_a, text_b), `source`), as `unite_pairs` takes them."""
    return [(pair, value, source) for pair, value in pairs_of(element)]


def unite_pairs(found: Iterable[tuple]) -> list[tuple]:
    """(pair, (similarity, text_a, text_b), source) as each end and each embedder found it -> each pair once, as
    a `CandidatePair`'s fields (the record `DistinctCandidates` makes): the best similarity, every known text,
    every source. For the pairs of one scoring shard (`score.ScoreNeighbours`), which makes its model's inputs
    of the fields, no record a pair: `found` is bounded. A pair found twice by one embedder (from both its
    ends, as most are) keeps its one source as it came."""
    values, sources = {}, {}
    for pair, value, source in found:
        held = values.get(pair)
        if held is None:
            values[pair], sources[pair] = value, source
            continue
        values[pair] = one_pair(held, value)
        if source != sources[pair]:
            sources[pair] = ",".join(sorted({*sources[pair].split(","), source}))
    return [(*pair, text_a, text_b, sim, sources[pair]) for pair, (sim, text_a, text_b) in values.items()]


def merge_sources(pairs: Iterable[CandidatePair]) -> CandidatePair:
    """One pair several embedders found: the best similarity, every known text, every source."""
    pairs = list(pairs)
    value = None
    for pair in pairs:
        value = one_pair(value, (pair.similarity, pair.text_a, pair.text_b))
    sources = sorted({source for pair in pairs for source in pair.source.split(",")})
    return candidate_pair((pairs[0][:2], value), ",".join(sources))
