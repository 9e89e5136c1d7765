"""The static embedder (`qdedup train-blocker`) against lexical blocking: held-out recall, and CPU per question.

Trains with the command's defaults on the shared BQ and LCQMC dev pairs (one
training: it is deterministic for its seed), prints the held-out recall@5 and
recall@20 of the static embedder, of lexical blocking and of the two united
(over every distinct question of both files, by file), then times embedding
every distinct question: lexical TF-IDF (sparse, as `EmbedLexical` makes it)
against static (as `EmbedStatic` makes it), interleaved A B B A, --repeat runs
each, median (min-max) of CPU microseconds per question.

    python -m benchmarks.bench_blocker [--output DIR] [--repeat 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from pipelines.recall import read_labelled_pairs
from pipelines.train_blocker import TrainSettings, fit_idf, train, write_atomically
from transforms.embed import static_vector, tfidf_sparse
from transforms.normalize import normalize_text

SHARED = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data"))
FILES = [os.path.join(SHARED, "bq", "dev.csv"), os.path.join(SHARED, "lcqmc", "dev.tsv")]


def per_question_us(embed, texts) -> float:
    started = time.process_time()
    for text in texts:
        embed(text)
    return (time.process_time() - started) / len(texts) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=None, help="where the trained embedder is written (default: a temp dir)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    settings = TrainSettings()
    started = time.perf_counter()
    table, config = train(FILES, settings)
    training_seconds = time.perf_counter() - started
    output = args.output or os.path.join(tempfile.mkdtemp(prefix="bench-blocker-"), "blocker")
    write_atomically(output, table, config, overwrite=True)

    texts = sorted({normalize_text(t) for path in FILES for a, b, _ in read_labelled_pairs(path) for t in (a, b)})
    idf = fit_idf(texts, settings.lexical_dim)
    methods = {"lexical": lambda text: tfidf_sparse(text, idf), "static": lambda text: static_vector(text, table)}
    runs: dict = {name: [] for name in methods}
    order = ["lexical", "static", "static", "lexical"] * (args.repeat // 2) + ["lexical", "static"] * (args.repeat % 2)
    for name in order:
        runs[name].append(per_question_us(methods[name], texts))
    speed = {name: {"median": round(statistics.median(v), 1), "min": round(min(v), 1), "max": round(max(v), 1),
                    "runs": len(v)} for name, v in runs.items()}
    print(json.dumps({"embedder": output, "training_seconds": round(training_seconds, 1),
                      "settings": config["trained"], "heldout": config["heldout"], "questions": len(texts),
                      "cpu_us_per_question": speed}, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
