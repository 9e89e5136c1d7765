"""Duplicate groups from scored pairs (docs/design.md, "cluster").

Edges with score >= threshold join representatives into connected components;
each representative's exact duplicates follow it into its group. Components are
computed inside Beam by alternating large-star / small-star rounds (Kiveris et
al. 2014, "Connected Components in MapReduce and Beyond"), unrolled to a fixed
number of rounds. A component that has become a star around its smallest node
is done; the few nodes of components that have not (checked locally: a node
with a smaller neighbour and more than one neighbour) are finished exactly by a
union-find over their edges alone: only that remainder meets on one worker.
Chaining control runs this search (`chaining.SplitChains`), except where the
whole graph fits one worker: that worker then finds the components itself.
"""
from __future__ import annotations

import itertools
import logging
import math
from operator import attrgetter
from typing import Callable, Iterable, Iterator, NamedTuple, Optional

import apache_beam as beam

from transforms.errors import QdedupError
from transforms.graphs import UnionFind, connected_components
from transforms.joins import JoinByKey, KeyValue, at_bundle_end, only
from transforms.logs import Progress
from transforms.metrics import largest
from transforms.records import Representative, earliest_key

_LOG = logging.getLogger(__name__)


class GroupRow(NamedTuple):
    id: object
    group_id: object
    canonical_id: object
    group_size: int
    match_kind: str  # "single", "exact" or "model"
    min_edge_score: Optional[float]   # over the group's scored pairs at or above the threshold;
    mean_edge_score: Optional[float]  # None when it has none (singletons, exact duplicates only)
    group_since_run: int              # the run that founded the group's id (1: the first run)


class GroupInfo(NamedTuple):
    canonical_id: object
    canonical_key: str
    size: int


def large_star(node, neighbours: Iterable) -> Iterator[KeyValue]:
    """Links every larger neighbour to the smallest node of the neighbourhood.

    Like `small_star` and `star_label`, it iterates `neighbours` (a grouped, re-iterable value) and
    never holds it: a star's centre may have millions of neighbours.
    """
    smallest = min(min(neighbours), node)
    return ((v, smallest) for v in neighbours if v > node)


def small_star(node, neighbours: Iterable) -> Iterator[KeyValue]:
    """Links the node and its smaller neighbours to the smallest of them."""
    smallest = min((v for v in neighbours if v < node), default=None)
    if smallest is None:
        return iter(())
    return itertools.chain([(node, smallest)], ((v, smallest) for v in neighbours if v < node and v != smallest))


def star_label(node, neighbours: Iterable) -> tuple[object, bool, int]:
    """(smallest node of the neighbourhood, whether the node still breaks the star shape, its degree)."""
    smallest, count = node, 0
    for v in neighbours:
        smallest, count = min(smallest, v), count + 1
    return smallest, smallest < node and count > 1, count


def summarize_group(members: Iterable[Representative], canonical: str = "frequent") -> GroupInfo:
    """The group's canonical member, and its size in rows, in one pass holding no member.

    `frequent`: the representative of the most frequent text, ties going to the
    lowest id. `earliest`: the row with the earliest timestamp (see
    `earliest_key`).
    """
    best, best_key, size = None, None, 0
    for rep in members:
        size += rep.count
        key = earliest_key(rep.first_time, rep.first_id) if canonical == "earliest" else (-rep.count, rep.id)
        if best_key is None or key < best_key:
            best, best_key = rep, key
    if canonical == "earliest":
        return GroupInfo(best.first_id, best.key, size)
    return GroupInfo(best.id, best.key, size)


def match_kind(group: GroupInfo, key: str, exact_count: int) -> str:
    """How a row is tied to its group's canonical member."""
    if group.size == 1:
        return "single"
    if key == group.canonical_key and exact_count > 1:
        return "exact"
    return "model"


class EdgeScores(beam.CombineFn):
    """(min, mean) of the scores of a group's `Edge`s."""

    def create_accumulator(self):
        return math.inf, 0.0, 0

    def add_input(self, accumulator, edge):
        low, total, count = accumulator
        return min(low, edge.score), total + edge.score, count + 1

    def merge_accumulators(self, accumulators):
        lows, totals, counts = zip(*accumulators)
        return min(lows), sum(totals), sum(counts)

    def extract_output(self, accumulator):
        low, total, count = accumulator
        return (low, total / count) if count else (None, None)


def _summarize(element, canonical: str) -> Iterable[tuple]:
    """Per group: its summary (the members walked once, never listed)."""
    label, joined = element
    yield label, (summarize_group(joined["reps"], canonical), only(joined["scores"], (None, None)))


def _group_made(info: GroupInfo, scores: tuple, assigned, rows: Iterable[tuple], edges: Iterable,
                explain: Callable) -> Iterator:
    """A group's `GroupRow` per row, and to "explained" what `explain` makes of the group. `rows`: (row id, key,
    count, rep id), walked as often as asked; `scores`: (min, mean) of its edges' scores."""
    low, mean = scores
    for row_id, key, count, _ in rows:
        yield GroupRow(row_id, assigned.group_id, info.canonical_id, info.size, match_kind(info, key, count),
                       low, mean, assigned.since_run)
    for row in explain(info, assigned, edges, rows):
        yield beam.pvalue.TaggedOutput("explained", row)


def _group_rows(element, explain: Callable) -> Iterator:
    """(group label, {group, id, rows, edges}) -> a `GroupRow` per row, and to "explained" what `explain` makes
    of the group: one join gives both, so a group's summary, id and rows are shuffled once."""
    _, joined = element
    group = only(joined["group"])
    if group is None:  # a label's edges always come with its group
        raise ValueError(f"group label {element[0]!r} has edges or rows but no group")
    info, scores = group
    yield from _group_made(info, scores, only(joined["id"]), joined["rows"], joined["edges"], explain)


def _both_ways(edge: tuple, _=None) -> list[KeyValue]:
    return [(edge[0], edge[1]), (edge[1], edge[0])]


def _neighbourhoods(edges, label: str, keyed: bool = False):
    """(node, its neighbours) from edges (a, b), or from distinct edges as ((a, b), None) when `keyed`."""
    both_ways = beam.FlatMapTuple(_both_ways) if keyed else beam.FlatMap(_both_ways)
    return edges | f"{label}BothWays" >> both_ways | f"{label}Neighbours" >> beam.GroupByKey()


def _keyed_star(node, neighbours: Iterable, star: Callable[[object, Iterable], Iterator[KeyValue]] = large_star
                ) -> Iterator[KeyValue]:
    """A star step's edges keyed for `_distinct`: ((a, b), None)."""
    return ((edge, None) for edge in star(node, neighbours))


def _distinct(keyed_edges, label: str):
    """Each edge once, still keyed: `beam.Distinct` without its two steps that key and unkey every edge."""
    return keyed_edges | label >> beam.CombinePerKey(_nothing)


def _nothing(values: Iterable) -> None:
    return None


class _LabelNodes(beam.DoFn):
    """(node, neighbours) -> (node, label); the edges of a node that still breaks the star shape to
    "unsettled". The neighbours are iterated twice, never listed."""

    def __init__(self):
        self._degree = largest("component_node_degree")

    def process(self, element):
        node, neighbours = element
        label, unsettled, degree = star_label(node, neighbours)
        self._degree.update(degree)
        yield node, label
        if unsettled:
            for v in neighbours:
                yield beam.pvalue.TaggedOutput("unsettled", (node, v))


def rounds_for(nodes: int, edges_per_node: int, max_unsettled: int) -> int:
    """Large-star / small-star rounds for a graph of up to `nodes` nodes and `edges_per_node` x nodes edges.

    When every edge could be finished on one worker (within `max_unsettled`), none: the bundles' stars
    (`_BundleStars`: no more edges than the graph has) go to the finish whole, which labels every node
    (at most `max_unsettled` edges in any run). Otherwise ceil(log2 nodes) + 2: measured, not proven,
    a path, the slowest shape tried, settled in 10, 14 and 17 rounds at 1e3, 1e4 and 1e5 nodes with
    ids in path order (8, 11 and 13 with shuffled ids); the proven bound is O(log^2 n). Whatever is
    left unsettled is finished exactly, within `max_unsettled` edges.
    """
    if nodes * edges_per_node <= max_unsettled:
        return 0
    return math.ceil(math.log2(max(nodes, 2))) + 2


def finish_unsettled(element, max_edges: int) -> Iterator[tuple]:
    """(None, edges) -> (node, smallest node of its component) by union-find over those edges: what the rounds left
    unsettled, or with no rounds every bundle's stars.

    The only step of the component search that meets on one worker: it holds their nodes (at most
    2 x `max_edges`) and fails, saying what to do, beyond that.
    """
    _, edges = element
    count = 0

    def counted():
        nonlocal count
        for edge in edges:
            count += 1
            if count > max_edges:
                raise QdedupError(
                    f"connected components: more than {max_edges:,} edges were still unsettled after the "
                    f"large-star/small-star rounds; raise --component-rounds (or --max-unsettled-edges, "
                    f"if one worker can hold that many)")
            yield edge

    labels = connected_components(counted())
    beam.metrics.Metrics.counter("qdedup", "components_unsettled_edges").inc(count)
    largest("component_finish_nodes").update(len(labels))
    _LOG.info("components: %d edges (the bundles' stars, or what the rounds left unsettled) finished on one worker "
              "(%d nodes)", count, len(labels))
    yield from labels.items()


def _finish_node(element) -> Iterator:
    """A node the finish labelled takes that label; the others wait for their star centre's."""
    node, joined = element
    root = only(joined["finished"])
    for label in joined["label"]:
        if root is not None:
            yield node, root
        else:
            yield beam.pvalue.TaggedOutput("pending", (label, node))


def _finish_star(element) -> Iterator[tuple]:
    """The nodes of a star take its centre's finished label (the centre's own when it was settled)."""
    label, joined = element
    root = only(joined["finished"], label)
    for node in joined["node"]:
        yield node, root


# Most nodes a bundle's union-find holds before it gives its stars (100 MiB measured for 1M nodes, ids aside; every
# worker process may hold one at a time, unlike the finish, which runs once).
BUNDLE_NODES = 1_000_000


class _BundleStars(beam.DoFn):
    """Lists of edges -> the same components as stars: (node, smallest node joined to it by this bundle's edges),
    one edge per node, none for the smallest; and to "edges" (that smallest node, the bundle's edges joined to
    it), which summed by component are its edge count.

    Connectivity is unchanged, so the rounds that follow give the same labels; they only see fewer edges
    (a bundle's edges between a few nodes become one per node, and a bundle holding a whole component
    hands the rounds a finished star). At most `max_nodes` nodes are held: past that, the stars so far
    are given and a new union-find begins.
    """

    def __init__(self, max_nodes: int):
        self._max_nodes = max_nodes

    def setup(self):
        self._progress = Progress(_LOG, "components", "edges")

    def start_bundle(self):
        self._found, self._edges = UnionFind(), {}

    def process(self, edges: list):
        self._progress.add(len(edges))
        counts = self._edges
        for edge in edges:
            self._found.union(*edge)
            if edge[0] != edge[1]:
                counts[edge[0]] = counts.get(edge[0], 0) + 1
            if len(self._found) >= self._max_nodes:
                yield from self._stars()
                counts = self._edges

    def finish_bundle(self):
        return at_bundle_end(self._stars())

    def _stars(self) -> Iterator:
        labels, counts = self._found.labels(), self._edges
        self._found, self._edges = UnionFind(), {}
        by_root: dict = {}
        for node, count in counts.items():
            root = labels[node]
            by_root[root] = by_root.get(root, 0) + count
        return itertools.chain(((node, root) for node, root in labels.items() if node != root),
                               (beam.pvalue.TaggedOutput("edges", counted) for counted in by_root.items()))


def _finished(edges, max_unsettled: int):
    """Edges (a, b) -> (node, smallest node of its component) for every node of them, by `finish_unsettled` on
    one worker."""
    return (
        edges
        | "OneKey" >> beam.Map(lambda edge: (None, edge))
        | "GatherUnsettled" >> beam.GroupByKey()
        | "FinishUnsettled" >> beam.FlatMap(finish_unsettled, max_unsettled)
    )


class Components(NamedTuple):
    """What `ConnectedComponents` gives: (node, smallest node of its component) for every node with an edge; and
    (node, edge count) whose counts, summed by their node's component, are the component's edges (one for each
    component of each bundle's edges: far fewer than nodes where components are large)."""

    labels: beam.PCollection
    edges: beam.PCollection


class ConnectedComponents(beam.PTransform):
    """Edges (a, b) in lists (a scored batch's edges, one element) -> `Components`.

    No side input and no list of the graph: each bundle's edges first become stars (`_BundleStars`, holding up to
    `bundle_nodes` nodes), then the rounds run; the unsettled remainder is finished on one worker
    (bounded by `max_unsettled` edges) and its labels reach the other nodes by joins on node and on
    star centre. With no rounds (`rounds_for`: the whole graph fits that bound) the bundles' stars are
    finished whole.
    """

    def __init__(self, rounds: int, max_unsettled: int, bundle_nodes: int = BUNDLE_NODES):
        super().__init__()
        self._rounds = rounds
        self._max_unsettled = max_unsettled
        self._bundle_nodes = bundle_nodes

    def expand(self, edges):
        bundled = edges | "BundleStars" >> beam.ParDo(_BundleStars(self._bundle_nodes)).with_outputs(
            "edges", main="stars")
        edges = bundled.stars
        if not self._rounds:
            # Every edge fits the finishing worker (`rounds_for`), so do the bundles' stars, at most one a node
            # and bundle: the finish labels every node, with no neighbourhoods, star labels or joins between
            # (~5 elements a node fewer; benchmarks/README.md, "twenty-third session").
            return Components(_finished(edges, self._max_unsettled), bundled.edges)
        keyed = False  # the rounds' edges are distinct and keyed ((a, b), None)
        for i in range(self._rounds):
            edges = _distinct(_neighbourhoods(edges, f"Large{i}", keyed)
                              | f"LargeStar{i}" >> beam.FlatMapTuple(_keyed_star, star=large_star), f"LargeDistinct{i}")
            edges = _distinct(_neighbourhoods(edges, f"Small{i}", True)
                              | f"SmallStar{i}" >> beam.FlatMapTuple(_keyed_star, star=small_star), f"SmallDistinct{i}")
            keyed = True
        labelled = _neighbourhoods(edges, "Final", keyed) | "StarLabel" >> beam.ParDo(_LabelNodes()).with_outputs(
            "unsettled", main="labels")
        finished = _finished(labelled.unsettled, self._max_unsettled)
        by_node = {"label": labelled.labels, "finished": finished} | "FinishNodes" >> JoinByKey(
            _finish_node, outputs=("pending",), main="done")
        by_star = {"node": by_node.pending, "finished": finished} | "FinishStars" >> JoinByKey(_finish_star)
        return Components((by_node.done, by_star) | "AllLabels" >> beam.Flatten(), bundled.edges)


class _RowsOf:
    """A representative's rows as (row id, key, count, rep id), walked as often as asked, never listed (a text
    may have millions of exact copies)."""

    __slots__ = ("_members", "_rep")

    def __init__(self, members: Iterable, rep: Representative):
        self._members = members
        self._rep = rep

    def __iter__(self) -> Iterator[tuple]:
        rep = self._rep
        return ((member.id, rep.key, rep.count, rep.id) for member in self._members)


def _component_of(element, alone_id: Optional[Callable], canonical: str, explain: Callable) -> Iterable[tuple]:
    """(representative id, {rep, component, members}) -> (group label, rep), and to "rows" (group label, (row
    id, key, count, rep id)) for each of its rows: the rows learn their group in the join that gives it to
    their representative. A representative with no label is a group of its own (`Chained.labels`): with
    `alone_id` (its id from its canonical id, known without a join: a first run), that group is finished
    here, its rows to "groups", its explanation to "explained" and its (label, id) to "ids", instead of
    travelling through the summary and rows joins that gather a group of several representatives."""
    rep_id, joined = element
    rep = only(joined["rep"])
    if rep is None:
        return
    component = only(joined["component"])
    if component is None and alone_id is not None:
        info = summarize_group((rep,), canonical)
        assigned = alone_id(info.canonical_id)
        for made in _group_made(info, (None, None), assigned, _RowsOf(joined["members"], rep), (), explain):
            yield made if isinstance(made, beam.pvalue.TaggedOutput) else beam.pvalue.TaggedOutput("groups", made)
        yield beam.pvalue.TaggedOutput("ids", (rep_id, assigned))
        return
    if component is None:
        component = rep_id
    yield component, rep
    for member in joined["members"]:
        yield beam.pvalue.TaggedOutput("rows", (component, (member.id, rep.key, rep.count, rep_id)))


class Clustered(NamedTuple):
    """What `ClusterGroups` gives: one `GroupRow` per accepted row; the pairs chaining control asked for
    (reused or new) and the new ones alone, as scored batches; the pairs it could not score; lineage rows;
    (group label, assigned id) per group; and what `explain` makes of each group.

    `groups`, `ids` and `explained` come in parts, a tuple of PCollections (the groups gathered by the joins,
    then those finished where their one representative met its rows), each written and counted as it is: a
    Flatten of the parts would copy each element once more (the local runner gives a Flatten a stage)."""

    groups: tuple
    scored: beam.PCollection
    new: beam.PCollection
    failed: beam.PCollection
    lineage: beam.PCollection
    ids: tuple
    explained: tuple


class ClusterGroups(beam.PTransform):
    """(representatives, memberships, scored batches, a previous run's group rows) -> `Clustered`.

    Args:
        split_chains: the components of the edges (pairs scoring at least the threshold) with chaining control,
            scored batches -> `Chained`-like: group labels (none for a node alone in its group) and the edge
            scores inside each group (`SplitChains` in a run, given `ConnectedComponents`).
        assign_ids: (rows as (group label, (row id, ...)), group canonical ids, previous rows) -> ids and
            lineage (`AssignGroupIds` in a run).
        explain: (a group's GroupInfo, its AssignedId, its edges, its rows as (row id, key, count, rep id))
            -> its explanation rows (`explain.Explainer` in a run), called where the group's rows are made.
        canonical: `frequent` or `earliest` (see `summarize_group`).
        alone_id: where a group's id follows from its canonical id alone (a first run: `ids.first_run_id`),
            that function: a group of one representative is then finished where the representative meets
            its rows, with no join of its own (most groups: 91% of a 100k-row benchmark run's).
    """

    def __init__(self, split_chains: beam.PTransform, assign_ids: beam.PTransform, explain: beam.PTransform,
                 canonical: str = "frequent", alone_id: Optional[Callable] = None):
        super().__init__()
        self._split_chains = split_chains
        self._assign_ids = assign_ids
        self._explain = explain
        self._canonical = canonical
        self._alone_id = alone_id

    def expand(self, inputs):
        representatives, members, scored, previous = inputs
        chained = scored | "SplitChains" >> self._split_chains
        labels = chained.labels
        edge_scores = chained.edges | "EdgeScores" >> beam.CombinePerKey(EdgeScores())
        by_group = (
            {"rep": representatives, "component": labels, "members": members}
            | "AssignGroup" >> JoinByKey(_component_of, self._alone_id, self._canonical, self._explain,
                                         keys={"rep": attrgetter("id"), "members": attrgetter("rep_id")},
                                         outputs=("rows", "groups", "explained", "ids"), main="reps")
        )
        rows = by_group.rows
        summaries = (
            {"reps": by_group.reps, "scores": edge_scores}
            | "SummarizeGroup" >> JoinByKey(_summarize, self._canonical)
        )
        assigned = (
            rows,
            summaries | "Canonical" >> beam.MapTuple(lambda label, group: (label, group[0].canonical_id)),
            previous,
        ) | "AssignGroupIds" >> self._assign_ids
        group_rows = (
            {"group": summaries, "id": assigned.ids, "rows": rows, "edges": chained.edges}
            | "GroupRows" >> JoinByKey(_group_rows, self._explain, outputs=("explained",), main="rows")
        )
        return Clustered((group_rows.rows, by_group.groups), chained.scored, chained.new, chained.failed,
                         assigned.lineage, (assigned.ids, by_group.ids), (group_rows.explained, by_group.explained))
