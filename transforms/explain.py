"""Why rows are grouped (docs/design.md, "explain"): widest paths and weakest links, and the `explain/` step.

For each row of a multi-row group, `explain/` holds the widest path of scored edges (the path whose
lowest score is highest; ties to fewer edges, then lower ids), each at or above the threshold, from
the representative of its text to the representative of the canonical member's text; and, on every
row of the group, the group's weakest link (its lowest-scoring bridge, none when no single edge holds
it together). `qdedup explain` answers with the same functions.

`Explainer` gathers each group's edges, and only its edges, up to `max_edges` (a group with more is
written with kind "too_large" and counted, never held whole); its rows are walked, never listed. It runs
inside `cluster.ClusterGroups`' per-group step, beside the group's rows.
"""
from __future__ import annotations

from collections import deque
from typing import Hashable, Iterable, Iterator, NamedTuple, Optional

from apache_beam.metrics import Metrics

from transforms.graphs import UnionFind
from transforms.records import Edge


def order_key(value) -> tuple:
    """Ids sort numbers first, then text: a total order over a run's ids of either type."""
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def _fewest_hops_back(neighbours: dict, start: Hashable, end: Hashable, hops: dict) -> list[Edge]:
    """From `start`, step by step to the neighbour one edge closer to `end` (BFS `hops` from `end`), the
    lowest id first: the path's edges oriented along it."""
    path, node = [], start
    while node != end:
        other, edge = min(((o, e) for o, e in neighbours[node] if hops.get(o) == hops[node] - 1),
                          key=lambda item: (order_key(item[0]), -item[1].score))
        path.append(Edge(node, other, edge.score, edge.source))
        node = other
    return path


def _hops_from(neighbours: dict, end: Hashable) -> dict:
    hops = {end: 0}
    queue = deque([end])
    while queue:
        node = queue.popleft()
        for other, _ in neighbours.get(node, ()):
            if other not in hops:
                hops[other] = hops[node] + 1
                queue.append(other)
    return hops


def widest_path(edges: Iterable[Edge], start: Hashable, end: Hashable, threshold: float) -> Optional[list[Edge]]:
    """The edges (score >= threshold) of the path from `start` to `end` whose lowest score is highest; among
    those, the one with fewest edges, then the lowest ids in order. None when no such path joins them.

    Args:
        edges: scored pairs, in any order and orientation.
        start, end: the two nodes (equal: an empty path).
        threshold: edges below it are not used.

    Returns:
        The path's edges from `start` to `end`, each oriented along the path.
    """
    usable = sorted((e for e in edges if e.score >= threshold), key=lambda e: -e.score)
    if start == end:
        return []
    joined, bottleneck = UnionFind(), None
    for edge in usable:  # Kruskal: the score at which start and end first meet is the widest bottleneck
        for node in (edge.a, edge.b, start, end):
            joined.parent.setdefault(node, node)
        joined.union(edge.a, edge.b)
        if joined.find(start) == joined.find(end):
            bottleneck = edge.score
            break
    if bottleneck is None:
        return None
    neighbours: dict = {}
    for edge in usable:
        if edge.score < bottleneck:
            break
        neighbours.setdefault(edge.a, []).append((edge.b, edge))
        neighbours.setdefault(edge.b, []).append((edge.a, edge))
    return _fewest_hops_back(neighbours, start, end, _hops_from(neighbours, end))


def widest_paths_to(edges: Iterable[Edge], end: Hashable, threshold: float) -> dict:
    """{node: `widest_path`(edges, node, end, threshold)} for every node joined to `end`, in one pass.

    Kruskal gives each node's bottleneck (the score at which it joins `end`'s component); then, per
    distinct bottleneck, highest first, one BFS from `end` over the edges at or above it gives the
    fewest-edge paths, walked back with the same tie rule as `widest_path`.
    """
    usable = sorted((e for e in edges if e.score >= threshold), key=lambda e: -e.score)
    joined, members = UnionFind(), {end: [end]}
    joined.parent[end] = end
    bottleneck: dict = {}
    for edge in usable:
        for node in (edge.a, edge.b):
            if node not in joined.parent:
                joined.parent[node], members[node] = node, [node]
        root_a, root_b, root_end = joined.find(edge.a), joined.find(edge.b), joined.find(end)
        if root_a == root_b:
            continue
        if root_end in (root_a, root_b):
            for node in members[root_b if root_end == root_a else root_a]:
                bottleneck[node] = edge.score
        joined.union(edge.a, edge.b)
        kept, merged = (root_a, root_b) if joined.find(edge.a) == root_a else (root_b, root_a)
        small, large = sorted((members.pop(kept), members.pop(merged)), key=len)
        large.extend(small)
        members[kept] = large
    at_level: dict = {}
    for node, level in bottleneck.items():
        at_level.setdefault(level, []).append(node)
    paths: dict = {end: []}
    neighbours: dict = {}
    added = 0
    for level in sorted(at_level, reverse=True):
        while added < len(usable) and usable[added].score >= level:
            edge = usable[added]
            neighbours.setdefault(edge.a, []).append((edge.b, edge))
            neighbours.setdefault(edge.b, []).append((edge.a, edge))
            added += 1
        hops = _hops_from(neighbours, end)
        for node in at_level[level]:
            paths[node] = _fewest_hops_back(neighbours, node, end, hops)
    return paths


def weakest_link(edges: Iterable[Edge], threshold: float) -> Optional[Edge]:
    """The lowest-scoring bridge of the graph of edges at or above `threshold`: the one pair whose removal
    would split its component. None when no single pair holds any part of it together.

    Args:
        edges: scored pairs, in any order and orientation (a pair given twice is not a bridge).

    Returns:
        The bridge with the lowest score (ties: the lowest ids), or None.
    """
    usable = [e for e in edges if e.score >= threshold and e.a != e.b]
    adjacent: dict = {}
    for index, edge in enumerate(usable):
        adjacent.setdefault(edge.a, []).append((edge.b, index))
        adjacent.setdefault(edge.b, []).append((edge.a, index))
    order: dict = {}
    low: dict = {}
    bridges = []
    for root in sorted(adjacent, key=order_key):  # Tarjan's bridges, iteratively (no recursion limit)
        if root in order:
            continue
        order[root] = low[root] = len(order)
        stack = [(root, -1, iter(adjacent[root]))]
        while stack:
            node, via, neighbours = stack[-1]
            step = next(neighbours, None)
            if step is None:
                stack.pop()
                if stack:
                    parent = stack[-1][0]
                    low[parent] = min(low[parent], low[node])
                    if low[node] > order[parent]:
                        bridges.append(usable[via])
                continue
            other, index = step
            if index == via:
                continue
            if other in order:
                low[node] = min(low[node], order[other])
            else:
                order[other] = low[other] = len(order)
                stack.append((other, index, iter(adjacent[other])))
    return min(bridges, key=lambda e: (e.score, sorted((order_key(e.a), order_key(e.b)))), default=None)


# ---- per group, in the pipeline (`cluster.ClusterGroups` calls it) ----

class ExplainRow(NamedTuple):
    """A row of a multi-row group, and why it is there (explain/).

    kind: "canonical" (the canonical member), "exact" (shares the canonical member's normalized text),
    "path" (joined by `path_ids`: the representatives of the texts from this row's to the canonical
    member's, with the scores and sources of the edges between them), or "too_large" (the group has
    more edges than the step gathers: `qdedup explain` can still answer for it).
    """

    id: object
    group_id: object
    canonical_id: object
    kind: str
    path_ids: list
    path_scores: list
    path_sources: list
    lowest_score: Optional[float]
    weakest_id_a: object
    weakest_id_b: object
    weakest_score: Optional[float]
    weakest_source: Optional[str]


class Explainer:
    """What explains a group's rows: an `ExplainRow` per row of a multi-row group, from the group's summary,
    its assigned id, its edges (gathered up to `max_edges`: a group with more has its rows written "too_large"
    and is counted) and its rows as (row id, key, count, representative id), walked twice, never listed.
    `ClusterGroups` calls it in the step that writes the group's rows, so that a group's rows, summary and id
    are shuffled once for both.

    Args:
        threshold: the run's --threshold (edges below it explain nothing).
        max_edges: most edges of one group gathered (--explain-max-edges).
    """

    def __init__(self, threshold: float, max_edges: int):
        self._threshold = threshold
        self._max_edges = max_edges
        self._too_large = Metrics.counter("qdedup", "explain_groups_too_large")

    def __call__(self, info, assigned, edges: Iterable[Edge], rows: Iterable[tuple]) -> Iterator[ExplainRow]:
        if info.size < 2:
            return
        gathered = []
        for edge in edges:
            gathered.append(edge)
            if len(gathered) > self._max_edges:
                gathered = None
                break
        canonical_rep = next(rep for row_id, _, _, rep in rows if row_id == info.canonical_id)
        if gathered is None:
            self._too_large.inc()
            for row_id, _, _, _ in rows:
                yield ExplainRow(row_id, assigned.group_id, info.canonical_id, "too_large", [], [], [], None,
                                 None, None, None, None)
            return
        paths = widest_paths_to(gathered, canonical_rep, self._threshold)
        link = weakest_link(gathered, self._threshold)
        weakest = (link.a, link.b, link.score, link.source) if link else (None, None, None, None)
        for row_id, _, _, rep in rows:
            path = paths.get(rep, [])
            if row_id == info.canonical_id:
                kind = "canonical"
            elif rep == canonical_rep:
                kind = "exact"
            else:
                kind = "path"
            yield ExplainRow(row_id, assigned.group_id, info.canonical_id, kind,
                             [rep] + [e.b for e in path] if path else [], [e.score for e in path],
                             [e.source for e in path], min((e.score for e in path), default=None), *weakest)
