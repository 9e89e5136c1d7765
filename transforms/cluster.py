"""Duplicate groups from scored pairs (DESIGN.md step 7).

Edges with score >= threshold join representatives into connected components;
each representative's exact duplicates follow it into its group. Components are
computed by an in-memory union-find over the edges (the edges, not the corpus,
meet on one worker); `connected_components` is the function a distributed
algorithm will replace.
"""
from __future__ import annotations

from typing import Hashable, Iterable, NamedTuple

import apache_beam as beam

from transforms.normalize import Representative


class GroupRow(NamedTuple):
    id: object
    group_id: object
    canonical_id: object
    group_size: int
    match_kind: str  # "single", "exact" or "model"


class GroupInfo(NamedTuple):
    group_id: object
    canonical_id: object
    canonical_key: str
    size: int


def connected_components(edges: Iterable[tuple[Hashable, Hashable]]) -> dict:
    """{node: smallest node of its component} for every node that has an edge."""
    parent: dict = {}

    def find(node):
        root = node
        while parent[root] != root:
            root = parent[root]
        while parent[node] != root:  # path compression
            parent[node], node = root, parent[node]
        return root

    for a, b in edges:
        parent.setdefault(a, a)
        parent.setdefault(b, b)
        root_a, root_b = find(a), find(b)
        if root_a != root_b:
            low, high = sorted((root_a, root_b))
            parent[high] = low
    return {node: find(node) for node in parent}


def summarize_group(members: Iterable[tuple[object, str, int]]) -> GroupInfo:
    """Members are (representative id, normalized-text key, rows with that text).

    The canonical member is the representative of the most frequent text, ties
    going to the lowest id; the group takes the canonical member's id.
    """
    members = list(members)
    _, _, count = max(members, key=lambda m: m[2])
    canonical_id, canonical_key, _ = min((m for m in members if m[2] == count), key=lambda m: m[0])
    return GroupInfo(canonical_id, canonical_id, canonical_key, sum(m[2] for m in members))


def match_kind(group: GroupInfo, key: str, exact_count: int) -> str:
    """How a row is tied to its group's canonical member."""
    if group.size == 1:
        return "single"
    if key == group.canonical_key and exact_count > 1:
        return "exact"
    return "model"


def _group_members(element) -> Iterable[tuple[object, tuple[GroupInfo, str, int]]]:
    _, members = element
    members = list(members)
    info = summarize_group((rep.id, rep.key, rep.count) for rep in members)
    for rep in members:
        yield rep.id, (info, rep.key, rep.count)


def _group_rows(element) -> Iterable[GroupRow]:
    _, joined = element
    (info, key, count), = joined["group"]
    for member in joined["members"]:
        yield GroupRow(member.id, info.group_id, info.canonical_id, info.size, match_kind(info, key, count))


def _component_of(rep: Representative, components: dict) -> tuple[object, Representative]:
    return components.get(rep.id, rep.id), rep


class ClusterGroups(beam.PTransform):
    """(representatives, memberships, scored pairs) -> one `GroupRow` per accepted row."""

    def __init__(self, threshold: float):
        super().__init__()
        self._threshold = threshold

    def expand(self, inputs):
        representatives, members, scored = inputs
        threshold = self._threshold
        components = (
            scored
            | "KeepDuplicateEdges" >> beam.Filter(lambda pair: pair.score >= threshold)
            | "EdgeEnds" >> beam.Map(lambda pair: (pair.id_a, pair.id_b))
            | "CollectEdges" >> beam.combiners.ToList()
            | "UnionFind" >> beam.Map(connected_components)
        )
        groups = (
            representatives
            | "AssignComponent" >> beam.Map(_component_of, components=beam.pvalue.AsSingleton(components))
            | "GroupComponent" >> beam.GroupByKey()
            | "SummarizeGroup" >> beam.FlatMap(_group_members)
        )
        return (
            {"group": groups, "members": members | "KeyByRepresentative" >> beam.Map(lambda m: (m.rep_id, m))}
            | "JoinMembers" >> beam.CoGroupByKey()
            | "GroupRows" >> beam.FlatMap(_group_rows)
        )
