"""Cross-encoder scoring of candidate pairs inside RunInference (DESIGN.md step 6).

Scoring is where a run spends its time; `transforms/model.py` feeds the model
the way the hardware wants it. `PairScorer` is a small ModelHandler in the
style of Beam's own: pre-packed batches of tokenized pairs in, per pair the
probability of the positive label ("same meaning": label 1 of
Erlangshen-Roberta-Similarity) out.

A pair scored by an earlier run (`--existing`, `--params-from`) is never scored
again: `ScoreCandidates` takes its score from that run's `pairs/`, so a score,
once made, is the score every later run decides on.
"""
from __future__ import annotations

import logging
import time
from typing import Iterable, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

from transforms.block import CandidatePair
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
    load_model,
    load_tokenizer,
    run_splitting_on_failure,
    sharing,
)

_LOG = logging.getLogger(__name__)
DEFAULT_SCORER = "IDEA-CCNL/Erlangshen-Roberta-110M-Similarity"
TRIAL_PAIR = ("怎么开通网银", "网上银行怎么开通")


class ScoredPair(NamedTuple):
    id_a: object
    id_b: object
    score: float
    similarity: Optional[float]
    source: str


def positive_label(config, requested: Optional[int], option: str = "--scorer-model") -> int:
    """The label whose probability is a pair's score: label 1 of a 2-label model, or the one asked for."""
    labels = getattr(config, "num_labels", 0)
    names = getattr(config, "id2label", None) or {}
    if requested is None:
        if labels != 2:
            raise QdedupError(
                f"{option} is not a pair classifier with 2 labels (num_labels={labels}, id2label={dict(names)}); "
                "pass --positive-label N to say which label means 'duplicate'")
        return 1
    if not 0 <= requested < labels:
        raise QdedupError(f"--positive-label {requested} is not a label of {option} "
                          f"(num_labels={labels}, id2label={dict(names)})")
    return requested


def check_scorer_model(name: str, requested_label: Optional[int] = None) -> str:
    """The scorer loads, has its positive label, and scores a trial pair to a probability; returns its fingerprint."""
    from transformers import AutoModelForSequenceClassification

    def probe(model, tokenizer) -> None:
        import torch
        label = positive_label(model.config, requested_label)
        logits = model(**tokenizer(*TRIAL_PAIR, return_tensors="pt")).logits
        score = float(torch.softmax(logits.float(), dim=-1)[0, label])
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"the trial pair scored {score}")

    return check_model(name, "--scorer-model", AutoModelForSequenceClassification, probe)


class PairClassifier:
    """A loaded cross-encoder: encodings in, P(positive label) out. One per process, or shared via a proxy."""

    def __init__(self, model, device: str, pad_id: int, label: int = 1):
        self.model = model
        self.device = device
        self.pad_id = pad_id
        self.label = label

    def score(self, encodings: Sequence[Encoding]) -> Forwarded:
        """P(positive label) per encoding (None where the model failed on it), and the out-of-memory splits."""
        import torch

        def forward(batch: dict) -> np.ndarray:
            return torch.softmax(self.model(**batch).logits.float(), dim=-1)[:, self.label].cpu().numpy()

        return run_splitting_on_failure(forward, encodings, self.pad_id, self.device)


def load_classifier(settings: ModelSettings) -> PairClassifier:
    from transformers import AutoModelForSequenceClassification
    model, device = load_model(settings, AutoModelForSequenceClassification)
    return PairClassifier(model, device, load_tokenizer(settings.model).pad_token_id or 0, settings.positive_label)


class PairScorer(ModelHandler[TokenizedItem, float, PairClassifier]):
    """RunInference handler: pre-packed batches of tokenized pairs -> P(same meaning)."""

    def __init__(self, settings: ModelSettings):
        super().__init__(**sharing(settings))
        self._settings = settings
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


def _model_inputs(candidate: CandidatePair, symmetric: bool):
    key = (candidate.id_a, candidate.id_b, candidate.similarity, candidate.source)
    forward = (candidate.text_a, candidate.text_b)
    return key, (forward, forward[::-1]) if symmetric else (forward,)


class ScorePairs(beam.PTransform):
    """`CandidatePair`s with texts -> {"scored": `ScoredPair`s, "failed": `RejectedRow`s of kind "pair"}.

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
            | "TokenizeAndPack" >> TokenizeAndPack(self._settings, "score")
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


class Scored(NamedTuple):
    """What `ScoreCandidates` gives: every candidate with a score (reused or new), the new ones alone,
    the reused ones alone, and the pairs that could not be scored."""

    scored: beam.PCollection
    new: beam.PCollection
    reused: beam.PCollection
    failed: beam.PCollection


def _reuse(element) -> Iterable:
    """(pair key, {candidate, known score}) -> the candidate scored from the known score, or to score."""
    _, joined = element
    known = list(joined["known"])
    for candidate in joined["candidate"]:
        if known:
            yield beam.pvalue.TaggedOutput("reused", ScoredPair(candidate.id_a, candidate.id_b, known[0],
                                                                candidate.similarity, candidate.source))
        else:
            yield candidate


def _with_text(element, end: int) -> Iterable:
    """(id, {"pair": [...], "text": [text]}) -> each pair with the text of its end `end` (0: a, 1: b) filled."""
    _, joined = element
    for text in joined["text"]:
        for pair in joined["pair"]:
            yield pair._replace(text_a=text) if end == 0 else pair._replace(text_b=text)


class FetchTexts(beam.PTransform):
    """`CandidatePair`s lacking a text -> the same pairs with both texts, from (id, text) of the questions."""

    def __init__(self, texts):
        super().__init__()
        self._texts = texts

    def expand(self, pairs):
        texts = self._texts
        with_a = (
            {"pair": pairs | "ByA" >> beam.Map(lambda p: (p.id_a, p)), "text": texts}
            | "JoinTextA" >> beam.CoGroupByKey()
            | "TextA" >> beam.FlatMap(_with_text, 0)
        )
        return (
            {"pair": with_a | "ByB" >> beam.Map(lambda p: (p.id_b, p)), "text": texts}
            | "JoinTextB" >> beam.CoGroupByKey()
            | "TextB" >> beam.FlatMap(_with_text, 1)
        )


class ScoreCandidates(beam.PTransform):
    """`CandidatePair`s -> `Scored`: known scores reused, the rest scored by the cross-encoder.

    `known`: `ScoredPair`s of an earlier run (its pairs/), or None. `texts`: (question id, text) for
    pairs that come without their texts (None where every pair has them).
    """

    def __init__(self, settings: ModelSettings, known=None, texts=None):
        super().__init__()
        self._settings = settings
        self._known = known
        self._texts = texts

    def expand(self, candidates):
        reused = None
        if self._known is not None:
            looked_up = (
                {"candidate": candidates | "KeyCandidate" >> beam.Map(lambda p: ((p.id_a, p.id_b), p)),
                 "known": self._known | "KeyKnown" >> beam.Map(lambda p: ((p.id_a, p.id_b), p.score))}
                | "LookUpScores" >> beam.CoGroupByKey()
                | "ReuseScores" >> beam.FlatMap(_reuse).with_outputs("reused", main="unknown")
            )
            candidates, reused = looked_up.unknown, looked_up.reused
        if self._texts is not None:
            complete = candidates | "HaveTexts" >> beam.Filter(lambda p: p.text_a is not None and p.text_b is not None)
            fetched = (
                candidates
                | "LackTexts" >> beam.Filter(lambda p: p.text_a is None or p.text_b is None)
                | "FetchTexts" >> FetchTexts(self._texts)
            )
            candidates = (complete, fetched) | "WithTexts" >> beam.Flatten()
        scoring = candidates | "ScorePairs" >> ScorePairs(self._settings)
        if reused is None:
            reused = candidates.pipeline | "NothingReused" >> beam.Create([]).with_output_types(ScoredPair)
        scored = (scoring["scored"], reused) | "ReusedAndNew" >> beam.Flatten()
        return Scored(scored, scoring["scored"], reused, scoring["failed"])
