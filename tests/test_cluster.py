import random

from transforms.cluster import GroupInfo, connected_components, match_kind, summarize_group


def _components_by_search(edges):
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set()).add(a)
    seen, result = set(), {}
    for start in graph:
        if start in seen:
            continue
        stack, component = [start], []
        seen.add(start)
        while stack:
            node = stack.pop()
            component.append(node)
            for nxt in graph[node] - seen:
                seen.add(nxt)
                stack.append(nxt)
        for node in component:
            result[node] = min(component)
    return result


def test_union_find_matches_graph_search_on_random_graphs():
    rng = random.Random(7)
    for _ in range(20):
        n = rng.randint(2, 200)
        edges = [(rng.randrange(n), rng.randrange(n)) for _ in range(rng.randint(1, 2 * n))]
        assert connected_components(edges) == _components_by_search(edges)


def test_long_chain_and_star():
    chain = [(i, i + 1) for i in range(10_000)]
    assert set(connected_components(chain).values()) == {0}
    star = [(0, i) for i in range(1, 500)] + [("a", "b")]
    components = connected_components([(str(a), str(b)) for a, b in star])
    assert len(set(components.values())) == 2


def test_canonical_is_most_frequent_text_then_lowest_id():
    info = summarize_group([(9, "k9", 3), (4, "k4", 1), (7, "k7", 3)])
    assert info == GroupInfo(7, 7, "k7", 7)
    assert summarize_group([(5, "k5", 1)]) == GroupInfo(5, 5, "k5", 1)


def test_match_kind():
    group = GroupInfo(1, 1, "k1", 4)
    assert match_kind(GroupInfo(1, 1, "k1", 1), "k1", 1) == "single"
    assert match_kind(group, "k1", 3) == "exact"
    assert match_kind(group, "k2", 1) == "model"
    assert match_kind(GroupInfo(1, 1, "k1", 2), "k1", 1) == "model"  # canonical joined only by the model
