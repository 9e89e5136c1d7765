"""`qdedup explain`: the widest path (property test against every simple path of small random graphs), and the
command on the reference run: a row's path to its canonical member, a rejected row, and why two rows are not
grouped (below the threshold, never a candidate, cut by chaining control)."""
from __future__ import annotations

import itertools
import json
import random

import pytest

from pipelines.cli import main
from tests.helpers import read_part
from transforms.explain import weakest_link, widest_path, widest_paths_to
from transforms.graphs import connected_components
from transforms.records import Edge


def _simple_paths(edges: list[Edge], start, end, threshold: float):
    """Every simple path from start to end over edges >= threshold, as node lists (brute force)."""
    best = {}
    for edge in edges:
        if edge.score >= threshold:
            key = frozenset((edge.a, edge.b))
            best[key] = max(best.get(key, edge.score), edge.score)
    neighbours: dict = {}
    for key in best:
        a, b = tuple(key)
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)

    def walk(path):
        if path[-1] == end:
            yield path
            return
        for other in sorted(neighbours.get(path[-1], ())):
            if other not in path:
                yield from walk(path + [other])
    yield from walk([start])


@pytest.mark.parametrize("seed", range(40))
def test_widest_paths_to_one_node_are_each_nodes_widest_path(seed):
    """The pipeline's one-pass version gives, for every node, what `widest_path` gives for it alone."""
    rng = random.Random(seed)
    nodes = list(range(rng.randint(2, 25)))
    edges = [Edge(a, b, round(rng.random(), 1), "lexical") for a, b in itertools.combinations(nodes, 2)
             if rng.random() < 0.25]
    end = rng.choice(nodes)
    paths = widest_paths_to(edges, end, 0.3)
    for node in nodes:
        alone = widest_path(edges, node, end, 0.3)
        assert paths.get(node) == alone, (node, end)


@pytest.mark.parametrize("seed", range(60))
def test_the_widest_path_is_widest_then_shortest_then_lowest_ids(seed):
    rng = random.Random(seed)
    nodes = list(range(rng.randint(2, 7)))
    edges = [Edge(a, b, round(rng.random(), 1), "lexical") for a, b in itertools.combinations(nodes, 2)
             if rng.random() < 0.6]  # rounded: ties in score, to exercise the tie-breaks
    start, end = rng.sample(nodes, 2)
    found = widest_path(edges, start, end, 0.3)
    score = {frozenset((e.a, e.b)): e.score for e in edges}
    candidates = [(min(score[frozenset(p)] for p in zip(path, path[1:])), path)
                  for path in _simple_paths(edges, start, end, 0.3)]
    if not candidates:
        assert found is None
        return
    width = max(w for w, _ in candidates)
    expected = min((len(path), path) for w, path in candidates if w == width)[1]
    assert [found[0].a] + [e.b for e in found] == expected
    for edge in found:  # every edge exists with its score, at or above the threshold
        assert score[frozenset((edge.a, edge.b))] == edge.score >= 0.3
    assert min(e.score for e in found) == width


@pytest.mark.parametrize("seed", range(60))
def test_the_weakest_link_is_the_lowest_scoring_bridge(seed):
    """Against brute force: a pair is a bridge when removing it leaves more components (a pair given twice
    never is)."""
    rng = random.Random(seed)
    nodes = list(range(rng.randint(2, 9)))
    edges = [Edge(a, b, round(rng.random(), 2), "lexical") for a, b in itertools.combinations(nodes, 2)
             if rng.random() < 0.35]
    edges += [edges[0]] if edges and seed % 3 == 0 else []  # a pair stored twice

    def components(kept):
        labels = connected_components((e.a, e.b) for e in kept if e.score >= 0.3)
        return len(set(labels.values())) + len({n for e in edges for n in (e.a, e.b)} - set(labels))

    bridges = [e for i, e in enumerate(edges) if e.score >= 0.3
               and components(edges[:i] + edges[i + 1:]) > components(edges)]
    found = weakest_link(edges, 0.3)
    if not bridges:
        assert found is None
    else:
        assert found in bridges and found.score == min(e.score for e in bridges)


def test_a_node_to_itself_is_an_empty_path():
    assert widest_path([Edge(1, 2, 0.9, "lexical")], 1, 1, 0.5) == []


@pytest.fixture(scope="module")
def run_parts(reference_run):
    out, report = reference_run
    groups = {row["id"]: row for row in read_part(out, "groups")}
    return out, report, groups, read_part(out, "pairs")


def _explain(out, *ids, capsys):
    assert main(["explain", "--run", str(out), *map(str, ids), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.e2e
def test_a_rows_path_to_its_canonical_member_uses_scored_pairs_above_the_threshold(run_parts, capsys):
    out, report, groups, pairs = run_parts
    threshold = report["configuration"]["threshold"]
    score = {frozenset((p["id_a"], p["id_b"])): p["score"] for p in pairs}
    rows = [r for r in groups.values() if r["match_kind"] == "model" and r["id"] != r["canonical_id"]]
    assert len(rows) > 5
    for row in rows[:5]:
        found = _explain(out, row["id"], capsys=capsys)
        link = found["to_canonical"]
        assert link["joined"]
        steps = link["steps"]
        assert steps[0]["from"] == row["id"] and steps[-1]["to"] == row["canonical_id"]
        for step, following in zip(steps, steps[1:]):
            assert step["to"] == following["from"]
        scored = [s for s in steps if s["kind"] == "scored"]
        assert scored
        for step in scored:
            assert score[frozenset((step["from"], step["to"]))] == step["score"] >= threshold
            assert groups[step["from"]]["group_id"] == groups[step["to"]]["group_id"] == row["group_id"]
        assert link["lowest_score"] == min(s["score"] for s in scored)
        weakest = found["weakest_links"][str(row["group_id"])]  # JSON keys are text
        if weakest:  # a pair of the group whose removal splits the group's pairs above the threshold
            assert score[frozenset((weakest["a"], weakest["b"]))] == weakest["score"] >= threshold


@pytest.mark.e2e
def test_a_rejected_row_is_explained_by_its_reason(run_parts, capsys):
    out = run_parts[0]
    assert main(["explain", "--run", str(out), "2001"]) == 0
    assert "row 2001: rejected: null_text: the text is null" in capsys.readouterr().out
    assert main(["explain", "--run", str(out), "999999"]) == 2
    assert "id 999999: no such row in this run" in capsys.readouterr().err


@pytest.mark.e2e
def test_two_rows_in_different_groups_get_the_reason(run_parts, capsys):
    out, report, groups, pairs = run_parts
    threshold = report["configuration"]["threshold"]
    apart = [p for p in pairs if groups[p["id_a"]]["group_id"] != groups[p["id_b"]]["group_id"]]
    below = next(p for p in apart if p["score"] < threshold)
    cut = next(p for p in apart if p["score"] >= threshold)
    scored = {frozenset((p["id_a"], p["id_b"])) for p in pairs}
    singles = sorted(i for i, r in groups.items() if r["group_size"] == 1)
    never = next((a, b) for a, b in itertools.combinations(singles, 2) if frozenset((a, b)) not in scored)
    reasons = {name: " ".join(_explain(out, a, b, capsys=capsys)["not_grouped"])
               for name, (a, b) in {"below": (below["id_a"], below["id_b"]), "cut": (cut["id_a"], cut["id_b"]),
                                    "never": never}.items()}
    assert f"scored {below['score']:.4f}" in reasons["below"] and "below the threshold" in reasons["below"]
    assert "chaining control split their component" in reasons["cut"]
    assert reasons["never"].startswith("never a candidate")


@pytest.mark.e2e
def test_every_run_writes_the_explanations_qdedup_explain_gives(reference_run):
    """explain/: one row per row of a multi-row group; each path runs from the row's text to the canonical
    member's over pairs of pairs/ at or above the threshold, and is the path and weakest link that `qdedup
    explain` finds for that row."""
    from pipelines.explain import Run, explain

    out, report = reference_run
    threshold = report["configuration"]["threshold"]
    rows = {r["id"]: r for r in read_part(out, "explain")}
    groups = {r["id"]: r for r in read_part(out, "groups")}
    rep_of = {r["id"]: r["rep_id"] for r in read_part(out, "state/members")}
    scores = {frozenset((p["id_a"], p["id_b"])): (p["score"], p["source"]) for p in read_part(out, "pairs")}
    assert set(rows) == {i for i, g in groups.items() if g["group_size"] > 1}
    kinds = {r["kind"] for r in rows.values()}
    assert {"canonical", "exact", "path"} <= kinds and "too_large" not in kinds
    run = Run(str(out))
    for row_id, row in sorted(rows.items()):
        canonical = groups[row_id]["canonical_id"]
        assert (row["group_id"], row["canonical_id"]) == (groups[row_id]["group_id"], canonical)
        if row["kind"] == "path":
            ids = row["path_ids"]
            assert ids[0] == rep_of[row_id] and ids[-1] == rep_of[canonical]
            for (a, b), score, source in zip(zip(ids, ids[1:]), row["path_scores"], row["path_sources"]):
                assert scores[frozenset((a, b))] == (score, source) and score >= threshold
            assert row["lowest_score"] == min(row["path_scores"])
        else:
            assert row["path_ids"] == [] and (row["kind"] == "canonical") == (row_id == canonical)
        if row_id % 3 == 0 or row["kind"] == "path":  # the command agrees (every path, a third of the rest)
            found = explain(run, [row_id])
            steps = [s for s in found.get("to_canonical", {"steps": []})["steps"] if s["kind"] == "scored"]
            assert [s["from"] for s in steps] + [s["to"] for s in steps[-1:]] == row["path_ids"]
            link = found["weakest_links"][row["group_id"]]
            assert (None if link is None else (link["a"], link["b"], link["score"])) == \
                ((row["weakest_id_a"], row["weakest_id_b"], row["weakest_score"])
                 if row["weakest_id_a"] is not None else None)


@pytest.mark.e2e
def test_a_group_with_more_edges_than_explain_gathers_is_marked_and_counted(corpus, tiny_model, tmp_path):
    from tests.helpers import run_qdedup

    directory, _ = corpus
    report = run_qdedup(directory / "*.parquet", tmp_path / "out", tiny_model, "--explain-max-edges", "1")
    rows = read_part(tmp_path / "out", "explain")
    large = {r["group_id"] for r in rows if r["kind"] == "too_large"}
    assert large and report["explain_groups_too_large"] == len(large)
    assert all(r["path_ids"] == [] and r["weakest_id_a"] is None for r in rows if r["kind"] == "too_large")
    assert {r["kind"] for r in rows if r["group_id"] not in large} <= {"canonical", "exact", "path"}
