"""Vectors as the stages keep them: dense numpy arrays, or sparse unit vectors for lexical embeddings."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


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


def dot_rows(matrix: np.ndarray, vector) -> np.ndarray:
    """matrix @ vector for a dense or sparse vector."""
    if isinstance(vector, SparseVector):
        return matrix[:, vector.indices] @ vector.values
    return matrix @ vector


def unit(vector: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(vector)
    return (vector / norm if norm > 0 else vector).astype(np.float32)
