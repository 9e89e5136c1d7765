"""int8 models for CPU workers (`--precision int8`): quantized once, cached, reused (docs/design.md, "score").

OpenVINO runs the model and NNCF quantizes it (`benchmarks/README.md`, "int8
on CPU": 5.9x torch fp32 here against ONNX Runtime's 2.4x, with less error).
Quantization is static: every activation scale is fixed from a calibration set
of pairs, never from the pairs being scored, so a pair's score depends neither
on the other pairs of its batch nor on the run's history. The calibration set is
a file (`--calibration-pairs`; by default `calibration_pairs.csv` beside this
module, made from the sample corpus's hand-written paraphrases by
`samples/make_sample.py`), each input calibrated alone, unpadded.

A quantized model is made once per (model fingerprint, Auto class, calibration
set, max length, library versions) by the launcher (`prepare_int8`) and kept in
the local model cache under that key, written in a temporary folder and renamed
into place; workers load the files the launcher made (`sources.load_int8`),
copied from a bucket where the run is remote, into a `sources.OpenVinoModel`
that answers like a transformers model (`model(**batch).logits`), so the
forward passes of scoring and embedding run unchanged.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import tempfile
from typing import Sequence

import numpy as np

from transforms.errors import QdedupError
from transforms.feeding import collate, tokenize
from transforms.logs import silenced
from transforms.sources import INT8_COMPLETE as COMPLETE
from transforms.sources import INT8_MODEL_FILE as MODEL_FILE
from transforms.sources import OpenVinoModel

_LOG = logging.getLogger(__name__)
DEFAULT_CALIBRATION = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calibration_pairs.csv")
INFO_FILE = "qdedup-int8.json"
INT8_INSTALL = "pip install 'qdedup[int8]' (openvino and nncf)"


def read_calibration_pairs(path: str = DEFAULT_CALIBRATION) -> list[tuple[str, str]]:
    """(text_a, text_b) of a CSV with columns `text_a` and `text_b` (others, such as a label, ignored).

    Raises QdedupError naming the file and the row that cannot be used.
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise QdedupError(f"--calibration-pairs {path!r} cannot be read: {exc}") from exc
    if not rows or not {"text_a", "text_b"} <= set(rows[0]):
        raise QdedupError(f"--calibration-pairs {path!r}: needs a header with columns text_a and text_b "
                          "and at least one pair")
    pairs = []
    for number, row in enumerate(rows, 2):
        a, b = (row["text_a"] or "").strip(), (row["text_b"] or "").strip()
        if not a or not b:
            raise QdedupError(f"--calibration-pairs {path!r} line {number}: text_a and text_b must both be filled")
        pairs.append((a, b))
    return pairs


def library_versions() -> dict:
    """The versions a quantized model depends on; a new version quantizes again.

    Raises QdedupError saying what to install when OpenVINO or NNCF is missing.
    """
    try:
        import nncf
        import openvino
    except ImportError as exc:
        raise QdedupError(f"--precision int8 needs OpenVINO and NNCF ({exc}): {INT8_INSTALL}") from exc
    import torch
    import transformers
    return {"openvino": openvino.__version__, "nncf": nncf.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__}


def int8_key(fingerprint: str, model_class: str, pairs: Sequence[tuple[str, str]], max_length: int) -> dict:
    """What a quantized model depends on, and its digest (`key`): the cache folder's name."""
    calibration = hashlib.sha256(json.dumps(list(map(list, pairs)), ensure_ascii=False).encode()).hexdigest()
    spec = {"fingerprint": fingerprint, "model_class": model_class, "calibration_sha256": calibration,
            "calibration_pairs": len(pairs), "max_length": max_length, "versions": library_versions(),
            "quantization": "nncf.quantize static, ModelType.TRANSFORMER, inputs calibrated alone, "
                            "overflow fix on every layer"}
    spec["key"] = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]
    return spec


def calibration_inputs(model_class: str, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, ...]]:
    """A cross-encoder calibrates on the pairs; an encoder on their distinct texts, one by one."""
    if model_class == "AutoModelForSequenceClassification":
        return [tuple(pair) for pair in pairs]
    return [(text,) for text in dict.fromkeys(text for pair in pairs for text in pair)]


def _reference(model_dir: str, model_class: str):
    """(tokenizer, fp32 PyTorch model) of `model_dir`, loaded as workers load them."""
    import transformers
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    model = getattr(transformers, model_class).from_pretrained(
        model_dir, attn_implementation="sdpa", use_safetensors=True, trust_remote_code=False).eval()
    return tokenizer, model


def calibration_samples(tokenizer, model_class: str, pairs: Sequence[tuple[str, str]],
                        max_length: int) -> list[dict]:
    """The calibration inputs tokenized as qdedup tokenizes, each alone and unpadded (numpy arrays by name)."""
    encoded = tokenize(tokenizer, calibration_inputs(model_class, pairs), max_length)
    return [{name: tensor.numpy() for name, tensor in collate([encoding], tokenizer.pad_token_id or 0).items()}
            for encoding, _ in encoded]


def _quantized(model, samples: list[dict]):
    """The model converted and statically quantized. Weights in 7 bits on every layer (NNCF's overflow fix,
    by default on the first layer alone): a CPU without VNNI (AVX2 alone, as AMD Zen 3 and older have)
    multiplies int8 pairs into 16-bit sums that 8-bit weights overflow; on one, the tiny model kept 91.9% of
    its decisions with the default, 97.9% with the fix (benchmarks/README.md, "int8 on CPU")."""
    import nncf
    import openvino as ov
    import torch
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    with silenced():
        with torch.inference_mode():
            converted = ov.convert_model(model, example_input={k: torch.from_numpy(v) for k, v in samples[0].items()})
        nncf.set_log_level(logging.ERROR)
        return nncf.quantize(converted, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER,
                             subset_size=len(samples), advanced_parameters=AdvancedQuantizationParameters(
                                 overflow_fix=OverflowFix.ENABLE))


def quantize(model_dir: str, model_class: str, pairs: Sequence[tuple[str, str]], max_length: int):
    """The model of `model_dir` as an OpenVINO model, statically quantized on `pairs` (each input alone).

    Returns:
        `openvino.Model` with int8 weights and activations wherever NNCF places them.
    """
    tokenizer, model = _reference(model_dir, model_class)
    return _quantized(model, calibration_samples(tokenizer, model_class, pairs, max_length))


def calibration_fidelity(reference, model_class: str, samples: list[dict], quantized) -> dict:
    """How the quantized model answers the calibration inputs beside the fp32 `reference` (each input alone).

    A cross-encoder: mean and largest |difference| of its label probabilities, and the share of inputs
    whose most probable label changes (a decision at 0.5 with two labels). An encoder: the mean and
    lowest cosine of their mean-pooled vectors. In-sample figures (the inputs calibrated the model):
    a floor on the error, not an estimate of it on a run's pairs.
    """
    import openvino as ov
    import torch
    model = OpenVinoModel(ov.Core().compile_model(quantized, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}))
    first, second = [], []
    with torch.inference_mode():
        for sample in samples:
            batch = {name: torch.from_numpy(array) for name, array in sample.items()}
            for outputs, found in ((reference(**batch), first), (model(**batch), second)):
                if model_class == "AutoModelForSequenceClassification":
                    found.append(torch.softmax(outputs.logits.float(), dim=-1)[0].numpy())
                else:
                    found.append(outputs.last_hidden_state.float()[0].mean(dim=0).numpy())
    first, second = np.array(first, dtype=np.float64), np.array(second, dtype=np.float64)
    if model_class == "AutoModelForSequenceClassification":
        difference = np.abs(first - second).max(axis=1)
        return {"inputs": len(first), "mean_abs_diff": round(float(difference.mean()), 5),
                "max_abs_diff": round(float(difference.max()), 5),
                "decisions_changed": round(float(np.mean(first.argmax(axis=1) != second.argmax(axis=1))), 5)}
    cosine = (first * second).sum(axis=1) / (np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1))
    return {"inputs": len(first), "mean_cosine": round(float(cosine.mean()), 5),
            "min_cosine": round(float(cosine.min()), 5)}


def read_info(folder: str) -> dict:
    with open(os.path.join(folder, INFO_FILE), encoding="utf-8") as handle:
        return json.load(handle)


def prepare_int8(model_dir: str, spec: dict, pairs: Sequence[tuple[str, str]], cache: str) -> str:
    """The folder of the quantized model `spec` (`int8_key`) describes, made under `cache` if not there yet,
    with `spec` and its `calibration_fidelity` in its `qdedup-int8.json`.

    Made in a temporary folder and renamed into place, so a half-made model is never used and two
    launchers starting together both end with one complete folder.
    """
    import openvino as ov
    target = os.path.join(cache, f"int8-{spec['key']}")
    if os.path.exists(os.path.join(target, COMPLETE)):
        return target
    os.makedirs(cache, exist_ok=True)
    staging = tempfile.mkdtemp(dir=cache, prefix=".int8-")
    try:
        _LOG.info("quantizing %s to int8 on %d calibration pairs (once per model and calibration set)",
                  spec["model_class"], spec["calibration_pairs"])
        tokenizer, reference = _reference(model_dir, spec["model_class"])
        samples = calibration_samples(tokenizer, spec["model_class"], pairs, spec["max_length"])
        quantized = _quantized(reference, samples)
        ov.save_model(quantized, os.path.join(staging, MODEL_FILE), compress_to_fp16=False)
        fidelity = calibration_fidelity(reference, spec["model_class"], samples, quantized)
        with open(os.path.join(staging, INFO_FILE), "w", encoding="utf-8") as handle:
            json.dump({**spec, "calibration_fidelity": fidelity}, handle, indent=2, sort_keys=True)
        open(os.path.join(staging, COMPLETE), "w").close()
        os.rename(staging, target)
    except OSError:
        if not os.path.exists(os.path.join(target, COMPLETE)):
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # another launcher got there first, or it failed
    return target


def publish_int8(folder: str, root: str) -> str:
    """A prepared folder copied under `root` (gs://, s3://) for remote workers, its marker last; kept if there."""
    from apache_beam.io.filesystems import FileSystems
    target = FileSystems.join(root, os.path.basename(folder))
    if FileSystems.exists(FileSystems.join(target, COMPLETE)):
        return target
    names = sorted(name for name in os.listdir(folder) if name != COMPLETE) + [COMPLETE]
    for name in names:
        with open(os.path.join(folder, name), "rb") as source, \
                FileSystems.create(FileSystems.join(target, name)) as sink:
            shutil.copyfileobj(source, sink, 1 << 22)
    return target
