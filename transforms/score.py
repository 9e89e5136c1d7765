"""Cross-encoder scoring of candidate pairs inside RunInference (docs/design.md, "score").

Scoring is where a run spends its time; `transforms/inference.py` feeds the
model the way the hardware wants it. The forward pass given to its handler turns
each pair into the probability of the positive label ("same meaning": label 1 of
Erlangshen-Roberta-Similarity).

A pair scored by an earlier run (`--existing`, `--params-from`) is never scored
again: `ScoreCandidates` takes its score from that run's `pairs/`, so a score,
once made, is the score every later run decides on.
"""
from __future__ import annotations

import functools
import itertools
import logging
from operator import attrgetter, itemgetter
from typing import Callable, Iterable, Iterator, NamedTuple, Optional

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from transforms import sources
from transforms.coders import Records
from transforms.errors import RejectedRow
from transforms.feeding import ModelSettings, Text, ahead_of_scoring, positive_probability
from transforms.inference import ModelOutputs, PackedBatchHandler, RunModel
from transforms.joins import DealIntoShards, HeldInBatches, JoinByKey, dealt
from transforms.logs import Progress
from transforms.metrics import COUNT_NAMESPACE
from transforms.records import ScoredPair, found_pairs, unite_pairs

_LOG = logging.getLogger(__name__)

AHEAD_BATCH = 1000  # texts `TokenizeAhead` holds and encodes in one call


def pair_scorer(settings: ModelSettings) -> PackedBatchHandler:
    """The RunInference handler that scores tokenized pairs with the cross-encoder of `settings`."""
    return PackedBatchHandler(
        settings, functools.partial(sources.load_pretrained, model_class="AutoModelForSequenceClassification"),
        functools.partial(positive_probability, label=settings.positive_label), "score")


class _TokenizeAhead(HeldInBatches):
    """Elements -> `carry(element, its text ahead of scoring)` each: up to `AHEAD_BATCH` of a bundle's texts held
    and tokenized in one call (half the CPU of a call a text), so that taking the text, batching and putting
    the tokens back cost no step of their own (three elements a question fewer)."""

    def __init__(self, settings: ModelSettings, text: Callable, carry: Callable):
        super().__init__(AHEAD_BATCH)
        self._settings = settings
        self._text = text
        self._carry = carry

    def setup(self):
        self._ahead = ahead_of_scoring(sources.load_tokenizer(self._settings.model), self._settings.max_length)

    def process(self, element) -> Iterator:
        return self.hold(element)

    def outputs_of(self, held: list) -> Iterator:
        forms = self._ahead([self._text(element) for element in held])
        if len(forms) != len(held):  # a form short would lose its element without a word
            raise ValueError(f"tokenizing ahead gave {len(forms)} forms for {len(held)} texts")
        return map(self._carry, held, forms)


class TokenizeAhead(beam.PTransform):
    """(key, text) -> (key, the text as `ScorePairs` with `settings` takes it: `feeding.ahead_of_scoring`); with
    `text` and `carry`, any element -> `carry(element, its text so taken)`, the text being `text(element)`.

    Applied to each question once, before its text travels into its pairs (about 20 at 1M rows), so
    that scoring assembles each pair from its texts' token ids instead of tokenizing both texts again.
    """

    def __init__(self, settings: ModelSettings, text: Callable = itemgetter(1), carry: Optional[Callable] = None):
        super().__init__()
        self._settings = settings
        self._text = text
        self._carry = carry or _with_key

    def expand(self, elements):
        return elements | "Tokenize" >> beam.ParDo(_TokenizeAhead(self._settings, self._text, self._carry))


def _with_key(element: tuple, text) -> tuple:
    return element[0], text


class _ToScoredPairs(beam.DoFn):
    """A scored batch ([model keys], [scores]) -> the list of its `ScoredPair`s; logs pairs scored, pairs/s and
    the estimated time left in this worker, at a steady interval. `at_most`: the total it is given is a bound,
    not a count."""

    def __init__(self, interval_seconds: Optional[float], at_most: bool = False):
        self._interval = interval_seconds
        self._at_most = at_most

    def setup(self):
        self._progress = Progress(_LOG, "scoring", "pairs", self._interval)

    def process(self, element, total: int):
        keys, scores = element
        self._progress.add(len(keys), total, self._at_most)
        # Field by field in columns, each record made without a Python call of its own (a step every pair takes).
        ids_a, ids_b, similarities, found_by = zip(*keys)
        yield Records(map(tuple.__new__, itertools.repeat(ScoredPair), zip(
            ids_a, ids_b, np.asarray(scores, dtype=np.float64).tolist(), similarities, found_by,
            itertools.repeat(False))))


def _failed_pair(key: tuple, reason: str, detail: str, stage: str) -> RejectedRow:
    id_a, id_b, _, source = key
    return RejectedRow.of({"id_a": id_a, "id_b": id_b}, source, reason, detail, stage, "pair")


def _model_inputs(id_a, id_b, text_a: Text, text_b: Text, similarity: Optional[float], source: str,
                  symmetric: bool = False) -> tuple:
    """A `CandidatePair`'s fields -> (its key, its texts in one order or both): what the cross-encoder takes."""
    forward = (text_a, text_b)
    return (id_a, id_b, similarity, source), ((forward, forward[::-1]) if symmetric else (forward,))


class PairScores(NamedTuple):
    """What `ScorePairs` gives: scored batches (lists of `ScoredPair`s, as the model scored them), and
    `RejectedRow`s (kind "pair") of the pairs it could not score."""

    scored: beam.PCollection
    failed: beam.PCollection


def _pair_scores(ran: ModelOutputs, settings: ModelSettings, total: beam.PCollection, at_most: bool = False
                 ) -> PairScores:
    """What the cross-encoder's stage gave -> `PairScores` (applied inside a scoring transform's expand)."""
    scored = ran.outputs | "ToScoredPairs" >> beam.ParDo(
        _ToScoredPairs(settings.progress_seconds, at_most), total=beam.pvalue.AsSingleton(total))
    return PairScores(scored, ran.failed | "FailedPairs" >> beam.MapTuple(_failed_pair))


class ScorePairs(beam.PTransform):
    """`CandidatePair`s with texts -> `PairScores`: scored batches, and `RejectedRow`s of kind "pair".

    Through RunInference with pre-packed batches; a pair the tokenizer or the
    model fails on is set aside, the others are scored.
    """

    def __init__(self, settings: ModelSettings):
        super().__init__()
        self._settings = settings

    def expand(self, candidates):
        total = candidates | "CountCandidates" >> beam.combiners.Count.Globally()
        ran = (
            candidates
            | "ModelInputs" >> beam.MapTuple(_model_inputs, symmetric=self._settings.symmetric)
            | "CrossEncoder" >> RunModel(
                self._settings, pair_scorer(self._settings), sources.load_tokenizer_and_width, "score", "score", total,
                batched=True)
        )
        return _pair_scores(ran, self._settings, total)


class Scored(NamedTuple):
    """What `ScoreCandidates` gives: every candidate with a score (reused or new), the new ones alone,
    the reused ones alone, each as lists of `ScoredPair`s (a scored batch: what follows takes a list as
    one element, see docs/design.md "Scored batches"), and the pairs that could not be scored."""

    scored: beam.PCollection
    new: beam.PCollection
    reused: beam.PCollection
    failed: beam.PCollection


def _nothing_reused(scoring: PairScores) -> Scored:
    """The new scores are all of them, with no step between."""
    reused = scoring.scored.pipeline | "NothingReused" >> beam.Create([])
    return Scored(scoring.scored, scoring.scored, reused, scoring.failed)


REUSED_BATCH = 1000  # pairs a list of reused scores holds (new ones come as the model scored them)
PAIR_OF_FOUND = itemgetter(0)  # what a found pair is dealt by: the pair itself, unique, so no question is a hot key


class _ShardCandidates:
    """A scoring shard's dealt lists -> its candidate pairs, each once (`records.unite_pairs`), as model inputs
    made of their fields (no record a pair);
    counted as report.json's `candidate_pairs` here, where a pair is one once both its ends and every
    embedder have been heard."""

    def __init__(self, symmetric: bool):
        self._symmetric = symmetric
        self._counter = Metrics.counter(COUNT_NAMESPACE, "candidate_pairs")

    def __call__(self, grouped) -> list:
        candidates = unite_pairs(dealt(grouped, 0))
        self._counter.inc(len(candidates))
        symmetric = self._symmetric
        return [_model_inputs(*fields, symmetric) for fields in candidates]


class ScoreNeighbours(beam.PTransform):
    """{embedder kind: its `block.Blocked.found`} -> `Scored`: the candidate pairs of a run with nothing to
    reuse, each scored once.

    Each question's neighbours are dealt straight into scoring shards by a hash of the pair, in lists
    (`joins.DealIntoShards`), from both ends and from every embedder; a shard makes each pair once and
    packs it (`inference.TokenizeAndPack` with `_ShardCandidates`): no pair travels on its own between
    blocking and the model. The shards are sized by `most_found`, the embedders' `Blocked.most_found`
    (the most neighbour entries their lists can hold, a bound on the pairs: a pair is found from one end
    or both, by one embedder or several), so a shard holds at most about `sort_window` pairs and a
    batch's make-up depends only on the run's questions and their neighbour lists. The bound is known
    before the search runs, so the lists are dealt as they are made, not held until a count of them is done.
    `ScoreCandidates` scores pairs made already, and reuses known scores.
    """

    def __init__(self, settings: ModelSettings, most_found: Iterable[beam.PCollection], batch: int = 1000):
        super().__init__()
        self._settings = settings
        self._most_found = tuple(most_found)
        self._batch = batch

    def expand(self, found):
        settings = self._settings
        bound = self._most_found | "AllBounds" >> beam.Flatten() | "MostEntries" >> beam.CombineGlobally(sum)
        entries = beam.pvalue.AsSingleton(bound)
        dealt_pairs = tuple(
            lists | f"DealPairs[{kind}]" >> beam.ParDo(
                DealIntoShards(0, PAIR_OF_FOUND, settings.sort_window, self._batch,
                               functools.partial(found_pairs, source=kind)), keys=entries)
            for kind, lists in found.items()
        ) | "AllDealt" >> beam.Flatten()
        ran = dealt_pairs | "CrossEncoder" >> RunModel(
            settings, pair_scorer(settings), sources.load_tokenizer_and_width, "score", "score",
            prepare=_ShardCandidates(settings.symmetric), batched=True)
        return _nothing_reused(_pair_scores(ran, settings, bound, at_most=True))


def _reuse(element) -> Iterable:
    """(pair key, {candidate, known score}) -> the candidate scored from the known score, or to score."""
    _, joined = element
    known = next(iter(joined["known"]), None)  # the same pair stored twice carries the same score
    for candidate in joined["candidate"]:
        if known is not None:
            yield beam.pvalue.TaggedOutput("reused", ScoredPair(candidate.id_a, candidate.id_b, known,
                                                                candidate.similarity, candidate.source, True))
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
        with_a = {"pair": pairs, "text": texts} | "TextA" >> JoinByKey(_with_text, 0, keys={"pair": attrgetter("id_a")})
        return {"pair": with_a, "text": texts} | "TextB" >> JoinByKey(_with_text, 1, keys={"pair": attrgetter("id_b")})


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
                {"candidate": candidates,
                 "known": self._known | "KeyKnown" >> beam.Map(lambda p: ((p.id_a, p.id_b), p.score))}
                | "ReuseScores" >> JoinByKey(_reuse, keys={"candidate": attrgetter("id_a", "id_b")},
                                             outputs=("reused",), main="unknown")
            )
            candidates = looked_up.unknown
            reused = looked_up.reused | "BatchReused" >> beam.BatchElements(
                min_batch_size=REUSED_BATCH, max_batch_size=REUSED_BATCH)
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
            return _nothing_reused(scoring)
        scored = (scoring.scored, reused) | "ReusedAndNew" >> beam.Flatten()
        return Scored(scored, scoring.scored, reused, scoring.failed)
