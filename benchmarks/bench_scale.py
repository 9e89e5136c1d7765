"""A whole `qdedup run` against corpus size: wall, CPU, CPU per pair outside the model, peak memory.

Synthetic corpora are made from the unique questions of the shared LCQMC and BQ
files (`../shared/data`), seeded by row so every size is the same corpus on
every run, rows shuffled by a seeded permutation, written as Parquet files of
at most 250,000 rows in row groups of 50,000:

- one text with min(100,000, N/10) exact copies (a hot exact-duplicate key);
- one hot template: 3% of the rows are near-copies of one question (one
  character substituted or inserted), which all fall into one blocking
  partition (30,000 at 1M rows);
- 10% exact copies of base questions;
- the rest: each base question once, then copies with 1-3 random character
  edits (substitution, deletion or insertion of a character of the corpus).

The base questions are the 22,840 shared ones, and, where the rest would hold
more than `ROWS_PER_BASE` rows per base question, as many more as keep it at
that: each the first half of one shared question joined to the second half of
another (`base_families`). So a question has about as many near-copies at every
size (3.4 rows a base question, as the 100k corpus has with the shared
questions alone, which it still is, row for row). Before the twenty-second
session (2026-12-03) the shared questions were the only base at every size: the
300k corpus had 10 rows per base question and the 1M corpus 34, so each row of
the 1M corpus brought 1.51x the pairs of a 300k row (benchmarks/README.md).

Each size runs `qdedup run --config configs/local.yaml` (a worker process per core;
`--config configs/local-one-process.yaml` for one process; before 2026-12-03's twentieth
session `configs/local.yaml` was the one-process preset) with the tiny random
scorer of `pipelines.random_model` in its own process tree, from the code in
`--repo` (default: this checkout; give an older checkout for a before/after).
Reported: wall seconds; CPU seconds (user + sys of every process, from the
kernel's children accounting); CPU outside the model and blocking per
candidate pair = (CPU - `score` stage - `block` stage seconds) / candidate
pairs; blocking CPU per question; peak RSS summed over the run's process tree
(sampled every 0.5 s from /proc, so Linux only), and each process's own peak
(the launcher, which runs Beam's runner, and any worker processes); the stage seconds and the
largest element each bounded step held, from report.json.

    python -m benchmarks.bench_scale [--sizes 100000,300000,1000000] [--repo DIR] [--work DIR]
        [--config configs/local.yaml] [--max-rss-gib GIB] [--allow-edits] [-- EXTRA FLAGS]

--repo must have no uncommitted changes (a worktree of a commit: an edit during an hour-long run would
reach its worker processes half-way).

A run whose processes hold more than --max-rss-gib is stopped (so that it cannot take the machine down)
and reported as stopped, with the time it had run. The default is two thirds of the machine's memory
(`default_max_rss_gib`: 15.7 GiB on the 24 GiB machine; it was 16 GiB on every machine, which stopped
a 16-process run on a 125 GiB GPU machine after 41 s).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.bench_blocking import base_questions, question

FILE_ROWS = 250_000
ROW_GROUP = 50_000
HOT_SHARE = 0.03
EXACT_SHARE = 0.10
MAX_COPIES = 100_000
ROWS_PER_BASE = 3.4  # near-copy rows per base question in the rest: the 100k corpus's with the shared questions


def _sections(n: int) -> tuple[int, int, int, int]:
    """The N-row corpus's rows in order: copies of one text, near-copies of the hot template, exact copies
    of base questions, and the rest (base questions and their edited copies)."""
    copies, hot, exact = min(MAX_COPIES, n // 10), int(n * HOT_SHARE), int(n * EXACT_SHARE)
    return copies, hot, exact, n - copies - hot - exact


def base_families(shared: list[str], n: int) -> list[str]:
    """The N-row corpus's base questions: the shared ones, then, while the rest would have more than
    `ROWS_PER_BASE` rows per base, spliced ones (half of one shared question, half of another, seeded by
    their index), so that a question's near-copies do not grow in number with the corpus."""
    wanted = math.ceil(_sections(n)[3] / ROWS_PER_BASE)
    bases = list(shared)
    for j in range(len(shared), wanted):
        rng = random.Random(2**40 + j)
        first, second = shared[rng.randrange(len(shared))], shared[rng.randrange(len(shared))]
        bases.append(first[:max(1, len(first) // 2)] + second[len(second) // 2:])
    return bases


def corpus_text(i: int, n: int, base: list[str], alphabet: str) -> str:
    """Row i's text (before shuffling) of the N-row corpus."""
    copies, hot, exact, _ = _sections(n)
    if i < copies:
        return base[len(base) // 2]
    i -= copies
    if i < hot:
        rng = random.Random(-1 - i)
        chars = list(base[len(base) // 3])
        where = rng.randrange(len(chars))
        if rng.random() < 0.5:
            chars[where] = rng.choice(alphabet)
        else:
            chars.insert(where, rng.choice(alphabet))
        return "".join(chars)
    i -= hot
    if i < exact:
        return base[random.Random(10**9 + i).randrange(len(base))]
    return question(i - exact, base, alphabet)


def write_corpus(n: int, folder: str) -> list[str]:
    """The N-row corpus as Parquet files (id, question) under `folder`; returns their paths."""
    shared = base_questions()
    alphabet = "".join(sorted({ch for text in shared for ch in text}))
    base = base_families(shared, n)
    order = np.random.default_rng(n).permutation(n)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for start in range(0, n, FILE_ROWS):
        rows = order[start:start + FILE_ROWS]
        table = pa.table({"id": pa.array(rows, pa.int64()),
                          "question": pa.array([corpus_text(int(i), n, base, alphabet) for i in rows], pa.string())})
        path = os.path.join(folder, f"part-{start // FILE_ROWS:03d}.parquet")
        pq.write_table(table, path, row_group_size=ROW_GROUP)
        paths.append(path)
    return paths


def _tree_usage(root: int) -> dict:
    """{pid: (resident bytes, CPU seconds so far)} of `root` and every process below it."""
    children: dict = {}
    found: dict = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/statm") as handle:
                resident = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
        ppid, cpu = int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
        found[int(entry)] = (resident, cpu)
        children.setdefault(ppid, []).append(int(entry))
    tree, stack = {}, [root]
    while stack:
        pid = stack.pop()
        tree[pid] = found.get(pid, (0, 0.0))
        stack.extend(children.get(pid, []))
    return tree


def _kill_tree(root: int) -> None:
    children: dict = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    children.setdefault(int(handle.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    stack, found = [root], []
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    for pid in found:
        try:
            os.kill(pid, 9)
        except OSError:
            pass


def run_size(n: int, repo: str, work: str, model: str, extra: list[str], max_rss_gib: float,
             config: str = "configs/local.yaml") -> dict:
    data = os.path.join(work, f"corpus-{n}")
    if not os.path.isdir(data):
        write_corpus(n, data)
    out = os.path.join(work, f"out-{n}")
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-c", "from pipelines.cli import main; raise SystemExit(main())", "run",
               "--config", config, "--input", os.path.join(data, "*.parquet"), "--output", out,
               "--scorer-model", model, *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    log = open(os.path.join(work, f"run-{n}.log"), "w")
    process = subprocess.Popen(command, cwd=repo, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                   filter(None, (repo, os.environ.get("PYTHONPATH"))))})
    peak = [0]
    peaks: dict = {}  # pid -> its own peak: where the memory is when the run has worker processes
    cpus: dict = {}  # pid -> its CPU seconds when last sampled (up to 0.5 s short of its total)
    stopped = []

    def sample():
        while process.poll() is None:
            tree = _tree_usage(process.pid)
            peak[0] = max(peak[0], sum(resident for resident, _ in tree.values()))
            for pid, (resident, cpu_so_far) in tree.items():
                peaks[pid] = max(peaks.get(pid, 0), resident)
                cpus[pid] = max(cpus.get(pid, 0.0), cpu_so_far)  # a process gone by this sample reads 0
            if peak[0] > max_rss_gib * 2**30 and not stopped:
                stopped.append(time.perf_counter() - started)
                _kill_tree(process.pid)
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = process.wait()
    wall = time.perf_counter() - started
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    log.close()
    if stopped:
        return {"rows": n, "stopped": f"over {max_rss_gib} GiB resident after {stopped[0]:.0f} s; see {log.name}",
                "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1)}
    if code:
        raise SystemExit(f"the run of {n:,} rows failed ({code}); see {log.name}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with open(os.path.join(out, "report.json")) as handle:
        report = json.load(handle)
    stages = report.get("stage_seconds", {})
    pairs = report["candidate_pairs"] + report.get("resplit_pairs_scored", 0)
    outside = cpu - stages.get("score", 0.0) - stages.get("block", 0.0)
    stage_cpu = report.get("stage_cpu_seconds", {})
    outside_cpu = cpu - stage_cpu.get("score", 0.0) - stage_cpu.get("block", 0.0)
    others = sorted((resident for pid, resident in peaks.items() if pid != process.pid), reverse=True)
    return {"rows": n, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "peak_rss_gib": round(peak[0] / 2**30, 2),
            "peak_rss_gib_launcher": round(peaks.get(process.pid, 0) / 2**30, 2),
            "peak_rss_gib_other_processes": [round(resident / 2**30, 2) for resident in others if resident > 2**26],
            "cpu_s_launcher": round(cpus.get(process.pid, 0.0), 1),
            "cpu_s_other_processes": sorted((round(c, 1) for pid, c in cpus.items() if pid != process.pid and c > 1),
                                            reverse=True),
            "representatives": report["representatives"], "candidate_pairs": report["candidate_pairs"],
            "resplit_pairs_scored": report.get("resplit_pairs_scored", 0),
            "cpu_outside_model_us_per_pair": round(outside / max(pairs, 1) * 1e6, 1),
            "cpu_outside_model_cpu_us_per_pair": round(outside_cpu / max(pairs, 1) * 1e6, 1),
            "block_cpu_us_per_question": round(stages.get("block", 0.0) / max(report["representatives"], 1) * 1e6, 1),
            "stage_seconds": stages, "stage_cpu_seconds": stage_cpu, "largest": report.get("largest_elements",
                                                           {"blocking_work_item":
                                                            report.get("largest_blocking_work_item")}),
            "groups": report["groups"], "largest_group": report["largest_group"],
            "forward_hardware": report.get("forward_hardware")}


MAX_RSS_SHARE = 2 / 3  # of the machine's memory: the default limit on a run's summed resident memory


def default_max_rss_gib() -> float:
    """`MAX_RSS_SHARE` of this machine's physical memory, in GiB, to one decimal."""
    return round(MAX_RSS_SHARE * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,300000,1000000")
    parser.add_argument("--repo", default=os.getcwd(), help="the checkout whose code runs (default: this one)")
    parser.add_argument("--work", default="/tmp/qdedup-scale", help="corpora, model, outputs and logs go here")
    parser.add_argument("--config", default="configs/local.yaml", help="the preset, relative to --repo")
    parser.add_argument("--max-rss-gib", type=float, default=default_max_rss_gib(),
                        help="a run whose processes hold more is stopped, and reported as stopped "
                             "(default: two thirds of this machine's memory)")
    parser.add_argument("extra", nargs="*", help="more `qdedup run` flags, after --")
    parser.add_argument("--allow-edits", action="store_true",
                        help="run from a checkout with uncommitted changes (see below why not)")
    args = parser.parse_args()
    # A run lasts an hour at 1M rows, and its worker processes import modules when they first need them:
    # an edit to the checkout during the run changes the code half-way (one 1M run failed so). Run from a
    # worktree of a fixed commit (`git worktree add /tmp/now HEAD`, then --repo /tmp/now).
    edits = subprocess.run(["git", "-C", args.repo, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    if edits and not args.allow_edits:
        raise SystemExit(f"{args.repo} has uncommitted changes; run from a worktree of a commit (or --allow-edits)")
    os.makedirs(args.work, exist_ok=True)
    model = os.path.join(args.work, "tiny-model")
    if not os.path.isdir(model):
        subprocess.run([sys.executable, "-m", "pipelines.random_model", model], check=True)
    previous = None
    for n in map(int, args.sizes.split(",")):
        result = run_size(n, os.path.abspath(args.repo), args.work, model, args.extra, args.max_rss_gib, args.config)
        if previous and "stopped" not in result:
            result["time_growth_vs_linear"] = round(
                (result["wall_s"] / previous["wall_s"]) / (n / previous["rows"]), 2)
        previous = result if "stopped" not in result else None
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
