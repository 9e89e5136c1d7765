"""CPU a vector of fitting `--encoder-whiten`'s mean and covariance (`embed.MeanCovariance`).

Before the thirtieth session each vector was added as its own outer product, summed into a new d x d
matrix; now vectors are added a batch at a time as one matrix product. Both are timed here on the same
random float32 vectors, interleaved A B B A ..., as process CPU (numpy's BLAS threads included), and
checked to give the same sums.

    python -m benchmarks.bench_whitening [--dim 1024] [--vectors 2048] [--repeats 5]

Prints one line a variant: CPU µs a vector, median (min-max) of `--repeats`.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from transforms.embed import MeanCovariance


def outer_a_vector(vectors: np.ndarray) -> tuple:
    """The sums as they were made before: one outer product a vector, each summed into a new matrix."""
    count, total, outer = 0, np.zeros(vectors.shape[1]), np.zeros((vectors.shape[1],) * 2)
    for vector in vectors:
        vector = vector.astype(np.float64)
        count, total, outer = count + 1, total + vector, outer + np.outer(vector, vector)
    return count, total, outer


def batched(vectors: np.ndarray) -> tuple:
    fn = MeanCovariance()
    accumulator = fn.create_accumulator()
    for vector in vectors:
        accumulator = fn.add_input(accumulator, vector)
    return tuple(fn.compact(accumulator)[:3])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--vectors", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    vectors = np.random.default_rng(0).normal(size=(args.vectors, args.dim)).astype(np.float32)
    variants = {"one outer product a vector (before)": outer_a_vector, "a batch a product (MeanCovariance)": batched}
    names = list(variants)
    timings: dict = {name: [] for name in names}
    sums = {}
    for i in range(args.repeats):
        for name in (names if i % 2 == 0 else names[::-1]):
            began = time.process_time()
            sums[name] = variants[name](vectors)
            timings[name].append((time.process_time() - began) / args.vectors * 1e6)
    (count_a, total_a, outer_a), (count_b, total_b, outer_b) = (sums[name] for name in names)
    assert count_a == count_b and np.allclose(total_a, total_b) and np.allclose(outer_a, outer_b, rtol=1e-9)
    for name, values in timings.items():
        print(f"{name}: {statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f}) CPU µs a vector "
              f"({args.vectors} vectors of {args.dim}, {args.repeats} runs interleaved; same sums)")


if __name__ == "__main__":
    main()
