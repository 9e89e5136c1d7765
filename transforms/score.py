"""Cross-encoder scoring of candidate pairs inside RunInference (DESIGN.md step 6).

Scoring is where a run spends its time; `transforms/model.py` feeds the model
the way the hardware wants it. `PairScorer` is a small ModelHandler in the
style of Beam's own: pre-packed batches of tokenized pairs in, per pair the
probability of label 1 ("same meaning" for Erlangshen-Roberta-Similarity) out.
"""
from __future__ import annotations

import logging
import time
from typing import Iterable, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

from transforms.errors import QdedupError, RejectedRow
from transforms.metrics import StageTimer
from transforms.model import (
    Encoding,
    Forwarded,
    ModelFailure,
    ModelSettings,
    TokenizeAndPack,
    TokenizedItem,
    check_model,
    handler_sharing,
    load_model,
    load_tokenizer,
    run_splitting_on_failure,
)

_LOG = logging.getLogger(__name__)
DEFAULT_SCORER = "IDEA-CCNL/Erlangshen-Roberta-110M-Similarity"


class ScoredPair(NamedTuple):
    id_a: object
    id_b: object
    score: float
    similarity: float
    source: str


def check_scorer_model(name: str) -> None:
    config = check_model(name, "--scorer-model")
    if getattr(config, "num_labels", 0) < 2:
        raise QdedupError(
            f"--scorer-model {name!r} is not a pair classifier with 2 labels "
            f"(num_labels={getattr(config, 'num_labels', None)})")


class PairClassifier:
    """A loaded cross-encoder: encodings in, P(label 1) out. One per process, or shared via a proxy."""

    def __init__(self, model, device: str, pad_id: int):
        self.model = model
        self.device = device
        self.pad_id = pad_id

    def score(self, encodings: Sequence[Encoding]) -> Forwarded:
        """P(label 1) per encoding (None where the model failed on it), and the out-of-memory splits."""
        import torch

        def forward(batch: dict) -> np.ndarray:
            return torch.softmax(self.model(**batch).logits.float(), dim=-1)[:, 1].cpu().numpy()

        return run_splitting_on_failure(forward, encodings, self.pad_id, self.device)


def load_classifier(settings: ModelSettings) -> PairClassifier:
    from transformers import AutoModelForSequenceClassification
    model, device = load_model(settings, AutoModelForSequenceClassification)
    return PairClassifier(model, device, load_tokenizer(settings.model).pad_token_id or 0)


class PairScorer(ModelHandler[TokenizedItem, float, PairClassifier]):
    """RunInference handler: pre-packed batches of tokenized pairs -> P(same meaning)."""

    def __init__(self, settings: ModelSettings):
        super().__init__()
        self._settings = settings
        handler_sharing(self, settings)
        self._oom_splits = Metrics.counter("qdedup", "oom_splits")
        self._timer = StageTimer("score")

    def load_model(self) -> PairClassifier:
        return load_classifier(self._settings)

    def run_inference(self, batch: Sequence[TokenizedItem], model: PairClassifier,
                      inference_args: Optional[dict] = None) -> Iterable[PredictionResult]:
        flat = [encoding for pair in batch for encoding in pair.encodings]
        with self._timer:
            scored = model.score(flat)
        self._oom_splits.inc(scored.oom_splits)
        results, start = [], 0
        for pair in batch:  # with --symmetric a pair has two encodings: their scores are averaged
            end = start + len(pair.encodings)
            errors = [scored.errors[i] for i in range(start, end) if i in scored.errors]
            inference = ModelFailure(errors[0]) if errors else float(np.mean(scored.outputs[start:end]))
            results.append(PredictionResult(pair, inference))
            start = end
        return results

    def get_metrics_namespace(self) -> str:
        return "qdedup.scoring"


class _LogProgress(beam.DoFn):
    """Logs pairs scored, pairs/s and the estimated time left in this worker, at a steady interval."""

    def __init__(self, interval_seconds: float):
        self._interval = interval_seconds

    def setup(self):
        self._scored = 0
        self._started = self._last = None

    def process(self, pair, total: int):
        now = time.monotonic()
        if self._started is None:
            self._started = self._last = now
        self._scored += 1
        if now - self._last >= self._interval and now > self._started:
            self._last = now
            rate = self._scored / (now - self._started)
            left = max(total - self._scored, 0) / rate
            _LOG.info("scoring: %d of %d pairs (%.1f%%) scored by this worker, %.1f pairs/s, "
                      "~%.0f s left if it scored the rest alone", self._scored, total,
                      100.0 * self._scored / max(total, 1), rate, left)
        yield pair


def _failed_pair(key: tuple, reason: str, detail: str, stage: str) -> RejectedRow:
    id_a, id_b, _, source = key
    return RejectedRow.of({"id_a": id_a, "id_b": id_b}, source, reason, detail, stage, "pair")


def _scored_pair(key: tuple, result: PredictionResult) -> Iterable:
    if isinstance(result.inference, ModelFailure):
        yield beam.pvalue.TaggedOutput("failed", _failed_pair(key, "score_error", result.inference.detail, "score"))
    else:
        yield ScoredPair(key[0], key[1], float(result.inference), key[2], key[3])


def _model_inputs(candidate, symmetric: bool):
    key = (candidate.id_a, candidate.id_b, candidate.similarity, candidate.source)
    forward = (candidate.text_a, candidate.text_b)
    return key, (forward, forward[::-1]) if symmetric else (forward,)


class ScorePairs(beam.PTransform):
    """`CandidatePair`s -> {"scored": `ScoredPair`s, "failed": `RejectedRow`s of kind "pair"}.

    Through RunInference with pre-packed batches; a pair the tokenizer or the
    model fails on is set aside, the others are scored.
    """

    def __init__(self, settings: ModelSettings):
        super().__init__()
        self._settings = settings

    def expand(self, candidates):
        total = candidates | "CountCandidates" >> beam.combiners.Count.Globally()
        tokenized = (
            candidates
            | "ModelInputs" >> beam.Map(_model_inputs, self._settings.symmetric)
            | "TokenizeAndPack" >> beam.ParDo(TokenizeAndPack(self._settings, "score")).with_outputs(
                "failed", main="batches")
        )
        scored = (
            tokenized.batches
            | "RunCrossEncoder" >> RunInference(KeyedModelHandler(PairScorer(self._settings)).with_no_batching())
            | "ToScoredPair" >> beam.FlatMapTuple(_scored_pair).with_outputs("failed", main="scored")
        )
        failed = (
            (tokenized.failed | "TokenizeFailed" >> beam.MapTuple(lambda key, detail: _failed_pair(
                key, "tokenize_error", detail, "score_tokenize")), scored.failed)
            | "AllFailed" >> beam.Flatten()
        )
        return {
            "scored": scored.scored | "LogProgress" >> beam.ParDo(
                _LogProgress(self._settings.progress_seconds), total=beam.pvalue.AsSingleton(total)),
            "failed": failed,
        }
