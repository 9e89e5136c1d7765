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
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np

from transforms import sources
from transforms.errors import RejectedRow, failure
from transforms.feeding import ModelSettings
from transforms.inference import PackedBatchHandler, RunModel
from transforms.joins import HeldInBatches
from transforms.logs import Progress
from transforms.metrics import StageTimer
from transforms.records import Embedded, Representative
from transforms.vectors import SparseVector, to_dense, unit

# A character counts 1.5x a character pair. Measured on LCQMC dev (benchmarks/README.md): recall@5 of
# positive pairs 97.5% with equal weights, 98.0% with 1.5 (1024 dimensions).
UNIGRAM_WEIGHT = 1.5
EMBED_BATCH = 1000  # questions an embedder hashes and makes vectors for at once (`ngram_crcs`)

_LOG = logging.getLogger(__name__)


def _crc32_table() -> np.ndarray:
    """zlib's crc32 table (the reflected polynomial 0xEDB88320): each byte's remainder."""
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0xEDB88320), table >> 1).astype(np.uint32)
    return table


_CRC32 = _crc32_table()
_UTF8_LEAD = np.array([0, 0x00, 0xC0, 0xE0, 0xF0], dtype=np.uint32)  # a code point's first UTF-8 byte, by its length


def _crc32_fed(state: np.ndarray, points: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """crc32 states after each code point's UTF-8 bytes (`sizes`: 1 to 4 of them) are fed to them: zlib's byte by
    byte update, every code point at once."""
    for k in range(4):
        shift = np.maximum(sizes - (k + 1), 0).astype(np.uint32) * 6  # the bits below this byte's
        byte = _UTF8_LEAD[sizes] | (points >> shift) if k == 0 else 0x80 | ((points >> shift) & 0x3F)
        state = np.where(sizes > k, _CRC32[(state ^ byte) & 0xFF] ^ (state >> 8), state)
    return state


def ngram_crcs(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`zlib.crc32` of the UTF-8 of every character and of every adjacent character pair of each text (spaces
    left out), for all the texts at once: ~2 µs a short question against ~30 hashing its n-grams one by one.

    Returns:
        (the text of each character, its crc32, the text of each pair, its crc32), each text's in order.

    Raises:
        UnicodeEncodeError: a text has a character UTF-8 cannot encode (a lone surrogate), as encoding it would.
    """
    stripped = [text.replace(" ", "") for text in texts]
    lengths = np.fromiter(map(len, stripped), dtype=np.int64, count=len(stripped))
    points = np.frombuffer("".join(stripped).encode("utf-32-le"), dtype=np.uint32)
    sizes = 1 + (points >= 0x80).astype(np.int64) + (points >= 0x800) + (points >= 0x10000)
    first = _crc32_fed(np.full(len(points), 0xFFFFFFFF, dtype=np.uint32), points, sizes)
    owner = np.repeat(np.arange(len(stripped)), lengths)
    paired = owner[:-1] == owner[1:]  # a character and the next one of the same text
    second = _crc32_fed(first[:-1][paired], points[1:][paired], sizes[1:][paired])
    return owner, first ^ 0xFFFFFFFF, owner[:-1][paired], second ^ 0xFFFFFFFF


def ngram_bucket_rows(texts: Sequence[str], dim: int) -> list[np.ndarray]:
    """The crc32 bucket of every character n-gram of each text, repeats kept: its characters, then its
    character pairs (spaces left out), as int64; the texts hashed together (`ngram_crcs`)."""
    character_of, characters, pair_of, pairs = ngram_crcs(texts)
    of_text = np.concatenate([character_of, pair_of])
    order = np.argsort(of_text, kind="stable")  # each text's characters, then its pairs
    buckets = np.concatenate([characters, pairs]).astype(np.int64)[order] % dim
    bounds = np.searchsorted(of_text[order], np.arange(len(texts) + 1)).tolist()
    return [buckets[start:end] for start, end in zip(bounds[:-1], bounds[1:])]


def ngram_buckets(text: str, dim: int) -> np.ndarray:
    """One text's `ngram_bucket_rows`."""
    return ngram_bucket_rows([text], dim)[0]


def hashed_ngram_rows(texts: Sequence[str], dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each text's n-gram buckets (`ngram_buckets`) summed: (row starts, one more than texts; buckets, each row's
    ascending; their summed weights, a character `UNIGRAM_WEIGHT`, a pair 1), for all the texts at once.
    The sums are of halves and whole numbers, exact in any order."""
    character_of, characters, pair_of, pairs = ngram_crcs(texts)
    keys = np.concatenate([character_of * dim + characters % dim, pair_of * dim + pairs % dim])
    weights = np.concatenate([np.full(len(characters), UNIGRAM_WEIGHT), np.ones(len(pairs))])
    unique, inverse = np.unique(keys, return_inverse=True)
    starts = np.searchsorted(unique // dim, np.arange(len(texts) + 1))
    return starts, unique % dim, np.bincount(inverse, weights=weights, minlength=len(unique))


def hashed_ngrams(text: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(bucket ids, ascending; summed n-gram weights) of one text (`hashed_ngram_rows`)."""
    _, buckets, weights = hashed_ngram_rows([text], dim)
    return buckets, weights


def idf_weights(document_frequency: np.ndarray, documents: int) -> np.ndarray:
    """Smoothed idf, as scikit-learn's TfidfVectorizer(smooth_idf=True)."""
    return (np.log((1.0 + documents) / (1.0 + document_frequency)) + 1.0).astype(np.float32)


def tfidf_rows(texts: Sequence[str], idf: np.ndarray) -> list[SparseVector]:
    """Unit-length TF-IDF vectors of many texts, their n-grams hashed together (`hashed_ngram_rows`); an
    all-zero text gives the zero vector. Each is the vector its text alone gets, to the last bit: the weights
    are exact, and each row's norm is taken on its own."""
    starts, buckets, weights = hashed_ngram_rows(texts, len(idf))
    values = (weights * idf[buckets]).astype(np.float32)
    bounds = list(zip(starts[:-1].tolist(), starts[1:].tolist()))
    # A row's norm as np.linalg.norm takes it (sqrt of the row's own dot product): the same float32 sum as a
    # text's vector alone; an empty row's 1 leaves it as it is.
    norms = np.array([np.sqrt(values[start:end].dot(values[start:end])) for start, end in bounds], dtype=np.float32)
    values /= np.repeat(np.where(norms > 0, norms, np.float32(1)), np.diff(starts))
    indices = buckets.astype(np.int32)
    return [SparseVector(indices[start:end], values[start:end], len(idf)) for start, end in bounds]


def tfidf_sparse(text: str, idf: np.ndarray) -> SparseVector:
    """Unit-length TF-IDF vector; an all-zero text gives the zero vector."""
    return tfidf_rows([text], idf)[0]


def tfidf_vector(text: str, idf: np.ndarray) -> np.ndarray:
    return to_dense(tfidf_sparse(text, idf))


class DocumentFrequency(beam.CombineFn):
    """Counts documents per hashed bucket: (documents, df array).

    Texts are held until `batch` have come, then hashed together (`hashed_ngram_rows`); the accumulator is a
    list, changed in place, as `MeanCovariance`'s."""

    def __init__(self, dim: int, batch: int = EMBED_BATCH):
        self._dim = dim
        self._batch = batch

    def create_accumulator(self):
        return [0, np.zeros(self._dim, dtype=np.int64), []]  # documents, df, texts not yet counted

    def add_input(self, accumulator, text: str):
        accumulator[2].append(text)
        return self._counted(accumulator) if len(accumulator[2]) >= self._batch else accumulator

    def _sums(self, accumulator) -> tuple[int, np.ndarray]:
        """(documents, df) with the held texts counted, the accumulator left as it is (a merge may change only
        the accumulator it returns)."""
        documents, df, held = accumulator
        if not held:
            return documents, df
        _, buckets, _ = hashed_ngram_rows(held, self._dim)  # a bucket once per text: rows hold each once
        return documents + len(held), df + np.bincount(buckets, minlength=self._dim)

    def _counted(self, accumulator):
        accumulator[0], accumulator[1] = self._sums(accumulator)
        accumulator[2] = []
        return accumulator

    def compact(self, accumulator):
        return self._counted(accumulator)

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for accumulator in accumulators:
            documents, df = self._sums(accumulator)
            merged[0] += documents
            merged[1] += df
        return merged

    def extract_output(self, accumulator):
        documents, df = self._sums(accumulator)
        return idf_weights(df, documents)


def fit_idf(texts: Iterable[str], dim: int) -> np.ndarray:
    """The idf weights `EmbedLexical` would fit on these texts, on one machine (held `EMBED_BATCH` at a time)."""
    frequency = DocumentFrequency(dim)
    return frequency.extract_output(frequency.add_inputs(frequency.create_accumulator(), texts))


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
            _Embed(tfidf_rows), beam.pvalue.AsSingleton(idf)).with_outputs("failed", main="vectors")
        return Embeddings(vectors.vectors, vectors.failed,
                          idf | "IdfParams" >> beam.Map(lambda weights: {"idf": weights}))


def failed_question(rep: Representative, reason: str, detail: str, stage: str) -> RejectedRow:
    """A question no vector could be made for: it gets no candidates, its rows are still grouped."""
    return RejectedRow.of({"id": rep.id, "text": rep.text}, f"representative of {rep.count} row(s)", reason,
                          detail, stage, "question")


class _Embed(HeldInBatches):
    """reps -> `Embedded(rep, vector)`, `vectors_of(normalized texts, parameters)` making a batch's vectors at once;
    a question it fails on goes to "failed".

    A bundle's questions are held until `batch` have come (the rest at its end); a batch the function fails on is
    made again text by text, so that only the questions it fails on are set aside. The parameters come as a side
    input (the idf), or are loaded once per worker by `load` (a table).
    """

    def __init__(self, vectors_of: Callable[[Sequence[str], Any], list], load: Optional[Callable[[], Any]] = None,
                 batch: int = EMBED_BATCH):
        super().__init__(batch)
        self._vectors_of = vectors_of
        self._load = load
        self._timer = StageTimer("embed", helpers=False)  # numpy on vectors this short: no helper threads

    def setup(self):
        self._loaded = self._load() if self._load else None
        self._progress = Progress(_LOG, "embedding", "questions")

    def start_bundle(self):
        super().start_bundle()
        self._parameters = self._loaded

    def process(self, rep: Representative, parameters=None):
        self._progress.add()
        if parameters is not None:
            self._parameters = parameters  # a side input is read in `process`; the held reps need it at the end
        return self.hold(rep)

    def outputs_of(self, reps: list) -> Iterator:
        try:
            with self._timer:
                vectors = self._vectors_of([rep.normalized for rep in reps], self._parameters)
            if len(vectors) != len(reps):
                raise ValueError(f"{len(vectors)} vectors for {len(reps)} questions")
        except Exception:
            vectors = None
        if vectors is not None:
            for rep, vector in zip(reps, vectors):
                yield Embedded(rep, vector)
            return
        for rep in reps:  # the batch failed: each question alone, and only those that fail set aside
            try:
                with self._timer:
                    vector = self._vectors_of([rep.normalized], self._parameters)[0]
            except Exception as exc:
                yield beam.pvalue.TaggedOutput("failed", failed_question(rep, "embed_error", failure(exc), "embed"))
                continue
            yield Embedded(rep, vector)


# ---- Static embedding: a table of hashed character n-grams trained on question pairs, averaged ----

def static_rows(texts: Sequence[str], table: np.ndarray) -> list[np.ndarray]:
    """The unit mean of the table's rows for each text's n-grams (`ngram_bucket_rows`, repeats counted, as
    `qdedup train-blocker` trains them); the zero vector for a text without any."""
    return [unit(table[buckets].mean(axis=0)) if len(buckets) else np.zeros(table.shape[1], dtype=np.float32)
            for buckets in ngram_bucket_rows(texts, len(table))]


def static_vector(text: str, table: np.ndarray) -> np.ndarray:
    """One text's `static_rows` vector."""
    return static_rows([text], table)[0]


class EmbedStatic(beam.PTransform):
    """Representatives -> `Embeddings` from a static embedder directory (`qdedup train-blocker`): dense unit
    vectors, no parameters fitted. Each worker process loads the table once (buckets x dims float32)."""

    def __init__(self, name: str):
        super().__init__()
        self._name = name

    def expand(self, representatives):
        load = functools.partial(sources.load_static_table, self._name)
        vectors = representatives | "StaticVector" >> beam.ParDo(
            _Embed(static_rows, load)).with_outputs("failed", main="vectors")
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
