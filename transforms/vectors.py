"""Vectors as the stages keep them: dense numpy arrays, or sparse unit vectors for lexical embeddings."""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np
import scipy.sparse


class SparseVector(NamedTuple):
    """A unit vector kept sparse between stages: a question has tens of n-grams in a thousand dimensions,
    so shuffling the non-zeros moves about a tenth of the bytes of the dense vector."""

    indices: np.ndarray  # int32, ascending
    values: np.ndarray   # float32
    dim: int


def to_dense(vector) -> np.ndarray:
    if isinstance(vector, SparseVector):
        dense = np.zeros(vector.dim, dtype=np.float32)
        dense[vector.indices] = vector.values
        return dense
    return vector


def unit(vector: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(vector)
    return (vector / norm if norm > 0 else vector).astype(np.float32)


def sparse_rows(vectors: Sequence) -> Optional[scipy.sparse.csr_matrix]:
    """The vectors as the rows of a sparse matrix, where every one is a `SparseVector`; else None."""
    if not vectors or not all(isinstance(vector, SparseVector) for vector in vectors):
        return None
    indptr = np.zeros(len(vectors) + 1, dtype=np.int64)
    np.cumsum([len(vector.indices) for vector in vectors], out=indptr[1:])
    return scipy.sparse.csr_matrix(
        (np.concatenate([vector.values for vector in vectors]).astype(np.float32, copy=False),
         np.concatenate([vector.indices for vector in vectors]), indptr), shape=(len(vectors), vectors[0].dim))


def dense_rows(vectors: Sequence) -> tuple[np.ndarray, Optional[scipy.sparse.csr_matrix]]:
    """(the vectors as the rows of a dense float32 array, the same rows as a sparse matrix where every
    vector is a `SparseVector`, else None). Sparse vectors are laid out once as a sparse matrix and made
    dense in one call, not one by one (a work item's two matrices of 12,000 lexical vectors: 19 ms, against
    156 ms by `to_dense` and `np.stack`; `benchmarks/bench_search.py --tables layout`, benchmarks/README.md,
    "twenty-ninth session")."""
    rows = sparse_rows(vectors)
    if rows is not None:
        return rows.toarray(), rows
    return np.stack([to_dense(vector) for vector in vectors]), None
