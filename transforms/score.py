"""Cross-encoder scoring of candidate pairs inside RunInference (DESIGN.md step 6).

`PairScorer` is a small ModelHandler in the style of Beam's own: it loads a
`*ForSequenceClassification` model once per process and returns, per pair, the
probability of label 1 ("same meaning" for Erlangshen-Roberta-Similarity).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

from transforms.errors import QdedupError
from transforms.metrics import StageTimer

_LOG = logging.getLogger(__name__)
DEFAULT_SCORER = "IDEA-CCNL/Erlangshen-Roberta-110M-Similarity"
_PROGRESS_SECONDS = 30.0
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


class ScoredPair(NamedTuple):
    id_a: object
    id_b: object
    score: float
    similarity: float


@dataclass(frozen=True)
class LoadedScorer:
    """What one process holds: a class (not a tuple) so Beam's shared-model cache can weak-reference it."""

    tokenizer: Any
    model: Any
    device: str
    max_length: int


def _resolve_device(device: str) -> str:
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def check_scorer_model(name: str) -> None:
    """Fails fast, naming what is wrong, when the scoring model cannot be loaded."""
    from transformers import AutoConfig, AutoTokenizer
    looks_local = name.startswith((".", "/", "~")) or os.path.exists(name)
    if looks_local:
        path = os.path.expanduser(name)
        if not os.path.isdir(path):
            raise QdedupError(f"--scorer-model {name!r}: no such directory")
        missing = [f for f in ("config.json",) if not os.path.exists(os.path.join(path, f))]
        if not any(os.path.exists(os.path.join(path, f)) for f in _WEIGHT_FILES):
            missing.append(" or ".join(_WEIGHT_FILES[::2]))
        if missing:
            raise QdedupError(
                f"--scorer-model {name!r} is not a complete model directory: missing {', '.join(missing)}")
    try:
        config = AutoConfig.from_pretrained(name)
        AutoTokenizer.from_pretrained(name)
    except Exception as exc:
        hint = "" if looks_local else (
            "; if the model hub is unreachable, download the model elsewhere "
            "and pass its local directory as --scorer-model")
        reason = str(exc).strip().rstrip(".")
        raise QdedupError(f"cannot load scoring model {name!r}: {reason}{hint}") from exc
    if getattr(config, "num_labels", 0) < 2:
        raise QdedupError(
            f"--scorer-model {name!r} is not a pair classifier with 2 labels "
            f"(num_labels={getattr(config, 'num_labels', None)})")


def load_scorer(name: str, device: str = "auto") -> LoadedScorer:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    device = _resolve_device(device)
    tokenizer = AutoTokenizer.from_pretrained(name)
    model = AutoModelForSequenceClassification.from_pretrained(name).eval().to(device)
    max_length = min(getattr(model.config, "max_position_embeddings", 512), 512)
    return LoadedScorer(tokenizer, model, device, max_length)


def score_pairs(scorer: LoadedScorer, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """P(label 1) per pair; the batch is padded only to its own longest pair."""
    import torch
    encoded = scorer.tokenizer(
        [a for a, _ in pairs], [b for _, b in pairs], padding=True, truncation="longest_first",
        max_length=scorer.max_length, return_tensors="pt").to(scorer.device)
    with torch.inference_mode():
        logits = scorer.model(**encoded).logits
    return torch.softmax(logits.float(), dim=-1)[:, 1].cpu().numpy()


class PairScorer(ModelHandler[tuple, float, LoadedScorer]):
    """RunInference handler: (text_a, text_b) -> P(same meaning)."""

    def __init__(self, model_name: str = DEFAULT_SCORER, batch_size: int = 64, device: str = "auto"):
        super().__init__()
        self._model_name = model_name
        self._batch_size = batch_size
        self._device = device
        self._scored = 0
        self._started: Optional[float] = None
        self._last_log = 0.0

    def load_model(self) -> LoadedScorer:
        scorer = load_scorer(self._model_name, self._device)
        _LOG.info("loaded scoring model %s on %s", self._model_name, scorer.device)
        return scorer

    def run_inference(self, batch: Sequence[tuple], model: LoadedScorer,
                      inference_args: Optional[dict] = None) -> Iterable[PredictionResult]:
        with StageTimer("score"):
            scores = score_pairs(model, batch)
        self._log_progress(len(batch))
        return [PredictionResult(pair, float(score)) for pair, score in zip(batch, scores)]

    def _log_progress(self, pairs: int) -> None:
        now = time.monotonic()
        if self._started is None:
            self._started = self._last_log = now
        self._scored += pairs
        if now - self._last_log >= _PROGRESS_SECONDS:
            self._last_log = now
            rate = self._scored / max(now - self._started, 1e-9)
            _LOG.info("scored %d pairs in this worker (%.1f pairs/s)", self._scored, rate)

    def batch_elements_kwargs(self) -> dict:
        # Fixed-size batches: scores do not depend on batching, and fixed sizes keep runs repeatable.
        return {"min_batch_size": self._batch_size, "max_batch_size": self._batch_size}

    def get_metrics_namespace(self) -> str:
        return "qdedup.scoring"


class ScorePairs(beam.PTransform):
    """`CandidatePair`s -> `ScoredPair`s, through RunInference."""

    def __init__(self, handler: PairScorer):
        super().__init__()
        self._handler = KeyedModelHandler(handler)

    def expand(self, candidates):
        return (
            candidates
            | "PairText" >> beam.Map(lambda c: ((c.id_a, c.id_b, c.similarity), (c.text_a, c.text_b)))
            | "RunCrossEncoder" >> RunInference(self._handler)
            | "ToScoredPair" >> beam.MapTuple(
                lambda key, result: ScoredPair(key[0], key[1], float(result.inference), key[2]))
        )
