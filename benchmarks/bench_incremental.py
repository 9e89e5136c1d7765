"""A nightly extension against a full rerun: pairs scored, seconds, and how far the groups agree.

The corpus is every distinct question of LCQMC dev (15,807). A share of them
(`--new`, 2% by default, picked by a hash of the id) arrives "tonight"; the
rest was deduplicated "yesterday". Three runs of the real pipeline, with a
tiny random cross-encoder (its scores are meaningless, so the groups are too;
what is compared is the machinery):

  full:      everything from scratch (what a nightly job would cost without --existing)
  yesterday: the old questions
  tonight:   `--existing yesterday` with only the new questions

Agreement of tonight with full: the share of rows whose group has exactly the
same members, and pairwise precision / recall of "same group". They differ
where blocking differs: a full run recomputes the lexical idf over all
questions, an extension keeps yesterday's, so pairs whose similarity sits near
--min-similarity (or near a question's k-th neighbour) can flip.

    python -m benchmarks.bench_incremental [--new 0.02] [--work DIR] [--flags=--partitions=1]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import zlib
from itertools import combinations

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.cli import main as qdedup
from tests.conftest import lcqmc_pairs
from tests.model_factory import make_random_model

RUNNER = ["--runner=FnApiRunner"]


def _write(rows: list[tuple[int, str]], path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table({"id": pa.array([r[0] for r in rows], pa.int64()),
                             "question": pa.array([r[1] for r in rows], pa.string())}), path)


def _run(work: str, name: str, pattern: str, model: str, *extra: str) -> tuple[dict, float]:
    started = time.monotonic()
    argv = ["run", "--input", pattern, "--output", os.path.join(work, name), "--scorer-model", model, *RUNNER, *extra]
    if qdedup(argv) != 0:
        raise SystemExit(f"run {name} failed")
    with open(os.path.join(work, name, "report.json"), encoding="utf-8") as handle:
        return json.load(handle), time.monotonic() - started


def _groups(out: str) -> dict:
    members: dict = {}
    for row in pq.read_table(os.path.join(out, "groups"), columns=["id", "group_id"]).to_pylist():
        members.setdefault(row["group_id"], set()).add(row["id"])
    return {i: frozenset(group) for group in members.values() for i in group}


def agreement(a: dict, b: dict) -> dict:
    same_rows = sum(1 for i in a if a[i] == b.get(i))
    pairs_a = {p for g in set(a.values()) for p in combinations(sorted(g), 2)}
    pairs_b = {p for g in set(b.values()) for p in combinations(sorted(g), 2)}
    both = len(pairs_a & pairs_b)
    return {"rows_with_identical_group": same_rows / len(a),
            "same_group_pairs_precision": both / len(pairs_a) if pairs_a else 1.0,
            "same_group_pairs_recall": both / len(pairs_b) if pairs_b else 1.0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--new", type=float, default=0.02, help="share of questions that arrive tonight")
    parser.add_argument("--work", default="/tmp/qdedup-incremental")
    parser.add_argument("--flags", default="", help="more qdedup run options for all three runs, space-separated")
    args = parser.parse_args()
    flags = args.flags.split()
    shutil.rmtree(args.work, ignore_errors=True)
    texts = sorted({t for a, b, _ in lcqmc_pairs() for t in (a, b)})
    rows = list(enumerate(texts, start=1))
    tonight = [r for r in rows if zlib.crc32(str(r[0]).encode()) % 10_000 < args.new * 10_000]
    yesterday = [r for r in rows if r not in set(tonight)]
    _write(yesterday, os.path.join(args.work, "input", "yesterday", "q.parquet"))
    _write(tonight, os.path.join(args.work, "input", "tonight", "q.parquet"))
    _write(yesterday, os.path.join(args.work, "input", "all", "a.parquet"))
    _write(tonight, os.path.join(args.work, "input", "all", "b.parquet"))
    model = make_random_model(os.path.join(args.work, "model"), texts)

    full, full_s = _run(args.work, "full", os.path.join(args.work, "input", "all", "*.parquet"), model, *flags)
    _, old_s = _run(args.work, "yesterday", os.path.join(args.work, "input", "yesterday", "*.parquet"), model,
                    *flags)
    inc, inc_s = _run(args.work, "tonight", os.path.join(args.work, "input", "tonight", "*.parquet"), model,
                      *flags, f"--existing={os.path.join(args.work, 'yesterday')}")
    blocked = {name: {(p["id_a"], p["id_b"]) for p in pq.read_table(os.path.join(args.work, name, "pairs")).to_pylist()
                      if p["source"] != "resplit"} for name in ("full", "tonight")}
    figures = {
        "questions": len(rows), "yesterday": len(yesterday), "tonight": len(tonight),
        "full": {"pairs_scored": full["pairs_scored"] + full["resplit_pairs_scored"], "seconds": round(full_s, 1),
                 "groups": full["groups"]},
        "yesterday_run_seconds": round(old_s, 1),
        "extension": {"pairs_scored": inc["pairs_scored"] + inc["resplit_pairs_scored"], "seconds": round(inc_s, 1),
                      "groups": inc["groups"], "groups_inherited": inc["groups_inherited"],
                      "new_representatives": inc["new_representatives"]},
        "blocking_pairs": {"full": len(blocked["full"]), "extension_total": len(blocked["tonight"]),
                           "only_in_full": len(blocked["full"] - blocked["tonight"]),
                           "only_in_extension": len(blocked["tonight"] - blocked["full"])},
        "agreement": agreement(_groups(os.path.join(args.work, "tonight")), _groups(os.path.join(args.work, "full"))),
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
