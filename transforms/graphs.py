"""Union-find, shared by the stages that join nodes into components (cluster, explain) and by the commands."""
from __future__ import annotations

from typing import Hashable, Iterable


class UnionFind:
    """Nodes joined by edges; each component's root is its smallest node."""

    def __init__(self):
        self.parent: dict = {}

    def __len__(self) -> int:
        return len(self.parent)

    def find(self, node):
        parent = self.parent
        root = node
        while parent[root] != root:
            root = parent[root]
        while parent[node] != root:  # path compression
            parent[node], node = root, parent[node]
        return root

    def union(self, a, b) -> None:
        self.parent.setdefault(a, a)
        self.parent.setdefault(b, b)
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            low, high = sorted((root_a, root_b))
            self.parent[high] = low

    def labels(self) -> dict:
        """{node: smallest node of its component}."""
        return {node: self.find(node) for node in self.parent}


def connected_components(edges: Iterable[tuple[Hashable, Hashable]]) -> dict:
    """{node: smallest node of its component} for every node that has an edge."""
    found = UnionFind()
    for a, b in edges:
        found.union(a, b)
    return found.labels()
