"""Candidate generation by FAISS nearest neighbours (DESIGN.md step 5).

Only pairs that blocking proposes are ever scored, so this stage bounds both the
recall and the cost of the run. Vectors are grouped by partition and searched
exactly within each; for now every vector is in partition 0 (a later stage
assigns coarse-centroid partitions without changing this interface).
"""
from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

import apache_beam as beam
import faiss
import numpy as np

from transforms.metrics import StageTimer
from transforms.normalize import Representative


class CandidatePair(NamedTuple):
    id_a: object
    id_b: object
    text_a: str
    text_b: str
    similarity: float


def knn_pairs(ids: Sequence, vectors: np.ndarray, k: int, min_similarity: float) -> dict[tuple, float]:
    """Each vector's k nearest others with inner product >= min_similarity, as {(min id, max id): sim}."""
    n = len(ids)
    if n < 2 or k < 1:
        return {}
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    sims, neighbours = index.search(np.ascontiguousarray(vectors, dtype=np.float32), min(k + 1, n))
    pairs: dict[tuple, float] = {}
    for i in range(n):
        kept = 0
        for j, sim in zip(neighbours[i], sims[i]):
            if j < 0 or j == i:
                continue
            if sim < min_similarity or kept == k:
                break
            kept += 1
            a, b = sorted((ids[i], ids[j]))
            pairs[(a, b)] = max(float(sim), pairs.get((a, b), -1.0))
    return pairs


class _SearchPartition(beam.DoFn):
    def __init__(self, k: int, min_similarity: float):
        self._k = k
        self._min_similarity = min_similarity
        self._timer = StageTimer("block")

    def process(self, element) -> Iterable[CandidatePair]:
        _, embedded = element
        reps: list[Representative] = []
        vectors = []
        for rep, vector in embedded:
            reps.append(rep)
            vectors.append(vector)
        if not reps:
            return
        with self._timer:
            texts = {rep.id: rep.text for rep in reps}
            pairs = knn_pairs([rep.id for rep in reps], np.stack(vectors), self._k, self._min_similarity)
        for (a, b), sim in sorted(pairs.items()):
            yield CandidatePair(a, b, texts[a], texts[b], sim)



def _closest(pairs: Iterable[CandidatePair]) -> CandidatePair:
    return max(pairs, key=lambda pair: pair.similarity)


class BlockCandidates(beam.PTransform):
    """(representative, vector) -> distinct `CandidatePair`s with id_a < id_b."""

    def __init__(self, top_k: int, min_similarity: float):
        super().__init__()
        self._top_k = top_k
        self._min_similarity = min_similarity

    def expand(self, embedded):
        return (
            embedded
            | "AssignPartition" >> beam.Map(lambda item: (0, item))
            | "GroupPartition" >> beam.GroupByKey()
            | "SearchPartition" >> beam.ParDo(_SearchPartition(self._top_k, self._min_similarity))
            | "KeyByPair" >> beam.Map(lambda pair: ((pair.id_a, pair.id_b), pair))
            | "DistinctPairs" >> beam.CombinePerKey(_closest)
            | "DropKey" >> beam.Values()
        )
