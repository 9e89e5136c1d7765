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

With component rounds, only components that are re-split meet on one worker,
and only up to `max_gather` representatives: a larger one is first cut in a
distributed way, its connected components recomputed over its edges at rising thresholds
(`cut_thresholds`) until the pieces fit; a piece still too large after the last
step keeps its components at that step, is not re-split, and is counted. Where
the whole graph fits one worker (a run with no component rounds), that worker
finds the components, their verdicts and the pieces of every level at once
instead (`_judge_on_one_worker`; `cut_pieces`, from the pairs scoring at least
the first cut threshold), and hands on each group kept and each component or
piece to re-split with its pairs, with no join.

Only this run's blocking pairs decide which components are re-split and which
pairs their re-split asks for; a pair an earlier run scored is reused only when
that plan asks for it (through the scorer given, `ScoreCandidates`).
"""
from __future__ import annotations

import bisect
import collections
import heapq
import itertools
import logging
import math
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from transforms.errors import QdedupError
from transforms.joins import SHARD_KEYS, JoinByKey, KeyValue, LookUp, only
from transforms.logs import Progress
from transforms.metrics import largest
from transforms.records import CandidatePair, Edge, ScoredPair, pairs_in

_LOG = logging.getLogger(__name__)
RESPLIT = "resplit"  # the `source` of pairs that chaining control scored


@dataclass(frozen=True)
class ChainingSettings:
    """The defaults are the command line's."""

    threshold: float = 0.5
    max_size: int = 100          # representatives; a larger component is always re-split
    min_density: float = 0.5     # edges / possible pairs below which a component (>= 3 nodes) is re-split
    pair_budget: int = 5000      # missing pairs scored per re-split component (all pairs of 100 nodes: 4950)
    fanout: int = 32             # strongest edges per node whose friend-of-friend pairs are considered
    max_gather: int = 5000       # representatives a re-split may gather on one worker; larger components are cut
    cut_steps: int = 6           # rising edge thresholds a too-large component is cut at
    join_shard_keys: int = SHARD_KEYS  # nodes whose label one shard of a look-up join holds (`joins.LookUp`)
    one_worker_pairs: int = 0    # > 0: components found, judged and cut on one worker holding at most this many pairs


def cut_thresholds(settings: ChainingSettings) -> list[float]:
    """The edge thresholds a component larger than `max_gather` is cut at: each halves the distance left
    to 1 (0.75, 0.875, ... from 0.5), so that the last ones keep only near-certain duplicates together."""
    gap = 1.0 - settings.threshold
    return [round(1.0 - gap / 2 ** i, 6) for i in range(1, settings.cut_steps + 1)]


def needs_resplit(nodes, edges, settings: ChainingSettings):
    """Whether a component of `nodes` nodes and `edges` edges is re-split; numbers, or arrays of them
    (`group_verdicts`)."""
    return (nodes >= 3) & ((nodes > settings.max_size) | (edges < settings.min_density * nodes * (nodes - 1) / 2))


def verdict(nodes: int, edges: int, settings: ChainingSettings, last: bool) -> Optional[str]:
    """What becomes of a component: None (kept), "resplit", "cut" (too large to gather: cut further)
    or, at the last cut step, "too_large" (kept as it is)."""
    if not needs_resplit(nodes, edges, settings):
        return None
    if nodes <= settings.max_gather:
        return "resplit"
    return "too_large" if last else "cut"


def component_roots(ends_a: np.ndarray, ends_b: np.ndarray, count: int) -> np.ndarray:
    """Edges between nodes 0..count-1 -> each node's component, named by its smallest node; -1 for a node
    with no edge (in no component)."""
    # float64 data, as `connected_components` takes it: not copied again (int32 positions neither, below 2^31)
    graph = coo_matrix((np.ones(len(ends_a)), (ends_a, ends_b)), shape=(count, count))
    _, labels = connected_components(graph, directed=False)
    _, smallest = np.unique(labels, return_index=True)
    roots = smallest[labels]
    edged = np.zeros(count, dtype=bool)
    edged[ends_a] = edged[ends_b] = True
    return np.where(edged, roots, -1)


DENSE_SPAN = 4  # integer ids within 0 .. this many times their count are compacted through a table


def compact_ids(*ids: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The distinct ids of these arrays, sorted, and each array's ids as positions among them: `np.unique` of
    their concatenation with `return_inverse`, split again.

    Non-negative integer ids below `DENSE_SPAN` x their count (a run's row ids, or positions) take a table of
    that size instead of a sort, and no concatenation: 12M random ids below 1M in 0.18 s against 1.4 to 8.8 s,
    and the judging of a 1M-row run's 6M pairs in 13.1 CPU s against 23.5 (`bench_judge.py`; large new arrays
    are slow to touch on a VM: benchmarks/README.md, "forty-ninth session")."""
    count = sum(len(array) for array in ids)
    if count and all(array.dtype.kind in "iu" for array in ids):
        low = min(int(array.min()) for array in ids if len(array))
        high = max(int(array.max()) for array in ids if len(array))
        if low >= 0 and high < DENSE_SPAN * count:
            present = np.zeros(high + 1, dtype=bool)
            for array in ids:
                present[array] = True
            position = np.cumsum(present, dtype=np.int32 if high < 2**31 else np.int64) - 1
            return np.flatnonzero(present).astype(np.result_type(*ids), copy=False), [position[array] for array in ids]
    nodes, index = np.unique(np.concatenate(ids), return_inverse=True)
    return nodes, np.split(index, np.cumsum([len(array) for array in ids[:-1]]))


def cut_pieces(ends_a: np.ndarray, ends_b: np.ndarray, scores: np.ndarray, thresholds: Sequence[float],
               max_gather: int) -> tuple[list, list, list]:
    """The pairs of components being cut -> each node's piece, as the distributed cut chooses it (`_choose_piece`).

    A node's piece is its component at the lowest level (the edges scoring at least that level's threshold)
    that has at most `max_gather` nodes; where none has, the last level's if the node has an edge there,
    else the node alone (a piece above its highest edge). Levels nest, so a node still unplaced at a level
    has all its edges there to unplaced nodes: each level searches only theirs, in C (scipy).

    Args:
        ends_a, ends_b, scores: the pairs, as arrays (ids of one type).
        thresholds: the cut levels' thresholds, rising (`cut_thresholds`).
        max_gather: most nodes a piece may have.

    Returns:
        The nodes with an edge at the first level, each one's piece, named by its smallest node, and the
        piece's level (1 for the first threshold; 0 for a node alone).
    """
    first = scores >= thresholds[0]
    nodes, (ends_a, ends_b) = compact_ids(ends_a[first], ends_b[first])
    count, scores = len(nodes), scores[first]
    if not count:
        return [], [], []
    piece, last = np.arange(count), np.arange(count)  # a node is a piece of its own until placed
    level = np.zeros(count, dtype=np.int64)
    unplaced = np.ones(count, dtype=bool)
    for at_level, threshold in enumerate(thresholds, 1):
        at = (scores >= threshold) & unplaced[ends_a]
        root = component_roots(ends_a[at], ends_b[at], count)  # nodes sorted: a piece named by its smallest
        edged = root >= 0
        size = np.bincount(root[edged], minlength=count)[np.maximum(root, 0)]
        fits = unplaced & edged & (size <= max_gather)
        crowded = unplaced & edged & ~fits
        piece[fits], last[crowded], level[fits] = root[fits], root[crowded], at_level
        unplaced = crowded  # the rest are placed: in a piece that fits, or alone above their highest edge
    piece[unplaced], level[unplaced] = last[unplaced], len(thresholds)  # too large at the last level: kept whole
    return nodes.tolist(), nodes[piece].tolist(), level.tolist()


class GroupVerdicts(NamedTuple):
    """What becomes of groups of nodes (components, or the pieces of those cut): `verdict`'s, as codes, for
    each group by its root node (`_KEPT` for a node no group is named by), each pair's group where its two
    ends share one (else -1), how many groups each verdict other than kept has, and each group's nodes by
    its root (0 for a node no group is named by)."""

    verdicts: np.ndarray
    inside: np.ndarray
    counts: dict
    sizes: np.ndarray


_KEPT, _RESPLIT, _CUT, _TOO_LARGE = 0, 1, 2, 3  # `verdict`'s None, "resplit", "cut", "too_large" as codes


def group_verdicts(group: np.ndarray, ends_a: np.ndarray, ends_b: np.ndarray, edge: np.ndarray,
                   settings: ChainingSettings, last: bool) -> GroupVerdicts:
    """`verdict` for every group at once.

    Args:
        group: each node's group, named by a node (its root); -1 for a node in none.
        ends_a, ends_b: the pairs' ends, as nodes.
        edge: whether each pair is an edge (score >= `settings.threshold`).
        settings, last: as `verdict`'s.

    Returns:
        `GroupVerdicts`: a group's edges are the edges whose two ends are in it.
    """
    count = len(group)
    inside = np.where((group[ends_a] == group[ends_b]) & (group[ends_a] >= 0), group[ends_a], -1)
    nodes = np.bincount(group[group >= 0], minlength=count)
    edges = np.bincount(inside[(inside >= 0) & edge], minlength=count)
    needs = needs_resplit(nodes, edges, settings)
    fits = nodes <= settings.max_gather
    verdicts = np.full(count, _KEPT, dtype=np.int8)
    verdicts[needs & fits] = _RESPLIT
    verdicts[needs & ~fits] = _TOO_LARGE if last else _CUT
    found = np.bincount(verdicts[nodes > 0], minlength=4)
    return GroupVerdicts(verdicts, inside, {name: int(found[code]) for code, name in
                                            ((_RESPLIT, "resplit"), (_CUT, "cut"), (_TOO_LARGE, "too_large"))},
                         nodes)


def missing_pairs(scores: Mapping[tuple, float], threshold: float, budget: int, fanout: int) -> list[tuple]:
    """Unscored (a, b) pairs, a < b, two edges apart, strongest path first (its weaker edge), then by id.

    Holds at most 2 x `budget` candidates: whenever more are known, only the best `budget` are kept
    (a pair dropped then cannot come back above the cut, whatever other path finds it later).
    """
    neighbours: dict = {}
    for (a, b), score in scores.items():
        if score >= threshold:
            neighbours.setdefault(a, []).append((score, b))
            neighbours.setdefault(b, []).append((score, a))
    strength: dict = {}

    def best(candidates: dict) -> dict:
        return dict(heapq.nsmallest(budget, candidates.items(), key=lambda item: (-item[1], item[0])))

    for middle in sorted(neighbours):
        strongest = sorted(neighbours[middle], key=lambda item: (-item[0], item[1]))[:fanout]
        for i, (score_a, a) in enumerate(strongest):
            for score_b, b in strongest[i + 1:]:
                pair = (a, b) if a < b else (b, a)
                if pair not in scores:
                    strength[pair] = max(strength.get(pair, -math.inf), min(score_a, score_b))
        if len(strength) > 2 * budget:
            strength = best(strength)
    return [pair for pair, _ in sorted(best(strength).items(), key=lambda item: (-item[1], item[0]))]


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

def edge_ends(batch: list, threshold: float) -> list[tuple]:
    """A scored batch -> (a, b) for each of its pairs that is an edge (score >= threshold)."""
    return [(pair.id_a, pair.id_b) for pair in batch if pair.score >= threshold]


def _verdicts(element, settings: ChainingSettings, last: bool) -> Iterator[tuple]:
    """(label, {nodes, edges}: their counts) -> (label, `verdict`) for a group not kept as it is, or (label,
    "alone") for a node alone in its piece (kept, with no label)."""
    label, joined = element
    nodes = only(joined["nodes"], 0)
    found = verdict(nodes, only(joined["edges"], 0), settings, last)
    if found:
        yield label, found
    elif nodes == 1:
        yield label, "alone"


def _route_nodes(element, counters: dict, routes: bool = False) -> Iterator:
    """(label, {node, verdict}) -> (node, label) kept (nothing for a node alone), or to "resplit" as (label,
    node), or to "cut"; with `routes`, also (node, (label, verdict)) to "routes" for every node (for its pairs
    to follow)."""
    label, joined = element
    found = only(joined["verdict"])
    if found in counters:
        counters[found].inc()
    for node in joined["node"]:
        if found in (None, "too_large"):
            yield node, label
        elif found == "resplit":
            yield beam.pvalue.TaggedOutput("resplit", (label, node))
        elif found == "cut":
            yield beam.pvalue.TaggedOutput("cut", (node, label))
        if routes:
            yield beam.pvalue.TaggedOutput("routes", (node, (label, found)))


def _routed(label, found: Optional[str], pair, threshold: float) -> Iterator:
    """A pair inside a component, where the component's verdict sends it: to "resplit" as (label, pair), to
    "cut", or, the component kept as it is being a group, (label, `Edge`) if it is one of its edges."""
    if found == "resplit":
        yield beam.pvalue.TaggedOutput("resplit", (label, pair))
    elif found == "cut":
        yield beam.pvalue.TaggedOutput("cut", pair)
    elif pair.score >= threshold:
        yield label, Edge(pair.id_a, pair.id_b, pair.score, pair.source)


def _route_labelled(element: tuple, found: Optional[str], threshold: float) -> Iterator:
    """(label, pair) and its component's verdict -> the pair `_routed`."""
    label, pair = element
    yield from _routed(label, found, pair, threshold)


def _edge_counts(labelled: list, threshold: float) -> Iterator[KeyValue]:
    """A list of (label, pair) -> (label, its edges in the list) for every label with an edge (score >= threshold)."""
    counts: dict = {}
    for label, pair in labelled:
        if pair.score >= threshold:
            counts[label] = counts.get(label, 0) + 1
    return iter(counts.items())


def _component_edges(counted: tuple, label) -> Iterator[KeyValue]:
    """(a node, edges counted under it) and the node's component label -> (label, edges)."""
    yield label, counted[1]


def _route_by_end_a(pair, route: Optional[tuple], threshold: float) -> Iterator:
    """A pair and the route of its end a -> the pair `_routed` by a's component: an edge lies inside it; a
    non-edge matters only to a component re-split or cut, and goes to "end_b" to find out whether b is in it
    too."""
    if route is None:  # a has no edge: the pair is inside no component
        return
    label, found = route
    if pair.score >= threshold:
        yield from _routed(label, found, pair, threshold)
    elif found in ("resplit", "cut"):
        yield beam.pvalue.TaggedOutput("end_b", (label, found, pair))


def _route_by_end_b(element: tuple, route: Optional[tuple], threshold: float) -> Iterator:
    """(a's label, verdict, pair) and the route of the pair's end b -> the pair `_routed` if b is in a's
    component."""
    label, found, pair = element
    if route is not None and route[0] == label:
        yield from _routed(label, found, pair, threshold)


def _level_edges(pairs: list, thresholds: list) -> list[tuple]:
    """A list of pairs of components being cut -> their edges at every level whose threshold they reach: the
    thresholds rise, so a pair is an edge at levels 1 to the number of thresholds at or below its score."""
    edges = []
    for pair in pairs:
        top = bisect.bisect_right(thresholds, pair.score)
        if top:
            a, b = pair.id_a, pair.id_b
            edges += [((level, a), (level, b)) for level in range(1, top + 1)]
    return edges


def _sized(element) -> Iterator[tuple]:
    """((level, root), {node, size}) -> (node, (level, root, size)) for each node of the piece (with an edge at
    that level)."""
    (level, root), joined = element
    size = only(joined["size"])
    for node in joined["node"]:
        yield node, (level, root, size)


def _placed(node, piece, level: int, thresholds: list) -> Iterator:
    """A node of a component being cut in its piece (at `level`, 1 for the first threshold, 0 alone) -> (piece,
    node), and to "route" (node, (piece, the threshold of the piece's level, None alone)) for its pairs."""
    yield piece, node
    yield beam.pvalue.TaggedOutput("route", (node, (piece, thresholds[level - 1] if level else None)))


def _choose_piece(element, max_gather: int, thresholds: list) -> Iterator:
    """(node, {label, piece: its pieces at the levels where it has an edge}) -> the node `_placed` in its piece.

    Levels nest (an edge at one level is an edge at every lower one), so a node has an edge at levels 1 to
    `top` and is a piece of its own, which fits, above `top`. Its piece is the one at the lowest level that
    fits on one worker; where none does and `top` is the last level, the last level's (judged "too_large":
    kept as it is). Only the levels with an edge travel: most nodes have none at the highest levels.
    """
    node, joined = element
    if only(joined["label"]) is None:
        return
    pieces = sorted(joined["piece"])  # one per level: bounded by --resplit-cut-steps
    fits = next((piece for piece in pieces if piece[2] <= max_gather), None)
    if fits is not None:
        yield from _placed(node, fits[1], fits[0], thresholds)
    elif len(pieces) < len(thresholds):
        yield from _placed(node, node, 0, thresholds)
    else:
        yield from _placed(node, pieces[-1][1], pieces[-1][0], thresholds)


def _id_array(ids: Sequence) -> np.ndarray:
    """Ids as an array: int64 where they are integers, else Python objects (not text of a fixed width)."""
    found = np.asarray(ids)
    return found if found.dtype.kind in "iu" else np.asarray(ids, dtype=object)


class PairColumns(NamedTuple):
    """A scored batch as columns: a batch stays one element all the way to the one worker that judges the
    components, and holds 38 bytes a pair there (integer ids), not a `ScoredPair` object a pair.
    `similarity` is NaN where `known` is False (None); `source` indexes `sources`."""

    ends_a: np.ndarray
    ends_b: np.ndarray
    scores: np.ndarray
    similarity: np.ndarray
    known: np.ndarray
    source: np.ndarray
    sources: tuple
    reused: np.ndarray

    def pairs(self, at: np.ndarray) -> list:
        """The `ScoredPair`s at positions `at`, each as it was listed (Python ids, floats, None, text)."""
        return [ScoredPair(a, b, score, s if known else None, self.sources[source], reused)
                for a, b, score, s, known, source, reused in zip(
                    self.ends_a[at].tolist(), self.ends_b[at].tolist(), self.scores[at].tolist(),
                    self.similarity[at].tolist(), self.known[at].tolist(), self.source[at].tolist(),
                    self.reused[at].tolist())]

    def edges(self, at: np.ndarray) -> list:
        """The pairs at positions `at` as `Edge`s."""
        return [Edge(a, b, score, self.sources[source]) for a, b, score, source in zip(
            self.ends_a[at].tolist(), self.ends_b[at].tolist(), self.scores[at].tolist(), self.source[at].tolist())]


def pair_columns(pairs: list) -> Optional[PairColumns]:
    """A scored batch -> the same pairs as `PairColumns` (None for an empty batch)."""
    if not pairs:
        return None
    # A `ScoredPair` is its fields: the columns come from one `zip`, each made by C calls alone (a step every pair
    # takes on its way to the components).
    ends_a, ends_b, scores, similarity, sources, reused = zip(*pairs)
    names = tuple(sorted(set(sources)))
    source = np.fromiter(map({name: at for at, name in enumerate(names)}.__getitem__, sources), np.int32, len(pairs))
    similarity = np.asarray(similarity, dtype=object)
    known = np.not_equal(similarity, None).astype(bool)
    return PairColumns(_id_array(ends_a), _id_array(ends_b), np.asarray(scores, dtype=np.float64),
                       np.where(known, similarity, np.nan).astype(np.float64), known, source, names,
                       np.asarray(reused, dtype=bool))


class _ToColumns(beam.DoFn):
    """Scored batches -> their `PairColumns`, each keyed for the one worker that judges them; logs progress."""

    def setup(self):
        self._progress = Progress(_LOG, "components", "pairs")

    def process(self, pairs: list):
        self._progress.add(len(pairs))
        columns = pair_columns(pairs)
        if columns is not None:
            yield None, columns


def _joined_columns(held: list) -> PairColumns:
    """Several batches' `PairColumns` as one, their sources named in one table."""
    sources = tuple(sorted({name for columns in held for name in columns.sources}))
    code = {name: at for at, name in enumerate(sources)}
    joined = {field: np.concatenate([getattr(columns, field) for columns in held])
              for field in ("ends_a", "ends_b", "scores", "similarity", "known", "reused")}
    source = np.concatenate([np.array([code[name] for name in columns.sources], dtype=np.int32)[columns.source]
                             for columns in held])
    return PairColumns(source=source, sources=sources, **joined)


def _held_columns(lists: Iterable[PairColumns], max_pairs: int) -> Optional[PairColumns]:
    """Every batch's columns as one, at most `max_pairs` pairs; beyond, fails saying what to do."""
    held, count = [], 0
    for columns in lists:
        count += len(columns.ends_a)
        if count > max_pairs:
            raise QdedupError(
                f"chaining control: more than {max_pairs:,} scored pairs, more than the one worker that judges "
                f"the components may hold; set --component-rounds above 0 (components, and the cut of those too "
                f"large, are then distributed searches) or raise --max-unsettled-edges")
        held.append(columns)
    return _joined_columns(held) if held else None


# Nodes or pairs the one worker that judges the components turns into records at a time, as it hands them on:
# what it holds beyond its columns stays this small.
OUTPUT_CHUNK = 10_000


def _chunked(at: np.ndarray, make: Callable[[np.ndarray], Iterable]) -> Iterator:
    """What `make` gives for each chunk of `at`, chunk by chunk."""
    for start in range(0, len(at), OUTPUT_CHUNK):
        yield from make(at[start:start + OUTPUT_CHUNK])


def _judged(group: np.ndarray, pairs: np.ndarray, ends_a: np.ndarray, ends_b: np.ndarray, edge: np.ndarray,
            columns: PairColumns, names: list, settings: ChainingSettings, last: bool, counters: dict):
    """Groups of nodes and the pairs among them (positions `pairs` of `columns`) -> (the outputs of
    `_judge_on_one_worker` for groups kept or re-split, made as they are taken; the positions of the pairs
    inside groups to cut)."""
    found = group_verdicts(group, ends_a[pairs], ends_b[pairs], edge[pairs], settings, last)
    for name, count in found.counts.items():
        if count:
            counters[name].inc(count)
    verdicts = found.verdicts
    nodes = np.flatnonzero(group >= 0)
    of_node = verdicts[group[nodes]]
    inside = found.inside >= 0
    of_pair = np.where(inside, verdicts[np.maximum(found.inside, 0)], _KEPT)
    kept = nodes[((of_node == _KEPT) | (of_node == _TOO_LARGE)) & (found.sizes[group[nodes]] > 1)]  # alone: no label
    edges_at = pairs[inside & edge[pairs] & ((of_pair == _KEPT) | (of_pair == _TOO_LARGE))]
    resplit = nodes[of_node == _RESPLIT]
    resplit_at = pairs[inside & (of_pair == _RESPLIT)]
    outputs = (
        _chunked(kept, lambda at: zip((names[n] for n in at.tolist()), (names[g] for g in group[at].tolist()))),
        _chunked(edges_at, lambda at: (beam.pvalue.TaggedOutput("edges", (names[g], e))
                                       for g, e in zip(group[ends_a[at]].tolist(), columns.edges(at)))),
        _chunked(resplit, lambda at: (beam.pvalue.TaggedOutput("resplit_nodes", (names[g], names[n]))
                                      for g, n in zip(group[at].tolist(), at.tolist()))),
        _chunked(resplit_at, lambda at: (beam.pvalue.TaggedOutput("resplit_pairs", (names[g], p))
                                         for g, p in zip(group[ends_a[at]].tolist(), columns.pairs(at)))),
    )
    return itertools.chain.from_iterable(outputs), pairs[inside & (of_pair == _CUT)]


def _judge_on_one_worker(element, settings: ChainingSettings, thresholds: list, counters: dict) -> Iterator:
    """(None, every scored batch's `PairColumns`) -> what `SplitChains` makes of its components before their
    re-splits, on one worker, where the whole graph fits one (a run with no component rounds).

    The components are those of the edges; each is kept, re-split or cut by `verdict`. A component to cut is
    cut into the pieces `cut_pieces` gives (from its pairs reaching the first cut threshold; a node with no
    pair there is a piece of its own), each then kept or re-split. Yields (node, label) for every node of a
    group kept with two or more nodes (a node alone has no label), to "edges" (label, `Edge`) for each edge
    inside one, to "resplit_nodes" (label, node) and to "resplit_pairs" (label, `ScoredPair`) for each node
    and pair of a component or piece to re-split: what the distributed judging and cut give, with no join.
    Holds at most `settings.one_worker_pairs` pairs."""
    _, lists = element
    columns = _held_columns(lists, settings.one_worker_pairs)
    if columns is None:
        return
    count = len(columns.ends_a)
    nodes, (ends_a, ends_b) = compact_ids(columns.ends_a, columns.ends_b)
    edge = columns.scores >= settings.threshold
    component = component_roots(ends_a[edge], ends_b[edge], len(nodes))
    in_components = int((component >= 0).sum())
    largest("component_finish_nodes").update(in_components)
    _LOG.info("chaining control: judging %d nodes in components from %d scored pairs on one worker",
              in_components, count)
    names = nodes.tolist()
    outputs, cut = _judged(component, np.arange(count), ends_a, ends_b, edge, columns, names, settings,
                           not thresholds, counters)
    yield from outputs
    if not len(cut):
        return
    largest("cut_finish_edges").update(len(cut))
    first = cut[columns.scores[cut] >= thresholds[0]]
    placed, pieces, _ = cut_pieces(ends_a[first], ends_b[first], columns.scores[first], thresholds,
                                   settings.max_gather)
    piece = np.full(len(nodes), -1)
    in_cut = np.zeros(len(nodes), dtype=bool)
    in_cut[ends_a[cut]] = in_cut[ends_b[cut]] = True
    cut_nodes = np.flatnonzero(in_cut)
    piece[cut_nodes] = cut_nodes  # a node with no pair at the first level: a piece of its own
    piece[np.asarray(placed, dtype=np.int64)] = pieces
    _LOG.info("chaining control: %d pairs of the components to cut placed %d nodes in %d pieces on one worker",
              len(cut), len(cut_nodes), len(compact_ids(piece[cut_nodes])[0]))
    outputs, _ = _judged(piece, cut, ends_a, ends_b, edge, columns, names, settings, True, counters)
    yield from outputs


def _piece_end_a(pair, route: Optional[tuple]) -> Iterator:
    """A pair of a component being cut and its end a's route (`_placed`) -> (piece, pair) where b is in a's piece
    for sure: joined to a at the piece's level (levels nest, so b's lowest level that fits is a's); to "end_b"
    where only b's piece can tell; nothing where a is a piece of its own."""
    if route is None or route[1] is None:
        return
    piece, cut_at = route
    if pair.score >= cut_at:
        yield piece, pair
    else:
        yield beam.pvalue.TaggedOutput("end_b", (piece, pair))


def _piece_end_b(element: tuple, route: Optional[tuple]) -> Iterator:
    """(a's piece, pair) and its end b's route -> (piece, pair) if b is in the same piece."""
    piece, pair = element
    if route is not None and route[0] == piece:
        yield piece, pair


def _node_text(element) -> Iterator[tuple]:
    """(node, {label, text}) -> (label, (node, text)) for a node of a component to re-split."""
    node, joined = element
    text = only(joined["text"])
    for label, _ in joined["label"]:
        yield label, (node, text)


class _Plan:
    """Per component to re-split: its nodes with their texts and its scored pairs -> the plan, and the
    missing pairs it asks for, as (pair, root) and as `CandidatePair`s with both texts to score.

    The plan follows this run's blocking pairs alone (the only scored pairs a component is made of):
    the same graph gives the same plan, whatever earlier runs scored. It holds the texts of at most
    `max_gather` nodes, so the pairs it asks for need no join to find theirs.
    """

    def __init__(self, settings: ChainingSettings):
        self._settings = settings
        self._largest = largest("resplit_gathered_nodes")

    def __call__(self, element):
        root, joined = element
        texts = dict(joined["node"])
        nodes = sorted(texts)
        self._largest.update(len(nodes))
        scores, sources = {}, {}
        for p in joined["pair"]:
            scores[(p.id_a, p.id_b)], sources[(p.id_a, p.id_b)] = p.score, p.source
        yield beam.pvalue.TaggedOutput("resplit", (root, (nodes, scores, sources)))
        for a, b in missing_pairs(scores, self._settings.threshold, self._settings.pair_budget,
                                  self._settings.fanout):
            yield beam.pvalue.TaggedOutput("missing", ((a, b), root))
            yield beam.pvalue.TaggedOutput("ask", CandidatePair(a, b, texts[a], texts[b], None, RESPLIT))


def _resplit(element, threshold: float) -> Iterable[tuple]:
    """A component's plan and the pairs it asked for -> (node, group label) for each node of a group of two or
    more (a node alone has no label), and to "edges" (group label, `Edge`) for each edge inside a group: its
    scored pairs are all here, so no join finds them again."""
    _, joined = element
    nodes, scores, sources = only(joined["plan"])
    scores, sources = dict(scores), dict(sources)
    for p in joined["extra"]:
        scores[(p.id_a, p.id_b)], sources[(p.id_a, p.id_b)] = p.score, p.source
    labels = average_linkage(nodes, scores, threshold)
    sizes = collections.Counter(labels.values())
    yield from ((node, label) for node, label in labels.items() if sizes[label] > 1)
    for (a, b), score in scores.items():
        if score >= threshold and labels[a] == labels[b]:
            yield beam.pvalue.TaggedOutput("edges", (labels[a], Edge(a, b, score, sources[(a, b)])))


def _by_root(pair, root) -> Iterator[tuple]:
    """A pair a re-split asked for, scored, and the root of the component that asked -> (root, pair)."""
    if root is not None:
        yield root, pair


class Chained(NamedTuple):
    """What `SplitChains` gives: (node, group label) for every node of a group of two or more nodes (a node of
    a component left alone in its group has none: a group of its own, as a node in no component); (group
    label, `Edge`) for every scored pair of score >= threshold inside a group; the pairs re-splits asked for,
    scored (reused or new), and the new ones alone; and the pairs that could not be scored."""

    labels: beam.PCollection
    edges: beam.PCollection
    scored: beam.PCollection
    new: beam.PCollection
    failed: beam.PCollection


class SplitChains(beam.PTransform):
    """Every scored pair in scored batches -> `Chained` (its `scored` and `new` as scored batches too).

    The components of the edges, and which to keep, re-split or cut, are found on one worker where the whole
    graph fits one (`settings.one_worker_pairs`: a run with no component rounds; `_judge_on_one_worker`),
    else by the component search (`components`) and joins.

    Args:
        settings: when to re-split, and how much one re-split may gather and score.
        score: `CandidatePair`s with texts -> `Scored` (`ScoreCandidates` in a run, which reuses
            scores an earlier run made).
        components: lists of edges (a, b) -> `cluster.Components` (`ConnectedComponents` in a run): the
            components, and the pieces of those larger than `settings.max_gather`, unless
            `settings.one_worker_pairs`.
        texts: (node, its text as `score` takes it) for every node (`TokenizeAhead` in a run).
    """

    def __init__(self, settings: ChainingSettings, score: beam.PTransform, components: beam.PTransform,
                 texts: beam.PCollection):
        super().__init__()
        self._settings = settings
        self._score = score
        self._components = components
        self._texts = texts
        self._counters = {name: Metrics.counter("qdedup", f"components_{name}") for name in ("cut", "too_large")}
        self._counters["resplit"] = Metrics.counter("qdedup", "components_resplit")

    def _verdicts_of(self, name: str, nodes, edges, last: bool):
        """(nodes as (label, node), edge counts as (label, count), several a label) -> (label, verdict) for each
        component not kept as it is."""
        return (
            {"nodes": nodes | f"{name}CountNodes" >> beam.combiners.Count.PerKey(),
             "edges": edges | f"{name}CountEdges" >> beam.CombinePerKey(sum)}
            | f"{name}Verdicts" >> JoinByKey(_verdicts, self._settings, last)
        )

    def _judge(self, name: str, nodes, internal, last: bool):
        """(nodes as (label, node), the pairs inside them as lists of (label, pair)) -> kept (node, label) and
        the edge scores of those kept, then the nodes and pairs of pieces to re-split, then those of pieces to
        cut. A pair finds its component's verdict by a look-up: pairs travel in lists, never grouped."""
        settings = self._settings
        verdicts = self._verdicts_of(
            name, nodes, internal | f"{name}Edges" >> beam.FlatMap(_edge_counts, settings.threshold), last)
        routed = {"node": nodes, "verdict": verdicts} | f"{name}RouteNodes" >> JoinByKey(
            _route_nodes, self._counters, outputs=("resplit", "cut"), main="kept")
        routed_pairs = (internal, verdicts) | f"{name}RoutePairs" >> LookUp(
            _route_labelled, itemgetter(0), settings.threshold, shard_keys=settings.join_shard_keys,
            outputs=("resplit", "cut"), main="kept", items=iter)
        return routed.kept, routed_pairs.kept, routed.resplit, routed_pairs.resplit, routed.cut, routed_pairs.cut

    def _judge_components(self, labels, edge_counts, scored, last: bool):
        """(components as (node, label), their edge counts as `Components.edges` gives them, scored batches) -> as
        `_judge`, the pairs of components to cut in lists. A component's verdict comes from its nodes and the
        edge counts of its nodes, so each pair is joined once, on its first end, and on its second only when it
        is a non-edge whose first end's component is re-split or cut."""
        settings = self._settings
        threshold = settings.threshold
        nodes = labels | "WholeNodes" >> beam.KvSwap()
        edges = (edge_counts, labels) | "WholeEdgeLabels" >> LookUp(
            _component_edges, itemgetter(0), shard_keys=settings.join_shard_keys)
        verdicts = self._verdicts_of("Whole", nodes, edges, last)
        routed = {"node": nodes, "verdict": verdicts} | "WholeRouteNodes" >> JoinByKey(
            _route_nodes, self._counters, True, outputs=("resplit", "cut", "routes"), main="kept")
        by_a = (scored, routed.routes) | "WholeRouteByA" >> LookUp(
            _route_by_end_a, attrgetter("id_a"), threshold, shard_keys=settings.join_shard_keys,
            outputs=("resplit", "cut", "end_b"), main="kept", items=pairs_in, lists=("cut", "end_b"))
        by_b = (by_a.end_b, routed.routes) | "WholeRouteByB" >> LookUp(
            _route_by_end_b, lambda element: element[2].id_b, threshold, shard_keys=settings.join_shard_keys,
            outputs=("resplit", "cut"), main="kept", items=iter, lists=("cut",))
        return (routed.kept, (by_a.kept, by_b.kept) | "WholeKeptEdges" >> beam.Flatten(),
                routed.resplit, (by_a.resplit, by_b.resplit) | "WholeResplitPairs" >> beam.Flatten(),
                routed.cut, (by_a.cut, by_b.cut) | "WholeCutPairs" >> beam.Flatten())

    def _pieces(self, cut_nodes, cut_pairs, thresholds: list):
        """Components too large to gather, as (node, label) and lists of their pairs -> (piece, node) for each node,
        and lists of (piece, pair) for the pairs inside a piece: their components at every cut level at once
        (the component search over (level, node) graphs), each node in its piece at the lowest level where it
        fits (`_choose_piece`), its route then finding its pairs' pieces."""
        settings = self._settings
        levels = (cut_pairs | "LevelEdges" >> beam.Map(_level_edges, thresholds)
                  | "CutComponents" >> self._components)
        pieces = levels.labels | "ByPiece" >> beam.MapTuple(lambda level_node, piece: (piece, level_node[1]))
        sized = (
            {"node": pieces, "size": pieces | "PieceSizes" >> beam.combiners.Count.PerKey()}
            | "SizedPieces" >> JoinByKey(_sized)
        )
        placed = ({"label": cut_nodes, "piece": sized}
                  | "ChoosePiece" >> JoinByKey(_choose_piece, settings.max_gather, thresholds, outputs=("route",),
                                               main="chosen"))
        shard_keys = settings.join_shard_keys
        by_a = (cut_pairs, placed.route) | "PiecePairsJoinA" >> LookUp(
            _piece_end_a, attrgetter("id_a"), shard_keys=shard_keys, outputs=("end_b",), main="inside",
            items=iter, lists=("inside", "end_b"))
        by_b = (by_a.end_b, placed.route) | "PiecePairsJoinB" >> LookUp(
            _piece_end_b, lambda element: element[1].id_b, shard_keys=shard_keys, items=iter, lists=("main",))
        return placed.chosen, (by_a.inside, by_b) | "PiecePairs" >> beam.Flatten()

    def _distributed(self, scored, thresholds: list):
        """Scored batches -> (kept (node, label), their edges, then (nodes, pairs) of each component or piece
        to re-split), by the component search and joins: `_judge_components`, then `_pieces` and `_judge`
        for the components too large to gather."""
        components = (scored | "EdgeEnds" >> beam.Map(edge_ends, self._settings.threshold)
                      | "ConnectedComponents" >> self._components)
        kept, kept_edges, resplit_nodes, resplit_pairs, cut_nodes, cut_pairs = self._judge_components(
            components.labels, components.edges, scored, last=not thresholds)
        kept, edges, to_resplit = [kept], [kept_edges], [(resplit_nodes, resplit_pairs)]
        if thresholds:
            placed_nodes, pairs_inside = self._pieces(cut_nodes, cut_pairs, thresholds)
            piece_kept, piece_edges, piece_nodes, piece_pairs, _, _ = self._judge(
                "Piece", placed_nodes, pairs_inside, last=True)
            kept.append(piece_kept)
            edges.append(piece_edges)
            to_resplit.append((piece_nodes, piece_pairs))
        return kept, edges, to_resplit

    def _on_one_worker(self, scored, thresholds: list):
        """As `_distributed`, on one worker holding every scored pair (`_judge_on_one_worker`)."""
        judged = (scored
                  | "PairColumns" >> beam.ParDo(_ToColumns())
                  | "GatherPairs" >> beam.GroupByKey()
                  | "JudgeOnOneWorker" >> beam.FlatMap(_judge_on_one_worker, self._settings, thresholds,
                                                       self._counters).with_outputs(
                      "edges", "resplit_nodes", "resplit_pairs", main="kept"))
        return [judged.kept], [judged.edges], [(judged.resplit_nodes, judged.resplit_pairs)]

    def expand(self, scored):
        settings = self._settings
        thresholds = cut_thresholds(settings)
        judge = self._on_one_worker if settings.one_worker_pairs else self._distributed
        kept, edges, to_resplit = judge(scored, thresholds)
        nodes = (
            {"label": tuple(n for n, _ in to_resplit) | "ResplitNodes" >> beam.Flatten(), "text": self._texts}
            | "ResplitTexts" >> JoinByKey(_node_text, keys={"label": itemgetter(1)})
        )
        plan = (
            {"node": nodes, "pair": tuple(p for _, p in to_resplit) | "ResplitPairs" >> beam.Flatten()}
            | "PlanResplit" >> JoinByKey(_Plan(settings), outputs=("resplit", "missing", "ask"), main="none")
        )
        scoring = plan.ask | "ScoreMissingPairs" >> self._score
        extra_by_root = (scoring.scored, plan.missing) | "JoinExtraRoot" >> LookUp(
            _by_root, attrgetter("id_a", "id_b"), shard_keys=settings.join_shard_keys, items=pairs_in)
        resplit = (
            {"plan": plan.resplit, "extra": extra_by_root}
            | "AverageLinkage" >> JoinByKey(_resplit, settings.threshold, outputs=("edges",), main="labels")
        )
        labels = (*kept, resplit.labels) | "AllLabels" >> beam.Flatten()
        edges = (*edges, resplit.edges) | "AllEdges" >> beam.Flatten()
        return Chained(labels, edges, scoring.scored, scoring.new, scoring.failed)
