"""`qdedup run --existing`: extending a run with new questions equals running on everything."""
import json

import numpy as np
import pytest

from pipelines.cli import main
from tests.conftest import RUNNER_ARGS, lcqmc_pairs
from tests.test_pipeline import group_members, read_part, run_qdedup, write_questions
from transforms.embed import tfidf_vector
from transforms.normalize import normalize_text


def _partition(out):
    return {frozenset(members) for members in group_members(out).values()}


def _variants(base: str) -> list[str]:
    """A question, an exact duplicate of it, and three light edits: one duplicate group per base."""
    mid = len(base) // 2
    return [base, base + "？", base + "呢", base[:mid] + base[mid + 1:], "请问" + base]


def cluster_corpus(bases: int = 40) -> list[tuple]:
    """LCQMC questions far apart (cosine < 0.3 on plain character n-grams), each with its variants.

    Within a group the lexical similarity is >= 0.71, across groups <= 0.30, under the idf of the
    whole corpus and of any part of it: candidate generation cannot hinge on the idf, which an
    extension keeps from the run it extends while a full run recomputes it.
    """
    chosen, vectors = [], []
    flat = np.ones(1024, np.float32)
    for a, b, _ in lcqmc_pairs():
        for text in (normalize_text(a), normalize_text(b)):
            vector = tfidf_vector(text, flat)
            if len(text) >= 8 and len(chosen) < bases and all(vector @ w < 0.3 for w in vectors):
                chosen.append(text)
                vectors.append(vector)
    rows = [(10_000 + 10 * g + j, text) for g, base in enumerate(chosen) for j, text in enumerate(_variants(base))]
    return rows


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    """The corpus dealt into three parts, so that groups straddle them; a full run, and a run extended twice."""
    root = tmp_path_factory.mktemp("incremental")
    rows = cluster_corpus()
    parts = [[r for i, r in enumerate(rows) if i % 5 in (0, 1, 3)], [r for i, r in enumerate(rows) if i % 5 == 2],
             [r for i, r in enumerate(rows) if i % 5 == 4] + [(99_001, None), (99_002, "  ")]]
    for i, part in enumerate(parts):
        write_questions(part, root / "all" / f"{i}.parquet")
        write_questions(part, root / f"part{i}" / "q.parquet")
    flags = ["--min-similarity=0.5"]
    reports = {"full": run_qdedup(root / "all" / "*.parquet", root / "full", tiny_model, *flags)}
    reports["old"] = run_qdedup(root / "part0" / "*.parquet", root / "old", tiny_model, *flags)
    reports["inc1"] = run_qdedup(root / "part1" / "*.parquet", root / "inc1", tiny_model, *flags,
                                 f"--existing={root / 'old'}")
    # The second extension runs in worker processes: what it reads from state/ must survive pickling.
    reports["inc2"] = run_qdedup(root / "part2" / "*.parquet", root / "inc2", tiny_model, *flags,
                                 f"--existing={root / 'inc1'}", "--direct_running_mode=multi_processing",
                                 "--direct_num_workers=2")
    reports["full_ids"] = run_qdedup(root / "all" / "*.parquet", root / "full_ids", tiny_model, *flags,
                                     f"--previous-groups={root / 'old' / 'groups'}")
    return root, rows + [(99_001, None), (99_002, "  ")], reports


def test_extended_twice_equals_the_full_run_with_fewer_pairs_scored(runs):
    root, rows, reports = runs
    full, old, inc1, inc2 = (reports[k] for k in ("full", "old", "inc1", "inc2"))
    assert _partition(root / "inc2") == _partition(root / "full")
    assert full["groups"] == inc2["groups"] and full["rows_out"] == inc2["rows_out"]
    extension_cost = sum(r["pairs_scored"] + r["resplit_pairs_scored"] for r in (inc1, inc2))
    full_cost = full["pairs_scored"] + full["resplit_pairs_scored"]
    assert 0 < extension_cost < full_cost
    # Each extension embedded and queried only the new questions, and kept the books balanced.
    assert inc2["new_representatives"] < inc2["representatives"]
    for report in (inc1, inc2):
        assert report["accounting_ok"] and report["rows_in"] + report["rows_existing"] == (
            report["rows_out"] + report["rows_rejected"])
    assert inc2["rows_existing"] == inc1["rows_out"]
    assert sum(r["rows_in"] for r in (old, inc1, inc2)) == full["rows_in"] == len(rows)


def test_extension_keeps_ids_like_a_full_run_given_the_previous_groups(runs):
    root, _, _ = runs
    full_ids = {r["id"]: r["group_id"] for r in read_part(root / "full_ids", "groups")}
    old_ids = {r["id"]: r["group_id"] for r in read_part(root / "old", "groups")}
    inc1 = {r["id"]: r["group_id"] for r in read_part(root / "inc1", "groups")}
    assert set(old_ids.values()) & set(inc1.values())
    # Groups untouched by the first extension keep their ids.
    untouched = {g for g in _partition(root / "old") if g in _partition(root / "inc1")}
    assert untouched and all(inc1[min(g)] == old_ids[min(g)] for g in untouched)
    # The second extension's ids agree with a full run handed the first run's groups wherever the
    # first run's ids are concerned (both are inherited by the same rule).
    inc2 = {r["id"]: r["group_id"] for r in read_part(root / "inc2", "groups")}
    kept = {gid for gid in old_ids.values() if gid in set(inc2.values()) and gid in set(full_ids.values())}
    assert kept
    for gid in kept:
        assert {i for i, g in inc2.items() if g == gid} == {i for i, g in full_ids.items() if g == gid}


def test_extension_rejects_reused_ids_and_changed_options(runs, tiny_model, tmp_path, capsys):
    root, rows, _ = runs
    write_questions([(rows[0][0], "一个新问题"), (999_999, "另一个新问题")], tmp_path / "new" / "q.parquet")
    report = run_qdedup(tmp_path / "new" / "*.parquet", tmp_path / "out", tiny_model, "--min-similarity=0.5",
                        f"--existing={root / 'old'}")
    rejected = read_part(tmp_path / "out", "rejected")
    assert [(json.loads(r["row"])["id"], r["reason"]) for r in rejected] == [(rows[0][0], "duplicate_id")]
    assert "--existing run" in rejected[0]["detail"]
    assert report["rows_in"] == 2 and report["new_representatives"] == 1 and report["accounting_ok"]
    argv = ["run", "--input", str(tmp_path / "new" / "*.parquet"), "--output", str(tmp_path / "out2"),
            "--scorer-model", tiny_model, f"--existing={root / 'old'}", "--min-similarity=0.5", "--top-k=5",
            *RUNNER_ARGS]
    assert main(argv) == 2
    assert "--top-k=10" in capsys.readouterr().err
    assert main(argv[:-2] + [f"--existing={tmp_path / 'nowhere'}", *RUNNER_ARGS]) == 2
    assert "no readable report.json" in capsys.readouterr().err


def test_extension_with_an_encoder_embedder_and_whitening(tiny_model, tmp_path):
    rows = cluster_corpus(12)
    old, new = rows[: len(rows) * 3 // 4], rows[len(rows) * 3 // 4:]
    write_questions(old, tmp_path / "old" / "q.parquet")
    write_questions(new, tmp_path / "new" / "q.parquet")
    flags = [f"--embedders=lexical,encoder:{tiny_model}", "--encoder-whiten", "--min-similarity=0.5"]
    run_qdedup(tmp_path / "old" / "*.parquet", tmp_path / "run_old", tiny_model, *flags)
    report = run_qdedup(tmp_path / "new" / "*.parquet", tmp_path / "run_new", tiny_model, *flags,
                        f"--existing={tmp_path / 'run_old'}")
    assert report["accounting_ok"] and report["rows_out"] == len(rows)
    known = {normalize_text(t) for _, t in old}
    assert report["new_representatives"] == len({normalize_text(t) for _, t in new} - known)
    # Both embedders' state was kept and extended: every representative has a vector of each kind.
    for kind in ("lexical", "encoder"):
        vectors = read_part(tmp_path / "run_new" / "state" / kind, "vectors")
        assert {v["id"] for v in vectors} == {r["id"] for r in read_part(tmp_path / "run_new" / "state",
                                                                         "representatives")}
    encoder_pairs = [p for p in read_part(tmp_path / "run_new", "pairs") if "encoder" in p["source"]]
    new_ids = {i for i, _ in new}
    assert any(p["id_a"] in new_ids or p["id_b"] in new_ids for p in encoder_pairs)
