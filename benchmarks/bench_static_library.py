"""sentence-transformers' `StaticEmbedding` against qdedup's own static-embedder training (issue 13's library choice).

Every variant trains on the same questions, the same kept positive pairs and the same hard negatives, from
`qdedup train-blocker`'s own split (whole connected components held out, 20% of the positives by default),
for the same epochs and batch size, from the same seed:

- `qdedup`: `pipelines.train_blocker.train_table` — hashed character 1-2-grams, an `EmbeddingBag` with
  sparse Adam, symmetric InfoNCE with in-batch and hard negatives (what `qdedup train-blocker` ships);
- `st-buckets`: sentence-transformers' `StaticEmbedding` over the very same hashed 1-2-gram buckets (a
  `tokenizers` word-level tokenizer whose words are the bucket ids), trained with the library's
  `MultipleNegativesRankingLoss` on (anchor, positive, hard negative) at several learning rates with AdamW
  (the library's own optimizer default; its static-embedding recipe uses a learning rate of 0.2), and
  `qdedup`'s own trainer at the same learning rates;
- `st-chars`: `StaticEmbedding` over single characters, what a character vocabulary like the scorer's offers
  (no bigrams), same loss.

Recall of the held-out positives at k = 5, 10, 20 (either question among the other's k nearest over every
distinct question of the files: the figure `qdedup train-blocker` prints), training seconds, and CPU per
question to embed all the questions (interleaved, `--repeats` times, median and min-max).

sentence-transformers is not a dependency of qdedup: install it beside it to run this
(`pip install sentence-transformers==6.2.0`).

    python -m benchmarks.bench_static_library                  # BQ dev + LCQMC dev from ../shared/data
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import replace

import numpy as np

from benchmarks.bench_blocker import FILES
from pipelines.train_blocker import (
    TrainSettings,
    read_training_pairs,
    recall_at,
    train_table,
    training_split,
)
from transforms.embed import ngram_bucket_rows, static_rows

KS = (5, 10, 20)


def bucket_texts(texts: list[str], buckets: int) -> list[str]:
    """Questions as the words a word-level tokenizer maps to our n-gram buckets (hashed together, as qdedup's
    embedders hash them)."""
    return [" ".join(map(str, row.tolist())) for row in ngram_bucket_rows(texts, buckets)]


def char_text(text: str) -> str:
    return " ".join(text)


def word_tokenizer(vocabulary: list[str]):
    """A `tokenizers` tokenizer: whitespace-separated words -> their index in `vocabulary` (0 for unknown)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    tokenizer = Tokenizer(WordLevel({word: i for i, word in enumerate(vocabulary)}, unk_token=vocabulary[0]))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    return tokenizer


def train_st(inputs: list[str], vocabulary: list[str], split, settings: TrainSettings, learning_rate: float):
    """A StaticEmbedding trained with MultipleNegativesRankingLoss; returns the model."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from sentence_transformers.models import StaticEmbedding

    torch.manual_seed(settings.seed)
    static = StaticEmbedding(word_tokenizer(vocabulary), embedding_dim=settings.dims)
    torch.nn.init.normal_(static.embedding.weight, std=1.0 / settings.dims ** 0.5)
    model = SentenceTransformer(modules=[static], device="cpu")
    loss_fn = MultipleNegativesRankingLoss(model, scale=settings.scale)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(settings.seed)
    anchors = [inputs[a] for a, _ in split.kept]
    partners = [inputs[b] for _, b in split.kept]
    negatives = [inputs[n] for n in split.negatives]
    model.train()
    for _ in range(settings.epochs):
        order = torch.randperm(len(anchors), generator=generator).tolist()
        for start in range(0, len(order), settings.batch_size):
            batch = order[start:start + settings.batch_size]
            features = [model.preprocess([column[i] for i in batch]) for column in (anchors, partners, negatives)]
            loss = loss_fn(features, labels=None)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    return model


def st_vectors(model, inputs: list[str]) -> np.ndarray:
    return model.encode(inputs, batch_size=1024, convert_to_numpy=True, normalize_embeddings=True,
                        show_progress_bar=False).astype(np.float32)


def cpu_us_per_question(embed, count: int) -> float:
    started = time.process_time()
    embed()
    return (time.process_time() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", action="append",
                        default=None, help="labelled pair files (default: BQ dev and LCQMC dev)")
    parser.add_argument("--heldout", type=float, default=0.2)
    parser.add_argument("--epochs", type=int, default=TrainSettings.epochs)
    parser.add_argument("--learning-rates", default="0.003,0.02,0.2",
                        help="for the sentence-transformers runs and qdedup's own (its default: 0.003)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved embedding-speed repetitions")
    args = parser.parse_args()
    import torch
    torch.set_num_threads(1)  # CPU per question on one core, as a worker's embedding step runs

    files = args.pairs or list(FILES.values())
    settings = replace(TrainSettings(), heldout=args.heldout, epochs=args.epochs)
    texts, source, negative_of = read_training_pairs(files)
    split = training_split(texts, source, negative_of, settings)
    print(f"{len(texts)} questions, {len(split.kept)} positives trained on, {len(split.heldout)} held out "
          f"(whole components), {platform.processor() or platform.machine()}", flush=True)
    by_file = {name: [p for p in split.heldout if source[p] == name] for name in sorted(set(source.values()))}
    print(json.dumps({"heldout_positives": {name: len(pairs) for name, pairs in by_file.items()}}), flush=True)

    def measure(name: str, vectors: np.ndarray, seconds: float) -> None:
        row = {"variant": name, "train_s": round(seconds, 1)}
        for file, pairs in by_file.items():
            row[file] = recall_at([vectors], pairs, KS)
            row[f"{file}+lexical"] = recall_at([split.lexical, vectors], pairs, KS)
        print(json.dumps(row), flush=True)

    measure("lexical", split.lexical, 0.0)
    started = time.perf_counter()
    table = train_table(texts, split.kept, split.negatives, settings, lambda *_: None)
    measure(f"qdedup lr={settings.learning_rate}", np.stack(static_rows(texts, table)),
            time.perf_counter() - started)

    bucket_inputs = bucket_texts(texts, settings.buckets)
    bucket_vocabulary = [str(i) for i in range(settings.buckets)]
    char_vocabulary = ["[UNK]", *sorted({c for t in texts for c in t})]
    char_inputs = [char_text(t) for t in texts]
    for rate in (float(r) for r in args.learning_rates.split(",")):
        if rate != settings.learning_rate:  # qdedup's own trainer at the library runs' learning rates too
            started = time.perf_counter()
            other = train_table(texts, split.kept, split.negatives, replace(settings, learning_rate=rate),
                                lambda *_: None)
            measure(f"qdedup lr={rate}", np.stack(static_rows(texts, other)),
                    time.perf_counter() - started)
        started = time.perf_counter()
        buckets_model = train_st(bucket_inputs, bucket_vocabulary, split, settings, rate)
        measure(f"st-buckets lr={rate}", st_vectors(buckets_model, bucket_inputs), time.perf_counter() - started)
        started = time.perf_counter()
        chars_model = train_st(char_inputs, char_vocabulary, split, settings, rate)
        measure(f"st-chars lr={rate}", st_vectors(chars_model, char_inputs), time.perf_counter() - started)

    # Speed from raw text, as a pipeline step gets it: ours maps text -> buckets -> mean of rows; the library's
    # gets text -> its tokenizer -> EmbeddingBag (the words its tokenizer splits are made inside the timing).
    variants = {
        "qdedup static_rows": lambda: static_rows(texts, table),
        "st-buckets encode": lambda: st_vectors(buckets_model, bucket_texts(texts, settings.buckets)),
        "st-chars encode": lambda: st_vectors(chars_model, [char_text(t) for t in texts]),
    }
    times: dict = {name: [] for name in variants}
    names = list(variants)
    for repeat in range(args.repeats):
        for name in (names if repeat % 2 == 0 else names[::-1]):
            times[name].append(cpu_us_per_question(variants[name], len(texts)))
    for name, values in times.items():
        print(json.dumps({"embed": name, "cpu_us_per_question_median": round(statistics.median(values), 1),
                          "min": round(min(values), 1), "max": round(max(values), 1)}), flush=True)


if __name__ == "__main__":
    main()
