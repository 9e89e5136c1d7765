import numpy as np
import pytest

from transforms.block import knn_pairs


def _brute_force(ids, vectors, k, floor):
    sims = vectors @ vectors.T
    pairs = {}
    for i in range(len(ids)):
        order = [j for j in np.argsort(-sims[i], kind="stable") if j != i][:k]
        for j in order:
            if sims[i, j] >= floor:
                a, b = sorted((ids[i], ids[j]))
                pairs[(a, b)] = float(sims[i, j])
    return pairs


def _unit(rng, n, d):
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("k, floor", [(1, -1.0), (3, 0.0), (5, 0.2), (50, -1.0)])
def test_knn_pairs_equal_brute_force(k, floor):
    rng = np.random.default_rng(k)
    vectors = _unit(rng, 60, 16)
    ids = [f"q{i:03d}" for i in rng.permutation(60)]
    got = knn_pairs(ids, vectors, k, floor)
    expected = _brute_force(ids, vectors, k, floor)
    assert got.keys() == expected.keys()
    for pair, sim in got.items():
        assert pair[0] < pair[1]
        assert sim == pytest.approx(expected[pair], abs=1e-5)


def test_degenerate_partitions():
    assert knn_pairs([1], np.ones((1, 4), dtype=np.float32), 5, 0.0) == {}
    same = np.tile(np.array([[1, 0, 0, 0]], dtype=np.float32), (3, 1))
    assert set(knn_pairs([3, 1, 2], same, 5, 0.0)) == {(1, 2), (1, 3), (2, 3)}
