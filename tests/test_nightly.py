"""Nightly runs that never lose yesterday's output: failures, in-place reruns, failing models, one writer,
object-store outputs read only once committed."""
import json
import os
import shutil
from collections import Counter

import pytest
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

from pipelines.cli import main
from tests.helpers import (
    RUNNER_ARGS,
    break_scorer,
    group_members,
    lcqmc_pairs,
    read_part,
    run_qdedup,
    snapshot,
    write_questions,
)
from tests.object_store import PREFIX
from transforms.commit import MARKER, OutputRun
from transforms.state import STATE_FORMAT

pytestmark = pytest.mark.e2e  # every test here runs qdedup end to end

ROWS = [(1, "银行卡丢了怎么办"), (2, "银行卡丢了怎么处理"), (3, "银行卡丢了该怎么办呢"), (4, "信用卡怎么还款"),
        (5, "信用卡如何还款"), (6, "今天天气怎么样"), (7, "银行卡丢失了怎么办")]
NEW = [(11, "信用卡怎样还款呢"), (12, "银行卡丢了怎么补办"), (13, "明天天气怎么样")]


@pytest.fixture(scope="module")
def first_night(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("first_night")
    write_questions(ROWS, root / "in" / "a.parquet")
    write_questions(NEW, root / "new" / "b.parquet")
    run_qdedup(root / "in" / "a.parquet", root / "out", tiny_model, "--min-similarity=0.1")
    return root


@pytest.fixture
def yesterday(first_night, tmp_path):
    """A committed run in tmp_path/out (a copy, for each test to do with as it likes), its inputs beside it."""
    for name in ("in", "new", "out"):
        shutil.copytree(first_night / name, tmp_path / name)
    return tmp_path / "out"


def _argv(tmp_path, model, *extra, input_="new/b.parquet", output="out"):
    return ["run", "--input", str(tmp_path / input_), "--output", str(tmp_path / output), "--scorer-model", model,
            "--min-similarity=0.1", *RUNNER_ARGS, *extra]


def test_a_run_failing_late_leaves_the_previous_output_byte_identical(yesterday, tiny_model, tmp_path, monkeypatch,
                                                                      capsys):
    import transforms.metrics
    before = snapshot(yesterday)
    count = transforms.metrics._CountElements.process

    def fail(self, element):  # counting group ids: one of the last steps
        if self._name == "groups":
            raise RuntimeError("injected failure while counting groups")
        return count(self, element)
    monkeypatch.setattr(transforms.metrics._CountElements, "process", fail)
    assert main(_argv(tmp_path, tiny_model, f"--existing={yesterday}", "--overwrite", output="out")) == 1
    assert "injected failure" in capsys.readouterr().err
    assert snapshot(yesterday) == before
    assert os.path.isdir(tmp_path / ".out.qdedup-failed" / "groups")  # what it wrote is kept aside


@pytest.mark.parametrize("count, wrong, message", [
    ("rows_in", lambda n: 0, "did its files change during the run"),
    ("pairs_total", lambda n: n + 1, "but its files hold"),
    ("resplit_pairs", lambda n: n + 1, "between scoring and writing"),
])
def test_a_run_whose_counts_disagree_with_its_input_or_its_files_replaces_nothing(
        yesterday, tiny_model, tmp_path, monkeypatch, capsys, count, wrong, message):
    """rows_in must match the Parquet metadata read at launch (files changed under the run would break it),
    rows_out and pairs_total the rows of the files the run wrote, pairs_total the pairs scored and reused
    (a runner losing elements would break either);
    a run failing a check keeps its report beside what it wrote."""
    import pipelines.cli
    before = snapshot(yesterday)
    complete = pipelines.cli.complete_report
    counted = {}

    def miscount(*args):
        report = complete(*args)
        counted[count] = wrong(report[count])
        return {**report, count: counted[count]}
    monkeypatch.setattr(pipelines.cli, "complete_report", miscount)
    assert main(_argv(tmp_path, tiny_model, f"--existing={yesterday}", "--overwrite", output="out")) == 1
    assert message in capsys.readouterr().err
    assert snapshot(yesterday) == before
    kept = [json.loads(p.read_text()) for p in (tmp_path / ".out.qdedup-failed").glob("*report.json")]
    assert [report[count] for report in kept] == [counted[count]] and "stage_seconds" in kept[0]


def test_an_extension_in_place_replaces_the_output_it_extends(yesterday, tiny_model, tmp_path):
    """--existing names the output through a symlink, a `.` and a trailing slash: the same directory."""
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path, tmp_path / "elsewhere" / "link")
    existing = f"{tmp_path}/elsewhere/link/./out/"
    old = {r["id"]: r["group_id"] for r in read_part(yesterday, "groups")}
    report = run_qdedup(tmp_path / "new" / "b.parquet", yesterday, tiny_model, "--min-similarity=0.1",
                        f"--existing={existing}", "--overwrite")
    assert report["rows_existing"] == len(ROWS) and report["rows_out"] == len(ROWS) + len(NEW)
    groups = {r["id"]: r["group_id"] for r in read_part(yesterday, "groups")}
    assert set(groups) == {i for i, _ in ROWS + NEW}
    assert set(old.values()) & set(groups.values())  # yesterday's ids carried on
    assert json.loads((yesterday / MARKER).read_text())["run_id"] == report["run_id"]


def _lose_first_assigned(process, lost):
    def lose(self, element, centroids, only=None):
        if not lost:  # the first question this step would read never arrives
            lost.append(element[0])
            return iter(())
        return process(self, element, centroids, only)
    return lose


def _lose_first_sampled(process, lost):
    def lose(self, element, n):
        if not lost:
            lost.append(element[0])
            return iter(())
        return process(self, element, n)
    return lose


@pytest.mark.parametrize("step, lose", [("AssignPartitions", _lose_first_assigned),
                                        ("SampleForCentroids", _lose_first_sampled)])
def test_a_question_lost_between_stages_on_its_way_into_blocking_fails_the_run(yesterday, tiny_model, tmp_path,
                                                                               monkeypatch, capsys, step, lose):
    """A runner that loses part of a collection between two stages can leave rows and pairs adding up: at 1M
    rows in two local worker processes 18% of the questions never reached blocking's partitioning, and the run
    committed. The steps reading what blocking took in count it, and a run where one read less is refused."""
    import transforms.block
    before = snapshot(yesterday)
    dofn = transforms.block._AssignPartitions if step == "AssignPartitions" else transforms.block._SampleForCentroids
    lost = []
    monkeypatch.setattr(dofn, "process", lose(dofn.process, lost))
    argv = _argv(tmp_path, tiny_model, "--overwrite", input_="in/a.parquet", output="out")
    assert main(argv) == 1
    assert f"{step} read {len(ROWS) - 1} elements of blocking_questions but {len(ROWS)} were made" in \
        capsys.readouterr().err
    assert len(lost) == 1 and snapshot(yesterday) == before
    monkeypatch.undo()
    report = run_qdedup(tmp_path / "in" / "a.parquet", tmp_path / "out", tiny_model, "--min-similarity=0.1",
                        "--overwrite")  # nothing lost: the same run commits, every read whole
    assert report["collections_read"] == {"blocking_questions/AssignPartitions": len(ROWS),
                                          "blocking_questions/SampleForCentroids": len(ROWS)}


def test_a_rerun_in_place_keeps_the_ids_of_the_groups_it_replaces(yesterday, tiny_model, tmp_path):
    old = {r["id"]: r["group_id"] for r in read_part(yesterday, "groups")}
    report = run_qdedup(tmp_path / "in" / "a.parquet", yesterday, tiny_model, "--min-similarity=0.1",
                        f"--previous-groups={yesterday / 'groups'}", "--overwrite")
    assert {r["id"]: r["group_id"] for r in read_part(yesterday, "groups")} == old
    assert report["groups_inherited"] == report["groups"]


def test_a_model_failing_on_every_pair_fails_the_run_and_replaces_nothing(yesterday, tiny_model, tmp_path,
                                                                          monkeypatch, capsys):
    before = snapshot(yesterday)
    break_scorer(monkeypatch, tiny_model)
    assert main(_argv(tmp_path, tiny_model, f"--existing={yesterday}", "--overwrite")) == 1
    err = capsys.readouterr().err
    assert "the scorer failed on" in err and "device-side assert" in err and "score_error" in err
    failed, scored = (int(x) for x in err.split("failed on ")[1].split(" pairs")[0].split(" of "))
    assert failed == scored > 0
    assert snapshot(yesterday) == before
    rejected = read_part(tmp_path / ".out.qdedup-failed", "rejected")
    assert len(rejected) == failed and {r["reason"] for r in rejected} == {"score_error"}
    # The error names the lowest failed pair: the same one whatever the order pairs were scored in.
    lowest = min(r["row"] for r in rejected)
    assert lowest in err


def test_a_few_failed_pairs_are_let_through_up_to_the_share_allowed(yesterday, tiny_model, tmp_path, monkeypatch):
    break_scorer(monkeypatch, tiny_model, "补")
    argv = _argv(tmp_path, tiny_model, f"--existing={yesterday}", output="next")
    assert main(argv) == 1  # some of the few pairs fail: more than 1%
    assert main(argv + ["--max-failed-share=0.9"]) == 0
    report = json.loads((tmp_path / "next" / "report.json").read_text())
    assert 0 < report["pairs_failed"] < report["pairs_scored"] + report["pairs_failed"]


def _model_with(tmp_path, tiny_model, name, **config):
    directory = tmp_path / name
    BertForSequenceClassification(BertConfig.from_pretrained(tiny_model, **config)).save_pretrained(directory)
    BertTokenizer.from_pretrained(tiny_model).save_pretrained(directory)
    return str(directory)


def test_a_broken_model_is_refused_before_the_pipeline(yesterday, tiny_model, tmp_path, capsys):
    before = snapshot(yesterday)
    vocabulary = len(BertTokenizer.from_pretrained(tiny_model))
    small = _model_with(tmp_path, tiny_model, "small_vocab", vocab_size=vocabulary - 100)
    assert main(_argv(tmp_path, small, f"--existing={yesterday}", "--overwrite")) == 2
    err = capsys.readouterr().err
    assert f"tokenizer has {vocabulary} tokens but the model embeds only {vocabulary - 100}" in err
    short = _model_with(tmp_path, tiny_model, "short", max_position_embeddings=4)
    assert main(_argv(tmp_path, short, "--overwrite")) == 2
    assert "fails on a trial input" in capsys.readouterr().err
    assert main(_argv(tmp_path, tiny_model, f"--embedders=lexical,encoder:{short}", "--overwrite")) == 2
    assert "--embedders encoder:" in capsys.readouterr().err
    assert snapshot(yesterday) == before


def test_a_scorer_with_more_than_two_labels_needs_positive_label(tiny_model, tmp_path, capsys):
    write_questions(ROWS, tmp_path / "in" / "a.parquet")
    three = _model_with(tmp_path, tiny_model, "nli", num_labels=3,
                        id2label={0: "entailment", 1: "neutral", 2: "contradiction"})
    assert main(_argv(tmp_path, three, input_="in/a.parquet")) == 2
    err = capsys.readouterr().err
    assert "not a pair classifier with 2 labels" in err and "'entailment'" in err and "--positive-label" in err
    assert main(_argv(tmp_path, three, "--positive-label=5", input_="in/a.parquet")) == 2
    assert "--positive-label 5 is not a label" in capsys.readouterr().err
    report = run_qdedup(tmp_path / "in" / "a.parquet", tmp_path / "nli_out", three, "--positive-label=0",
                        "--min-similarity=0.1")
    assert report["pairs_scored"] > 0 and report["configuration"]["positive_label"] == 0


def test_a_second_run_on_an_output_being_written_is_refused(yesterday, tiny_model, tmp_path, capsys):
    before = snapshot(yesterday)
    with OutputRun(str(yesterday), overwrite=True):  # a run in progress on the same output
        assert main(_argv(tmp_path, tiny_model, f"--existing={yesterday}", "--overwrite")) == 2
    assert "being written by another qdedup run" in capsys.readouterr().err
    assert snapshot(yesterday) == before


@pytest.mark.parametrize("change, message", [
    ("--max-length=64", "--max-length=512"),
    ("scorer", "made with another scorer model (fingerprint"),
    ("--top-k=3", "--top-k=10"),
    ("--precision=bf16", "--scoring-precision='float32', this run has 'bf16'"),
])
def test_an_extension_with_other_result_shaping_options_is_refused(yesterday, tiny_model, tmp_path, capsys,
                                                                   change, message):
    model, extra = tiny_model, [change]
    if change == "scorer":
        from pipelines.random_model import make_random_model
        model = make_random_model(str(tmp_path / "other_scorer"), seed=2)
        extra = []
    assert main(_argv(tmp_path, model, f"--existing={yesterday}", *extra, output="next")) == 2
    err = capsys.readouterr().err
    assert message in err and "--existing" in err
    assert not (tmp_path / "next").exists()


def test_an_object_store_output_is_read_only_once_committed(tiny_model, tmp_path, capsys):
    write_questions(ROWS, tmp_path / "in" / "a.parquet")
    write_questions(NEW, tmp_path / "new" / "b.parquet")
    bucket = tmp_path / "bucket"
    out = PREFIX + str(bucket / "out")
    assert main(["run", "--input", str(tmp_path / "in" / "a.parquet"), "--output", out, "--scorer-model", tiny_model,
                 "--min-similarity=0.1", *RUNNER_ARGS]) == 0
    marker = json.loads((bucket / "out" / MARKER).read_text())
    assert all((bucket / "out" / f).exists() for f in marker["files"])
    # A review sheet of it, labelled, evaluated: all read and written on the object store.
    assert main(["review", "--run", out, "--output", PREFIX + str(bucket / "sheet.csv"), "--size", "20",
                 "--beyond-k", "0"]) == 0
    sheet = (bucket / "sheet.csv").read_bytes().decode("utf-8-sig").replace(",\r\n", ",1\r\n")
    (bucket / "labelled.csv").write_bytes(sheet.encode("utf-8"))
    assert main(["evaluate", "--sheet", PREFIX + str(bucket / "labelled.csv"), "--run", out]) == 0
    assert json.loads((bucket / "out" / "evaluation.json").read_text())["labelled_pairs"] > 0
    # An extension reads it, then replaces it in place: the first run's files are gone once it commits.
    argv = ["run", "--input", str(tmp_path / "new" / "b.parquet"), "--output", out, "--scorer-model", tiny_model,
            "--min-similarity=0.1", f"--existing={out}", "--overwrite", *RUNNER_ARGS]
    assert main(argv) == 0
    second = json.loads((bucket / "out" / MARKER).read_text())
    groups = [f for f in second["files"] if f.startswith("groups/")]
    assert second["run_id"] != marker["run_id"] and all(second["run_id"] in f for f in groups)
    assert {os.path.relpath(os.path.join(d, f), bucket / "out") for d, _, fs in os.walk(bucket / "out")
            for f in fs} == {*second["files"], MARKER}  # the first run's evaluation.json went with it
    assert second["report"]["rows_out"] == len(ROWS) + len(NEW)
    # Without its marker the output is not a finished run: nothing reads it.
    shutil.copytree(bucket / "out", bucket / "unfinished")
    os.remove(bucket / "unfinished" / MARKER)
    argv[argv.index(f"--existing={out}")] = f"--existing={PREFIX}{bucket / 'unfinished'}"
    argv[argv.index(out)] = PREFIX + str(bucket / "next")
    assert main(argv) == 2
    assert "has no _SUCCESS: it has outputs but no commit marker" in capsys.readouterr().err


def test_an_extension_may_change_the_threshold_and_holds_every_row_once(yesterday, tiny_model, tmp_path):
    report = run_qdedup(tmp_path / "new" / "b.parquet", tmp_path / "next", tiny_model, "--min-similarity=0.1",
                        f"--existing={yesterday}", "--threshold=0.6")
    members = group_members(tmp_path / "next")
    assert sorted(i for g in members.values() for i in g) == sorted(i for i, _ in ROWS + NEW)
    assert report["accounting_ok"] and report["configuration"]["threshold"] == 0.6
    # Decisions are remade at the new threshold from every score, stored ones included: as a full run does.
    write_questions(ROWS + NEW, tmp_path / "all" / "q.parquet")
    run_qdedup(tmp_path / "all" / "q.parquet", tmp_path / "full", tiny_model, "--min-similarity=0.1",
               f"--params-from={yesterday}", f"--previous-groups={yesterday}", "--threshold=0.6")
    def groups(out):
        return sorted(read_part(out, "groups"), key=lambda row: row["id"])
    assert groups(tmp_path / "next") == groups(tmp_path / "full")


def test_a_state_of_another_format_is_refused(yesterday, tiny_model, tmp_path, capsys):
    marker = json.loads((yesterday / MARKER).read_text())
    marker["report"]["state_format"] = 1
    (yesterday / MARKER).write_text(json.dumps(marker))
    assert main(_argv(tmp_path, tiny_model, f"--existing={yesterday}", output="next")) == 2
    assert f"has state format 1, this qdedup needs {STATE_FORMAT}" in capsys.readouterr().err


def test_a_pair_that_failed_on_an_earlier_night_is_scored_again(tiny_model, tmp_path, monkeypatch):
    """Yesterday's scorer failed on the pairs holding 处; tonight they come from stored neighbour lists,
    without their texts, and are fetched and scored, as a full run would score them."""
    write_questions(ROWS, tmp_path / "in" / "a.parquet")
    write_questions(NEW, tmp_path / "new" / "b.parquet")
    with monkeypatch.context() as patch:
        break_scorer(patch, tiny_model, "处")
        run_qdedup(tmp_path / "in" / "a.parquet", tmp_path / "out", tiny_model, "--min-similarity=0.1",
                   "--max-failed-share=1")
    failed = {(r["id_a"], r["id_b"]) for r in map(json.loads, (r["row"] for r in read_part(tmp_path / "out",
                                                                                              "rejected")))}
    assert failed
    report = run_qdedup(tmp_path / "new" / "b.parquet", tmp_path / "next", tiny_model, "--min-similarity=0.1",
                        f"--existing={tmp_path / 'out'}")
    old_ids = {i for i, _ in ROWS}
    retried = {pair for pair in failed if set(pair) <= old_ids} & set(
        (p["id_a"], p["id_b"]) for p in read_part(tmp_path / "next", "pairs"))
    assert retried and report["pairs_failed"] == 0


def test_static_candidates_are_sourced_and_a_static_embedder_retrained_in_place_is_refused(tiny_model, tmp_path,
                                                                                            capsys):
    from pipelines.random_model import make_random_static_embedder
    texts = sorted({t for a, b, _ in lcqmc_pairs(40) for t in (a, b)})
    write_questions(list(enumerate(texts)), tmp_path / "in" / "a.parquet")
    write_questions([(1000 + i, text) for i, text in NEW], tmp_path / "new" / "b.parquet")
    static = make_random_static_embedder(str(tmp_path / "static"), buckets=2048, dims=16, seed=1)
    flags = [f"--embedders=lexical,static:{static}", "--top-k=3"]
    assert main(_argv(tmp_path, tiny_model, *flags, input_="in/a.parquet")) == 0
    sources = Counter(p["source"] for p in read_part(tmp_path / "out", "pairs") if p["source"] != "resplit")
    assert set(sources) <= {"lexical", "static", "lexical,static"} and sources["static"] > 0
    assert (tmp_path / "out" / "state" / "static").is_dir()
    make_random_static_embedder(static, buckets=2048, dims=16, seed=2)  # retrained where it was
    assert main(_argv(tmp_path, tiny_model, *flags, f"--existing={tmp_path / 'out'}", output="next")) == 2
    err = capsys.readouterr().err
    assert "another static model (fingerprint" in err and "--existing" in err
    assert not (tmp_path / "next").exists()
