"""How much a pair's score moves when the same batch is scored on another kind of CPU.

A run's scores are the same to the last bit from run to run on one machine, but
the libraries under torch pick their kernels by the CPU's instruction set
(torch's own, oneDNN's, MKL's), and another kernel sums in another order. This
scores the same LCQMC dev pairs, in the same batches, with the random scorer
(weights seeded; no real weights here), once per setting below, each in a fresh
process, and compares every score with the first setting's (this CPU as it is):

    default      this CPU, every library choosing its kernels
    threads-1    the same with one torch thread
    torch-avx2   torch's own kernels limited to AVX2 (ATEN_CPU_CAPABILITY)
    onednn-avx2  oneDNN limited to AVX2 (ONEDNN_MAX_CPU_ISA)
    all-avx2     torch, oneDNN and MKL limited to AVX2: a CPU without AVX-512
    all-sse      the same limited to SSE4: the oldest x86-64 kernels

A setting above what this CPU has changes nothing. Prints one JSON line per
setting: pairs, scores that differ, the largest difference, and pairs on the
other side of 0.5.

    python -m benchmarks.bench_cpu_kinds [--pairs 4096] [--batch 256] [--shape tiny|erlangshen]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
SETTINGS = {
    "default": {},
    "threads-1": {"QDEDUP_BENCH_THREADS": "1"},
    "torch-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "onednn-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "all-avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "all-sse": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}


def score(model: str, pairs: int, batch: int, out: str) -> None:
    """In this process: the first `pairs` LCQMC dev pairs scored in batches of `batch`, saved to `out`."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from transforms.feeding import positive_probability
    from transforms.sources import load_tokenizer
    torch.set_num_threads(int(os.environ.get("QDEDUP_BENCH_THREADS", "2")))
    tokenizer = load_tokenizer(model)
    classifier = AutoModelForSequenceClassification.from_pretrained(model, attn_implementation="sdpa").eval()
    path = os.path.join(os.environ.get("QDEDUP_SHARED_DATA", SHARED_DATA), "lcqmc", "dev.tsv")
    with open(path, encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle][:pairs]
    scores = []
    with torch.inference_mode():
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            inputs = tokenizer([r[0] for r in chunk], [r[1] for r in chunk], padding=True, truncation=True,
                               max_length=512, return_tensors="pt")
            scores.append(positive_probability(classifier, dict(inputs), 1))
    np.save(out, np.concatenate(scores))
    print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=256, help="pairs a batch (256 LCQMC pairs: ~8k tokens)")
    parser.add_argument("--shape", choices=("tiny", "erlangshen"), default="tiny")
    parser.add_argument("--score", nargs=2, metavar=("MODEL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.score:
        score(args.score[0], args.pairs, args.batch, args.score[1])
        return
    from pipelines.random_model import ERLANGSHEN_SHAPE, TINY_SHAPE, make_random_model
    with tempfile.TemporaryDirectory() as work:
        model = make_random_model(os.path.join(work, "model"),
                                  ERLANGSHEN_SHAPE if args.shape == "erlangshen" else TINY_SHAPE)
        reference = None
        for name, env in SETTINGS.items():
            out = os.path.join(work, f"{name}.npy")
            done = subprocess.run([sys.executable, "-m", "benchmarks.bench_cpu_kinds", "--pairs", str(args.pairs),
                                   "--batch", str(args.batch), "--score", model, out],
                                  env={**os.environ, **env}, capture_output=True, text=True, check=True)
            capability = json.loads(done.stdout.strip().splitlines()[-1])["capability"]
            scores = np.load(out)
            reference = scores if reference is None else reference
            print(json.dumps({
                "setting": name, "shape": args.shape, "torch_kernels": capability, "pairs": len(scores),
                "differ": int(np.sum(scores != reference)),
                "max_abs_difference": float(np.max(np.abs(scores.astype(np.float64) - reference))),
                "other_side_of_0.5": int(np.sum((scores >= 0.5) != (reference >= 0.5)))}), flush=True)


if __name__ == "__main__":
    main()
