"""`qdedup evaluate --pairs FILE --run OUT_DIR`: how well a run's groups match labelled pairs.

Labelled pairs whose two questions are both grouped by the run are judged:
"same group" against the label gives pairwise precision, recall and F1. A
sweep over thresholds uses the scores in `pairs/` (a pair the run never scored
counts as a non-duplicate at every threshold; exact duplicates as duplicates)
to show which `--threshold` would have served these labels best.
"""
from __future__ import annotations

import argparse
import json
from typing import Iterator, Optional, Sequence

import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipelines.preflight import inspect_input
from pipelines.recall import read_labelled_pairs
from transforms.commit import read_committed
from transforms.normalize import normalize_text
from transforms.paths import join
from transforms.records import Columns

THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))


def prf(tp: int, fp: int, fn: int) -> dict:
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = (2 * precision * recall / (precision + recall)) if precision and recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def evaluate_groups(pairs: Sequence[tuple[str, str, int]], ids_of_text: dict, group_of: dict) -> dict:
    """Pairwise precision/recall/F1 of "same group" over labelled pairs whose texts the run grouped."""
    tp = fp = fn = judged = 0
    for a, b, label in pairs:
        if a not in ids_of_text or b not in ids_of_text:
            continue
        judged += 1
        same = group_of[ids_of_text[a]] == group_of[ids_of_text[b]]
        tp += same and label == 1
        fp += same and label == 0
        fn += (not same) and label == 1
    return {"pairs_judged": judged, "pairs_not_in_run": len(pairs) - judged, **prf(tp, fp, fn)}


def threshold_sweep(pairs: Sequence[tuple[str, str, int]], ids_of_text: dict, score_of: dict,
                    thresholds: Sequence[float] = THRESHOLDS) -> list[dict]:
    """Per threshold, pair-level precision/recall/F1 of `score >= threshold` (no transitivity)."""
    judged = []
    for a, b, label in pairs:
        if a not in ids_of_text or b not in ids_of_text:
            continue
        if normalize_text(a) == normalize_text(b):
            judged.append((1.0, label))
            continue
        pair = tuple(sorted((ids_of_text[a], ids_of_text[b])))
        judged.append((score_of.get(pair), label))
    rows = []
    for threshold in thresholds:
        tp = sum(1 for s, label in judged if s is not None and s >= threshold and label == 1)
        fp = sum(1 for s, label in judged if s is not None and s >= threshold and label == 0)
        fn = sum(1 for s, label in judged if (s is None or s < threshold) and label == 1)
        rows.append({"threshold": threshold, **prf(tp, fp, fn)})
    return rows


def parquet_rows(paths: Sequence[str], columns: list[str]) -> Iterator[dict]:
    """The rows of Parquet files, local or remote, a row group at a time (never a whole file held)."""
    for path in sorted(paths):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            parquet = pq.ParquetFile(handle)
            for group in range(parquet.num_row_groups):
                yield from parquet.read_row_group(group, columns=columns).to_pylist()


def _run_inputs(run: str) -> tuple[dict, dict, dict, dict]:
    committed = read_committed(run, "--run")
    configuration = committed.configuration
    groups = parquet_rows(committed.paths("groups", ".parquet"), ["id", "group_id"])
    group_of = {row["id"]: row["group_id"] for row in groups}
    score_of = {(row["id_a"], row["id_b"]): row["score"]
                for row in parquet_rows(committed.paths("pairs", ".parquet"), ["id_a", "id_b", "score"])}
    columns = Columns(configuration["id_column"], configuration["text_column"])
    ids_of_text: dict = {}
    for path in inspect_input(configuration["input"], columns).files:  # the texts behind the run's ids
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            table = pq.read_table(handle, columns=[columns.id, columns.text])
        for row_id, text in zip(table.column(0).to_pylist(), table.column(1).to_pylist()):
            if row_id in group_of and isinstance(text, str):
                ids_of_text.setdefault(text, row_id)
    # An extended run's older questions are not in its --input: its state/ has their texts.
    for rep in parquet_rows(committed.paths("state/representatives", ".parquet"), ["id", "text"]):
        ids_of_text.setdefault(rep["text"], rep["id"])
    return configuration, ids_of_text, group_of, score_of


def evaluate(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="qdedup evaluate")
    parser.add_argument("--pairs", required=True, help="labelled pairs: TSV, CSV or Parquet of text_a, text_b, label")
    parser.add_argument("--run", required=True, help="a finished run's --output directory")
    parser.add_argument("--report", help="write the figures here as JSON (default: RUN/evaluation.json)")
    parser.add_argument("--verbose", action="store_true", help="show every library's log lines")
    args = parser.parse_args(argv)
    pairs = read_labelled_pairs(args.pairs)
    configuration, ids_of_text, group_of, score_of = _run_inputs(args.run)
    result = evaluate_groups(pairs, ids_of_text, group_of)
    sweep = threshold_sweep(pairs, ids_of_text, score_of)
    best = max(sweep, key=lambda row: (row["f1"], -abs(row["threshold"] - configuration["threshold"])))
    figures = {"groups": result, "run_threshold": configuration["threshold"], "sweep": sweep,
               "best_threshold": best["threshold"]}
    report = args.report or join(args.run, "evaluation.json")
    with FileSystems.create(report) as handle:
        handle.write(json.dumps(figures, indent=2).encode("utf-8"))
    _print(args.pairs, figures)
    return 0


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _print(path: str, figures: dict) -> None:
    groups = figures["groups"]
    print(f"{path}: {groups['pairs_judged']} labelled pairs judged ({groups['pairs_not_in_run']} not in the run)")
    print(f"groups of the run (threshold {figures['run_threshold']}): precision {_fmt(groups['precision'])}, "
          f"recall {_fmt(groups['recall'])}, F1 {_fmt(groups['f1'])}")
    print("| threshold | precision | recall | F1 |\n| --- | --- | --- | --- |")
    for row in figures["sweep"]:
        print(f"| {row['threshold']:.2f} | {_fmt(row['precision'])} | {_fmt(row['recall'])} | {_fmt(row['f1'])} |")
    print(f"best threshold for these labels: {figures['best_threshold']:.2f}")
