"""Candidate pairs made of neighbour lists: in a scoring shard (`unite_pairs`) as by `DistinctCandidates`."""
import random

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that

from tests.helpers import RUNNER_ARGS
from transforms.block import DistinctCandidates
from transforms.records import CandidatePair, found_pairs, unite_pairs


def _found(rng: random.Random) -> list:
    """Neighbour lists of 40 questions with random neighbours; some texts unknown (None), as stored lists have."""
    lists = []
    for query in range(40):
        neighbours = rng.sample([n for n in range(40) if n != query], 4)
        lists.append((query, (f"t{query}" if query % 7 else None,
                              {n: (round(rng.random(), 2), f"t{n}" if n % 5 else None) for n in neighbours})))
    return lists


def test_a_shard_makes_the_pairs_distinct_candidates_makes():
    rng = random.Random(3)
    found = {"lexical": _found(rng), "encoder": _found(rng)}
    united = [CandidatePair(*fields) for fields in unite_pairs(
        item for kind, lists in found.items() for element in lists for item in found_pairs(element, kind))]
    assert len(united) == len({(p.id_a, p.id_b) for p in united}) and all(p.id_a < p.id_b for p in united)
    assert {p.source for p in united} == {"lexical", "encoder", "encoder,lexical"}
    assert any(p.text_a is None for p in united) and any(p.text_a is not None for p in united)

    def check(candidates):
        assert sorted(candidates) == sorted(united)

    with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as pipeline:
        lists = {kind: pipeline | kind >> beam.Create(elements) for kind, elements in found.items()}
        assert_that(lists | DistinctCandidates(), check)
