"""Nightly extensions against full runs: exactness, drift from a fresh full run, and what a night costs.

The corpus is every distinct question of LCQMC dev (15,807 texts). A share of them
(`--new`, picked by a hash of the id) arrives "tonight"; the rest was deduplicated
"yesterday". Runs of the real pipeline with a tiny random cross-encoder (its scores
are meaningless, so the groups are too; what is compared is the machinery):

  yesterday:   the old questions, from scratch
  extension:   `--existing yesterday` with tonight's questions
  params-from: everything, `--params-from yesterday --previous-groups yesterday` (must equal the extension)
  fresh:       everything from scratch (refits the idf and the partitions' centroids)

Per share: whether extension == params-from (groups, ids, pairs, scores), and how far the
extension is from a fresh full run: rows whose group has exactly the same members, pairwise
precision / recall of "same group", and pairs scored by each.

`--cost`: the extension of the smallest share against a fresh full run, timed interleaved
(E F F E ...) `--repeat` times: wall seconds, pairs scored, bytes read and written.

    python -m benchmarks.bench_incremental [--new 0.02 0.10 0.33] [--cost --repeat 5] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
import zlib
from itertools import combinations

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.bench_lexical_recall import DEFAULT_PAIRS
from pipelines.cli import main as qdedup
from pipelines.random_model import make_random_model
from pipelines.recall import read_labelled_pairs

RUNNER = ["--runner=FnApiRunner"]


def _write(rows: list[tuple[int, str]], path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table({"id": pa.array([r[0] for r in rows], pa.int64()),
                             "question": pa.array([r[1] for r in rows], pa.string())}), path)


def _run(out: str, pattern: str, model: str, *extra: str) -> tuple[dict, float]:
    shutil.rmtree(out, ignore_errors=True)
    started = time.monotonic()
    if qdedup(["run", "--input", pattern, "--output", out, "--scorer-model", model, *RUNNER, *extra]) != 0:
        raise SystemExit(f"run {out} failed")
    seconds = time.monotonic() - started
    with open(os.path.join(out, "report.json"), encoding="utf-8") as handle:
        return json.load(handle), seconds


def _members(out: str) -> dict:
    members: dict = {}
    for row in pq.read_table(os.path.join(out, "groups"), columns=["id", "group_id"]).to_pylist():
        members.setdefault(row["group_id"], set()).add(row["id"])
    return {i: frozenset(group) for group in members.values() for i in group}


def _groups(out: str) -> dict:
    return {r["id"]: (r["group_id"], r["canonical_id"], r["match_kind"]) for r in
            pq.read_table(os.path.join(out, "groups"), columns=["id", "group_id", "canonical_id", "match_kind"])
            .to_pylist()}


def _pairs(out: str) -> dict:
    return {(r["id_a"], r["id_b"]): r["score"] for r in
            pq.read_table(os.path.join(out, "pairs"), columns=["id_a", "id_b", "score"]).to_pylist()}


def agreement(a: dict, b: dict) -> dict:
    same_rows = sum(1 for i in a if a[i] == b.get(i))
    pairs_a = {p for g in set(a.values()) for p in combinations(sorted(g), 2)}
    pairs_b = {p for g in set(b.values()) for p in combinations(sorted(g), 2)}
    both = len(pairs_a & pairs_b)
    return {"rows_with_identical_group": round(same_rows / len(a), 4),
            "same_group_pairs_precision": round(both / len(pairs_a), 4) if pairs_a else 1.0,
            "same_group_pairs_recall": round(both / len(pairs_b), 4) if pairs_b else 1.0}


def _bytes(paths: list[str]) -> int:
    return sum(os.path.getsize(p) for p in paths)


def _output_files(out: str) -> list[str]:
    with open(os.path.join(out, "_SUCCESS"), encoding="utf-8") as handle:
        return [os.path.join(out, f) for f in json.load(handle)["files"]] + [os.path.join(out, "_SUCCESS")]


def _read_by_extension(previous: str) -> list[str]:
    """What an extension reads of the run it extends: everything in its marker but groups' other columns,
    lineage, rejected and the reports (an upper bound: groups/ is read whole here)."""
    return [p for p in _output_files(previous)
            if "/lineage/" not in p and "/rejected/" not in p and not p.endswith((".html", "report.json"))]


def split(rows: list, share: float) -> tuple[list, list]:
    tonight = [r for r in rows if zlib.crc32(str(r[0]).encode()) % 10_000 < share * 10_000]
    chosen = {r[0] for r in tonight}
    return [r for r in rows if r[0] not in chosen], tonight


def drift(work: str, rows: list, share: float, model: str, flags: list[str], fresh: str) -> dict:
    base = os.path.join(work, f"share{share}")
    yesterday_rows, tonight_rows = split(rows, share)
    _write(yesterday_rows, os.path.join(base, "in", "yesterday", "q.parquet"))
    _write(tonight_rows, os.path.join(base, "in", "tonight", "q.parquet"))
    yesterday = os.path.join(base, "yesterday")
    _, yesterday_s = _run(yesterday, os.path.join(base, "in", "yesterday", "q.parquet"), model, *flags)
    extension = os.path.join(base, "extension")
    ext, ext_s = _run(extension, os.path.join(base, "in", "tonight", "q.parquet"), model, *flags,
                      f"--existing={yesterday}")
    params = os.path.join(base, "params_from")
    _write(yesterday_rows, os.path.join(base, "in", "all", "a.parquet"))
    _write(tonight_rows, os.path.join(base, "in", "all", "b.parquet"))
    full, full_s = _run(params, os.path.join(base, "in", "all", "*.parquet"), model, *flags,
                        f"--params-from={yesterday}", f"--previous-groups={yesterday}")
    fresh_report = json.load(open(os.path.join(fresh, "report.json"), encoding="utf-8"))
    ext_pairs, full_pairs = _pairs(extension), _pairs(params)
    return {
        "share_new": share, "yesterday_rows": len(yesterday_rows), "tonight_rows": len(tonight_rows),
        "extension_equals_params_from": {
            "groups": _groups(extension) == _groups(params),
            "pair_set": ext_pairs.keys() == full_pairs.keys(),
            "max_score_difference": max((abs(ext_pairs[p] - full_pairs[p]) for p in ext_pairs.keys() & full_pairs),
                                        default=0.0)},
        "pairs_scored": {"extension": ext["pairs_scored"] + ext["resplit_pairs_scored"],
                         "params_from": full["pairs_scored"] + full["resplit_pairs_scored"],
                         "fresh": fresh_report["pairs_scored"] + fresh_report["resplit_pairs_scored"]},
        "pairs_reused": {"extension": ext["pairs_reused"], "params_from": full["pairs_reused"]},
        "extension_vs_fresh": agreement(_members(extension), _members(fresh)),
        "blocking_pairs": {"extension": ext["candidate_pairs"], "fresh": fresh_report["candidate_pairs"],
                           "in_both": len(set(ext_pairs) & set(_pairs(fresh)))},
        "seconds": {"yesterday": round(yesterday_s, 1), "extension": round(ext_s, 1), "params_from": round(full_s, 1)},
    }


def cost(work: str, rows: list, share: float, model: str, flags: list[str], repeat: int) -> dict:
    """Extension (E) against a fresh full run (F), interleaved E F F E E F ...: wall seconds, bytes."""
    base = os.path.join(work, f"share{share}")
    yesterday = os.path.join(base, "yesterday")
    tonight = os.path.join(base, "in", "tonight", "q.parquet")
    everything = os.path.join(base, "in", "all", "*.parquet")
    order = [("E", "F") if i % 2 == 0 else ("F", "E") for i in range(repeat)]
    seconds: dict = {"E": [], "F": []}
    reports: dict = {}
    for pair in order:
        for variant in pair:
            if variant == "E":
                reports["E"], s = _run(os.path.join(base, "cost_E"), tonight, model, *flags, f"--existing={yesterday}")
            else:
                reports["F"], s = _run(os.path.join(base, "cost_F"), everything, model, *flags)
            seconds[variant].append(s)
    inputs = {"E": [tonight], "F": [os.path.join(base, "in", "all", f) for f in ("a.parquet", "b.parquet")]}
    figures = {}
    for variant, name in (("E", "extension"), ("F", "full")):
        read = inputs[variant] + (_read_by_extension(yesterday) if variant == "E" else [])
        report = reports[variant]
        figures[name] = {
            "wall_seconds_median": round(statistics.median(seconds[variant]), 1),
            "wall_seconds_min_max": [round(min(seconds[variant]), 1), round(max(seconds[variant]), 1)],
            "pairs_scored": report["pairs_scored"] + report["resplit_pairs_scored"],
            "pairs_reused": report["pairs_reused"] + report["resplit_pairs"] - report["resplit_pairs_scored"],
            "bytes_read": _bytes(read),
            "bytes_written": _bytes(_output_files(os.path.join(base, f"cost_{variant}"))),
            "stage_seconds": report["stage_seconds"],
        }
    figures["order"] = " ".join(v for pair in order for v in pair)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--new", type=float, nargs="+", default=[0.02, 0.10, 0.33],
                        help="shares of questions that arrive tonight")
    parser.add_argument("--work", default="/tmp/qdedup-incremental")
    parser.add_argument("--flags", default="", help="more qdedup run options for every run, space-separated")
    parser.add_argument("--cost", action="store_true", help="also time the smallest share against a full run")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    flags = args.flags.split()
    shutil.rmtree(args.work, ignore_errors=True)
    texts = sorted({t for a, b, _ in read_labelled_pairs(DEFAULT_PAIRS) for t in (a, b)})
    rows = list(enumerate(texts, start=1))
    model = make_random_model(os.path.join(args.work, "model"))
    _write(rows, os.path.join(args.work, "in", "all", "q.parquet"))
    fresh = os.path.join(args.work, "fresh")
    fresh_report, fresh_s = _run(fresh, os.path.join(args.work, "in", "all", "q.parquet"), model, *flags)
    results = {"questions": len(rows), "flags": flags, "fresh_seconds": round(fresh_s, 1),
               "fresh_groups": fresh_report["groups"], "shares": []}
    for share in args.new:
        results["shares"].append(drift(args.work, rows, share, model, flags, fresh))
        print(json.dumps(results["shares"][-1], indent=2), flush=True)
    if args.cost:
        results["cost"] = cost(args.work, rows, min(args.new), model, flags, args.repeat)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
