import collections
import itertools
import pickle
import random

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from tests.helpers import MULTI_PROCESSING, RUNNER_ARGS, peak_bytes
from transforms.chaining import (
    ChainingSettings,
    SplitChains,
    _choose_piece,
    _judge_on_one_worker,
    _piece_end_a,
    _piece_end_b,
    average_linkage,
    compact_ids,
    cut_pieces,
    cut_thresholds,
    missing_pairs,
    needs_resplit,
    pair_columns,
    verdict,
)
from transforms.cluster import ConnectedComponents, EdgeScores
from transforms.errors import QdedupError
from transforms.graphs import connected_components
from transforms.records import CandidatePair, Edge, ScoredPair, pairs_in
from transforms.score import Scored

A, B, CHAIN = [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]


@pytest.mark.parametrize("make", [
    lambda rng, n: rng.integers(0, 3 * n, n),                         # row ids: through the table
    lambda rng, n: rng.integers(0, 3 * n, n).astype(np.int32),        # its type kept
    lambda rng, n: rng.integers(0, 3 * n, n).astype(rng.choice([np.int32, np.int64])),  # types mixed: promoted
    lambda rng, n: rng.integers(-5, 5, n),                            # negative: sorted
    lambda rng, n: rng.integers(0, 2**62, n),                         # spread far apart: sorted
    lambda rng, n: np.array([f"q{i}" for i in rng.integers(0, n, n)], dtype=object),  # text ids: sorted
])
def test_compacted_ids_are_numpys_unique_with_the_inverse_split_by_array(make):
    """Whichever way the ids are compacted (a table for row ids, else a sort), the distinct ids, their type and
    every array's positions among them are np.unique's of the arrays together, arrays empty or not."""
    rng = np.random.default_rng(3)
    for sizes in ([50, 70], [1, 0], [0, 40], [200], [30, 30, 30]):
        arrays = [make(rng, size) if size else make(rng, 1)[:0] for size in sizes]
        nodes, positions = compact_ids(*arrays)
        expected, inverse = np.unique(np.concatenate(arrays), return_inverse=True)
        assert nodes.dtype == expected.dtype and nodes.tolist() == expected.tolist()
        assert [p.tolist() for p in positions] == [p.tolist() for p in np.split(inverse, np.cumsum(sizes[:-1]))]


def _two_groups_and_a_weak_chain() -> dict:
    """Two true groups, every pair inside scored 0.95, joined by a chain 4 - 9 - 10 - 5 of 0.6 links."""
    scores = {pair: 0.95 for group in (A, B) for pair in itertools.combinations(group, 2)}
    scores.update({(4, 9): 0.6, (9, 10): 0.6, (5, 10): 0.6})
    return scores


def _model(a, b) -> float:
    """What a cross-encoder would say of the pairs blocking never proposed: same group or not."""
    same = any(a in g and b in g for g in (A, B))
    return 0.9 if same else 0.05


def test_trigger_on_size_and_density():
    settings = ChainingSettings(max_size=5, min_density=0.5)
    assert not needs_resplit(2, 1, settings)
    assert not needs_resplit(4, 3, settings)      # a 4-path covers half its pairs
    assert needs_resplit(5, 4, settings)          # a 5-path does not
    assert needs_resplit(6, 15, settings)         # complete, but larger than max_size
    assert not needs_resplit(5, 10, settings)
    assert needs_resplit(np.array([2, 4, 5, 6, 5]), np.array([1, 3, 4, 15, 10]), settings).tolist() == [
        False, False, True, True, False]  # every component at once, as `group_verdicts` asks


def test_missing_pairs_are_friends_of_friends_strongest_first_and_bounded():
    scores = {(1, 2): 0.9, (2, 3): 0.6, (3, 4): 0.8, (1, 3): 0.2}
    assert missing_pairs(scores, 0.5, 10, 32) == [(2, 4)]  # (1, 3) is scored already; 1-4 are 3 apart
    scores = {(0, i): 0.5 + i / 100 for i in range(1, 6)}
    ranked = missing_pairs(scores, 0.5, 3, 32)
    assert ranked == [(4, 5), (3, 4), (3, 5)]  # (3, 4) and (3, 5) tie at 0.53: lower ids first
    assert missing_pairs(scores, 0.5, 100, 2) == [(4, 5)]  # only the 2 strongest edges of the hub


def test_average_linkage_splits_the_weak_chain():
    scores = _two_groups_and_a_weak_chain()
    labels = average_linkage(A + B + CHAIN, scores, 0.5)
    groups = {frozenset(n for n in labels if labels[n] == root) for root in set(labels.values())}
    assert frozenset(A) in groups and frozenset(B) in groups
    # A strong chain (every pair scored high) stays one group.
    strong = {pair: 0.9 for pair in itertools.combinations(A + B, 2)}
    assert set(average_linkage(A + B, strong, 0.5).values()) == {1}


def test_unscored_pairs_count_as_non_duplicates():
    # 1-2 and 2-3 score 0.9, 1-3 never scored: the mean of {1,2} and {3} is 0.45 < 0.5.
    labels = average_linkage([1, 2, 3], {(1, 2): 0.9, (2, 3): 0.9}, 0.5)
    assert labels[1] == labels[2] and labels[3] == 3 or labels[2] == labels[3] and labels[1] == 1
    assert average_linkage([1, 2, 3], {(1, 2): 0.9, (2, 3): 0.9, (1, 3): 0.3}, 0.5) == {1: 1, 2: 1, 3: 1}


def _naive_average_linkage(nodes, scores, threshold):
    clusters = [{n} for n in nodes]

    def mean(x, y):
        return sum(scores.get((min(a, b), max(a, b)), 0.0) for a in x for b in y) / (len(x) * len(y))
    while len(clusters) > 1:
        best, i, j = max((mean(x, y), i, j) for i, x in enumerate(clusters) for j, y in enumerate(clusters) if i < j)
        if best < threshold:
            break
        clusters[i] |= clusters.pop(j)
    return {frozenset(c) for c in clusters}


def test_average_linkage_matches_a_naive_implementation():
    rng = random.Random(3)
    for _ in range(30):
        nodes = list(range(rng.randint(2, 14)))
        scores = {pair: round(rng.random(), 3) for pair in itertools.combinations(nodes, 2) if rng.random() < 0.6}
        labels = average_linkage(nodes, scores, 0.45)
        got = {frozenset(n for n in labels if labels[n] == r) for r in set(labels.values())}
        assert got == _naive_average_linkage(nodes, scores, 0.45)


def _text(node) -> str:
    return f"text of {node}"


def _in_batches(pairs: list, size: int = 3) -> list[list]:
    """Scored pairs as scoring gives them: in lists (scored batches)."""
    return [pairs[i:i + size] for i in range(0, len(pairs), size)]


def _texts(pipeline, nodes):
    """(node, text) for SplitChains' `texts`."""
    return pipeline | "Texts" >> beam.Create([(n, _text(n)) for n in nodes])


def _scored_with_texts(candidate, model) -> ScoredPair:
    if (candidate.text_a, candidate.text_b) != (_text(candidate.id_a), _text(candidate.id_b)):
        raise ValueError(f"asked to score {candidate} without its texts")
    return ScoredPair(candidate.id_a, candidate.id_b, model(candidate.id_a, candidate.id_b), candidate.similarity,
                      candidate.source)


class _DictScorer(beam.PTransform):
    """Stands for ScoreCandidates: `model(a, b)` scores each pair, none reused; a pair must come with the
    texts of its two nodes, as `_texts` gives them."""

    def __init__(self, model=_model):
        super().__init__()
        self._model = model

    def expand(self, candidates):
        scored = (candidates | beam.Map(_scored_with_texts, self._model)
                  | "InBatches" >> beam.BatchElements(min_batch_size=2, max_batch_size=2))
        nothing = candidates.pipeline | "Nothing" >> beam.Create([])
        return Scored(scored, scored, nothing, candidates.pipeline | "NoFailures" >> beam.Create([]))


def _edge_scores_of_groups(labels: dict, scores: dict, threshold: float) -> dict:
    """{group label: (min, mean)} of the scores >= threshold of pairs inside a group, on one machine."""
    inside = {}
    for (a, b), score in scores.items():
        if score >= threshold and labels[a] == labels[b]:
            inside.setdefault(labels[a], []).append(score)
    return {label: (min(found), sum(found) / len(found)) for label, found in inside.items()}


def _split_chains(scores: dict, nodes: int, settings: ChainingSettings, scorer, tmp_path, runner_args=()):
    """SplitChains over these scored pairs of nodes 0..nodes-1: (labels, qdedup counters).

    Also checks the edge scores it gives per group against those of its labels over every scored pair."""
    out = tmp_path / "labels.pickle"
    pipeline = beam.Pipeline(options=PipelineOptions([*RUNNER_ARGS, *runner_args]))
    scored = pipeline | "S" >> beam.Create(_in_batches([ScoredPair(a, b, s, 0.5, "lexical")
                                                        for (a, b), s in scores.items()]))
    chained = scored | SplitChains(settings, scorer, ConnectedComponents(2, 10**6), _texts(pipeline, range(nodes)))
    found = {
        "labels": chained.labels | "L" >> beam.combiners.ToList(),
        "edges": chained.edges | beam.CombinePerKey(EdgeScores()) | "E" >> beam.combiners.ToList(),
        "extra": chained.scored | beam.FlatMap(pairs_in) | beam.Map(lambda p: ((p.id_a, p.id_b), p.score))
        | "X" >> beam.combiners.ToList(),
    }
    _ = (pipeline | beam.Create([None]) | beam.Map(
        lambda _, **lists: out.write_bytes(pickle.dumps({name: dict(items) for name, items in lists.items()})),
        **{name: beam.pvalue.AsSingleton(pcoll) for name, pcoll in found.items()}))
    result = pipeline.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in result.metrics().query(
        MetricsFilter().with_namespace("qdedup"))["counters"]}
    found = pickle.loads(out.read_bytes())
    labels = _with_nodes_alone(found["labels"], scores, settings.threshold)
    expected = _edge_scores_of_groups(labels, {**scores, **found["extra"]}, settings.threshold)
    assert found["edges"].keys() == expected.keys()
    assert all(found["edges"][label] == pytest.approx(expected[label]) for label in expected)
    return labels, counters


def _with_nodes_alone(labels: dict, scores: dict, threshold: float) -> dict:
    """SplitChains' labels, which name only groups of two or more nodes (checked), with every other node of a
    component labelled by itself, as the clustering that reads them takes it."""
    assert all(size > 1 for size in collections.Counter(labels.values()).values())
    return {**{n: n for pair, score in scores.items() if score >= threshold for n in pair}, **labels}


@pytest.mark.parametrize("density", [0.5, 0.0])
def test_split_chains_in_beam_scores_missing_pairs_and_splits(tmp_path, density):
    scores = _two_groups_and_a_weak_chain()
    # Blocking proposed only part of group A: a sparse component that needs its missing pairs scored.
    del scores[(1, 4)], scores[(2, 4)]
    nodes = A + B + CHAIN
    out = tmp_path / "labels.txt"
    with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as p:
        scored = p | "S" >> beam.Create(_in_batches([ScoredPair(a, b, s, 0.5, "lexical")
                                                     for (a, b), s in scores.items()]))
        result = scored | SplitChains(ChainingSettings(min_density=density, max_size=100), _DictScorer(),
                                      ConnectedComponents(3, 10**6), _texts(p, nodes))
        ((result.labels | beam.Map(repr)), (result.scored | beam.FlatMap(pairs_in)
                                                    | beam.Map(lambda x: "extra " + repr(tuple(x[:3])))))\
            | beam.Flatten() | beam.combiners.ToList() | beam.Map(lambda lines: out.write_text("\n".join(lines)))
    lines = out.read_text().splitlines()
    labels = _with_nodes_alone(dict(eval(line) for line in lines if not line.startswith("extra")), scores,
                              ChainingSettings().threshold)
    extra = [eval(line[6:]) for line in lines if line.startswith("extra")]
    if density == 0.0:  # nothing is sparse enough: the component stays whole
        assert set(labels.values()) == {1} and extra == []
        return
    assert {labels[n] for n in A} == {1} and {labels[n] for n in B} == {5}
    assert labels[9] not in (1, 5) and labels[10] not in (1, 5)
    assert {(1, 4), (2, 4)} <= {(a, b) for a, b, _ in extra}
    assert all(score == _model(a, b) for a, b, score in extra)


def test_split_chains_gives_the_edge_scores_of_the_groups_it_made(tmp_path):
    """A re-split component's groups carry the scores of their edges, blocking's and those the re-split
    asked for, and no edge that the re-split cut (checked in `_split_chains`)."""
    scores = _two_groups_and_a_weak_chain()
    del scores[(1, 4)]
    labels, counters = _split_chains(scores, 11, ChainingSettings(max_size=100), _DictScorer(), tmp_path)
    assert counters["components_resplit"] == 1
    assert {labels[n] for n in A} == {1} and {labels[n] for n in B} == {5} and labels[9] != labels[4]


def test_the_plan_follows_the_blocking_pairs_of_the_component():
    from transforms.chaining import _Plan

    def plan(pairs):
        element = (1, {"node": [(n, _text(n)) for n in A + B + CHAIN], "pair": pairs})
        out = list(_Plan(ChainingSettings(max_size=100, min_density=0.5))(element))
        return tuple([o.value for o in out if o.tag == tag] for tag in ("missing", "resplit", "ask"))

    blocked = [ScoredPair(a, b, s, 0.5, "lexical") for (a, b), s in _two_groups_and_a_weak_chain().items()]
    missing, resplit, asked = plan(blocked)
    sources = {pair: "lexical" for pair in _two_groups_and_a_weak_chain()}
    assert missing and resplit == [(1, (sorted(A + B + CHAIN), _two_groups_and_a_weak_chain(), sources))]
    assert all(pair not in _two_groups_and_a_weak_chain() and root == 1 for pair, root in missing)
    # each missing pair is asked for with both texts, ready to score
    assert asked == [CandidatePair(a, b, _text(a), _text(b), None, "resplit") for (a, b), _ in missing]
    assert plan(list(reversed(blocked))) == (missing, resplit, asked)  # whatever the order pairs arrive in


def test_verdicts_and_cut_thresholds():
    settings = ChainingSettings(threshold=0.5, max_size=5, max_gather=10, cut_steps=3)
    assert cut_thresholds(settings) == [0.75, 0.875, 0.9375]
    assert verdict(4, 6, settings, last=False) is None            # small and dense: kept
    assert verdict(6, 15, settings, last=False) == "resplit"      # over max_size, fits on a worker
    assert verdict(11, 55, settings, last=False) == "cut"         # over max_gather: cut further
    assert verdict(11, 55, settings, last=True) == "too_large"    # no step left: kept as it is


def test_level_edges_and_edge_counts_of_a_list():
    """A list of pairs -> an edge at every level whose threshold a pair reaches (scores on and just below each
    threshold), and per label the edges at the threshold."""
    from transforms.chaining import _edge_counts, _level_edges
    thresholds = cut_thresholds(ChainingSettings(threshold=0.5, cut_steps=3))  # 0.75, 0.875, 0.9375
    scores = [0.1, 0.5, 0.75, 0.75 - 1e-9, 0.875, 0.9, 0.9375, 1.0]
    pairs = [ScoredPair(i, i + 100, score, None, "lexical") for i, score in enumerate(scores)]
    expected = [((level, p.id_a), (level, p.id_b)) for p in pairs
                for level, cut_at in enumerate(thresholds, 1) if p.score >= cut_at]
    assert _level_edges(pairs, thresholds) == expected
    assert {a[1] for a, _ in expected} == {2, 4, 5, 6, 7} and len(expected) == 1 + 2 + 2 + 3 + 3
    labelled = [("x", p) for p in pairs[:4]] + [("y", p) for p in pairs[4:]]
    assert dict(_edge_counts(labelled, 0.5)) == {"x": 3, "y": 4}  # 0.5 is an edge, 0.1 not


def _random_scores(nodes: int, degree: int, seed: int) -> dict:
    rng = random.Random(seed)
    scores = {}
    for a in range(nodes):
        for _ in range(degree):
            b = rng.randrange(nodes)
            if a != b:
                scores[(min(a, b), max(a, b))] = round(rng.uniform(0.3, 1.0), 2)  # ties on purpose
    return scores


def _pieces_as_the_search_chooses(scores: dict, thresholds: list, max_gather: int) -> dict:
    """{node: (piece, threshold of its level)} by the distributed cut's rule: the components of every level's
    (level, node) graph, then `_choose_piece` for each node."""
    found = connected_components(((level, a), (level, b)) for (a, b), score in scores.items()
                                 for level, cut_at in enumerate(thresholds, 1) if score >= cut_at)
    sizes = collections.Counter(found.values())
    pieces = {}
    for (level, node), root in found.items():
        pieces.setdefault(node, []).append((level, root[1], sizes[root]))
    routes = {}
    for node, its in pieces.items():
        outputs = list(_choose_piece((node, {"label": ["c"], "piece": its}), max_gather, thresholds))
        assert outputs[0] == (outputs[1].value[1][0], node) and outputs[1].tag == "route"
        routes[node] = outputs[1].value[1]
    return routes


@pytest.mark.parametrize("steps", [1, 3, 6])
@pytest.mark.parametrize("max_gather", [1, 4, 25, 400, 10**6])
@pytest.mark.parametrize("as_text", [False, True])
def test_pieces_on_one_worker_equal_the_distributed_cut(steps, max_gather, as_text):
    """Random graphs with tied scores, some below the first cut level: every node with an edge at the first
    level gets the piece (and level) the component search and `_choose_piece` give it (text ids sort
    otherwise); and a pair is found inside a piece, by its end a's route alone or by b's too, exactly when its
    two ends share a piece."""
    thresholds = cut_thresholds(ChainingSettings(threshold=0.5, cut_steps=steps))
    name = (lambda n: f"q{n}") if as_text else (lambda n: n)
    for seed in range(3):
        scores = {(name(a), name(b)): score for (a, b), score in _random_scores(400, 2 + seed, seed).items()}
        expected = _pieces_as_the_search_chooses(scores, thresholds, max_gather)
        ends_a, ends_b, values = (np.array(column, dtype=object if as_text and i < 2 else None)
                                  for i, column in enumerate(zip(*((a, b, s) for (a, b), s in scores.items()))))
        nodes, pieces, levels = cut_pieces(ends_a, ends_b, values.astype(float), thresholds, max_gather)
        routes = {node: (piece, thresholds[level - 1] if level else None)
                  for node, piece, level in zip(nodes, pieces, levels)}
        assert routes == expected
        assert len(set(pieces)) > (1 if max_gather < 400 else 0)
        assert all(type(node) is type(name(0)) for node in nodes + pieces)

        routes.update({n: (n, None) for pair in scores for n in pair if n not in routes})  # alone below the first
        inside, asked_b = set(), 0
        for (a, b), score in scores.items():
            pair = ScoredPair(a, b, score, None, "lexical")
            for found in _piece_end_a(pair, routes[a]):
                if getattr(found, "tag", None) == "end_b":
                    asked_b += 1
                    found = next(iter(_piece_end_b(found.value, routes[b])), None)
                if found is not None:
                    inside.add((a, b))
                    assert found == (routes[a][0], pair)
        assert inside == {(a, b) for a, b in scores if routes[a][0] == routes[b][0]}
        assert asked_b < len(scores)


def _judged_as_the_search_does(pairs: list, settings: ChainingSettings) -> tuple:
    """What the distributed judging and cut make of these pairs, by their rules one element at a time: the
    components of the edges (`connected_components`) judged by `verdict`; those to cut in the pieces
    `_choose_piece` gives (a node with no pair at the first level alone), judged at the last level. -> ({node:
    label} of the groups kept with two or more nodes, {(label, Edge)} inside them, {(label, node)} and {(label,
    pair)} of the components and pieces to re-split, Counter of verdicts)."""
    threshold, thresholds = settings.threshold, cut_thresholds(settings)
    kept, edges, nodes, inside, counts = {}, set(), set(), set(), collections.Counter()

    def judge(group: dict, pairs: list, last: bool) -> list:
        members, within = collections.defaultdict(list), collections.defaultdict(list)
        for node, label in group.items():
            members[label].append(node)
        for p in pairs:
            if p.id_a in group and group[p.id_a] == group.get(p.id_b):
                within[group[p.id_a]].append(p)
        cut = []
        for label, its in members.items():
            found = verdict(len(its), sum(p.score >= threshold for p in within[label]), settings, last)
            counts[found] += found is not None
            if found in (None, "too_large"):
                if len(its) > 1:  # a node alone in its group has no label
                    kept.update((n, label) for n in its)
                edges.update((label, Edge(p.id_a, p.id_b, p.score, p.source)) for p in within[label]
                             if p.score >= threshold)
            elif found == "resplit":
                nodes.update((label, n) for n in its)
                inside.update((label, p) for p in within[label])
            else:
                cut += within[label]
        return cut

    cut = judge(connected_components((p.id_a, p.id_b) for p in pairs if p.score >= threshold), pairs,
                not thresholds)
    if cut:
        routes = _pieces_as_the_search_chooses({(p.id_a, p.id_b): p.score for p in cut}, thresholds,
                                               settings.max_gather)
        judge({n: routes.get(n, (n, None))[0] for p in cut for n in (p.id_a, p.id_b)}, cut, True)
    return kept, edges, nodes, inside, +counts


class _Counter:
    def __init__(self):
        self.count = 0

    def inc(self, n: int = 1):
        self.count += n


def _one_worker(lists: list, settings: ChainingSettings) -> tuple:
    """`_judge_on_one_worker` over scored batches as `PairColumns` -> as `_judged_as_the_search_does`; no node
    is labelled twice, no edge or pair given twice."""
    gathered = pickle.loads(pickle.dumps((None, [pair_columns(pairs) for pairs in lists])))
    counters = {name: _Counter() for name in ("resplit", "cut", "too_large")}
    kept, given = {}, collections.defaultdict(list)
    for found in _judge_on_one_worker(gathered, settings, cut_thresholds(settings), counters):
        if getattr(found, "tag", None) is None:
            assert found[0] not in kept
            kept[found[0]] = found[1]
        else:
            given[found.tag].append(found.value)
    assert all(len(set(values)) == len(values) for values in given.values())
    return (kept, *(set(given[tag]) for tag in ("edges", "resplit_nodes", "resplit_pairs")),
            +collections.Counter({name: counter.count for name, counter in counters.items()}))


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("max_gather", [4, 25, 10**6])
@pytest.mark.parametrize("as_text", [False, True])
def test_one_worker_judges_and_cuts_the_components_as_the_distributed_search(steps, max_gather, as_text,
                                                                           monkeypatch):
    """Random graphs with tied scores, some below the threshold and the cut levels, in several batches, with
    sources, None similarities and reused pairs: one worker keeps, re-splits and cuts exactly the groups,
    nodes and pairs that the distributed judging and cut do, each pair the record it was (made 7 at a time
    here), and counts the same verdicts."""
    monkeypatch.setattr("transforms.chaining.OUTPUT_CHUNK", 7)
    settings = ChainingSettings(threshold=0.5, max_size=6, min_density=0.7, max_gather=max_gather, cut_steps=steps,
                                one_worker_pairs=10**6)
    name = (lambda n: f"q{n}") if as_text else (lambda n: n)
    seen = collections.Counter()
    for seed in range(2):
        rng = random.Random(seed)
        scores = _random_scores(1500, 1 + seed, seed)
        cliques = (itertools.combinations(range(start, start + 6), 2) for start in range(2000, 2600, 6))
        scores.update({pair: round(rng.uniform(0.3, 1.0), 2)  # cliques of 6 with non-edges: density decides
                       for pairs in cliques for pair in pairs})
        pairs = [ScoredPair(name(a), name(b), score, rng.choice([None, round(rng.random(), 3)]),
                            rng.choice(["lexical", "lexical,static", "resplit"]), rng.random() < 0.2)
                 for (a, b), score in scores.items()]
        expected = _judged_as_the_search_does(pairs, settings)
        found = _one_worker([pairs[at:at + 700] for at in range(0, len(pairs), 700)], settings)
        assert found[0] == expected[0]
        assert found[1:] == expected[1:]
        assert all(type(node) is type(name(0)) for item in found[0].items() for node in item)
        assert all(type(p.similarity) in (float, type(None)) and type(p.reused) is bool for _, p in found[3])
        seen.update(found[4])
        seen.update(kept=len(found[0]) > len(set(found[0].values())), edges=len(found[1]) > 0)
    assert seen["kept"] and seen["edges"] and seen["resplit"]
    assert (seen["cut"] > 0) == (max_gather < 10**6)
    assert seen["too_large"] > 0 or max_gather > 4  # pieces still too large after the last cut, kept whole


def test_the_one_worker_judge_holds_at_most_its_bound():
    pairs = [ScoredPair(a, a + 1, score, 0.5, "lexical") for a, score in ((1, 0.9), (2, 0.95), (3, 0.4))]
    settings = ChainingSettings(threshold=0.5, one_worker_pairs=3)
    kept, edges, nodes, inside, counts = _one_worker([pairs], settings)
    assert kept == {1: 1, 2: 1, 3: 1} and not nodes and not inside and not counts  # 4 has no edge: no group
    assert edges == {(1, Edge(1, 2, 0.9, "lexical")), (1, Edge(2, 3, 0.95, "lexical"))}
    with pytest.raises(QdedupError, match="more than 3 scored pairs.*--component-rounds"):
        _one_worker([pairs, pairs[:1]], settings)


@pytest.mark.parametrize("budget", [1, 50, 5000])
def test_bounded_missing_pairs_equal_the_unbounded_ones(budget):
    scores = _random_scores(300, 6, budget)
    unbounded = missing_pairs(scores, 0.5, 10**9, 32)  # never more than 2 x budget candidates: no cut made
    assert len(unbounded) > 5000
    assert missing_pairs(scores, 0.5, budget, 32) == unbounded[:budget]


def test_missing_pairs_of_a_3000_node_component_hold_about_the_budget():
    """The former implementation held every friend-of-a-friend candidate: 320 MB here."""
    scores = _random_scores(3000, 10, 7)
    found, peak = peak_bytes(lambda: missing_pairs(scores, 0.5, 5000, 32))
    assert len(found) == 5000
    assert peak < 30_000_000, peak


def _chained_groups(groups: int, size: int):
    """`groups` groups of `size` nodes chained into one component by 0.6 links: most complete at 0.95,
    every tenth a path at 0.95 (sparse: re-split)."""
    scores = {}
    for g in range(groups):
        members = range(g * size, (g + 1) * size)
        if g % 10:
            scores.update({pair: 0.95 for pair in itertools.combinations(members, 2)})
        else:
            scores.update({(m, m + 1): 0.95 for m in members[:-1]})
        if g:
            scores[(g * size - 1, g * size)] = 0.6
    return scores


def _model_by_group(size: int):
    return lambda a, b: 0.9 if a // size == b // size else 0.05


def _reference_labels(scores: dict, settings: ChainingSettings, model) -> dict:
    """Chaining control on one machine: cut at rising thresholds until the pieces fit, then re-split."""
    labels = {}
    todo = [(sorted({n for pair in scores for n in pair}), scores)]
    for step, cut_at in enumerate([None] + cut_thresholds(settings)):
        pieces = []
        for nodes, pairs in todo:
            if cut_at is None:
                found = connected_components(p for p, s in pairs.items() if s >= settings.threshold)
            else:
                found = connected_components(p for p, s in pairs.items() if s >= cut_at)
            for node in nodes:
                found.setdefault(node, node)
            for root in sorted(set(found.values())):
                members = [n for n in nodes if found[n] == root]
                inside = {p: s for p, s in pairs.items() if found[p[0]] == root and found[p[1]] == root}
                pieces.append((members, inside))
        todo = []
        last = step == settings.cut_steps
        for members, inside in pieces:
            edges = sum(s >= settings.threshold for s in inside.values())
            found = verdict(len(members), edges, settings, last)
            if found in (None, "too_large"):
                labels.update((n, min(members)) for n in members)
            elif found == "resplit":
                extra = {p: model(*p) for p in missing_pairs(inside, settings.threshold, settings.pair_budget,
                                                            settings.fanout)}
                labels.update(average_linkage(members, {**inside, **extra}, settings.threshold))
            else:
                todo.append((members, inside))
    return labels


@pytest.mark.slow
@pytest.mark.parametrize("one_worker", [0, 10**6])
def test_a_10k_node_component_is_cut_then_re_split_as_on_one_machine(tmp_path, one_worker):
    size = 10
    scores = _chained_groups(1000, size)
    settings = ChainingSettings(threshold=0.5, max_gather=1000, pair_budget=20, one_worker_pairs=one_worker)
    model = _model_by_group(size)
    expected = _reference_labels(scores, settings, model)
    # The reference itself: the 0.6 links are cut, no group spans two true groups, dense groups stay whole
    # (path-shaped ones are re-split on their path and friend-of-friend pairs alone, so some split).
    assert len(expected) == 10_000
    assert all(expected[n] // size == n // size for n in expected)
    assert all(len({expected[n] for n in range(g * size, (g + 1) * size)}) == 1 for g in range(1000) if g % 10)

    labels, counters = _split_chains(scores, 10_000, settings, _DictScorer(model), tmp_path)
    assert labels == expected
    assert counters["components_cut"] == 1 and counters.get("components_too_large", 0) == 0
    assert counters["components_resplit"] == 100  # the path-shaped groups


@pytest.mark.parametrize("one_worker", [0, 10**6])
def test_a_piece_still_too_large_after_the_last_cut_is_kept_whole_and_counted(tmp_path, one_worker):
    """30 questions all scoring 0.999 together, 10 more chained to them at 0.6; a worker may gather 10."""
    core = {pair: 0.999 for pair in itertools.combinations(range(30), 2)}
    tail = {(i, i + 1): 0.6 for i in range(29, 39)}
    scores = {**core, **tail}
    settings = ChainingSettings(threshold=0.5, max_size=20, max_gather=10, cut_steps=2, one_worker_pairs=one_worker)
    labels, counters = _split_chains(scores, 40, settings, _DictScorer(), tmp_path)
    assert labels == {**{n: 0 for n in range(30)}, **{n: n for n in range(30, 40)}}  # the tail falls off alone
    assert counters["components_cut"] == 1 and counters["components_too_large"] == 1


@pytest.mark.parametrize("one_worker, runner_args", [
    (0, ()), (10**6, ()), pytest.param(10**6, MULTI_PROCESSING, marks=pytest.mark.slow)])
def test_a_node_too_crowded_at_its_highest_edge_level_stands_alone_above_it(tmp_path, one_worker, runner_args):
    """12 questions all scoring 0.8 together and 10 more scoring 0.9 together, chained at 0.6; a worker may
    gather 10, and more than 5 are re-split. At 0.75 the twelve still make one piece too large; at 0.875
    they have no edge left and each is a piece of its own, while the ten, which fit at 0.75, stay one
    group: as on one machine."""
    loose = {pair: 0.8 for pair in itertools.combinations(range(12), 2)}
    tight = {pair: 0.9 for pair in itertools.combinations(range(12, 22), 2)}
    scores = {**loose, **tight, (11, 12): 0.6}
    settings = ChainingSettings(threshold=0.5, max_size=5, max_gather=10, cut_steps=2, one_worker_pairs=one_worker)
    expected = _reference_labels(scores, settings, _model_by_group(100))
    assert expected == {**{n: n for n in range(12)}, **{n: 12 for n in range(12, 22)}}
    labels, counters = _split_chains(scores, 22, settings, _DictScorer(), tmp_path, runner_args)  # pickled too
    assert labels == expected
    assert counters["components_cut"] == 1 and counters.get("components_too_large", 0) == 0
