"""End-to-end runs of `qdedup run` on the in-process Beam runner with a tiny random model."""
import html
import json
import os
import subprocess
import sys
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.cli import main
from samples.make_sample import build_rows
from tests.helpers import (
    RUNNER_ARGS,
    lcqmc_pairs,
    read_part,
    reference_scores,
    run_qdedup,
    watch_tokenizer,
    write_questions,
)
from transforms.devices import hardware
from transforms.graphs import connected_components
from transforms.normalize import normalize_text

pytestmark = pytest.mark.e2e  # every test here runs qdedup end to end


def blocking_pairs(out):
    """pairs/ less the pairs chaining control scored on its own."""
    return [p for p in read_part(out, "pairs") if p["source"] != "resplit"]


def test_every_row_is_grouped_or_rejected_once(corpus, reference_run):
    _, rows = corpus
    out, report = reference_run
    groups, rejected = read_part(out, "groups"), read_part(out, "rejected")
    assert report["rows_in"] == len(rows) == report["rows_out"] + report["rows_rejected"]
    assert report["accounting_ok"] is True
    assert (len(groups), len(rejected)) == (report["rows_out"], report["rows_rejected"])
    grouped_ids = [g["id"] for g in groups]
    assert len(grouped_ids) == len(set(grouped_ids))
    rejected_ids = [json.loads(r["row"])["id"] for r in rejected]
    # Every input row is either grouped or rejected (an id can be both once: duplicate_id).
    assert sorted(grouped_ids + rejected_ids, key=repr) == sorted([r[0] for r in rows], key=repr)


def test_the_state_keeps_every_questions_vector_and_its_k_nearest_as_blocking_found_them(reference_run):
    """state/lexical/vectors/: a row per representative, its neighbours best first, each one a pair that was made
    from it with that similarity (the vector and its k nearest meet in a join before they are written)."""
    out, _ = reference_run
    vectors = read_part(out, "state/lexical/vectors")
    assert sorted(v["id"] for v in vectors) == sorted(r["id"] for r in read_part(out, "state/representatives"))
    similarity = {(p["id_a"], p["id_b"]): p["similarity"] for p in blocking_pairs(out)}
    assert sum(bool(v["top_ids"]) for v in vectors) > len(vectors) // 2
    for v in vectors:
        assert v["id"] not in v["top_ids"] and v["top_sims"] == sorted(v["top_sims"], reverse=True)
        assert len(v["values"]) == len(v["indices"]) > 0 and v["dim"] > max(v["indices"])
        for nid, sim in zip(v["top_ids"], v["top_sims"]):
            assert similarity[min(v["id"], nid), max(v["id"], nid)] == pytest.approx(sim, abs=1e-6)


def test_the_report_gives_the_largest_element_of_each_bounded_step(reference_run):
    out, report = reference_run
    largest = report["largest_elements"]
    representatives = read_part(out, "state/representatives")
    assert largest["rows_per_text"] == max(r["count"] for r in representatives)
    assert largest["blocking_work_item"] == report["largest_blocking_work_item"] == len(representatives)
    # No component rounds at this size: the finish holds the graph's nodes, and no node's neighbourhood is grouped.
    assert 2 <= largest["component_finish_nodes"] <= len(representatives) and "component_node_degree" not in largest
    assert 0 < largest["score_batch_tokens"] <= 8192  # under the tiny scorer's automatic CPU budget
    assert report["components_resplit"] > 0 and 3 <= largest["resplit_gathered_nodes"] <= 5_000
    assert (report["components_cut"], report["components_too_large"], report["blocking_items_hash_blocked"]) \
        == (0, 0, 0)


def test_the_report_names_the_hardware_every_pair_was_forwarded_on(reference_run):
    _, report = reference_run
    forwarded = report["pairs_scored"] + report["resplit_pairs_scored"] + report["pairs_failed"]
    threads = report["configuration"]["torch_threads"] or len(os.sched_getaffinity(0))  # the run's cores: this one's
    assert report["forward_hardware"] == {"score": {hardware("cpu", "auto", threads): forwarded}}


def test_each_kind_of_bad_row_has_its_reason(reference_run):
    out, _ = reference_run
    rejected = read_part(out, "rejected")
    reasons = Counter(r["reason"] for r in rejected)
    assert reasons == {"null_text": 1, "empty_text": 2, "text_too_long": 1, "null_id": 1, "duplicate_id": 1,
                       "empty_after_normalization": 1, "text_not_string": 2}
    duplicate = next(r for r in rejected if r["reason"] == "duplicate_id")
    assert json.loads(duplicate["row"]) == {"id": 1000, "question": "重复编号的问题"}
    assert duplicate["source"].endswith("a.parquet#" + str(len(build_rows()) - 2))
    assert "a.parquet#0" in duplicate["detail"]


def test_exact_duplicates_share_a_group(corpus, reference_run):
    _, rows = corpus
    out, report = reference_run
    group_of = {g["id"]: g for g in read_part(out, "groups")}
    by_text = {}
    for row_id, text in rows:
        if row_id in group_of and isinstance(text, str) and text != "重复编号的问题":
            by_text.setdefault(normalize_text(text), []).append(row_id)
    clusters = [ids for ids in by_text.values() if len(ids) > 1]
    assert clusters and sum(len(c) - 1 for c in clusters) == report["exact_duplicates"]
    for ids in clusters:
        assert len({group_of[i]["group_id"] for i in ids}) == 1
        assert all(group_of[i]["match_kind"] in ("exact", "model") for i in ids)


def test_group_columns_are_consistent(reference_run):
    out, report = reference_run
    groups = read_part(out, "groups")
    sizes = Counter(g["group_id"] for g in groups)
    assert report["groups"] == len(sizes) and report["largest_group"] == max(sizes.values())
    for g in groups:
        assert isinstance(g["group_id"], int) and g["group_size"] == sizes[g["group_id"]]
        assert (g["match_kind"] == "single") == (g["group_size"] == 1)
        assert g["canonical_id"] in sizes and sizes[g["canonical_id"]] == g["group_size"]
    schema = pq.read_schema(next((out / "groups").glob("*.parquet")))
    assert schema.field("id").type == pa.int64() and schema.field("group_id").type == pa.int64()


def test_pairs_are_ordered_and_scored_by_the_model(corpus, reference_run, tiny_model):
    _, rows = corpus
    out, report = reference_run
    pairs = read_part(out, "pairs")
    assert report["pairs_scored"] == report["candidate_pairs"] > 0
    assert len(pairs) == report["pairs_scored"] + report["resplit_pairs_scored"]
    assert sum(p["source"] == "resplit" for p in pairs) == report["resplit_pairs_scored"]
    text = {}
    for row_id, t in rows:  # the representative (lowest id) carries the text the model sees
        text.setdefault(row_id, t)
    expected = reference_scores(tiny_model, [(text[p["id_a"]], text[p["id_b"]]) for p in pairs])
    for pair, score in zip(pairs, expected):
        assert pair["id_a"] < pair["id_b"]
        assert pair["score"] == pytest.approx(score, abs=1e-5)
        if pair["source"] == "resplit":  # scored by chaining control: blocking never compared them
            assert pair["similarity"] is None
        else:
            assert 0.3 <= pair["similarity"] <= 1.0 + 1e-6


def test_lcqmc_pair_scores_equal_reference(tiny_model, tmp_path, token_budget="300"):
    """Through the whole pipeline (batching itself is checked from 1 to 100,000 tokens in test_score.py)."""
    pairs = [(a, b) for a, b, _ in lcqmc_pairs(30)]
    texts = sorted({t for pair in pairs for t in pair})
    ids = {t: i for i, t in enumerate(texts)}
    pq.write_table(pa.table({"id": list(range(len(texts))), "question": texts}), tmp_path / "q.parquet")
    out = tmp_path / "out"
    run_qdedup(tmp_path / "q.parquet", out, tiny_model, "--top-k", str(len(texts)), "--min-similarity=-1",
               "--token-budget", token_budget)
    scored = {(p["id_a"], p["id_b"]): p["score"] for p in read_part(out, "pairs")}
    # The model reads the lower id's text first: (a, b) in id order is what pairs/ holds.
    ordered = [tuple(sorted(pair, key=ids.get)) for pair in pairs if normalize_text(pair[0]) != normalize_text(pair[1])]
    assert len(ordered) >= 25  # exact duplicates never reach the model
    for (a, b), score in zip(ordered, reference_scores(tiny_model, ordered)):
        assert scored[(ids[a], ids[b])] == pytest.approx(score, abs=1e-5)


def test_string_ids_keep_their_type(tiny_model, tmp_path):
    pq.write_table(pa.table({"qid": ["b", "a", "c"], "text": ["怎么办？", "怎么办", "为什么"]}),
                   tmp_path / "q.parquet")
    run_qdedup(tmp_path / "q.parquet", tmp_path / "out", tiny_model, "--id-column=qid", "--text-column=text")
    groups = {g["id"]: g for g in read_part(tmp_path / "out", "groups")}
    assert groups["b"]["group_id"] == groups["a"]["group_id"] == "a"
    assert groups["a"]["match_kind"] == "exact" and groups["c"]["match_kind"] == "single"


def test_existing_output_is_kept_unless_overwrite(corpus, reference_run, tiny_model, capsys):
    directory, _ = corpus
    out, _ = reference_run
    argv = ["run", "--input", str(directory / "*.parquet"), "--output", str(out), "--scorer-model", tiny_model,
            *RUNNER_ARGS]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--output" in err and "already holds a qdedup run; pass --overwrite" in err


@pytest.mark.parametrize("case, message", [
    ("missing_column", "has no column 'question'"),
    ("no_match", "matches no files"),
    ("corrupt", "bad.parquet is not a readable Parquet file"),
    ("bad_model", "is not a complete model directory"),
    ("bad_encoder", "--embedders encoder: '"),
    pytest.param("cuda_without_gpu", "--device cuda, but no usable GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")),
])
def test_input_and_model_problems_exit_with_a_named_error(case, message, tiny_model, tmp_path, capsys):
    model = tiny_model
    pattern = tmp_path / "*.parquet"
    if case == "missing_column":
        pq.write_table(pa.table({"id": [1], "text": ["问题"]}), tmp_path / "a.parquet")
    elif case == "no_match":
        pattern = tmp_path / "absent" / "*.parquet"
    elif case == "corrupt":
        (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    else:
        pq.write_table(pa.table({"id": [1], "question": ["问题"]}), tmp_path / "a.parquet")
    if case == "bad_model":
        model = str(tmp_path)  # a directory without a model in it
    extra = {"cuda_without_gpu": ["--device", "cuda"],
             "bad_encoder": [f"--embedders=lexical,encoder:{tmp_path / 'no-encoder'}"]}.get(case, [])
    code = main(["run", "--input", str(pattern), "--output", str(tmp_path / "out"), "--scorer-model", model,
                 *RUNNER_ARGS, *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_console_script_exit_code_and_message(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--input", str(tmp_path / "*.parquet"),
                             "--output", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "matches no files" in result.stderr and "Traceback" not in result.stderr


NOISE = ("apitools", "Resource module", "Loading weights", "it/s]", "Traceback")


def _qdedup(*argv):
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *argv], capture_output=True, text=True)


def test_a_run_says_what_it_does_and_nothing_else_unless_verbose(tiny_model, tmp_path):
    write_questions([(1, "怎么开通网银"), (2, "网银怎么开通"), (3, "今天天气怎么样")], tmp_path / "q.parquet")
    args = ["run", "--input", str(tmp_path / "q.parquet"), "--scorer-model", tiny_model, *RUNNER_ARGS]
    quiet = _qdedup(*args, "--output", str(tmp_path / "quiet"))
    assert quiet.returncode == 0, quiet.stderr
    assert "qdedup: input: 1 files, 3 rows" in quiet.stderr and "qdedup: 3 rows in, 0 rejected" in quiet.stdout
    assert "loaded " in quiet.stderr  # qdedup's own worker lines stay
    assert [line for line in quiet.stderr.splitlines() if any(noise in line for noise in NOISE)] == []
    loud = _qdedup(*args, "--output", str(tmp_path / "loud"), "--verbose")
    assert loud.returncode == 0, loud.stderr
    assert "Loading weights" in loud.stderr and "apache_beam" in loud.stderr


def test_each_long_phase_of_a_run_says_how_far_it_has_come(tiny_model, tmp_path, monkeypatch, capsys):
    """Between reading and blocking, blocking and scoring, and after the last pair is scored, a 1M-row run
    was silent for 5 to 12 minutes at a time; every such phase now logs its progress (here at every element, the
    pairs in shards of 2 so that they are scored and written in several batches: a line needs two)."""
    monkeypatch.setattr("transforms.logs.PROGRESS_SECONDS", 0.0)
    texts = ["怎么开初婚未育证明", "初婚未育证明怎么开", "开初婚未育证明", "今天天气怎么样", "今天天气如何"]
    write_questions(list(enumerate(texts, 1)), tmp_path / "q.parquet")
    run_qdedup(tmp_path / "q.parquet", tmp_path / "out", tiny_model, "--min-similarity=-1", "--threshold=0",
               "--sort-window=2")
    said = {line.split(": ")[1] for line in capsys.readouterr().err.splitlines() if " by this worker, " in line}
    assert said >= {"normalizing", "embedding", "partitioning", "scoring", "components", "writing pairs",
                    "writing groups"}, " | ".join(sorted(said))


def test_empty_and_all_rejected_inputs_give_empty_outputs(tiny_model, tmp_path):
    pq.write_table(pa.table({"id": pa.array([], pa.int64()), "question": pa.array([], pa.string())}),
                   tmp_path / "empty.parquet")
    pq.write_table(pa.table({"id": [1, 2], "question": [None, " "]}), tmp_path / "bad.parquet")
    report = run_qdedup(tmp_path / "*.parquet", tmp_path / "out", tiny_model)
    assert (report["rows_in"], report["rows_rejected"], report["rows_out"], report["groups"]) == (2, 2, 0, 0)
    groups = pq.read_table(tmp_path / "out" / "groups")
    assert groups.num_rows == 0 and groups.schema.names == ["id", "group_id", "canonical_id", "group_size",
                                                            "match_kind", "min_edge_score", "mean_edge_score",
                                                            "group_since_run"]


def test_truncated_pairs_are_counted(tiny_model, tmp_path):
    texts = ["怎么开初婚未育证明", "初婚未育证明怎么开", "开初婚未育证明", "今天天气怎么样"]
    pq.write_table(pa.table({"id": [1, 2, 3, 4], "question": texts}), tmp_path / "q.parquet")
    report = run_qdedup(tmp_path / "q.parquet", tmp_path / "out", tiny_model, "--max-length=20",
                        "--min-similarity=-1")
    pairs = blocking_pairs(tmp_path / "out")
    longer = [p for p in pairs if len(texts[p["id_a"] - 1]) + len(texts[p["id_b"] - 1]) + 3 > 20]
    assert report["pairs_scored"] == len(pairs) == 6
    assert report["truncated_pairs"] == len(longer) == 1  # only the two 9-character questions overflow


def test_each_question_is_tokenized_once_not_again_with_each_pair(tiny_model, tmp_path, monkeypatch):
    """Questions are tokenized ahead, many a call; scoring assembles pairs from their ids and hands the
    tokenizer none of the corpus's texts."""
    texts = ["怎么开初婚未育证明", "初婚未育证明怎么开", "开初婚未育证明", "今天天气怎么样", "今天天气如何"]
    pq.write_table(pa.table({"id": list(range(1, 6)), "question": texts}), tmp_path / "q.parquet")
    log = tmp_path / "tokenized.jsonl"

    def note(way, texts):  # called by the watched backend, itself called by qdedup's function: whose?
        caller = sys._getframe(2).f_code.co_name
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps([way, caller, list(texts)], ensure_ascii=False) + "\n")

    watch_tokenizer(monkeypatch, note)
    report = run_qdedup(tmp_path / "q.parquet", tmp_path / "out", tiny_model, "--min-similarity=-1")
    assert report["pairs_scored"] == len(blocking_pairs(tmp_path / "out")) > 0
    seen = {}
    for line in log.read_text(encoding="utf-8").splitlines():
        way, caller, batch = json.loads(line)
        seen.setdefault((way, caller), set()).update(batch)
    assert set(texts) <= seen[("batch", "ahead")]  # all of them in a call of their own, ahead of scoring
    assert not any(set(texts) & heard for (_, caller), heard in seen.items() if caller != "ahead")


def test_encoder_candidates_are_united_with_lexical_and_sourced(tiny_model, tmp_path):
    texts = sorted({t for a, b, _ in lcqmc_pairs(40) for t in (a, b)})
    pq.write_table(pa.table({"id": list(range(len(texts))), "question": texts}), tmp_path / "q.parquet")
    run_qdedup(tmp_path / "q.parquet", tmp_path / "lexical", tiny_model, "--top-k=3")
    report = run_qdedup(tmp_path / "q.parquet", tmp_path / "both", tiny_model, "--top-k=3",
                        f"--embedders=lexical,encoder:{tiny_model}")
    lexical = {(p["id_a"], p["id_b"]) for p in blocking_pairs(tmp_path / "lexical")}
    both = blocking_pairs(tmp_path / "both")
    sources = Counter(p["source"] for p in both)
    assert set(sources) <= {"lexical", "encoder", "encoder,lexical"} and sources["encoder"] > 0
    assert {(p["id_a"], p["id_b"]) for p in both if "lexical" in p["source"]} == lexical
    assert len(both) == len({(p["id_a"], p["id_b"]) for p in both}) == report["pairs_scored"]


def test_group_edge_scores_summarize_the_pairs_that_joined_it(reference_run):
    out, report = reference_run
    threshold = report["configuration"]["threshold"]
    group_of = {g["id"]: g for g in read_part(out, "groups")}
    edges = {}
    for pair in read_part(out, "pairs"):
        same = group_of[pair["id_a"]]["group_id"] == group_of[pair["id_b"]]["group_id"]
        if pair["score"] >= threshold and same:
            edges.setdefault(group_of[pair["id_a"]]["group_id"], []).append(pair["score"])
    assert edges  # the tiny model's scores do put some pairs above the threshold
    for row in group_of.values():
        scores = edges.get(row["group_id"])
        if scores is None:
            assert row["min_edge_score"] is None and row["mean_edge_score"] is None
        else:
            assert row["min_edge_score"] == pytest.approx(min(scores))
            assert row["mean_edge_score"] == pytest.approx(sum(scores) / len(scores))


def _components_of_edges(pairs, threshold):
    edges = [(p["id_a"], p["id_b"]) for p in pairs if p["score"] >= threshold]
    return connected_components(edges)


def test_chaining_control_resplits_sparse_components(reference_run):
    out, report = reference_run
    threshold = report["configuration"]["threshold"]
    pairs, groups = read_part(out, "pairs"), read_part(out, "groups")
    # The tiny random model chains the sample: some components are sparse and get their missing pairs scored.
    assert report["components_resplit"] > 0 and report["resplit_pairs_scored"] > 0
    group_of = {g["id"]: g["group_id"] for g in groups}
    # Every group is held together by its own edges at or above the threshold (average linkage never
    # merges clusters whose pairs all score below it) ...
    inside = [p for p in pairs if group_of[p["id_a"]] == group_of[p["id_b"]]]
    labels = _components_of_edges(inside, threshold)
    pieces = {}
    for node, label in labels.items():
        pieces.setdefault(group_of[node], set()).add(label)
    assert pieces and all(len(labels_in_group) == 1 for labels_in_group in pieces.values())
    # ... and the re-split made groups that plain connected components would have joined.
    components = _components_of_edges(pairs, threshold)
    split_apart = [p for p in pairs if p["score"] >= threshold and group_of[p["id_a"]] != group_of[p["id_b"]]]
    assert split_apart and all(components[p["id_a"]] == components[p["id_b"]] for p in split_apart)


def test_chaining_control_takes_the_texts_blocking_tokenized_as_it_would_tokenize_them_again(
        corpus, tiny_model, reference_run, tmp_path, monkeypatch):
    """With no prior run and one embedder the re-split's texts are those blocking carried, tokenized once;
    tokenizing every representative's text again for it (the path of other runs) gives the same run."""
    from pipelines import dedup
    given = dedup.tokenized_texts

    def every_text_again(generated, scorer):
        assert generated.tokenized is not None  # a default run takes the texts blocking carried
        return given(generated._replace(tokenized=None), scorer)

    monkeypatch.setattr(dedup, "tokenized_texts", every_text_again)
    directory, _ = corpus
    report = run_qdedup(directory / "*.parquet", tmp_path / "out", tiny_model)
    out, reference = reference_run
    assert reference["components_resplit"] > 0 and reference["resplit_pairs_scored"] > 0
    assert report["resplit_pairs_scored"] == reference["resplit_pairs_scored"]
    for part, key in (("groups", "id"), ("pairs", ("id_a", "id_b"))):
        order = (lambda row: row[key]) if isinstance(key, str) else (lambda row: tuple(row[k] for k in key))
        assert sorted(read_part(tmp_path / "out", part), key=order) == sorted(read_part(out, part), key=order)


def test_without_chaining_control_groups_are_connected_components(corpus, tiny_model, tmp_path):
    directory, _ = corpus
    out = tmp_path / "out"
    report = run_qdedup(directory / "*.parquet", out, tiny_model, "--resplit-density=0", "--resplit-size=100000")
    assert report["components_resplit"] == report["resplit_pairs_scored"] == 0
    components = _components_of_edges(read_part(out, "pairs"), report["configuration"]["threshold"])
    members = {}
    for g in read_part(out, "groups"):
        if g["match_kind"] == "model" or g["group_size"] > 1:
            members.setdefault(g["group_id"], set()).add(g["id"])
    rep_groups = {}
    for node, root in components.items():
        rep_groups.setdefault(root, set()).add(node)
    for rep_group in rep_groups.values():
        holders = [gid for gid, ids in members.items() if rep_group <= ids]
        assert len(holders) == 1


def test_canonical_earliest_by_timestamp_column(tiny_model, tmp_path, capsys):
    import datetime
    day = datetime.datetime(2026, 1, 1)
    pq.write_table(pa.table({
        "id": [1, 2, 3, 4],
        "question": ["怎么办", "怎么办？", "为什么", "为 什 么"],
        "asked": pa.array([day.replace(day=9), day.replace(day=2), None, day], pa.timestamp("ms")),
    }), tmp_path / "q.parquet")
    run_qdedup(tmp_path / "q.parquet", tmp_path / "frequent", tiny_model)
    run_qdedup(tmp_path / "q.parquet", tmp_path / "earliest", tiny_model, "--canonical=earliest",
               "--timestamp-column=asked")
    frequent = {g["id"]: g["canonical_id"] for g in read_part(tmp_path / "frequent", "groups")}
    earliest = {g["id"]: g for g in read_part(tmp_path / "earliest", "groups")}
    assert frequent == {1: 1, 2: 1, 3: 3, 4: 3}
    assert {i: g["canonical_id"] for i, g in earliest.items()} == {1: 2, 2: 2, 3: 4, 4: 4}  # no timestamp: last
    assert earliest[1]["match_kind"] == earliest[2]["match_kind"] == "exact"
    pq.write_table(pa.table({"id": [1], "question": ["x"], "asked": ["2026-01-01"]}), tmp_path / "s.parquet")
    argv = ["run", "--input", str(tmp_path / "s.parquet"), "--output", str(tmp_path / "s"), "--scorer-model",
            tiny_model, "--canonical=earliest", "--timestamp-column=asked", *RUNNER_ARGS]
    assert main(argv) == 2
    assert "timestamp column 'asked' has type string" in capsys.readouterr().err
    assert main(argv[:-3] + ["--canonical=earliest", *RUNNER_ARGS]) == 2
    assert "--canonical earliest needs --timestamp-column" in capsys.readouterr().err


def test_report_html_is_self_contained_and_shows_the_run(reference_run):
    import re
    out, report = reference_run
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)  # opens offline: nothing fetched
    assert f"{report['rows_in']:,}" in page and "threshold" in page and "<svg" in page
    bars = [int(v.replace(",", "")) for v in re.findall(r"<title>0\.\d\d: ([\d,]+)</title>", page)]
    assert sum(bars) == len(read_part(out, "pairs"))  # the score histogram covers every scored pair
    largest = max(read_part(out, "groups"), key=lambda g: (g["group_size"], -g["id"]))
    assert f"{largest['group_size']:,} rows" in page
    [label] = report["forward_hardware"]["score"]
    assert label.startswith("cpu ") and html.escape(label) in page  # what the model ran on
    assert page.count("<tr>") >= 20  # counts, stages, borderline pairs, rejected reasons
    assert "CPU seconds" in page and set(report["stage_cpu_seconds"]) == set(report["stage_seconds"]) > set()
    explained = [r for r in read_part(out, "explain") if r["group_id"] == largest["group_id"] and r["kind"] == "path"]
    assert "widest path to the canonical member" in page  # the largest groups explained, from explain/
    assert any(all(f"—{score:.3f} (" in page for score in r["path_scores"]) for r in explained)
