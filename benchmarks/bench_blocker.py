"""The static embedder (`qdedup train-blocker`) against lexical blocking: held-out recall, and CPU per question.

The shared BQ and LCQMC dev pairs are split by connected components of their
pair graph (positives and negatives; `held_out_questions`, seeded): --heldout
of the positive pairs go to a held-out part that shares no question with the
rest. The embedder is trained on the rest with the command's defaults (one
training: it is deterministic for its seed), then `qdedup recall` measures each
file's held-out pairs (its questions are the corpus, as the command does) with
lexical, static and both embedders at each --ks: recall of positives and
candidate pairs per question, so that the union at k (up to 2k neighbours a
question) can be read against each alone at 2k. Then CPU microseconds per
question of embedding every distinct question: lexical TF-IDF (sparse, as
`EmbedLexical` makes it) against static (as `EmbedStatic` makes it),
interleaved A B B A, --repeat runs each, median (min-max).

    python -m benchmarks.bench_blocker [--output DIR] [--heldout 0.2] [--ks 5,10,20,40] [--repeat 5]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.recall import read_labelled_pairs, recall
from pipelines.train_blocker import TrainSettings, held_out_questions, train, write_atomically
from transforms.embed import EMBED_BATCH, fit_idf, static_rows, tfidf_rows
from transforms.normalize import normalize_text

SHARED = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data"))
FILES = {"bq": os.path.join(SHARED, "bq", "dev.csv"), "lcqmc": os.path.join(SHARED, "lcqmc", "dev.tsv")}
EMBEDDERS = ("lexical", "static", "lexical,static")


def per_question_us(embed, texts) -> float:
    """CPU a question of `embed` over the texts, `EMBED_BATCH` at a time, as the pipeline's embedders take them."""
    started = time.process_time()
    for start in range(0, len(texts), EMBED_BATCH):
        embed(texts[start:start + EMBED_BATCH])
    return (time.process_time() - started) / len(texts) * 1e6


def split(share: float, seed: int) -> tuple[list, dict]:
    """(training pairs of both files, {file: its held-out pairs}); pairs as (text_a, text_b, label)."""
    labelled = {name: [(a, b, label) for a, b, label in read_labelled_pairs(path)
                       if isinstance(a, str) and isinstance(b, str) and normalize_text(a) and normalize_text(b)]
                for name, path in FILES.items()}
    flat = [(name, a, b, label) for name, pairs in labelled.items() for a, b, label in pairs]
    texts = sorted({normalize_text(t) for _, a, b, _ in flat for t in (a, b)})
    index = {text: i for i, text in enumerate(texts)}
    edges = [(index[normalize_text(a)], index[normalize_text(b)]) for _, a, b, _ in flat]
    positives = [edge for edge, (_, _, _, label) in zip(edges, flat) if label == 1]
    held = held_out_questions(texts, edges, positives, share, seed)
    training, heldout = [], {}
    for (a_index, _), (name, a, b, label) in zip(edges, flat):
        if a_index in held:
            heldout.setdefault(name, []).append((a, b, label))
        else:
            training.append((a, b, label))
    return training, heldout


def write_pairs(pairs: list, path: str) -> str:
    pq.write_table(pa.table({"text_a": [a for a, _, _ in pairs], "text_b": [b for _, b, _ in pairs],
                             "label": [label for _, _, label in pairs]}), path)
    return path


def recall_of(pairs_file: str, embedders: str, k: int, work: str) -> dict:
    report = os.path.join(work, "recall.json")
    with contextlib.redirect_stdout(io.StringIO()):
        code = recall(["--pairs", pairs_file, "--report", report, "--runner=FnApiRunner",
                       f"--embedders={embedders}", f"--top-k={k}"])
    if code:
        raise SystemExit(f"qdedup recall failed on {pairs_file} ({embedders}, k={k})")
    with open(report) as handle:
        figures = json.load(handle)
    return {"recall": round(figures["positive_recall"], 4),
            "candidates_per_question": round(figures["candidates_per_question"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=None, help="where the trained embedder is written (default: a temp dir)")
    parser.add_argument("--heldout", type=float, default=0.2, help="share of positive pairs held out, by component")
    parser.add_argument("--ks", default="5,10,20,40")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-blocker-")
    settings = TrainSettings(heldout=0.0)
    training, heldout = split(args.heldout, settings.seed)
    started = time.perf_counter()
    table, config = train([write_pairs(training, os.path.join(work, "train.parquet"))], settings)
    training_seconds = time.perf_counter() - started
    output = args.output or os.path.join(work, "blocker")
    write_atomically(output, table, config, overwrite=True)

    recalls: dict = {}
    for name, pairs in sorted(heldout.items()):
        path = write_pairs(pairs, os.path.join(work, f"{name}-heldout.parquet"))
        recalls[name] = {"pairs": len(pairs), "positives": sum(label for _, _, label in pairs)}
        for k in (int(k) for k in args.ks.split(",")):
            for embedders in EMBEDDERS:
                spec = embedders.replace("static", f"static:{output}")
                recalls[name][f"{embedders}@{k}"] = recall_of(path, spec, k, work)

    texts = sorted({normalize_text(t) for path in FILES.values() for a, b, _ in read_labelled_pairs(path)
                    for t in (a, b) if isinstance(t, str)})
    idf = fit_idf(texts, settings.lexical_dim)
    methods = {"lexical": lambda texts: tfidf_rows(texts, idf), "static": lambda texts: static_rows(texts, table)}
    runs: dict = {name: [] for name in methods}
    order = ["lexical", "static", "static", "lexical"] * (args.repeat // 2) + ["lexical", "static"] * (args.repeat % 2)
    for name in order:
        runs[name].append(per_question_us(methods[name], texts))
    speed = {name: {"median": round(statistics.median(v), 1), "min": round(min(v), 1), "max": round(max(v), 1),
                    "runs": len(v)} for name, v in runs.items()}
    print(json.dumps({"embedder": output, "training_seconds": round(training_seconds, 1),
                      "training_pairs": len(training), "settings": config["trained"], "heldout_recall": recalls,
                      "questions": len(texts), "cpu_us_per_question": speed}, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
