"""Local runs in one process or several: wall, CPU and peak memory of the same `qdedup run`, side by side.

The corpus is `bench_scale.py`'s (same rows, same tiny random scorer); each mode runs
`configs/local.yaml` with its flags in a fresh process tree, interleaved A B B A ...,
and the figures are medians with min-max.

    python -m benchmarks.bench_local_modes [--rows 30000] [--repeat 5] [--repo DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from benchmarks.bench_scale import run_size

MODES = {
    "in_memory": ["--direct_running_mode=in_memory", "--direct_num_workers=1"],
    "multi_processing": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
}


def interleaved(names: list[str], repeat: int) -> list[str]:
    """A B B A A B ...: each name `repeat` times, neither always first."""
    order = []
    for i in range(repeat):
        order += names if i % 2 == 0 else names[::-1]
    return order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--work", default="/tmp/qdedup-scale")
    parser.add_argument("--repo", default=os.getcwd(), help="the checkout whose code runs (default: this one)")
    args = parser.parse_args()
    model = os.path.join(args.work, "tiny-model")
    if not os.path.isdir(model):
        subprocess.run([sys.executable, "-m", "pipelines.random_model", model], check=True)
    results: dict = {name: [] for name in MODES}
    for name in interleaved(list(MODES), args.repeat):
        result = run_size(args.rows, os.path.abspath(args.repo), args.work, model, MODES[name], max_rss_gib=16.0)
        results[name].append(result)
        print(json.dumps({"mode": name, **{k: result[k] for k in ("wall_s", "cpu_s", "peak_rss_gib")}}), flush=True)
    for name, runs in results.items():
        summary = {"mode": name, "runs": len(runs)}
        for field in ("wall_s", "cpu_s", "peak_rss_gib", "cpu_outside_model_us_per_pair"):
            values = [run[field] for run in runs]
            summary[field] = f"{statistics.median(values):g} ({min(values):g}-{max(values):g})"
        summary["score_stage_s"] = statistics.median(run["stage_seconds"].get("score", 0.0) for run in runs)
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
