"""The records that travel between the pipeline's stages, and the few rules that belong to a record.

Every stage module imports its vocabulary from here (and vectors from `transforms/vectors.py`), so no
stage imports another. The data flow they follow is in `docs/design.md`.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Union


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
