"""Candidate pairs from neighbour lists: the pure steps blocking's `DistinctCandidates` and scoring's shards
(`score.ScoreNeighbours`) share, so that a pair is made the same way wherever it is made (docs/design.md, "score").
"""
from __future__ import annotations

from typing import Iterable

import apache_beam as beam

from transforms.records import CandidatePair


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


class OnePair(beam.CombineFn):
    """The same pair found from both ends (same similarity): the highest similarity, every text that is
    known. The accumulator is the (similarity, text_a, text_b) value itself, not a list of them."""

    def create_accumulator(self):
        return None

    def add_input(self, accumulator, value):
        if accumulator is None:
            return value
        return (max(accumulator[0], value[0]), accumulator[1] if accumulator[1] is not None else value[1],
                accumulator[2] if accumulator[2] is not None else value[2])

    def merge_accumulators(self, accumulators):
        merged = None
        for accumulator in accumulators:
            if accumulator is not None:
                merged = self.add_input(merged, accumulator)
        return merged

    def extract_output(self, accumulator):
        return accumulator


def candidate_pair(element: tuple, source: str) -> CandidatePair:
    (id_a, id_b), (sim, text_a, text_b) = element
    return CandidatePair(id_a, id_b, text_a, text_b, sim, source)


def found_pairs(element, source: str) -> Iterable[tuple]:
    """A question's neighbours -> (pair, (similarity, text_a, text_b), `source`), as `unite_pairs` takes them."""
    for pair, value in pairs_of(element):
        yield pair, value, source


def unite_pairs(found: Iterable[tuple]) -> list[CandidatePair]:
    """(pair, (similarity, text_a, text_b), source) as each end and each embedder found it -> one
    `CandidatePair` a pair, as `DistinctCandidates` makes it: the best similarity, every known text, every
    source. For the pairs of one scoring shard (`score.ScoreNeighbours`): `found` is bounded."""
    merge, values, sources = OnePair(), {}, {}
    for pair, value, source in found:
        values[pair] = merge.add_input(values.get(pair), value)
        sources.setdefault(pair, set()).add(source)
    return [candidate_pair((pair, value), ",".join(sorted(sources[pair]))) for pair, value in values.items()]


def merge_sources(pairs: Iterable[CandidatePair]) -> CandidatePair:
    """One pair several embedders found: the best similarity, every known text, every source."""
    pairs = list(pairs)
    merge, value = OnePair(), None
    for pair in pairs:
        value = merge.add_input(value, (pair.similarity, pair.text_a, pair.text_b))
    sources = sorted({source for pair in pairs for source in pair.source.split(",")})
    return candidate_pair((pairs[0][:2], value), ",".join(sources))
