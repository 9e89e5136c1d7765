import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main
from pipelines.evaluate import evaluate_groups, threshold_sweep
from tests.helpers import RUNNER_ARGS

IDS = {"甲": 1, "甲？": 2, "乙": 3, "丙": 4, "丁": 5}
GROUP = {1: 1, 2: 1, 3: 1, 4: 4, 5: 5}
SCORES = {(1, 3): 0.9, (3, 4): 0.6, (4, 5): 0.2}
LABELLED = [
    ("甲", "甲？", 1),   # exact duplicates, same group: true positive at every threshold
    ("甲", "乙", 1),     # same group, scored 0.9: true positive
    ("乙", "丙", 1),     # different groups, scored 0.6: a miss for the groups, found at thresholds <= 0.6
    ("丙", "丁", 0),     # different groups, scored 0.2: true negative above 0.2
    ("甲", "丁", 0),     # never scored: a negative at every threshold
    ("甲", "戊", 1),     # 戊 is not in the run: not judged
]


def test_groups_against_labels_worked_by_hand():
    result = evaluate_groups(LABELLED, IDS, GROUP)
    assert (result["tp"], result["fp"], result["fn"]) == (2, 0, 1)
    assert (result["pairs_judged"], result["pairs_not_in_run"]) == (5, 1)
    assert result["precision"] == 1.0 and result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(0.8)


def test_threshold_sweep_worked_by_hand():
    rows = {row["threshold"]: row for row in threshold_sweep(LABELLED, IDS, SCORES, (0.1, 0.5, 0.7, 0.95))}
    assert (rows[0.1]["tp"], rows[0.1]["fp"], rows[0.1]["fn"]) == (3, 1, 0)
    assert (rows[0.5]["tp"], rows[0.5]["fp"], rows[0.5]["fn"]) == (3, 0, 0)
    assert (rows[0.7]["tp"], rows[0.7]["fp"], rows[0.7]["fn"]) == (2, 0, 1)
    assert (rows[0.95]["tp"], rows[0.95]["fp"], rows[0.95]["fn"]) == (1, 0, 2)
    assert rows[0.5]["f1"] == 1.0


@pytest.mark.e2e
def test_evaluate_command_reads_a_run(tiny_model, tmp_path, capsys):
    texts = ["银行卡丢了怎么办", "银行卡丢了怎么办？", "银行卡丢了怎么处理", "今日气温如何", "明天会下雨吗"]
    pq.write_table(pa.table({"id": [10, 11, 12, 13, 14], "question": texts}), tmp_path / "q.parquet")
    out = tmp_path / "out"
    assert main(["run", "--input", str(tmp_path / "q.parquet"), "--output", str(out), "--scorer-model", tiny_model,
                 "--min-similarity=-1", *RUNNER_ARGS]) == 0
    labelled = tmp_path / "labels.tsv"
    labelled.write_text(f"{texts[0]}\t{texts[1]}\t1\n{texts[0]}\t{texts[2]}\t1\n{texts[3]}\t{texts[4]}\t0\n"
                        f"{texts[0]}\t不在语料里\t1\n", encoding="utf-8")
    assert main(["evaluate", "--pairs", str(labelled), "--run", str(out)]) == 0
    figures = json.loads((out / "evaluation.json").read_text())
    groups = figures["groups"]
    assert (groups["pairs_judged"], groups["pairs_not_in_run"]) == (3, 1)
    assert groups["tp"] >= 1  # the exact duplicates are always in one group
    assert len(figures["sweep"]) == 19 and figures["best_threshold"] in [r["threshold"] for r in figures["sweep"]]
    assert "best threshold for these labels" in capsys.readouterr().out


@pytest.mark.e2e
def test_evaluate_names_a_directory_that_is_not_a_run(tmp_path, capsys):
    labelled = tmp_path / "labels.tsv"
    labelled.write_text("甲\t乙\t1\n", encoding="utf-8")
    assert main(["evaluate", "--pairs", str(labelled), "--run", str(tmp_path)]) == 2
    assert "has no _SUCCESS" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("command", ["evaluate", "recall"])
def test_verbose_is_taken_by_recall_and_evaluate_too(command, tmp_path):
    """--verbose is known to every command (a subprocess: it sets the environment its workers inherit)."""
    import subprocess
    import sys
    labelled = tmp_path / "labels.tsv"
    labelled.write_text("甲\t乙\t1\n", encoding="utf-8")
    where = ["--run", str(tmp_path)] if command == "evaluate" else ["--top-k=0"]
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", command, "--pairs", str(labelled), *where,
                             "--verbose"], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert ("has no _SUCCESS" if command == "evaluate" else "--top-k must be at least 1") in result.stderr
