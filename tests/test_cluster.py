import pickle
import random
from collections import Counter

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_runner_api_pb2

from tests.helpers import RUNNER_ARGS
from transforms.chaining import Chained
from transforms.cluster import (
    BUNDLE_NODES,
    ClusterGroups,
    ConnectedComponents,
    GroupInfo,
    GroupRow,
    _group_rows,
    connected_components,
    finish_unsettled,
    large_star,
    match_kind,
    rounds_for,
    small_star,
    star_label,
    summarize_group,
)
from transforms.errors import QdedupError
from transforms.explain import Explainer
from transforms.ids import AssignedId, AssignGroupIds, first_run_id
from transforms.records import Edge, Membership, Representative


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


def _rep(rep_id, count, first_time=None, first_id=None):
    return Representative(rep_id, "", "", f"k{rep_id}", count, first_time, rep_id if first_id is None else first_id)


def test_canonical_is_most_frequent_text_then_lowest_id():
    info = summarize_group([_rep(9, 3), _rep(4, 1), _rep(7, 3)])
    assert info == GroupInfo(7, "k7", 7)
    assert summarize_group([_rep(5, 1)]) == GroupInfo(5, "k5", 1)


def test_canonical_can_be_the_earliest_row():
    # Representative 9's text was first asked by row 12 (an exact duplicate), before anything in 4 or 7.
    reps = [_rep(9, 3, 100, 12), _rep(4, 1, 200), _rep(7, 3, None)]
    assert summarize_group(reps, "earliest") == GroupInfo(12, "k9", 7)
    # Without timestamps the earliest is the lowest id; a tie in time goes to the lowest id too.
    assert summarize_group([_rep(9, 1), _rep(4, 1)], "earliest").canonical_id == 4
    assert summarize_group([_rep(9, 1, 5), _rep(4, 1, 5)], "earliest").canonical_id == 4


def test_match_kind():
    group = GroupInfo(1, "k1", 4)
    assert match_kind(GroupInfo(1, "k1", 1), "k1", 1) == "single"
    assert match_kind(group, "k1", 3) == "exact"
    assert match_kind(group, "k2", 1) == "model"
    assert match_kind(GroupInfo(1, "k1", 2), "k1", 1) == "model"  # canonical joined only by the model


def test_a_groups_rows_and_their_explanations_come_from_one_join():
    """Rows 1 and 2 share the canonical text (representative 1), row 3 joined it by a pair; a single row's
    group is explained by nothing; a label with rows but no group fails, naming it."""
    joined = {"group": [(GroupInfo(1, "k1", 3), (0.9, 0.9))], "id": [AssignedId(50, 2, True)],
              "rows": [(1, "k1", 2, 1), (2, "k1", 2, 1), (3, "k3", 1, 3)], "edges": [Edge(1, 3, 0.9, "lexical")]}
    made = list(_group_rows(("g", joined), Explainer(0.5, 10)))
    assert made[:3] == [GroupRow(1, 50, 1, 3, "exact", 0.9, 0.9, 2), GroupRow(2, 50, 1, 3, "exact", 0.9, 0.9, 2),
                        GroupRow(3, 50, 1, 3, "model", 0.9, 0.9, 2)]
    assert {m.tag for m in made[3:]} == {"explained"} and len(made) == 6
    assert [(e.value.id, e.value.kind, e.value.path_ids) for e in made[3:]] == [
        (1, "canonical", []), (2, "exact", []), (3, "path", [3, 1])]
    single = {"group": [(GroupInfo(4, "k4", 1), (None, None))], "id": [AssignedId(51, 2, False)],
              "rows": [(4, "k4", 1, 4)], "edges": []}
    assert list(_group_rows(("s", single), Explainer(0.5, 10))) == [GroupRow(4, 51, 4, 1, "single", None, None, 2)]
    with pytest.raises(ValueError, match="'lost' has edges or rows but no group"):
        list(_group_rows(("lost", {"group": [], "id": [], "rows": [(5, "k5", 1, 5)], "edges": []}),
                         Explainer(0.5, 10)))


class _GivenChains(beam.PTransform):
    """Scored batches -> `Chained` with these labels and edges (what SplitChains would give)."""

    def __init__(self, labels: list, edges: list):
        super().__init__()
        self._labels = labels
        self._edges = edges

    def expand(self, scored):
        p = scored.pipeline
        return Chained(p | "Labels" >> beam.Create(self._labels), p | "Edges" >> beam.Create(self._edges),
                       scored, scored, p | "Failed" >> beam.Create([]))


def _clustered(tmp_path, canonical: str, alone_id) -> dict:
    """ClusterGroups over four representatives, two of them a group (labels and an edge given) and two alone
    (no label: one with three exact copies, one with one row) -> {output: [each part's elements, sorted]}."""
    reps = [Representative(1, "t1", "t1", "k1", 2, 5, 11), Representative(2, "t2", "t2", "k2", 1, 7, 2),
            Representative(3, "t3", "t3", "k3", 3, 1, 31), Representative(4, "t4", "t4", "k4", 1, 9, 4)]
    members = [Membership(row, rep, f"k{rep}") for row, rep in ((1, 1), (11, 1), (2, 2), (3, 3), (31, 3), (32, 3),
                                                               (4, 4))]
    out = tmp_path / f"clustered-{canonical}-{alone_id is not None}.pickle"
    with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as p:
        clustered = (
            (p | "Reps" >> beam.Create(reps), p | "Members" >> beam.Create(members), p | "Scored" >> beam.Create([]),
             p | "Previous" >> beam.Create([]))
            | ClusterGroups(_GivenChains([(1, 1), (2, 1)], [(1, Edge(1, 2, 0.9, "lexical"))]),
                            AssignGroupIds(first_run=True), Explainer(0.5, 10), canonical, alone_id))
        named = [part | f"Name{name}{i}" >> beam.Map(lambda x, name=name, i=i: (name, i, x))
                 for name in ("groups", "ids", "explained") for i, part in enumerate(getattr(clustered, name))]
        _ = named | beam.Flatten() | beam.combiners.ToList() | beam.Map(
            lambda made: out.write_bytes(pickle.dumps(made)))
    found: dict = {name: [[], []] for name in ("groups", "ids", "explained")}
    for name, i, made in pickle.loads(out.read_bytes()):
        found[name][i].append(made)
    return {name: [sorted(part, key=repr) for part in parts] for name, parts in found.items()}


@pytest.mark.parametrize("canonical", ["frequent", "earliest"])
def test_a_group_of_one_representative_is_finished_where_it_meets_its_rows(tmp_path, canonical):
    """On a first run, a representative with no label (a group of its own) gets its rows, explanation and id in
    the join that gives it its rows, equal to what the summary and rows joins give it otherwise."""
    fast, joined = _clustered(tmp_path, canonical, first_run_id), _clustered(tmp_path, canonical, None)
    assert all(not part for parts in (joined["groups"][1:], joined["ids"][1:], joined["explained"][1:])
               for part in parts)  # without `alone_id`: every group through the joins
    for name in ("groups", "ids", "explained"):
        assert sorted(fast[name][0] + fast[name][1], key=repr) == joined[name][0]
    assert sorted(row.id for row in fast["groups"][1]) == [3, 4, 31, 32]  # the two alone, finished at once
    assert sorted(row.id for row in fast["groups"][0]) == [1, 2, 11]
    by_row = {row.id: row for row in joined["groups"][0]}
    canonical_3 = 3 if canonical == "frequent" else 31
    assert {by_row[row].group_id for row in (3, 31, 32)} == {canonical_3} and by_row[31].match_kind == "exact"
    assert by_row[4] == GroupRow(4, 4, 4, 1, "single", None, None, 1)
    assert sorted((e.id, e.kind) for e in fast["explained"][1]) == sorted(
        [(canonical_3, "canonical"), *((row, "exact") for row in (3, 31, 32) if row != canonical_3)])
    assert [kv for kv in fast["ids"][1]] == [(3, AssignedId(canonical_3, 1, False)), (4, AssignedId(4, 1, False))]


def _run_components(edges, rounds, tmp_path, max_unsettled=10**9, bundle_nodes=BUNDLE_NODES, counts=False):
    """{node: label} and the count of unsettled edges; with `counts`, also each label's edge count as the
    components' edge counts sum to."""
    path = tmp_path / "components.pickle"

    def save(found, edge_counts):
        labels = dict(found)
        by_label = Counter()
        for node, count in edge_counts:
            by_label[labels[node]] += count
        with open(path, "wb") as handle:
            pickle.dump((labels, dict(by_label)), handle)

    pipeline = beam.Pipeline(options=PipelineOptions(RUNNER_ARGS))
    lists = [edges[i:i + 7] for i in range(0, len(edges), 7)]  # as scored batches give them: a list an element
    components = pipeline | beam.Create(lists) | ConnectedComponents(rounds, max_unsettled, bundle_nodes)
    _ = (components.labels | beam.combiners.ToList()
         | beam.Map(save, beam.pvalue.AsList(components.edges)))
    result = pipeline.run()
    result.wait_until_finish()
    unsettled = result.metrics().query(MetricsFilter().with_name("components_unsettled_edges"))["counters"]
    with open(path, "rb") as handle:
        labels, by_label = pickle.load(handle)
    if counts:
        return labels, sum(c.committed for c in unsettled), by_label
    return labels, sum(c.committed for c in unsettled)


_PERMUTATION = random.Random(5).sample(range(3000), 3000)


def _random_graphs():
    rng = random.Random(11)
    edges = []
    offset = 0
    for _ in range(30):  # many small components of random shapes, in one run
        n = rng.randint(2, 60)
        edges += [(offset + rng.randrange(n), offset + rng.randrange(n)) for _ in range(rng.randint(1, 2 * n))]
        offset += n
    return edges


@pytest.mark.parametrize("name, edges", [
    ("random", _random_graphs()),
    ("chain", [(i, i + 1) for i in range(10_000)]),
    ("shuffled chain", list(zip(_PERMUTATION, _PERMUTATION[1:]))),
    ("stars", [(0, i) for i in range(1, 300)] + [(1000 + i, 1000) for i in range(1, 300)] + [(5000, 5001)]),
    ("string ids", [(f"q{i}", f"q{i + 1}") for i in range(0, 200, 2)] + [("q3", "q100")]),
])
@pytest.mark.slow
def test_distributed_components_equal_graph_search(name, edges, tmp_path):
    expected = _components_by_search([e for e in edges if e[0] != e[1]])
    # bundle_nodes=2: every edge leaves the bundle as it came, so the rounds and the finish do the work;
    # by default the bundle's edges reach the rounds as stars. With no rounds the finish takes the bundles'
    # stars whole: one edge a node and bundle, no more than the graph's edges.
    edge_counts = Counter(expected[a] for a, b in edges if a != b)  # each component's edges, as given
    for rounds, bundle_nodes in ((1, 2), (6, 2), (1, BUNDLE_NODES), (0, 2), (0, BUNDLE_NODES)):
        got, unsettled, counted = _run_components(edges, rounds, tmp_path, bundle_nodes=bundle_nodes, counts=True)
        assert got == expected, (name, rounds, bundle_nodes)
        assert counted == edge_counts, (name, rounds, bundle_nodes)
        if rounds == 0:
            assert 0 < unsettled <= len(edges)
            if bundle_nodes == BUNDLE_NODES:  # one bundle: its stars, one edge a node that is not its root
                assert unsettled == len(expected) - len(set(expected.values()))
        elif name == "stars" or bundle_nodes == BUNDLE_NODES:
            assert unsettled == 0  # stars are done after the rounds; nothing is left to finish
        if name == "chain" and rounds <= 1 and bundle_nodes == 2:
            assert unsettled > 0  # one round cannot settle a 10,000-long chain: the finishing step did


def test_bundle_stars_keep_the_components_in_one_edge_per_node():
    from transforms.cluster import _BundleStars
    edges = _random_graphs()
    expected = _components_by_search([e for e in edges if e[0] != e[1]])
    nodes = len({n for e in edges for n in e})
    for max_nodes, most_edges in ((10**6, nodes - 30), (40, len(edges))):
        stars = _BundleStars(max_nodes)
        stars.setup()
        stars.start_bundle()
        given = [star for i in range(0, len(edges), 5) for star in stars.process(edges[i:i + 5])]
        flushed = len(given)
        given += [beam.pvalue.TaggedOutput(out.tag, out.value.value) if isinstance(out, beam.pvalue.TaggedOutput)
                  else out.value for out in stars.finish_bundle()]
        emitted = [star for star in given if not isinstance(star, beam.pvalue.TaggedOutput)]
        counted = [out.value for out in given if isinstance(out, beam.pvalue.TaggedOutput)]
        assert (flushed > 0) == (max_nodes == 40)  # a full union-find gives its stars and starts again
        assert all(a > b for a, b in emitted) and len(emitted) <= most_edges
        assert connected_components(emitted) == expected
        # Edge counts under the smallest node of each bundle component: one a component when nothing was
        # flushed; summed by component, its edges (self-loops aside).
        assert {out.tag for out in given if isinstance(out, beam.pvalue.TaggedOutput)} == {"edges"}
        by_component = Counter()
        for node, count in counted:
            by_component[expected[node]] += count
        assert by_component == Counter(expected[a] for a, b in edges if a != b)
        if max_nodes == 10**6:
            assert sorted(node for node, _ in counted) == sorted(set(expected.values()))


def test_star_steps():
    assert sorted(large_star(5, [3, 7, 9])) == [(7, 3), (9, 3)]
    assert list(large_star(5, [1, 2])) == []
    assert sorted(small_star(5, [3, 7, 1])) == [(3, 1), (5, 1)]
    assert list(small_star(1, [3, 7])) == []
    assert star_label(5, [1]) == (1, False, 1)       # a leaf of a star
    assert star_label(1, [5, 7]) == (1, False, 2)    # a star's centre
    assert star_label(5, [1, 9]) == (1, True, 2)     # still between two nodes


def test_a_star_centre_is_streamed_not_listed():
    """A node with a million neighbours: each step iterates them and holds none (a list alone is 8 MB)."""
    import collections
    import tracemalloc
    neighbours = range(1, 1_000_001)  # re-iterable and lazy, like a grouped value on Dataflow
    tracemalloc.start()
    try:
        collections.deque(large_star(0, neighbours), maxlen=0)
        collections.deque(small_star(2_000_000, neighbours), maxlen=0)
        assert star_label(0, neighbours) == (0, False, 10**6) and star_label(500, neighbours) == (1, True, 10**6)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak
    assert sum(1 for _ in small_star(2_000_000, neighbours)) == 1_000_000  # (node, 1) and 999,999 others


def test_rounds_grow_with_log_of_the_corpus():
    assert [rounds_for(n, 10, 1000) for n in (0, 2, 1000, 10**6, 10**8)] == [0, 0, 12, 22, 29]
    assert rounds_for(200_000, 10, 2_000_000) == 0  # every edge fits the finishing worker
    assert rounds_for(200_001, 10, 2_000_000) == 20


def test_a_remainder_larger_than_the_bound_fails_saying_what_to_raise():
    edges = [(i, i + 1) for i in range(10)]
    assert dict(finish_unsettled((None, edges), 10)) == {i: 0 for i in range(11)}
    with pytest.raises(QdedupError, match="--component-rounds"):
        list(finish_unsettled((None, edges), 9))


def test_components_are_finished_without_side_inputs():
    """Nothing the size of the graph is broadcast: no step of the component search takes a side input."""
    pipeline = beam.Pipeline(options=PipelineOptions(RUNNER_ARGS))
    _ = pipeline | beam.Create([[(1, 2)]]) | "Components" >> ConnectedComponents(2, 100)
    proto = pipeline.to_runner_api()
    pardos = [t for t in proto.components.transforms.values()
              if t.unique_name.startswith("Components/") and t.spec.urn == "beam:transform:pardo:v1"]
    assert pardos
    for transform in pardos:
        payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
        assert not payload.side_inputs, transform.unique_name


def test_a_million_node_path_is_finished_exactly_by_the_finishing_steps():
    """The worst case for the rounds: every edge of a 1M-node path left unsettled, finished by union-find
    and the two joins that carry its labels to every node (the functions the pipeline runs, called
    directly: the in-process runner takes ~150 s for this graph)."""
    from transforms.cluster import _finish_node, _finish_star
    from transforms.joins import Joined
    n = 1_000_000
    rng = random.Random(3)
    ids = list(range(n))
    rng.shuffle(ids)
    edges = list(zip(ids, ids[1:]))
    finished = dict(finish_unsettled((None, edges), len(edges)))
    assert len(finished) == n and set(finished.values()) == {0}
    # A node labelled by the finish takes its label; one that was settled around a star centre takes the
    # centre's: here node n (settled, centre 5) and node n + 1 (settled, centre n + 2, not in the finish).
    done = list(_finish_node((5, Joined([(0, 5), (1, 0)], {"label": 0, "finished": 1}))))
    pending = list(_finish_node((n, Joined([(0, 5)], {"label": 0, "finished": 1}))))
    assert done == [(5, 0)] and pending[0].value == (5, n)
    star = Joined([(0, n), (1, finished[5])], {"node": 0, "finished": 1})
    assert list(_finish_star((5, star))) == [(n, 0)]
    assert list(_finish_star((n + 2, Joined([(0, n + 1)], {"node": 0, "finished": 1})))) == [(n + 1, n + 2)]


@pytest.mark.slow
def test_a_long_path_and_a_100k_star_through_the_pipeline_are_exact(tmp_path):
    """Through Beam: a 100k-node star settles in the rounds; a 30k-node path is mostly left to the finishing
    step (the 1M-node path above goes through the same functions; in the in-process runner it takes ~150 s).
    Bundles give their edges as they came (bundle_nodes=2), as many small bundles on Dataflow would."""
    path = [(i, i + 1) for i in range(30_000)]
    star = [(200_000, 200_000 + i) for i in range(1, 100_001)]
    got, unsettled = _run_components(path + star, 2, tmp_path, max_unsettled=100_000, bundle_nodes=2)
    assert got == {**{i: 0 for i in range(30_001)}, **{200_000 + i: 200_000 for i in range(100_001)}}
    assert 0 < unsettled <= 100_000  # two rounds leave most of the path to the finishing step
