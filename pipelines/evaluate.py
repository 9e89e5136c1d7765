"""`qdedup evaluate (--pairs FILE | --sheet SHEET...) --run OUT_DIR`: how well a run's groups match labels.

With --sheet (labelled review sheets, `qdedup review`), the estimates with 95% intervals of
`pipelines/estimates.py`. With --pairs (any labelled pairs):

Labelled pairs whose two questions are both grouped by the run are judged:
"same group" against the label gives pairwise precision, recall and F1. A
sweep over thresholds uses the scores in `pairs/` (a pair the run never scored
counts as a non-duplicate at every threshold; exact duplicates as duplicates)
to show which `--threshold` would have served these labels best.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipelines.estimates import FIGURES, Unit, estimates
from pipelines.preflight import inspect_input
from pipelines.recall import read_labelled_pairs
from pipelines.review import RunTexts, read_sheets, run_id_parser
from transforms.chaining import RESPLIT
from transforms.commit import add_to_output, parquet_rows, read_committed
from transforms.errors import QdedupError
from transforms.normalize import normalize_text
from transforms.paths import join, write_atomically
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


def sheet_figures(paths: Sequence[str], run: str) -> dict:
    """`evaluate --sheet`: the estimates of `pipelines/estimates.py` from labelled review sheets of `run`."""
    labelled, skipped, sizes = read_sheets(paths)
    committed = read_committed(run, "--run")
    drawn_from = {pair.run_id for pair in labelled}
    if drawn_from and drawn_from != {committed.run_id}:
        raise QdedupError(f"the sheets were drawn from run {drawn_from.pop()}, --run {run!r} holds run "
                          f"{committed.run_id}: estimates are only valid on the run a sheet was drawn from")
    texts = RunTexts(committed)
    parse = run_id_parser(texts)
    wanted = {}
    for pair in labelled:
        a, b = parse(pair.id_a, pair.where), parse(pair.id_b, pair.where)
        for row_id in (a, b):
            if row_id not in texts.group_of:
                raise QdedupError(f"{pair.where}: id {row_id!r} is not a grouped text of run {committed.run_id}")
        wanted[(a, b)] = pair
    scored = {}
    for row in texts.pairs():
        for key in ((row["id_a"], row["id_b"]), (row["id_b"], row["id_a"])):
            if key in wanted:
                scored[key] = (row["score"], row["source"])
    units = []
    for (a, b), pair in wanted.items():
        score, source = scored.get((a, b), (None, None))
        units.append(Unit(pair.stratum, pair.label, texts.group_of[a] == texts.group_of[b],
                          score is not None and source != RESPLIT, score,
                          texts.rows_of.get(a, 1) * texts.rows_of.get(b, 1)))
    exact = sum(count * (count - 1) // 2 for count in texts.rows_of.values())
    figures = estimates(units, sizes, exact, committed.configuration["threshold"])
    return {"sheets": list(paths), "run_id": committed.run_id, "labelled_pairs": len(units),
            "skipped_rows": skipped, "run_threshold": committed.configuration["threshold"],
            "exact_row_pairs": exact, "estimator": ESTIMATOR, **figures}


ESTIMATOR = ("stratified simple random sampling without replacement (review sheet strata); totals by "
             "stratified Horvitz-Thompson, proportions as ratios of totals with Taylor-linearized variance; "
             "95% Korn-Graubard intervals (Clopper-Pearson on the effective sample size, Satterthwaite degrees "
             "of freedom); best threshold: stratified bootstrap "
             "percentiles (200 replicates). Universe: the run's scored pairs, the pairs of texts it grouped "
             "without scoring, and the pairs blocking proposes with more neighbours (review's beyond_top_k "
             "stratum); duplicates outside it are not estimated.")


def evaluate(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="qdedup evaluate")
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--pairs", help="labelled pairs: TSV, CSV or Parquet of text_a, text_b, label")
    given.add_argument("--sheet", nargs="+", help="review sheets of the run (`qdedup review`), labelled")
    parser.add_argument("--run", required=True, help="a finished run's --output directory")
    parser.add_argument("--report", help="write the figures here as JSON (default: RUN/evaluation.json, "
                                         "and RUN/report.html is redrawn with them)")
    parser.add_argument("--verbose", action="store_true", help="show every library's log lines")
    args = parser.parse_args(argv)
    if args.sheet:
        figures = sheet_figures(args.sheet, args.run)
    else:
        pairs = read_labelled_pairs(args.pairs)
        configuration, ids_of_text, group_of, score_of = _run_inputs(args.run)
        result = evaluate_groups(pairs, ids_of_text, group_of)
        sweep = threshold_sweep(pairs, ids_of_text, score_of)
        best = max(sweep, key=lambda row: (row["f1"], -abs(row["threshold"] - configuration["threshold"])))
        figures = {"groups": result, "run_threshold": configuration["threshold"], "sweep": sweep,
                   "best_threshold": best["threshold"]}
    if args.report:
        write_atomically(args.report, json.dumps(figures, ensure_ascii=False, indent=2).encode("utf-8"))
    else:
        publish_evaluation(args.run, figures)
    (_print_sheet if args.sheet else _print)(args.sheet or args.pairs, figures)
    return 0


def publish_evaluation(run: str, figures: dict) -> None:
    """evaluation.json into the run's output, and report.html redrawn with it (`commit.add_to_output`: under
    the output's lock, each file replaced whole, then listed in the marker)."""
    from pipelines.report import gather, render

    committed = read_committed(run, "--run")
    files: dict = {}
    for relative in committed.files:
        folder, _, _ = relative.rpartition("/")
        files.setdefault(folder, []).append(join(committed.root, relative))
    page = render(committed.report, gather(files, committed.report), figures)
    add_to_output(run, "--run", {"evaluation.json": json.dumps(figures, ensure_ascii=False, indent=2).encode("utf-8"),
                                 "report.html": page.encode("utf-8")})


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


def _interval(figure: dict) -> str:
    low, high = figure["ci95"]
    if figure["estimate"] is None:
        return "n/a (no labelled pair bears on it)"
    return f"{figure['estimate']:.4f} (95% CI {low:.4f}–{high:.4f}, {figure['labelled_pairs']} labelled pairs)"


def _print_sheet(paths: Sequence[str], figures: dict) -> None:
    print(f"{', '.join(paths)}: {figures['labelled_pairs']} labelled pairs of run {figures['run_id']} "
          f"({figures['skipped_rows']} rows skipped: blank, ? or unsure)")
    for name, label in FIGURES:
        print(f"  {label}: {_interval(figures[name])}")
    best = figures["best_threshold"]
    if best["estimate"] is not None:
        low, high = best["ci95"]
        print(f"  best threshold for pair F1: {best['estimate']:.2f} (95% CI {low:.2f}–{high:.2f}; the run used "
              f"{figures['run_threshold']})")
    if figures["strata_without_labels"]:
        left_out = ", ".join(figures["strata_without_labels"])
        print(f"  strata with no labelled pair, left out of every estimate: {left_out}", file=sys.stderr)
    beyond = "beyond_top_k" in figures["strata"]
    print("  universe: the run's scored pairs, the pairs of texts it grouped without scoring"
          + (", and the pairs blocking proposes with more neighbours" if beyond else
             " (no beyond_top_k stratum: blocking's misses are not sampled, so recall is over-estimated)")
          + "; duplicates outside it cannot be estimated")
