import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import worker_handlers

from pipelines.cli import main
from pipelines.recall import read_labelled_pairs, recall_figures
from tests.helpers import ROOT, RUNNER_ARGS
from transforms.errors import QdedupError

# Worked by hand. Questions sharing no character have cosine 0; the three 银行卡丢了怎么… questions share
# seven of eight or nine characters, so their cosines are far above the 0.3 floor:
#   positives: exact duplicates (found), two near questions (found), a paraphrase sharing nothing (missed);
#   negatives: unrelated (not a candidate), two near questions (a candidate).
LABELLED = [
    ("明天去北京的火车票多少钱？", "明天去北京的火车票多少钱", 1),
    ("银行卡丢了怎么办", "银行卡丢了怎么处理", 1),
    ("你好", "早上安", 1),
    ("银行卡丢了怎么办", "今日气温如何", 0),
    ("银行卡丢了怎么处理", "银行卡丢了怎么补办", 0),
]


@pytest.mark.e2e
@pytest.mark.parametrize("runner", [RUNNER_ARGS, ["--config", str(ROOT / "configs" / "local.yaml")]],
                         ids=["one process", "the local preset's worker processes"])
def test_recall_on_a_hand_made_file(tmp_path, capsys, monkeypatch, runner):
    monkeypatch.setattr(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", 1000)
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{a}\t{b}\t{label}\n" for a, b, label in LABELLED), encoding="utf-8")
    report = tmp_path / "recall.json"
    assert main(["recall", "--pairs", str(pairs), "--report", str(report), "--top-k=10", *runner]) == 0
    # the local runner set up as for `qdedup run`: no timed flush to lose elements in worker processes
    assert worker_handlers.DATA_BUFFER_TIME_LIMIT_MS == 0
    figures = json.loads(report.read_text())
    assert (figures["positives"], figures["positives_found"]) == (3, 2)
    assert (figures["negatives"], figures["negatives_found"]) == (2, 1)
    assert figures["positive_recall"] == pytest.approx(2 / 3)
    assert figures["negative_candidate_share"] == pytest.approx(1 / 2)
    assert figures["questions"] == 7  # eight texts, two of them exact duplicates
    assert figures["candidate_pairs"] == 3  # the three 银行卡丢了怎么… questions, pairwise
    assert figures["candidates_per_question"] == pytest.approx(3 / 7)
    assert figures["configuration"]["top_k"] == 10
    assert "2 / 3 = 66.67%" in capsys.readouterr().out


@pytest.mark.e2e
def test_recall_with_a_static_embedder_unites_its_candidates_and_refuses_a_missing_one(tmp_path, capsys):
    from pipelines.random_model import make_random_static_embedder
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{a}\t{b}\t{label}\n" for a, b, label in LABELLED), encoding="utf-8")
    static = make_random_static_embedder(str(tmp_path / "static"), buckets=512, dims=8)
    report = tmp_path / "recall.json"
    assert main(["recall", "--pairs", str(pairs), "--report", str(report), "--top-k=10",
                 f"--embedders=lexical,static:{static}", *RUNNER_ARGS]) == 0
    figures = json.loads(report.read_text())
    assert figures["configuration"]["embedders"] == f"lexical,static:{static}"
    assert figures["candidate_pairs"] > 3  # lexical alone finds 3 (the test above): static adds its own
    assert main(["recall", "--pairs", str(pairs), f"--embedders=lexical,static:{tmp_path / 'none'}",
                 *RUNNER_ARGS]) == 2
    assert "train-blocker" in capsys.readouterr().err


def test_recall_figures_leave_out_pairs_with_rejected_questions():
    figures = recall_figures([("a", "b", 1), ("a", "", 1), ("c", "d", 0)], {"a": 1, "b": 2, "c": 3, "d": 3},
                             {(1, 2)})
    assert (figures["positives"], figures["positives_found"], figures["pairs_not_in_corpus"]) == (1, 1, 1)
    assert (figures["negatives"], figures["negatives_found"]) == (1, 1)  # c and d are exact duplicates


def test_labelled_files_in_every_format(tmp_path):
    (tmp_path / "p.csv").write_text("\ufeffsentence1,sentence2,label\n甲,乙,1\n", encoding="utf-8")
    pq.write_table(pa.table({"text_a": ["甲"], "text_b": ["乙"], "label": [0]}), tmp_path / "p.parquet")
    assert read_labelled_pairs(str(tmp_path / "p.csv")) == [("甲", "乙", 1)]
    assert read_labelled_pairs(str(tmp_path / "p.parquet")) == [("甲", "乙", 0)]


@pytest.mark.parametrize("content, message", [
    ("甲\t乙\n", "line 1: expected text_a<TAB>text_b<TAB>label"),
    ("甲\t乙\tyes\n", "label 'yes' is not 0 or 1"),
])
def test_bad_labelled_files_are_named(tmp_path, content, message):
    path = tmp_path / "p.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(QdedupError, match=message):
        read_labelled_pairs(str(path))
    with pytest.raises(QdedupError, match="no such file"):
        read_labelled_pairs(str(tmp_path / "absent.tsv"))
