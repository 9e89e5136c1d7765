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
    CUT_LIST_PAIRS,
    ChainingSettings,
    SplitChains,
    _choose_piece,
    _cut_columns,
    _finish_cut,
    _piece_end_a,
    _piece_end_b,
    average_linkage,
    cut_pieces,
    cut_thresholds,
    missing_pairs,
    needs_resplit,
    verdict,
)
from transforms.cluster import ConnectedComponents, EdgeScores
from transforms.errors import QdedupError
from transforms.graphs import connected_components
from transforms.records import CandidatePair, ScoredPair, pairs_in
from transforms.score import Scored

A, B, CHAIN = [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]


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


def _edge_counts_at(scores: dict, threshold: float, nodes) -> list[tuple]:
    """The edge counts `ConnectedComponents` gives with its labels, for one component of these nodes: here
    spread over several nodes, as bundles give them."""
    edges = [pair for pair, score in scores.items() if score >= threshold]
    return [(pair[0], 1) for pair in edges[1:]] + ([(min(nodes), 1)] if edges else [])


def _split_chains(scores: dict, nodes: int, settings: ChainingSettings, scorer, tmp_path, runner_args=()):
    """SplitChains over one component of nodes 0..nodes-1 with these scored pairs: (labels, qdedup counters).

    Also checks the edge scores it gives per group against those of its labels over every scored pair."""
    out = tmp_path / "labels.pickle"
    pipeline = beam.Pipeline(options=PipelineOptions([*RUNNER_ARGS, *runner_args]))
    components = pipeline | "C" >> beam.Create([(n, 0) for n in range(nodes)])
    edges = pipeline | "EdgeCounts" >> beam.Create(_edge_counts_at(scores, settings.threshold, range(nodes)))
    scored = pipeline | "S" >> beam.Create(_in_batches([ScoredPair(a, b, s, 0.5, "lexical")
                                                        for (a, b), s in scores.items()]))
    chained = (components, edges, scored) | SplitChains(settings, scorer, ConnectedComponents(2, 10**6),
                                                 _texts(pipeline, range(nodes)))
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
    expected = _edge_scores_of_groups(found["labels"], {**scores, **found["extra"]}, settings.threshold)
    assert found["edges"].keys() == expected.keys()
    assert all(found["edges"][label] == pytest.approx(expected[label]) for label in expected)
    return found["labels"], counters


@pytest.mark.parametrize("density", [0.5, 0.0])
def test_split_chains_in_beam_scores_missing_pairs_and_splits(tmp_path, density):
    scores = _two_groups_and_a_weak_chain()
    # Blocking proposed only part of group A: a sparse component that needs its missing pairs scored.
    del scores[(1, 4)], scores[(2, 4)]
    nodes = A + B + CHAIN
    out = tmp_path / "labels.txt"
    with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as p:
        components = p | "C" >> beam.Create([(n, 1) for n in nodes])
        edges = p | "EdgeCounts" >> beam.Create(_edge_counts_at(scores, 0.5, nodes))
        scored = p | "S" >> beam.Create(_in_batches([ScoredPair(a, b, s, 0.5, "lexical")
                                                     for (a, b), s in scores.items()]))
        result = ((components, edges, scored)
                  | SplitChains(ChainingSettings(min_density=density, max_size=100), _DictScorer(),
                                ConnectedComponents(3, 10**6), _texts(p, nodes)))
        ((result.labels | beam.Map(repr)), (result.scored | beam.FlatMap(pairs_in)
                                                    | beam.Map(lambda x: "extra " + repr(tuple(x[:3])))))\
            | beam.Flatten() | beam.combiners.ToList() | beam.Map(lambda lines: out.write_text("\n".join(lines)))
    lines = out.read_text().splitlines()
    labels = dict(eval(line) for line in lines if not line.startswith("extra"))
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


def _one_worker_cut(lists: list, thresholds: list, max_gather: int, max_pairs: int) -> tuple[dict, list]:
    """`_finish_cut` over lists of pairs as `CutColumns` -> ({node: piece}, [(piece, pair) inside a piece])."""
    gathered = (None, [columns for pairs in lists for columns in _cut_columns(pairs)])
    pickle.loads(pickle.dumps(gathered))  # as it travels
    placed, inside = {}, []
    for found in _finish_cut(gathered, thresholds, max_gather, max_pairs):
        if getattr(found, "tag", None) == "inside":
            assert 0 < len(found.value) <= CUT_LIST_PAIRS
            inside += found.value
        else:
            piece, node = found
            assert node not in placed
            placed[node] = piece
    return placed, inside


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("max_gather", [4, 25, 10**6])
@pytest.mark.parametrize("as_text", [False, True])
def test_the_one_worker_cut_places_every_node_and_hands_on_the_pairs_inside_each_piece(steps, max_gather, as_text):
    """Random graphs with tied scores, some below the first cut level, in several lists, with sources, None
    similarities and reused pairs: every end of a pair gets the piece the distributed cut gives it (a piece of
    its own where it has no pair at the first level), and exactly the pairs whose ends share a piece come back,
    each the record it was, in lists of at most `CUT_LIST_PAIRS`."""
    thresholds = cut_thresholds(ChainingSettings(threshold=0.5, cut_steps=steps))
    name = (lambda n: f"q{n}") if as_text else (lambda n: n)
    for seed in range(2):
        scores = {(name(a), name(b)): score for (a, b), score in _random_scores(1500, 2 + seed, seed).items()}
        rng = random.Random(seed)
        pairs = [ScoredPair(a, b, score, rng.choice([None, round(rng.random(), 3)]),
                            rng.choice(["lexical", "lexical,static", "resplit"]), rng.random() < 0.2)
                 for (a, b), score in scores.items()]
        routes = _pieces_as_the_search_chooses(scores, thresholds, max_gather)
        expected = {node: piece for node, (piece, _) in routes.items()}
        expected.update({n: n for pair in scores for n in pair if n not in expected})
        alone = {n for n in expected if routes.get(n, (n, None))[1] is None}
        placed, inside = _one_worker_cut([pairs[at:at + 700] for at in range(0, len(pairs), 700)], thresholds,
                                         max_gather, len(pairs))
        assert placed == expected
        assert all(type(node) is type(name(0)) for item in placed.items() for node in item)
        assert sorted(inside, key=lambda found: found[1][:2]) == sorted(
            ((placed[p.id_a], p) for p in pairs if placed[p.id_a] == placed[p.id_b] and p.id_a not in alone),
            key=lambda found: found[1][:2])
        assert len(inside) > (CUT_LIST_PAIRS if max_gather == 10**6 else 0)  # several lists where all fit
        assert all(type(pair) is ScoredPair for _, pair in inside)
        assert all(type(pair.similarity) in (float, type(None)) and type(pair.reused) is bool for _, pair in inside)


def test_the_one_worker_cut_holds_at_most_its_bound():
    pairs = [ScoredPair(a, a + 1, score, 0.5, "lexical") for a, score in ((1, 0.9), (2, 0.95), (3, 0.4))]
    thresholds = [0.75, 0.875]
    placed, inside = _one_worker_cut([pairs, pairs[:1]], thresholds, 10, max_pairs=4)
    assert placed == {1: 1, 2: 1, 3: 1, 4: 4}  # 4 has no pair at the first level: a piece of its own
    assert inside == [(1, pairs[0]), (1, pairs[1]), (1, pairs[0])]
    with pytest.raises(QdedupError, match="more than 3 pairs.*--component-rounds"):
        _one_worker_cut([pairs, pairs[:1]], thresholds, 10, max_pairs=3)


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
    settings = ChainingSettings(threshold=0.5, max_gather=1000, pair_budget=20, cut_on_one_worker=one_worker)
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
    settings = ChainingSettings(threshold=0.5, max_size=20, max_gather=10, cut_steps=2, cut_on_one_worker=one_worker)
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
    settings = ChainingSettings(threshold=0.5, max_size=5, max_gather=10, cut_steps=2, cut_on_one_worker=one_worker)
    expected = _reference_labels(scores, settings, _model_by_group(100))
    assert expected == {**{n: n for n in range(12)}, **{n: 12 for n in range(12, 22)}}
    labels, counters = _split_chains(scores, 22, settings, _DictScorer(), tmp_path, runner_args)  # pickled too
    assert labels == expected
    assert counters["components_cut"] == 1 and counters.get("components_too_large", 0) == 0
