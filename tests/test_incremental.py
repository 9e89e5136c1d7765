"""`qdedup run --existing`: an extension gives exactly what a full run with `--params-from` gives.

Extending PREV with rows B must equal `qdedup run --input A∪B --params-from PREV --previous-groups
PREV/groups`: the same groups (members, ids, canonical ids, match kinds), the same pairs with the
same scores. The corpus makes that hard on purpose: groups larger than --top-k (newcomers push old
pairs out of questions' k nearest), chaining control re-splitting components, several partitions
searched in blocks, three successive extensions (one in worker processes), new rows repeating known
texts with lower and higher ids.
"""
import json

import numpy as np
import pytest

from pipelines.cli import main
from tests.helpers import (
    RUNNER_ARGS,
    lcqmc_pairs,
    read_part,
    run_qdedup,
    write_questions,
)
from transforms.embed import tfidf_rows
from transforms.normalize import normalize_text
from transforms.vectors import to_dense

pytestmark = pytest.mark.e2e  # every test here runs qdedup end to end

# Small partitions and blocks, k below the group size, chaining control on components over 5 questions.
FLAGS = ["--min-similarity=0.4", "--top-k=3", "--partitions=3", "--max-block=40", "--resplit-size=5"]
MULTI = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]


def _variants(base: str) -> list[str]:
    """Ten texts around one question: an exact duplicate and light edits of it."""
    mid = len(base) // 2
    return [base, base + "？", base + "呢", base[:mid] + base[mid + 1:], "请问" + base, base + "啊",
            "我想知道" + base, base[:mid] + base[mid] + base[mid:], base + "吗", "请问一下" + base + "呢"]


def cluster_corpus(bases: int = 16) -> list[tuple]:
    """LCQMC questions far apart (cosine < 0.3 on plain character n-grams), each with ten variants."""
    chosen, vectors = [], []
    texts = [normalize_text(text) for a, b, _ in lcqmc_pairs() for text in (a, b)]
    for text, vector in zip(texts, tfidf_rows(texts, np.ones(1024, np.float32))):
        vector = to_dense(vector)
        if len(text) >= 8 and len(chosen) < bases and all(vector @ w < 0.3 for w in vectors):
            chosen.append(text)
            vectors.append(vector)
    return [(10_000 + 10 * g + j, text) for g, base in enumerate(chosen) for j, text in enumerate(_variants(base))]


def _parts(rows):
    """Yesterday and three nights. Night 1 reuses an id of yesterday's; night 2 repeats texts of yesterday under
    a lower and a higher id, and has a row without text."""
    parts = [[r for i, r in enumerate(rows) if i % 10 < 4], [r for i, r in enumerate(rows) if i % 10 in (4, 5, 6)],
             [r for i, r in enumerate(rows) if i % 10 in (7, 8)], [r for i, r in enumerate(rows) if i % 10 == 9]]
    parts[1] += [(rows[0][0], "一个新问题")]
    parts[2] += [(5, rows[0][1]), (99_999, rows[10][1]), (99_998, None)]
    return parts


@pytest.fixture(scope="module")
def nightly(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("nightly")
    parts = _parts(cluster_corpus())
    for night, part in enumerate(parts):
        write_questions(part, root / "in" / f"night{night}" / "q.parquet")
        for later in range(night, len(parts)):
            write_questions(part, root / "in" / f"upto{later}" / f"{night}.parquet")
    reports = {"ext0": run_qdedup(root / "in" / "night0" / "q.parquet", root / "ext0", tiny_model, *FLAGS)}
    for night in (1, 2, 3):
        runner = MULTI if night == 3 else []  # what an extension reads from state/ must survive pickling
        reports[f"ext{night}"] = run_qdedup(root / "in" / f"night{night}" / "q.parquet", root / f"ext{night}",
                                            tiny_model, *FLAGS, *runner, f"--existing={root / f'ext{night - 1}'}")
        previous = root / f"ext{night - 1}"
        reports[f"full{night}"] = run_qdedup(root / "in" / f"upto{night}" / "*.parquet", root / f"full{night}",
                                             tiny_model, *FLAGS, f"--params-from={previous}",
                                             f"--previous-groups={previous / 'groups'}")
    return root, parts, reports


def _groups(out) -> dict:
    return {r["id"]: (r["group_id"], r["canonical_id"], r["match_kind"], r["group_size"], r["group_since_run"])
            for r in read_part(out, "groups")}


def _pairs(out) -> dict:
    return {(p["id_a"], p["id_b"]): (p["score"], p["similarity"], p["source"]) for p in read_part(out, "pairs")}


@pytest.mark.parametrize("night", [1, 2, 3])
def test_each_extension_equals_the_full_run_with_the_parameters_it_extends(nightly, night):
    root, _, reports = nightly
    extension, full = root / f"ext{night}", root / f"full{night}"
    assert _groups(extension) == _groups(full)
    assert _pairs(extension) == _pairs(full)  # scores too: the same pairs are scored in the same batches
    lineage = sorted((r["group_id"], r["previous_group_id"], r["event"], r["rows_moved"])
                     for r in read_part(extension, "lineage"))
    assert lineage == sorted((r["group_id"], r["previous_group_id"], r["event"], r["rows_moved"])
                             for r in read_part(full, "lineage"))
    edges = {r["id"]: (r["min_edge_score"], r["mean_edge_score"]) for r in read_part(extension, "groups")}
    assert edges == {r["id"]: (r["min_edge_score"], r["mean_edge_score"]) for r in read_part(full, "groups")}
    explained = {r["id"]: r for r in read_part(extension, "explain")}
    assert explained and explained == {r["id"]: r for r in read_part(full, "explain")}  # the same paths, too
    for key in ("groups", "candidate_pairs", "resplit_pairs", "components_resplit", "pairs_total"):
        assert reports[f"ext{night}"][key] == reports[f"full{night}"][key], key


def test_the_corpus_exercises_what_could_make_them_differ(nightly):
    root, parts, reports = nightly
    # Groups larger than k, and newcomers pushing known pairs out of questions' k nearest.
    sizes = [r["group_size"] for r in read_part(root / "ext3", "groups")]
    assert max(sizes) > 3

    def blocking(out):
        return {pair for pair, (_, _, source) in _pairs(out).items() if source != "resplit"}
    assert any(blocking(root / f"ext{n - 1}") - blocking(root / f"ext{n}") for n in (1, 2, 3))
    # Chaining control re-split components, reusing some scores of earlier nights and scoring the rest.
    assert all(reports[f"ext{n}"]["components_resplit"] > 0 for n in (1, 2, 3))
    assert any(reports[f"ext{n}"]["resplit_pairs"] > reports[f"ext{n}"]["resplit_pairs_scored"] for n in (1, 2, 3))
    # Groups were joined and split by the newcomers.
    assert any(reports[f"ext{n}"]["lineage_merged"] for n in (1, 2, 3))
    assert any(reports[f"ext{n}"]["lineage_split"] for n in (1, 2, 3))
    assert reports["ext3"]["blocking_work_items"] > 3  # several partitions, searched in blocks
    # Partitions over --max-block were split by second-level centroids the first night; every later night
    # (and the --params-from runs) read them back from state/ and kept them, as they are.
    def sub_centroids(out):
        return sorted((r["partition"], r["index"], tuple(r["centroid"]))
                      for r in read_part(out / "state" / "lexical", "subcentroids"))
    first = sub_centroids(root / "ext0")
    assert first and all(sub_centroids(root / f"{run}{n}") == first for run in ("ext", "full") for n in (1, 2, 3))


def test_new_rows_repeating_known_texts_join_the_first_seen_representative(nightly):
    root, parts, reports = nightly
    members = {m["id"]: m["rep_id"] for m in read_part(root / "ext2" / "state", "members")}
    first_id = parts[0][0][0]
    assert members[5] == members[first_id] == first_id         # a lower id does not take over
    assert members[99_999] == 10_010                            # a higher id joins the known text too
    full = {m["id"]: m["rep_id"] for m in read_part(root / "full2" / "state", "members")}
    assert full[5] == first_id                                  # the full run with --params-from agrees
    groups = _groups(root / "ext2")
    assert groups[5][0] == groups[first_id][0] and groups[5][2] in ("exact", "model")
    rejected = read_part(root / "ext2", "rejected")
    assert [json.loads(r["row"])["id"] for r in rejected] == [99_998]


def test_extensions_score_fewer_pairs_and_keep_the_books(nightly):
    root, parts, reports = nightly
    # A run from scratch would score every pair the last night decided on; the night scored a few.
    every_pair = reports["full3"]["pairs_total"]
    assert 0 < reports["ext3"]["pairs_scored"] + reports["ext3"]["resplit_pairs_scored"] < every_pair / 2
    for night in (1, 2, 3):
        report = reports[f"ext{night}"]
        assert report["accounting_ok"] and report["rows_existing"] == reports[f"ext{night - 1}"]["rows_out"]
        assert report["new_representatives"] < report["representatives"]
        # The full run with --params-from scored exactly what the extension scored.
        full = reports[f"full{night}"]
        assert (report["pairs_scored"], report["resplit_pairs_scored"]) == (full["pairs_scored"],
                                                                            full["resplit_pairs_scored"])
    assert reports["ext3"]["rows_out"] == sum(len([r for r in part if r[1]]) for part in parts) - 1  # one reused id


def test_an_id_the_extended_run_holds_is_rejected_like_a_duplicate_id(nightly):
    root, parts, reports = nightly
    reused = parts[0][0][0]
    rejected = [(json.loads(r["row"])["id"], r["reason"], r["detail"]) for r in read_part(root / "ext1", "rejected")]
    assert rejected == [(reused, "duplicate_id", "id already used by a row of the run this one extends")]
    assert {r["id"]: r for r in read_part(root / "ext1", "groups")}[reused]["group_size"] >= 1
    assert reports["ext1"]["rows_rejected"] == 1 and reports["ext1"]["accounting_ok"]


def test_options_that_cannot_go_together(nightly, tiny_model, tmp_path, capsys):
    root, _, _ = nightly
    argv = ["run", "--input", str(root / "in" / "night1" / "q.parquet"), "--output", str(tmp_path / "o"),
            "--scorer-model", tiny_model, *RUNNER_ARGS]
    assert main(argv + [f"--existing={root / 'ext0'}", f"--params-from={root / 'ext0'}"]) == 2
    assert "leave out --params-from" in capsys.readouterr().err
    assert main(argv + [f"--existing={tmp_path / 'nowhere'}"]) == 2
    assert "has no _SUCCESS" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["encoder", "static"])
def test_an_extension_with_a_second_embedder_equals_the_full_run(tiny_model, tmp_path, kind):
    """With an encoder (whitened), or a static embedder extended in two worker processes (its table loaded by
    each, what it stored read back from state/)."""
    from pipelines.random_model import make_random_static_embedder
    rows = cluster_corpus(4)
    old, new = rows[: len(rows) * 2 // 3], rows[len(rows) * 2 // 3:]
    write_questions(old, tmp_path / "old" / "q.parquet")
    write_questions(new, tmp_path / "new" / "q.parquet")
    write_questions(old, tmp_path / "all" / "a.parquet")
    write_questions(new, tmp_path / "all" / "b.parquet")
    if kind == "encoder":
        flags, runner = [f"--embedders=lexical,encoder:{tiny_model}", "--encoder-whiten"], []
    else:
        static = make_random_static_embedder(str(tmp_path / "static"), buckets=2048, dims=16, seed=1)
        flags, runner = [f"--embedders=lexical,static:{static}"], MULTI
    flags += ["--min-similarity=0.5", "--top-k=4"]
    run_qdedup(tmp_path / "old" / "*.parquet", tmp_path / "run_old", tiny_model, *flags)
    report = run_qdedup(tmp_path / "new" / "*.parquet", tmp_path / "run_new", tiny_model, *flags, *runner,
                        f"--existing={tmp_path / 'run_old'}")
    run_qdedup(tmp_path / "all" / "*.parquet", tmp_path / "full", tiny_model, *flags,
               f"--params-from={tmp_path / 'run_old'}", f"--previous-groups={tmp_path / 'run_old'}")
    assert report["accounting_ok"] and report["rows_out"] == len(rows)
    assert _groups(tmp_path / "run_new") == _groups(tmp_path / "full")
    assert _pairs(tmp_path / "run_new") == _pairs(tmp_path / "full")
    known = {normalize_text(t) for _, t in old}
    assert report["new_representatives"] == len({normalize_text(t) for _, t in new} - known)
    for embedder in ("lexical", kind):  # both embedders' state kept and extended
        vectors = read_part(tmp_path / "run_new" / "state" / embedder, "vectors")
        assert {v["id"] for v in vectors} == {r["id"] for r in read_part(tmp_path / "run_new" / "state",
                                                                         "representatives")}
    new_ids = {i for i, _ in new}
    assert any(p[2] != "lexical" and (a in new_ids or b in new_ids)
               for (a, b), p in _pairs(tmp_path / "run_new").items())


def test_pairs_say_which_scores_an_earlier_night_made(nightly, capsys):
    """pairs/ marks each score an earlier run made (`reused`), and `qdedup explain` says so."""
    root, _, reports = nightly
    report, pairs = reports["ext3"], read_part(root / "ext3", "pairs")
    assert sum(not p["reused"] for p in pairs) == report["pairs_scored"] + report["resplit_pairs_scored"]
    assert sum(p["reused"] for p in pairs) == report["pairs_total"] - report["pairs_scored"] \
        - report["resplit_pairs_scored"] > 0
    assert not any(p["reused"] for p in read_part(root / "ext0", "pairs"))  # the first night scored all its own
    group = {g["id"]: g["group_id"] for g in read_part(root / "ext3", "groups")}
    apart = next(p for p in pairs if p["reused"] and group[p["id_a"]] != group[p["id_b"]])
    capsys.readouterr()
    assert main(["explain", "--run", str(root / "ext3"), str(apart["id_a"]), str(apart["id_b"])]) == 0
    assert f"scored {apart['score']:.4f} ({apart['source']}, scored on an earlier night" in capsys.readouterr().out
