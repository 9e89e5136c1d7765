"""Cross-encoder scoring throughput: qdedup's scoring stage against what a user would otherwise run.

On a random model of the full Erlangshen shape (12 layers, hidden 768, 12 heads,
vocab 21,128; cost depends only on shape and token counts) and real LCQMC pairs,
in one run, on the same pairs:

  (1) the model card's loop: one pair at a time;
  (2) Beam's stock HuggingFaceModelHandlerKeyedTensor, pairs padded to max_length=128;
  (3) a raw PyTorch upper bound: length-sorted batches of 64, per-batch padding, no Beam;
  (4) qdedup's ScorePairs (tokenize once, token-budget batches) through RunInference;
and two other ways of batching qdedup's handler inside Beam, to justify the choice:
  (5) RunInference's own BatchElements, 64 pairs per batch in arrival order;
  (6) Beam's SortAndBatchElements (sorts each bundle, caps summed tokens) + with_no_batching.

(2) and (4) are timed as whole pipelines on the in-process runner, start-up and
model loading included; (1) and (3) after the model is loaded. Prints pairs/s,
the ratios (4)/(3), (4)/(2), (4)/(1), and the largest score difference between
(4) and (3).

    python benchmarks/bench_scoring.py [--pairs 1000] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import importlib.machinery
import logging
import os
import random
import sys
import tempfile
import time
import types

import apache_beam as beam
import numpy as np
import torch
import transformers
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.util import SortAndBatchElements
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from benchmarks.bench_lexical_recall import DEFAULT_PAIRS
from pipelines.random_model import make_erlangshen_shaped_model
from pipelines.recall import read_labelled_pairs
from transforms.devices import resolve_device, resolve_dtype
from transforms.feeding import ModelSettings, TokenizedItem, tokenize
from transforms.feeding import token_budget as token_budget_for
from transforms.records import CandidatePair
from transforms.score import ScorePairs, pair_scorer
from transforms.sources import load_tokenizer

RUNNER = ["--runner=FnApiRunner"]


def card_loop(model_dir: str, pairs, device: str) -> np.ndarray:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval().to(device)
    scores = []
    with torch.no_grad():
        model(**tokenizer(*pairs[0], return_tensors="pt").to(device))  # warm-up
        start = time.perf_counter()
        for a, b in pairs:
            logits = model(**tokenizer(a, b, return_tensors="pt").to(device)).logits
            scores.append(float(torch.softmax(logits, dim=-1)[0, 1]))
    return np.array(scores), time.perf_counter() - start


def raw_sorted_batches(model_dir: str, pairs, device: str, batch_size: int = 64):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dtype = resolve_dtype("auto", device)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, attn_implementation="sdpa")
    model = model.eval().to(device=device, dtype=dtype)
    with torch.inference_mode():
        model(**tokenizer(*pairs[0], return_tensors="pt").to(device))  # warm-up
    start = time.perf_counter()
    encoded = tokenizer([a for a, _ in pairs], [b for _, b in pairs], truncation=True, max_length=512)
    order = sorted(range(len(pairs)), key=lambda i: len(encoded["input_ids"][i]))
    scores = np.empty(len(pairs))
    with torch.inference_mode():
        for first in range(0, len(order), batch_size):
            chunk = order[first:first + batch_size]
            batch = tokenizer.pad({k: [encoded[k][i] for i in chunk] for k in encoded}, return_tensors="pt")
            logits = model(**batch.to(device)).logits
            scores[chunk] = torch.softmax(logits.float(), dim=-1)[:, 1].cpu().numpy()
    if device == "cuda":
        torch.cuda.synchronize()
    return scores, time.perf_counter() - start


def _import_stock_handler():
    """Beam 2.77's huggingface_inference imports `tensorflow` and `transformers.TFAutoModel` at module
    level; transformers 5 has no TF classes and tensorflow is not installed. The PyTorch path used here
    touches neither, so the import is given inert placeholders for exactly those two names."""
    if "tensorflow" not in sys.modules:
        placeholder = types.ModuleType("tensorflow")
        placeholder.__spec__ = importlib.machinery.ModuleSpec("tensorflow", None)
        placeholder.Tensor = type("Tensor", (), {})
        sys.modules["tensorflow"] = placeholder
    shim = types.ModuleType("transformers")
    shim.AutoModel, shim.Pipeline, shim.pipeline = transformers.AutoModel, transformers.Pipeline, transformers.pipeline
    shim.TFAutoModel = type("TFAutoModel", (), {})
    sys.modules["transformers"] = shim
    try:
        from apache_beam.ml.inference.huggingface_inference import (
            HuggingFaceModelHandlerKeyedTensor,
        )
    finally:
        sys.modules["transformers"] = transformers
    return HuggingFaceModelHandlerKeyedTensor


def beam_stock_handler(model_dir: str, pairs, device: str, batch_size: int = 64):
    HuggingFaceModelHandlerKeyedTensor = _import_stock_handler()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def encode(pair):
        encoded = tokenizer(pair[0], pair[1], padding="max_length", truncation=True, max_length=128,
                            return_tensors="pt")
        return {k: v[0] for k, v in encoded.items()}

    handler = HuggingFaceModelHandlerKeyedTensor(
        model_uri=model_dir, model_class=AutoModelForSequenceClassification, framework="pt",
        device="GPU" if device == "cuda" else "CPU", min_batch_size=batch_size, max_batch_size=batch_size)
    start = time.perf_counter()
    with beam.Pipeline(options=PipelineOptions(RUNNER)) as pipeline:
        _ = (pipeline | beam.Create(pairs) | beam.Map(encode) | RunInference(handler)
             | beam.combiners.Count.Globally())
    return None, time.perf_counter() - start


def qdedup_stage(model_dir: str, pairs, device: str, token_budget: int, out_dir: str):
    candidates = [CandidatePair(i, len(pairs) + i, a, b, 1.0) for i, (a, b) in enumerate(pairs)]
    settings = ModelSettings(model_dir, device=device, token_budget=token_budget)
    path = os.path.join(out_dir, "scores.npy")
    start = time.perf_counter()
    with beam.Pipeline(options=PipelineOptions(RUNNER)) as pipeline:
        _ = ((pipeline | beam.Create(candidates) | ScorePairs(settings)).scored
             | beam.Map(lambda pair: (pair.id_a, pair.score)) | beam.combiners.ToList()
             | beam.Map(_save_scores, path, len(pairs)))
    return np.load(path), time.perf_counter() - start


class _TokenizeOne(beam.DoFn):
    """Per-element tokenization, as a per-element batching transform needs it."""

    def __init__(self, model_dir: str):
        self._model_dir = model_dir

    def setup(self):
        self._tokenizer = load_tokenizer(self._model_dir)

    def process(self, item):
        i, (a, b) = item
        (encoding, truncated), = tokenize(self._tokenizer, [(a, b)], 512)
        yield (i,), TokenizedItem((i,), (encoding,), truncated)


def beam_batching_variant(model_dir: str, pairs, device: str, token_budget: int, sort: bool):
    settings = ModelSettings(model_dir, device=device, token_budget=token_budget)
    start = time.perf_counter()
    with beam.Pipeline(options=PipelineOptions(RUNNER)) as pipeline:
        tokenized = pipeline | beam.Create(list(enumerate(pairs))) | beam.ParDo(_TokenizeOne(model_dir))
        if sort:
            scored = (tokenized
                      | SortAndBatchElements(min_batch_size=1, max_batch_size=len(pairs),
                                             max_batch_weight=token_budget_for(settings),
                                             element_size_fn=lambda keyed: keyed[1].cost)
                      | RunInference(KeyedModelHandler(pair_scorer(settings)).with_no_batching()))
        else:
            handler = pair_scorer(settings)
            handler.batch_elements_kwargs = lambda: {"min_batch_size": 64, "max_batch_size": 64}
            scored = tokenized | RunInference(KeyedModelHandler(handler))
        _ = scored | beam.combiners.Count.Globally()
    return None, time.perf_counter() - start


def _save_scores(indexed, path: str, n: int) -> None:
    scores = np.empty(n)
    for i, score in indexed:
        scores[i] = score
    np.save(path, scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1000, help="LCQMC pairs to score")
    parser.add_argument("--pairs-file", default=DEFAULT_PAIRS)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--token-budget", type=int, default=0, help="qdedup's budget; 0 = automatic")
    parser.add_argument("--model", help="an existing model directory (default: a random Erlangshen-shape one)")
    parser.add_argument("--methods", default="1,2,3,4")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    resolve_device(args.device)
    rows = read_labelled_pairs(args.pairs_file)
    random.Random(0).shuffle(rows)
    pairs = [(a, b) for a, b, _ in rows[:args.pairs]]
    work = tempfile.mkdtemp(prefix="bench_scoring_")
    model_dir = args.model or make_erlangshen_shaped_model(os.path.join(work, "model"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokens = [len(ids) for ids in tokenizer([a for a, _ in pairs], [b for _, b in pairs])["input_ids"]]
    budget = token_budget_for(ModelSettings("", device=args.device, token_budget=args.token_budget))
    print(f"{len(pairs)} LCQMC pairs, mean {np.mean(tokens):.1f} tokens (max {max(tokens)}); device {args.device}; "
          f"token budget {budget}; torch {torch.__version__}, {torch.get_num_threads()} threads")

    methods = {
        "1": ("model card loop, one pair at a time", lambda: card_loop(model_dir, pairs, args.device)),
        "2": ("Beam HuggingFaceModelHandlerKeyedTensor, padded to 128",
              lambda: beam_stock_handler(model_dir, pairs, args.device)),
        "3": ("raw PyTorch, length-sorted batches of 64", lambda: raw_sorted_batches(model_dir, pairs, args.device)),
        "4": ("qdedup ScorePairs through RunInference",
              lambda: qdedup_stage(model_dir, pairs, args.device, args.token_budget, work)),
        "5": ("qdedup handler, RunInference BatchElements of 64, unsorted",
              lambda: beam_batching_variant(model_dir, pairs, args.device, args.token_budget, sort=False)),
        "6": ("qdedup handler, Beam SortAndBatchElements by tokens",
              lambda: beam_batching_variant(model_dir, pairs, args.device, args.token_budget, sort=True)),
    }
    qdedup_stage(model_dir, pairs[:8], args.device, args.token_budget, work)  # warm-up: imports, first pipeline
    rates, scores = {}, {}
    print("| method | seconds | pairs/s |\n| --- | --- | --- |")
    for key in args.methods.split(","):
        label, run = methods[key]
        scores[key], seconds = run()
        rates[key] = len(pairs) / seconds
        print(f"| ({key}) {label} | {seconds:.1f} | {rates[key]:.1f} |", flush=True)
    for other in ("3", "2", "1", "5", "6"):
        if "4" in rates and other in rates:
            print(f"(4)/({other}) = {rates['4'] / rates[other]:.2f}")
    if scores.get("3") is not None and scores.get("4") is not None:
        print(f"max |score(4) - score(3)| = {np.max(np.abs(scores['4'] - scores['3'])):.2e}")


if __name__ == "__main__":
    main()
