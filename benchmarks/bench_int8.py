"""int8 scoring on CPU: ONNX Runtime against OpenVINO, both with static quantization, beside fp32.

Which library `--precision int8` should use (issue: "measure both here, keep the
better"). Each method scores the same pairs in the same batches: qdedup's own
tokenizing and token-budget packing (`transforms/feeding.py`, the CPU budget),
padded to each batch's longest pair.

- `torch`: fp32 PyTorch, as qdedup scores on CPU today;
- `ort-fp32`, `ort-int8`: the model exported to ONNX (`torch.onnx.export`), then
  `onnxruntime.quantization.quantize_static` (QDQ, int8 weights per channel,
  uint8 activations, MinMax calibration) over the MatMul/Gemm nodes;
- `ov-fp32`, `ov-int8`: the model converted by `openvino.convert_model`, then
  `nncf.quantize` (static, `ModelType.TRANSFORMER`: SmoothQuant, fast bias
  correction) — qdedup's own `--precision int8` path (`transforms/int8.quantize`).

Static quantization fixes every activation scale at calibration, so a pair's
score does not depend on the other pairs of its batch. Both libraries calibrate
on the same pairs, each alone and unpadded as qdedup does: the shipped set
(`transforms/calibration_pairs.csv`, the default) or `--calibration N`, the
first N BQ dev pairs; never the pairs measured (LCQMC dev).

Fidelity is measured on random models whose scores spread over (0, 1) (a random
model with default weights scores every pair about 0.5, so agreement with it
would mean nothing): `tiny` (the test suite's scorer: hidden 32, weights drawn
with range 0.3), `head` (the full Erlangshen shape with default weights and its
classifier scaled and centred so the scores spread: inner activations of a
usual size) and `wide` (the full shape with all weights drawn with range 0.1,
`random_model --spread`: larger activations than trained weights have). None is
the real model; with it, score a sample of your own pairs in both precisions and
compare. Speed is measured on `head` (speed depends on the shape, not the weights).

Needs, beside the project: `pip install onnxruntime onnx openvino nncf`.

    python -m benchmarks.bench_int8 [--pairs 1000] [--speed-pairs 300] [--repeats 5] [--calibration N]
    python -m benchmarks.bench_int8 --encoder-pairs 2000 [--models tiny,head,wide]

`--encoder-pairs`: the encoder embedder in int8 (qdedup's own path, the shipped calibration set) against fp32
on the texts of that many LCQMC dev pairs: cosine of each text's two vectors, and recall@10 of the positive
pairs (either text among the other's 10 nearest, exact search) with each.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from typing import Callable

import numpy as np
import torch

from benchmarks.bench_lexical_recall import DEFAULT_PAIRS
from benchmarks.gpu_check import encode, machine
from pipelines.random_model import TINY_SHAPE, make_erlangshen_shaped_model, make_random_model
from pipelines.recall import read_labelled_pairs
from transforms.feeding import AUTO_TOKEN_BUDGET, collate, pack_batches
from transforms.int8 import calibration_samples, int8_key, prepare_int8, quantize, read_calibration_pairs
from transforms.sources import fingerprint, load_int8, load_tokenizer

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
BQ_PAIRS = os.path.join(os.path.dirname(os.path.dirname(DEFAULT_PAIRS)), "bq", "dev.csv")
METHODS = ("torch", "ort-fp32", "ort-int8", "ov-fp32", "ov-int8")


def make_head_spread_model(directory: str, pairs: list, target_std: float = 2.0) -> str:
    """The full shape with default weights, its classifier scaled so the logit difference has standard
    deviation `target_std` on `pairs` and centred on 0 there: scores spread over (0, 1)."""
    from transformers import AutoModelForSequenceClassification
    make_erlangshen_shaped_model(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    difference = _logits(model, batches(directory, pairs, 4096))
    difference = difference[:, 1] - difference[:, 0]
    with torch.no_grad():
        scale = target_std / float(difference.std())
        model.classifier.weight.mul_(scale)
        model.classifier.bias.mul_(scale)
        model.classifier.bias[1] -= float(difference.mean()) * scale
    model.save_pretrained(directory)
    return directory


def batches(model_dir: str, pairs: list, budget: int) -> list[tuple[list[int], dict]]:
    """(pair indices, padded numpy inputs) per batch, packed as qdedup packs them."""
    encodings, _ = encode(model_dir, pairs, 512)
    found = []
    for indices in pack_batches([len(ids) for ids, _ in encodings], budget):
        padded = collate([encodings[i] for i in indices], pad_id=0)
        found.append((indices, {name: padded[name].numpy() for name in INPUTS}))
    return found


def _logits(model, packed: list) -> np.ndarray:
    rows = sum(len(indices) for indices, _ in packed)
    out = np.zeros((rows, 2), dtype=np.float64)
    with torch.inference_mode():
        for indices, inputs in packed:
            out[indices] = model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()
    return out


def positive(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted[:, 1] / shifted.sum(axis=1)


def scorers(model_dir: str, calibration_pairs: list, work: str, threads: int) -> dict[str, Callable]:
    """method -> score(packed batches): the five ways of scoring, each built (exported, quantized) once."""
    import onnxruntime as ort
    import openvino as ov
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    calibration = calibration_samples(load_tokenizer(model_dir), "AutoModelForSequenceClassification",
                                      calibration_pairs, 512)  # each pair alone, as qdedup calibrates
    example = calibration[0]
    onnx_fp32, onnx_pre, onnx_int8 = (os.path.join(work, name) for name in ("m.onnx", "m.pre.onnx", "m.int8.onnx"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(torch.from_numpy(example[k]) for k in INPUTS), onnx_fp32,
                          input_names=list(INPUTS), output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={**{k: {0: "batch", 1: "length"} for k in INPUTS}, "logits": {0: "batch"}})
    quant_pre_process(onnx_fp32, onnx_pre, skip_symbolic_shape=True)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(calibration)

        def get_next(self):
            return next(self._batches, None)

    started = time.perf_counter()
    quantize_static(onnx_pre, onnx_int8, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["MatMul", "Gemm"])
    ort_seconds = time.perf_counter() - started
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    sessions = {name: ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
                for name, path in (("ort-fp32", onnx_fp32), ("ort-int8", onnx_int8))}

    converted = ov.convert_model(model, example_input={k: torch.from_numpy(v) for k, v in example.items()})
    started = time.perf_counter()
    quantized = quantize(model_dir, "AutoModelForSequenceClassification", calibration_pairs, 512)
    ov_seconds = time.perf_counter() - started
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    compiled = {"ov-fp32": core.compile_model(converted, "CPU", config),
                "ov-int8": core.compile_model(quantized, "CPU", config)}

    def score_with(run: Callable[[dict], np.ndarray]) -> Callable[[list], np.ndarray]:
        def score(packed: list) -> np.ndarray:
            out = np.zeros(sum(len(indices) for indices, _ in packed))
            for indices, inputs in packed:
                out[indices] = positive(np.asarray(run(inputs), dtype=np.float64))
            return out
        return score

    found = {"torch": lambda packed: positive(_logits(model, packed))}
    for name, session in sessions.items():
        found[name] = score_with(lambda inputs, s=session: s.run(["logits"], inputs)[0])
    for name, model_compiled in compiled.items():
        found[name] = score_with(lambda inputs, c=model_compiled: c(inputs)[0])
    found["quantize_seconds"] = {"ort": round(ort_seconds, 1), "ov": round(ov_seconds, 1)}
    return found


def pooled_vectors(model, texts: list[str], model_dir: str) -> np.ndarray:
    """Unit-length mean-pooled vectors, as the encoder embedder makes them (`transforms/embed.py`)."""
    from transforms.embed import pooled_hidden_states
    encodings, _ = encode(model_dir, [(text,) for text in texts], 512)
    vectors = np.zeros((len(texts), 0), dtype=np.float32)
    for indices in pack_batches([len(ids) for ids, _ in encodings], AUTO_TOKEN_BUDGET["cpu"]):
        with torch.inference_mode():
            found = pooled_hidden_states(model, collate([encodings[i] for i in indices], 0), "mean")
        if not vectors.shape[1]:
            vectors = np.zeros((len(texts), found.shape[1]), dtype=np.float32)
        vectors[indices] = found
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def recall_at(vectors: np.ndarray, index: dict, positives: list, k: int) -> float:
    """Share of positive pairs where either text is among the other's k nearest (exact inner product)."""
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = np.argsort(-similarity, axis=1)[:, :k]
    found = sum(index[b] in nearest[index[a]] or index[a] in nearest[index[b]] for a, b in positives)
    return round(found / len(positives), 4)


def encoder_fidelity(model_dir: str, pairs: list[tuple[str, str, int]], work: str, k: int = 10) -> dict:
    """`--precision int8`'s encoder (qdedup's own path: `transforms/int8.py`, the shipped calibration set)
    against fp32: cosine of each text's two vectors, and recall@k of the positive pairs with each."""
    from transformers import AutoModel

    texts = list(dict.fromkeys(text for a, b, _ in pairs for text in (a, b)))
    index = {text: i for i, text in enumerate(texts)}
    positives = [(a, b) for a, b, label in pairs if label == 1 and a != b]
    reference = AutoModel.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    calibration = read_calibration_pairs()
    spec = int8_key(fingerprint(reference, load_tokenizer(model_dir)), "AutoModel", calibration, 512)
    folder = prepare_int8(model_dir, spec, calibration, work)
    fp32 = pooled_vectors(reference, texts, model_dir)
    int8 = pooled_vectors(load_int8(folder, torch.get_num_threads()), texts, model_dir)
    cosine = (fp32 * int8).sum(axis=1)
    return {"texts": len(texts), "positive_pairs": len(positives), "mean_cosine": round(float(cosine.mean()), 5),
            "min_cosine": round(float(cosine.min()), 5), f"recall@{k}_fp32": recall_at(fp32, index, positives, k),
            f"recall@{k}_int8": recall_at(int8, index, positives, k)}


def fidelity(reference: np.ndarray, scores: np.ndarray) -> dict:
    difference = np.abs(scores - reference)
    return {"mean_abs_diff": round(float(difference.mean()), 4), "max_abs_diff": round(float(difference.max()), 4),
            "decisions_flipped": round(float(np.mean((scores >= 0.5) != (reference >= 0.5))), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1000, help="LCQMC dev pairs for fidelity")
    parser.add_argument("--speed-pairs", type=int, default=300, help="of those, how many are timed")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calibration", type=int, default=0,
                        help="the first N BQ dev pairs calibrate int8; 0: the shipped calibration set")
    parser.add_argument("--models", default="tiny,head,wide")
    parser.add_argument("--encoder-pairs", type=int, default=0,
                        help="instead of the above: the int8 encoder's fidelity on this many LCQMC dev pairs")
    args = parser.parse_args()
    if args.encoder_pairs:
        labelled = read_labelled_pairs(DEFAULT_PAIRS)[:args.encoder_pairs]
        work = tempfile.mkdtemp(prefix="bench_int8_encoder_")
        print(json.dumps({"machine": machine(), "threads": torch.get_num_threads()}), flush=True)
        for name in args.models.split(","):
            model_dir = os.path.join(work, name)
            if name == "tiny":
                make_random_model(model_dir, TINY_SHAPE)
            else:
                make_erlangshen_shaped_model(model_dir, spread=name == "wide")
            print(json.dumps({"encoder": name, **encoder_fidelity(model_dir, labelled, os.path.join(work, "int8"))}),
                  flush=True)
        return
    threads = torch.get_num_threads()
    pairs = [(a, b) for a, b, _ in read_labelled_pairs(DEFAULT_PAIRS)[:args.pairs]]
    calibration_pairs = ([(a, b) for a, b, _ in read_labelled_pairs(BQ_PAIRS)[:args.calibration]]
                         if args.calibration else read_calibration_pairs())
    budget = AUTO_TOKEN_BUDGET["cpu"]
    work = tempfile.mkdtemp(prefix="bench_int8_")
    print(json.dumps({"machine": machine(), "threads": threads, "pairs": len(pairs),
                      "speed_pairs": args.speed_pairs, "calibration_pairs": len(calibration_pairs),
                      "token_budget": budget}), flush=True)
    for name in args.models.split(","):
        model_dir = os.path.join(work, name)
        if name == "tiny":
            make_random_model(model_dir, TINY_SHAPE)
        elif name == "head":
            make_head_spread_model(model_dir, pairs[:64])
        else:
            make_erlangshen_shaped_model(model_dir, spread=True)
        built = scorers(model_dir, calibration_pairs, os.path.join(work, name), threads)
        packed = batches(model_dir, pairs, budget)
        scores = {method: built[method](packed) for method in METHODS}
        reference = scores["torch"]
        print(json.dumps({"model": name, "quantize_seconds": built["quantize_seconds"],
                          "score_std": round(float(reference.std()), 3),
                          **{method: fidelity(reference, scores[method]) for method in METHODS[1:]}}), flush=True)
        if name != "head":
            continue
        timed = batches(model_dir, pairs[:args.speed_pairs], budget)
        rates: dict = {method: [] for method in METHODS}
        for repeat in range(args.repeats):
            for method in (METHODS if repeat % 2 == 0 else METHODS[::-1]):
                started = time.perf_counter()
                built[method](timed)
                rates[method].append(args.speed_pairs / (time.perf_counter() - started))
        torch_rates = rates["torch"]
        print(json.dumps({"model": name, "pairs_per_second": {
            method: {"median": round(statistics.median(r), 1), "min": round(min(r), 1), "max": round(max(r), 1),
                     "to_torch": round(statistics.median([a / b for a, b in zip(r, torch_rates)]), 2),
                     "to_torch_min": round(min(a / b for a, b in zip(r, torch_rates)), 2),
                     "to_torch_max": round(max(a / b for a, b in zip(r, torch_rates)), 2)}
            for method, r in rates.items()}}), flush=True)


if __name__ == "__main__":
    main()
