"""Lexical embedding: hashed character 1-2-gram TF-IDF, dense, L2-normalized (DESIGN.md step 4).

Character n-grams suit Chinese, where words are not separated; hashing keeps the
dimension fixed without a vocabulary pass. Document frequencies come from a
distributed combine, so no worker ever sees the whole corpus.
"""
from __future__ import annotations

import zlib

import apache_beam as beam
import numpy as np

from transforms.metrics import StageTimer
from transforms.normalize import Representative


def char_ngrams(text: str) -> list[str]:
    """Characters (spaces excluded) and adjacent character pairs."""
    unigrams = [ch for ch in text if ch != " "]
    bigrams = [text[i:i + 2] for i in range(len(text) - 1)]
    return unigrams + bigrams


def hashed_counts(text: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(bucket ids, counts) of the text's n-grams; crc32 is stable across processes, unlike hash()."""
    buckets = np.fromiter((zlib.crc32(g.encode("utf-8")) % dim for g in char_ngrams(text)), dtype=np.int64)
    return np.unique(buckets, return_counts=True)


def idf_weights(document_frequency: np.ndarray, documents: int) -> np.ndarray:
    """Smoothed idf, as scikit-learn's TfidfVectorizer(smooth_idf=True)."""
    return (np.log((1.0 + documents) / (1.0 + document_frequency)) + 1.0).astype(np.float32)


def tfidf_vector(text: str, idf: np.ndarray) -> np.ndarray:
    """Unit-length float32 vector; an all-zero text gives the zero vector."""
    buckets, counts = hashed_counts(text, len(idf))
    vector = np.zeros(len(idf), dtype=np.float32)
    vector[buckets] = counts * idf[buckets]
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else vector


class DocumentFrequency(beam.CombineFn):
    """Counts documents per hashed bucket: (documents, df array)."""

    def __init__(self, dim: int):
        self._dim = dim

    def create_accumulator(self):
        return 0, np.zeros(self._dim, dtype=np.int64)

    def add_input(self, accumulator, text: str):
        documents, df = accumulator
        df[hashed_counts(text, self._dim)[0]] += 1
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


class EmbedLexical(beam.PTransform):
    """Representatives -> (representative, unit vector)."""

    def __init__(self, dim: int):
        super().__init__()
        self._dim = dim

    def expand(self, representatives):
        idf = (
            representatives
            | "NormalizedText" >> beam.Map(lambda rep: rep.normalized)
            | "DocumentFrequency" >> beam.CombineGlobally(DocumentFrequency(self._dim))
        )
        return representatives | "TfIdfVector" >> beam.ParDo(_Embed(), idf=beam.pvalue.AsSingleton(idf))


class _Embed(beam.DoFn):
    def __init__(self):
        self._timer = StageTimer("embed")

    def process(self, rep: Representative, idf: np.ndarray):
        with self._timer:
            vector = tfidf_vector(rep.normalized, idf)
        yield rep, vector
