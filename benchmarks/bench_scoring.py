"""Cross-encoder scoring throughput: qdedup's scoring stage against what a user would otherwise run.

On a random model of the full Erlangshen shape (12 layers, hidden 768, 12 heads, vocab 21,128; cost depends only
on shape and token counts, not on the weights) and real LCQMC dev pairs, on the same pairs, every method at the
same precision (fp32) on the same device, interleaved (A B C D, D C B A, ...), `--repeats` times, reported as
median (min-max) pairs/s:

  (1) core: qdedup's own feeding core without Beam (`transforms.feeding`: tokenize, sort, pack under the same
      token budget, pad per batch, forward) — the upper bound of the stage, as the same work without Beam;
  (2) stage: qdedup's `ScorePairs` through RunInference, a whole pipeline on the in-process runner;
  (3) stock: Beam's `HuggingFaceModelHandlerKeyedTensor`, each pair padded to the longest pair of the data (the
      smallest padding it supports: it stacks pre-encoded tensors, so every pair needs one length), batches of 64;
  (4) card: the model card's loop, one pair at a time;
  (5) core-bf16: (1) with the model in bf16 — a separate, labelled mixed-precision row (not a like-for-like
      comparison), with its fidelity to fp32 on a random model whose scores spread over (0, 1);
  (6) stage-int8: (2) with `--precision int8` (OpenVINO, static int8 on the shipped calibration set,
      `transforms/int8.py`) — a labelled row: the pipeline's int8 speed against (2), the same pairs; its
      fidelity is `bench_int8.py`'s business (this model's scores do not spread).

Model loading, warm-up and int8 quantization are outside every timing: (1) and (4) load once before the runs;
a pipeline loads its model inside, so for (2), (3) and (6) each repetition also runs the same pipeline on 8
pairs and the figure is the difference (start-up, model load and a first batch cancel out).
The CPU model and its flags are printed.

    python -m benchmarks.bench_scoring [--pairs 1000] [--repeats 5] [--methods core,stage,stock,card]
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.machinery
import json
import os
import random
import statistics
import sys
import tempfile
import time
import types

import numpy as np
import torch
import transformers

from benchmarks.bench_lexical_recall import DEFAULT_PAIRS
from benchmarks.gpu_check import Scorer, agreement, encode, machine, stage_scores
from pipelines.random_model import make_erlangshen_shaped_model
from pipelines.recall import read_labelled_pairs
from transforms.devices import resolve_device
from transforms.feeding import ModelSettings
from transforms.feeding import token_budget as token_budget_for
from transforms.sources import model_width

RUNNER = ["--runner=FnApiRunner"]
WARM_PAIRS = 8  # what the pipelines' own start-up is measured with


class Card:
    """The model card's usage: one pair at a time, tokenizer and model called directly."""

    def __init__(self, model_dir: str, device: str):
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir)
        self.model, self.device = model.eval().to(device), device
        self.score([("热身", "热身一下")])

    def score(self, pairs) -> np.ndarray:
        scores = []
        with torch.no_grad():
            for a, b in pairs:
                logits = self.model(**self.tokenizer(a, b, return_tensors="pt").to(self.device)).logits
                scores.append(float(torch.softmax(logits, dim=-1)[0, 1]))
        return np.array(scores)


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
        from apache_beam.ml.inference.huggingface_inference import HuggingFaceModelHandlerKeyedTensor
    finally:
        sys.modules["transformers"] = transformers
    return HuggingFaceModelHandlerKeyedTensor


def stock_pipeline(model_dir: str, pairs, device: str, length: int, batch_size: int = 64) -> float:
    """Seconds of a whole pipeline of Beam's stock handler, pairs padded to `length` tokens."""
    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.options.pipeline_options import PipelineOptions

    handler_class = _import_stock_handler()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)

    def encode_one(pair):
        encoded = tokenizer(pair[0], pair[1], padding="max_length", truncation=True, max_length=length,
                            return_tensors="pt")
        return {k: v[0] for k, v in encoded.items()}

    handler = handler_class(model_uri=model_dir, model_class=transformers.AutoModelForSequenceClassification,
                            framework="pt", device="GPU" if device == "cuda" else "CPU",
                            min_batch_size=batch_size, max_batch_size=batch_size)
    started = time.perf_counter()
    with beam.Pipeline(options=PipelineOptions(RUNNER)) as pipeline:
        _ = (pipeline | beam.Create(pairs) | beam.Map(encode_one) | RunInference(handler)
             | beam.combiners.Count.Globally())
    return time.perf_counter() - started


def summary(rates: list[float]) -> dict:
    return {"median": round(statistics.median(rates), 1), "min": round(min(rates), 1),
            "max": round(max(rates), 1), "runs": len(rates)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1000, help="LCQMC pairs to score")
    parser.add_argument("--pairs-file", default=DEFAULT_PAIRS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--token-budget", type=int, default=0, help="qdedup's budget; 0 = automatic")
    parser.add_argument("--model", help="an existing model directory (default: a random Erlangshen-shape one)")
    parser.add_argument("--methods", default="core,stage,stock,card")
    args = parser.parse_args()

    device = resolve_device(args.device)
    rows = read_labelled_pairs(args.pairs_file)
    random.Random(0).shuffle(rows)
    pairs = [(a, b) for a, b, _ in rows[:args.pairs]]
    work = tempfile.mkdtemp(prefix="bench_scoring_")
    model_dir = args.model or make_erlangshen_shaped_model(os.path.join(work, "model"))
    settings = ModelSettings(model_dir, device=device, precision="fp32", token_budget=args.token_budget)
    budget = token_budget_for(settings, model_width(model_dir))
    encodings, _ = encode(model_dir, pairs, settings.max_length)
    longest = max(len(ids) for ids, _ in encodings)
    print(json.dumps({"machine": machine(), "threads": torch.get_num_threads(),
                      "pairs": len(pairs), "mean_tokens": round(float(np.mean([len(i) for i, _ in encodings])), 1),
                      "longest": longest, "token_budget": budget, "precision": "fp32"}), flush=True)

    core = Scorer(model_dir, device, "fp32")
    core.score(encodings[:64], budget)  # warm-up
    core_bf16 = Scorer(model_dir, device, "bf16") if "core-bf16" in args.methods else None
    if core_bf16:
        core_bf16.score(encodings[:64], budget)
    card = Card(model_dir, device) if "card" in args.methods else None
    stage_scores(pairs[:WARM_PAIRS], settings, RUNNER)  # warm-up: imports, the first pipeline
    int8_settings = None
    if "stage-int8" in args.methods:
        from transforms.int8 import int8_key, prepare_int8, read_calibration_pairs
        from transforms.sources import fingerprint, load_tokenizer
        calibration = read_calibration_pairs()
        spec = int8_key(fingerprint(core.loaded.model, load_tokenizer(model_dir)), "AutoModelForSequenceClassification",
                        calibration, settings.max_length)
        folder = prepare_int8(model_dir, spec, calibration, os.path.join(work, "int8"))
        int8_settings = dataclasses.replace(settings, precision="int8", int8_model=folder)
        stage_scores(pairs[:WARM_PAIRS], int8_settings, RUNNER)

    last_scores: dict = {}  # method -> its scores in the last repeat, compared after the runs

    def run_core(scorer: Scorer = core, name: str = "core") -> float:
        started = time.perf_counter()
        encoded, _ = encode(model_dir, pairs, settings.max_length)  # tokenizing is part of the work
        scores, _ = scorer.score(encoded, budget)
        elapsed = time.perf_counter() - started
        last_scores[name] = scores
        return elapsed

    def run_stage(stage_settings: ModelSettings = settings, name: str = "stage") -> float:
        last_scores[name], figures = stage_scores(pairs, stage_settings, RUNNER)
        return figures["seconds"] - stage_scores(pairs[:WARM_PAIRS], stage_settings, RUNNER)[1]["seconds"]

    def run_stock() -> float:
        return (stock_pipeline(model_dir, pairs, device, longest)
                - stock_pipeline(model_dir, pairs[:WARM_PAIRS], device, longest))

    def run_card() -> float:
        started = time.perf_counter()
        card.score(pairs)
        return time.perf_counter() - started

    methods = {"core": run_core, "stage": run_stage, "stock": run_stock, "card": run_card,
               "core-bf16": lambda: run_core(core_bf16, "core-bf16"),
               "stage-int8": lambda: run_stage(int8_settings, "stage-int8")}
    names = [name for name in args.methods.split(",") if name in methods]
    rates: dict = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in (names if repeat % 2 == 0 else names[::-1]):
            rates[name].append(len(pairs) / methods[name]())
            print(json.dumps({"repeat": repeat, "method": name, "pairs_per_s": round(rates[name][-1], 1)}),
                  flush=True)
    figures = {name: summary(values) for name, values in rates.items()}
    for base in ("core", "stage"):
        if base not in rates:
            continue
        for name in names:
            ratios = [value / reference for value, reference in zip(rates[name], rates[base])]
            figures[name][f"vs_{base}"] = {"median": round(statistics.median(ratios), 2),
                                           "min": round(min(ratios), 2), "max": round(max(ratios), 2)}
    print(json.dumps({"pairs_per_s": figures}, indent=1), flush=True)
    if "core" in names and "stage" in names:  # the stage must give the core's scores, not only its speed
        difference = np.abs(last_scores["stage"] - last_scores["core"]).max()
        print(json.dumps({"stage_vs_core_max_abs_score_diff": float(difference)}), flush=True)
    if "core-bf16" in names:
        spread = make_erlangshen_shaped_model(os.path.join(work, "spread"), spread=True)
        print(json.dumps({"bf16_fidelity_on_spread_model": agreement(spread, pairs, device, ["bf16"])}), flush=True)


if __name__ == "__main__":
    main()
