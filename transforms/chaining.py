"""Chaining control: components that are too big or too sparse are split again (docs/design.md, "cluster").

Connected components over edges >= threshold let a few weak links chain
unrelated groups together. A component with more representatives than
`max_size`, or whose edges cover less than `min_density` of its possible pairs,
is re-split:

1. its missing internal pairs are scored with the cross-encoder, friend-of-a-friend
   pairs first (the strongest two-edge paths), at most `pair_budget` per component;
2. average-linkage clustering over every scored internal pair, cut at the
   threshold. Pairs never compared count as non-duplicates (score 0), so a
   group only survives where its members were actually found similar.

Only this run's blocking pairs decide which components are re-split and which
pairs their re-split asks for; a pair an earlier run scored is reused only when
that plan asks for it (through the scorer given, `ScoreCandidates`).
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Iterable, Mapping, NamedTuple, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.records import CandidatePair

RESPLIT = "resplit"  # the `source` of pairs that chaining control scored


@dataclass(frozen=True)
class ChainingSettings:
    """The defaults are the command line's."""

    threshold: float = 0.5
    max_size: int = 100          # representatives; a larger component is always re-split
    min_density: float = 0.5     # edges / possible pairs below which a component (>= 3 nodes) is re-split
    pair_budget: int = 5000      # missing pairs scored per re-split component (all pairs of 100 nodes: 4950)
    fanout: int = 32             # strongest edges per node whose friend-of-friend pairs are considered


def needs_resplit(nodes: int, edges: int, settings: ChainingSettings) -> bool:
    if nodes < 3:
        return False
    return nodes > settings.max_size or edges < settings.min_density * nodes * (nodes - 1) / 2


def missing_pairs(scores: Mapping[tuple, float], threshold: float, budget: int, fanout: int) -> list[tuple]:
    """Unscored (a, b) pairs, a < b, two edges apart, strongest path first (its weaker edge), then by id."""
    neighbours: dict = {}
    for (a, b), score in scores.items():
        if score >= threshold:
            neighbours.setdefault(a, []).append((score, b))
            neighbours.setdefault(b, []).append((score, a))
    strength: dict = {}
    for middle in sorted(neighbours):
        strongest = sorted(neighbours[middle], key=lambda item: (-item[0], item[1]))[:fanout]
        for i, (score_a, a) in enumerate(strongest):
            for score_b, b in strongest[i + 1:]:
                pair = (a, b) if a < b else (b, a)
                if pair not in scores:
                    strength[pair] = max(strength.get(pair, -math.inf), min(score_a, score_b))
    ranked = sorted(strength.items(), key=lambda item: (-item[1], item[0]))
    return [pair for pair, _ in ranked[:budget]]


def average_linkage(nodes: Sequence, scores: Mapping[tuple, float], threshold: float) -> dict:
    """{node: smallest node of its cluster}: clusters merged while their mean pair score >= threshold.

    The mean is over all |A| x |B| pairs, unscored pairs counting 0. A lazy
    heap keeps it near O(E log E): a stored mean is an upper bound of the
    current one, so a popped entry is re-checked before it is merged.
    """
    nodes = sorted(nodes)
    index = {node: i for i, node in enumerate(nodes)}
    size = [1] * len(nodes)
    members = [[node] for node in nodes]
    links: list[dict] = [{} for _ in nodes]
    for (a, b), score in sorted(scores.items()):
        if a in index and b in index and a != b and score > 0:
            i, j = index[a], index[b]
            links[i][j] = links[i].get(j, 0.0) + score
            links[j][i] = links[j].get(i, 0.0) + score
    heap = [(-total, i, j) for i in range(len(nodes)) for j, total in links[i].items() if i < j]
    heapq.heapify(heap)
    alive = [True] * len(nodes)
    while heap:
        negative_mean, i, j = heapq.heappop(heap)
        if not (alive[i] and alive[j]) or j not in links[i]:
            continue
        mean = links[i][j] / (size[i] * size[j])
        if mean < threshold:
            if -negative_mean < threshold:
                break  # every stored mean is an upper bound: nothing left reaches the threshold
            continue
        if mean < -negative_mean:  # stale: the clusters grew since this entry was stored
            heapq.heappush(heap, (-mean, i, j))
            continue
        big, small = (i, j) if size[i] >= size[j] else (j, i)
        for other, total in links[small].items():
            if other == big:
                continue
            links[big][other] = links[big].get(other, 0.0) + total
            del links[other][small]
            links[other][big] = links[big][other]
        del links[big][small]
        links[small] = {}
        alive[small] = False
        size[big] += size[small]
        members[big] += members[small]
        members[small] = []
        for other, total in links[big].items():
            pair = (big, other) if big < other else (other, big)
            heapq.heappush(heap, (-total / (size[big] * size[other]), *pair))
    labels = {}
    for group in members:
        if group:
            low = min(group)
            labels.update((node, low) for node in group)
    return labels


# ---- Beam glue ----

class _Plan(beam.DoFn):
    """Per component: keep its label, or plan a re-split and ask for its missing pairs.

    The plan follows this run's blocking pairs alone (the only scored pairs a component is made of):
    the same graph gives the same plan, whatever earlier runs scored.
    """

    def __init__(self, settings: ChainingSettings):
        self._settings = settings
        self._resplit = Metrics.counter("qdedup", "components_resplit")

    def process(self, element):
        root, joined = element
        nodes = sorted(set(joined["node"]))
        scores = {(p.id_a, p.id_b): p.score for p in joined["pair"]}
        edges = sum(score >= self._settings.threshold for score in scores.values())
        if not needs_resplit(len(nodes), edges, self._settings):
            for node in nodes:
                yield node, root
            return
        self._resplit.inc()
        yield beam.pvalue.TaggedOutput("resplit", (root, (nodes, scores)))
        for pair in missing_pairs(scores, self._settings.threshold, self._settings.pair_budget,
                                  self._settings.fanout):
            yield beam.pvalue.TaggedOutput("missing", (pair, root))


def _resplit(element, threshold: float) -> Iterable[tuple]:
    _, joined = element
    (nodes, scores), = joined["plan"]
    scores = dict(scores)
    scores.update(((p.id_a, p.id_b), p.score) for p in joined["extra"])
    yield from average_linkage(nodes, scores, threshold).items()


class Chained(NamedTuple):
    """What `SplitChains` gives: (node, group label) for every node of a component; the pairs re-splits
    asked for, scored (reused or new), and the new ones alone; and the pairs that could not be scored."""

    labels: beam.PCollection
    scored: beam.PCollection
    new: beam.PCollection
    failed: beam.PCollection


class SplitChains(beam.PTransform):
    """(components as (node, label), scored pairs inside them as (label, pair)) -> `Chained`.

    `score` is the PTransform that turns `CandidatePair`s without texts into `Scored`
    (`ScoreCandidates` in a run, which reuses scores an earlier run made).
    """

    def __init__(self, settings: ChainingSettings, score: beam.PTransform):
        super().__init__()
        self._settings = settings
        self._score = score

    def expand(self, inputs):
        components, internal = inputs
        settings = self._settings
        plan = (
            {"node": components | "NodeByComponent" >> beam.KvSwap(), "pair": internal}
            | "GatherComponent" >> beam.CoGroupByKey()
            | "PlanResplit" >> beam.ParDo(_Plan(settings)).with_outputs("resplit", "missing", main="kept")
        )
        scoring = (
            plan.missing
            | "ToCandidate" >> beam.MapTuple(lambda pair, _: CandidatePair(pair[0], pair[1], None, None, None, RESPLIT))
            | "ScoreMissingPairs" >> self._score
        )
        extra_by_root = (
            {"root": plan.missing,
             "pair": scoring.scored | "ExtraByPair" >> beam.Map(lambda p: ((p.id_a, p.id_b), p))}
            | "JoinExtraRoot" >> beam.CoGroupByKey()
            | "ExtraByRoot" >> beam.FlatMap(lambda kv: [(r, p) for r in kv[1]["root"] for p in kv[1]["pair"]])
        )
        resplit = (
            {"plan": plan.resplit, "extra": extra_by_root}
            | "GatherResplit" >> beam.CoGroupByKey()
            | "AverageLinkage" >> beam.FlatMap(_resplit, settings.threshold)
        )
        labels = (plan.kept, resplit) | "AllLabels" >> beam.Flatten()
        return Chained(labels, scoring.scored, scoring.new, scoring.failed)
