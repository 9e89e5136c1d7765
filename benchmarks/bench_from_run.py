"""What `qdedup train-blocker --from-run` costs: the mining run and the training, for ~100k mined pairs.

The distinct questions of the shared BQ and LCQMC dev pairs become a corpus; `qdedup run` (configs/local.yaml,
one process) deduplicates it with a tiny random scorer; then `qdedup train-blocker --from-run` mines each
question's --mine-top-k nearest, scores them through the run's scoring stage and trains on at most
--max-pairs of them. Seconds of each phase are printed with the pair counts.

The scorer is random (no model weights can be downloaded here), so what the embedder learns is noise: these
are costs, not quality. The mining run's time is mostly the scorer's, so with the real cross-encoder it grows
with the model (benchmarks/README.md, scoring); the training does not depend on the scorer.

    python -m benchmarks.bench_from_run [--mine-top-k 10] [--max-pairs 100000]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.bench_blocker import FILES
from pipelines.cli import main as qdedup
from pipelines.random_model import make_random_model
from pipelines.recall import read_labelled_pairs
from pipelines.train_blocker import train_blocker

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mine-top-k", type=int, default=10)
    parser.add_argument("--max-pairs", type=int, default=100_000)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-from-run-")
    texts = sorted({t for path in FILES.values() for a, b, _ in read_labelled_pairs(path) for t in (a, b)
                    if isinstance(t, str) and t.strip()})
    pq.write_table(pa.table({"id": pa.array(range(len(texts)), pa.int64()), "question": texts}),
                   os.path.join(work, "questions.parquet"))
    model = make_random_model(os.path.join(work, "tiny-model"))
    preset = ["--config", os.path.join(HERE, "..", "configs", "local.yaml")]
    run = os.path.join(work, "run")
    started = time.perf_counter()
    assert qdedup(["run", "--input", os.path.join(work, "questions.parquet"), "--output", run,
                   "--scorer-model", model, *preset]) == 0
    run_seconds = time.perf_counter() - started

    mining = {}

    def timed_run(argv: list) -> int:
        began = time.perf_counter()
        code = qdedup(["run", *argv])
        mining["seconds"] = time.perf_counter() - began
        mining["report"] = json.load(open(os.path.join(argv[argv.index("--output") + 1], "report.json")))
        return code

    started = time.perf_counter()
    assert train_blocker(["--from-run", run, "--mine-top-k", str(args.mine_top_k), "--max-pairs",
                          str(args.max_pairs), "--mine-output", os.path.join(work, "mined"),
                          "--output", os.path.join(work, "blocker"), *preset], timed_run) == 0
    total = time.perf_counter() - started
    with open(os.path.join(work, "blocker", "embedder.json")) as handle:
        trained = json.load(handle)["trained"]
    print(json.dumps({"questions": len(texts), "run_seconds": round(run_seconds, 1),
                      "mine_top_k": args.mine_top_k, "mined_pairs": mining["report"]["pairs_total"],
                      "mining_run_seconds": round(mining["seconds"], 1),
                      "pairs_sampled": trained["mined_pairs"], "positives_trained_on": trained["positive_pairs"],
                      "questions_trained_on": trained["questions"],
                      "training_seconds": round(total - mining["seconds"], 1), "work": work}, indent=1))


if __name__ == "__main__":
    main()
