"""Embedding representatives for blocking (docs/design.md, "embed").

`lexical`: hashed character 1-2-gram TF-IDF, dense, L2-normalized. Character
n-grams suit Chinese, where words are not separated; hashing keeps the
dimension fixed without a vocabulary pass; document frequencies come from a
distributed combine, so no worker ever sees the whole corpus.

`encoder`: any Hugging Face encoder through RunInference (mean or CLS pooling,
optional whitening from the corpus's own mean and covariance), for paraphrases
that share little text, which lexical vectors cannot bring together.

`static`: the mean of a trained table's rows for the same hashed character
n-grams (`qdedup train-blocker`): paraphrases brought together at the cost of a
table lookup, with no model on the workers.
"""
from __future__ import annotations

import functools
import logging
import zlib
from typing import Any, Callable, NamedTuple, Optional

import apache_beam as beam
import numpy as np

from transforms import sources
from transforms.errors import RejectedRow, failure
from transforms.feeding import ModelSettings
from transforms.inference import PackedBatchHandler, RunModel
from transforms.logs import Progress
from transforms.metrics import StageTimer
from transforms.records import Embedded, Representative
from transforms.vectors import SparseVector, to_dense, unit

# A character counts 1.5x a character pair. Measured on LCQMC dev (benchmarks/README.md): recall@5 of
# positive pairs 97.5% with equal weights, 98.0% with 1.5 (1024 dimensions).
UNIGRAM_WEIGHT = 1.5

_LOG = logging.getLogger(__name__)


def char_ngrams(text: str) -> list[str]:
    """Characters and adjacent character pairs, spaces left out."""
    text = text.replace(" ", "")
    return list(text) + [text[i:i + 2] for i in range(len(text) - 1)]


def _buckets(grams: list[str], dim: int) -> np.ndarray:
    """crc32 buckets: stable across processes, unlike hash()."""
    return np.fromiter((zlib.crc32(g.encode("utf-8")) % dim for g in grams), dtype=np.int64, count=len(grams))


def ngram_buckets(text: str, dim: int) -> np.ndarray:
    """The bucket of every character n-gram of the text, repeats kept."""
    return _buckets(char_ngrams(text), dim)


def hashed_ngrams(text: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(bucket ids, ascending; summed n-gram weights): `ngram_buckets`' buckets, summed per bucket in one
    pass over the text, with no list of n-grams or array of buckets between (a third less CPU than numpy's
    unique and bincount on arrays this short, and 17% less than summing `ngram_buckets`' array; every
    question is hashed twice, for the document frequencies and for its vector)."""
    text = text.replace(" ", "")
    crc32 = zlib.crc32
    summed: dict = {}
    get = summed.get
    for char in text:
        bucket = crc32(char.encode("utf-8")) % dim
        summed[bucket] = get(bucket, 0.0) + UNIGRAM_WEIGHT
    for i in range(len(text) - 1):
        bucket = crc32(text[i:i + 2].encode("utf-8")) % dim
        summed[bucket] = get(bucket, 0.0) + 1.0
    buckets = sorted(summed)
    return np.array(buckets, dtype=np.int64), np.array([summed[b] for b in buckets], dtype=np.float64)


def idf_weights(document_frequency: np.ndarray, documents: int) -> np.ndarray:
    """Smoothed idf, as scikit-learn's TfidfVectorizer(smooth_idf=True)."""
    return (np.log((1.0 + documents) / (1.0 + document_frequency)) + 1.0).astype(np.float32)


def tfidf_sparse(text: str, idf: np.ndarray) -> SparseVector:
    """Unit-length TF-IDF vector; an all-zero text gives the zero vector."""
    buckets, weights = hashed_ngrams(text, len(idf))
    values = (weights * idf[buckets]).astype(np.float32)
    norm = np.linalg.norm(values)
    return SparseVector(buckets.astype(np.int32), values / norm if norm > 0 else values, len(idf))


def tfidf_vector(text: str, idf: np.ndarray) -> np.ndarray:
    return to_dense(tfidf_sparse(text, idf))


class DocumentFrequency(beam.CombineFn):
    """Counts documents per hashed bucket: (documents, df array)."""

    def __init__(self, dim: int):
        self._dim = dim

    def create_accumulator(self):
        return 0, np.zeros(self._dim, dtype=np.int64)

    def add_input(self, accumulator, text: str):
        documents, df = accumulator
        df[hashed_ngrams(text, self._dim)[0]] += 1
        return documents + 1, df

    def merge_accumulators(self, accumulators):
        documents, df = 0, np.zeros(self._dim, dtype=np.int64)
        for count, other in accumulators:
            documents += count
            df += other
        return documents, df

    def extract_output(self, accumulator):
        documents, df = accumulator
        return idf_weights(df, documents)


class Embeddings(NamedTuple):
    """What an embedder gives: `Embedded` unit vectors; `RejectedRow`s (kind "question") of the questions
    it could not embed; and one element of parameters as fitted or given ({"idf"}, the whitening
    {"mean", "matrix"}, or {})."""

    vectors: beam.PCollection
    failed: beam.PCollection
    params: beam.PCollection


class EmbedLexical(beam.PTransform):
    """Representatives -> `Embeddings`: sparse unit vectors, params {"idf": weights}.

    `idf` given (an extended run's, from the previous run) keeps new vectors
    comparable with the stored ones; otherwise it comes from these representatives.
    """

    def __init__(self, dim: int, idf: Optional[np.ndarray] = None):
        super().__init__()
        self._dim = dim
        self._idf = idf

    def expand(self, representatives):
        if self._idf is not None:
            idf = representatives.pipeline | "PreviousIdf" >> beam.Create([self._idf])
        else:
            idf = (
                representatives
                | "NormalizedText" >> beam.Map(lambda rep: rep.normalized)
                | "DocumentFrequency" >> beam.CombineGlobally(DocumentFrequency(self._dim))
            )
        vectors = representatives | "TfIdfVector" >> beam.ParDo(
            _Embed(tfidf_sparse), beam.pvalue.AsSingleton(idf)).with_outputs("failed", main="vectors")
        return Embeddings(vectors.vectors, vectors.failed,
                          idf | "IdfParams" >> beam.Map(lambda weights: {"idf": weights}))


def failed_question(rep: Representative, reason: str, detail: str, stage: str) -> RejectedRow:
    """A question no vector could be made for: it gets no candidates, its rows are still grouped."""
    return RejectedRow.of({"id": rep.id, "text": rep.text}, f"representative of {rep.count} row(s)", reason,
                          detail, stage, "question")


class _Embed(beam.DoFn):
    """rep -> `Embedded(rep, vector_of(normalized text, parameters))`; a question it fails on goes to "failed".

    The parameters come as a side input (the idf), or are loaded once per worker by `load` (a table).
    """

    def __init__(self, vector_of: Callable[[str, Any], Any], load: Optional[Callable[[], Any]] = None):
        self._vector_of = vector_of
        self._load = load
        self._timer = StageTimer("embed", helpers=False)  # numpy on vectors this short: no helper threads

    def setup(self):
        self._loaded = self._load() if self._load else None
        self._progress = Progress(_LOG, "embedding", "questions")

    def process(self, rep: Representative, parameters=None):
        self._progress.add()
        try:
            with self._timer:
                vector = self._vector_of(rep.normalized, self._loaded if parameters is None else parameters)
        except Exception as exc:
            yield beam.pvalue.TaggedOutput("failed", failed_question(rep, "embed_error", failure(exc), "embed"))
            return
        yield Embedded(rep, vector)


# ---- Static embedding: a table of hashed character n-grams trained on question pairs, averaged ----

def static_vector(text: str, table: np.ndarray) -> np.ndarray:
    """The unit mean of the table's rows for the text's n-grams (`ngram_buckets`, repeats counted, as
    `qdedup train-blocker` trains them); the zero vector for a text without any."""
    buckets = ngram_buckets(text, len(table))
    if not len(buckets):
        return np.zeros(table.shape[1], dtype=np.float32)
    return unit(table[buckets].mean(axis=0))


class EmbedStatic(beam.PTransform):
    """Representatives -> `Embeddings` from a static embedder directory (`qdedup train-blocker`): dense unit
    vectors, no parameters fitted. Each worker process loads the table once (buckets x dims float32)."""

    def __init__(self, name: str):
        super().__init__()
        self._name = name

    def expand(self, representatives):
        load = functools.partial(sources.load_static_table, self._name)
        vectors = representatives | "StaticVector" >> beam.ParDo(
            _Embed(static_vector, load)).with_outputs("failed", main="vectors")
        return Embeddings(vectors.vectors, vectors.failed, representatives.pipeline | "NoParams" >> beam.Create([{}]))


# ---- Encoder embedding: semantic vectors for paraphrases that share little text ----

def pooled_hidden_states(model, batch: dict, pooling: str) -> np.ndarray:
    """The encoder's forward pass: one vector per text of the padded batch (not yet normalized)."""
    hidden = model(**batch).last_hidden_state.float()
    if pooling == "cls":
        pooled = hidden[:, 0]
    else:
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1)
    return pooled.cpu().numpy()


def text_encoder(settings: ModelSettings, pooling: str) -> PackedBatchHandler:
    """The RunInference handler that turns tokenized texts into pooled vectors."""
    return PackedBatchHandler(settings, functools.partial(sources.load_pretrained, model_class="AutoModel"),
                              functools.partial(pooled_hidden_states, pooling=pooling), "encode")


class MeanCovariance(beam.CombineFn):
    """(count, sum, sum of outer products) -> whitening (mean, matrix).

    Vectors are held until `batch` have come, then added as one matrix product (`_flush`): one outer product
    a vector, each summed into a new d x d matrix (8 MiB at d = 1,024), took 1.1 ms of CPU a vector against
    0.07 (benchmarks/bench_whitening.py). The accumulator is a list, changed in place.
    """

    def __init__(self, batch: int = 256):
        self._batch = batch

    def create_accumulator(self):
        return [0, None, None, []]  # count, sum, sum of outer products, vectors not yet added

    def add_input(self, accumulator, vector):
        accumulator[3].append(np.array(vector, dtype=np.float64))  # a copy: a view would hold its model batch
        if len(accumulator[3]) >= self._batch:
            _flush(accumulator)
        return accumulator

    def compact(self, accumulator):
        return _flush(accumulator)

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for accumulator in accumulators:
            count, total, outer = _sums(accumulator)
            if total is None:
                continue
            merged[0] += count
            merged[1] = total if merged[1] is None else merged[1] + total
            merged[2] = outer if merged[2] is None else merged[2] + outer
        return merged

    def extract_output(self, accumulator):
        count, total, outer = _sums(accumulator)
        if not count:
            return None
        return whitening(total / count, outer / count - np.outer(total / count, total / count))


def _sums(accumulator: list) -> tuple:
    """A `MeanCovariance` accumulator's (count, sum, sum of outer products), its held vectors included, in float64
    (as one matrix product); the accumulator is left as it is."""
    count, total, outer, held = accumulator
    if held:
        held = np.asarray(held, dtype=np.float64)
        count += len(held)
        total = held.sum(axis=0) if total is None else total + held.sum(axis=0)
        outer = held.T @ held if outer is None else outer + held.T @ held
    return count, total, outer


def _flush(accumulator: list) -> list:
    """Adds the held vectors of a `MeanCovariance` accumulator to its sums (`_sums`), in place."""
    accumulator[:3], accumulator[3] = _sums(accumulator), []
    return accumulator


def whitening(mean: np.ndarray, covariance: np.ndarray, epsilon: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """(mean, W) such that (x - mean) @ W has identity covariance (BERT-whitening, Su et al. 2021)."""
    values, vectors = np.linalg.eigh(covariance)
    return mean.astype(np.float32), (vectors / np.sqrt(np.maximum(values, 0) + epsilon)).astype(np.float32)


def _whiten(item, transform):
    rep, vector = item
    if transform is None:
        return Embedded(rep, unit(vector))
    mean, matrix = transform
    return Embedded(rep, unit((vector - mean) @ matrix))


class EmbedEncoder(beam.PTransform):
    """Representatives -> `Embeddings` from a Hugging Face encoder.

    With `whiten`, params holds the whitening {"mean", "matrix"}, from these
    representatives or, extending a previous run, the given `transform`.
    """

    def __init__(self, settings: ModelSettings, pooling: str = "mean", whiten: bool = False,
                 transform: Optional[tuple] = None):
        super().__init__()
        self._settings = settings
        self._pooling = pooling
        self._whiten = whiten
        self._transform = transform

    def expand(self, representatives):
        ran = (
            representatives
            | "EncoderInputs" >> beam.Map(lambda rep: (rep, ((rep.text,),)))
            | "Encoder" >> RunModel(self._settings, text_encoder(self._settings, self._pooling),
                                    sources.load_tokenizer_and_width, "encoder", "encode")
        )
        pooled = ran.outputs
        failed = ran.failed | "FailedQuestions" >> beam.MapTuple(failed_question)
        if not self._whiten:
            vectors = pooled | "Normalize" >> beam.MapTuple(lambda rep, vector: Embedded(rep, unit(vector)))
            return Embeddings(vectors, failed, pooled.pipeline | "NoParams" >> beam.Create([{}]))
        if self._transform is not None:
            transform = pooled.pipeline | "PreviousWhitening" >> beam.Create([self._transform])
        else:
            transform = (
                pooled
                | "Vectors" >> beam.Values()
                | "MeanCovariance" >> beam.CombineGlobally(MeanCovariance())
            )
        vectors = pooled | "Whiten" >> beam.Map(_whiten, transform=beam.pvalue.AsSingleton(transform))
        params = transform | "WhiteningParams" >> beam.Map(
            lambda t: {} if t is None else {"mean": t[0], "matrix": t[1]})
        return Embeddings(vectors, failed, params)
