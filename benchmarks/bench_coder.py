"""CPU to encode and decode records with `RecordCoder`, before and after the thirty-first session's cuts.

A lexical question crosses a stage boundary as an `Embedded` record (its representative and its sparse
vector's two arrays) several times a run (made, tokenized ahead, sampled for the centroids, partitioned,
written to state/), and scored pairs cross them in `Records` lists (scored batches, and the lists look-ups
deal into shards, `pickled_list`). Before, each array's dtype was made again from its name on every decode
(and its name from the dtype on every encode), a one-dimensional array was reshaped to its own shape, each
record was made through its class's `_make`, and a list of one record class was pickled as the class and a
plain tuple a record; now dtypes are looked up once a coder, a vector is not reshaped, a record is made by
`tuple.__new__` as `_make` makes it, a sparse vector is written in one piece (its dimension, then each array's
dtype and bytes) rather than as a record of two arrays, and a list of one record class is pickled as its fields
in columns.
The "before" coder is the old code, kept here only. Both run in this process on the same items, interleaved
A B B A ...: `Embedded` items as `bench_entries.py` makes them, and scored batches of `--batch` random
`ScoredPair`s; every item must decode to an equal one of the same class.

    python -m benchmarks.bench_coder [--questions 20000] [--batch 1000] [--repeat 7]

Prints one JSON line: median (min-max) µs to encode and to decode an `Embedded` item, and a pair of a scored
batch, each way.
"""
from __future__ import annotations

import argparse
import json
import pickle
import random
import statistics
import time

import numpy as np

from benchmarks.bench_entries import make_items
from transforms.coders import (
    _ARRAY,
    _PICKLED,
    _RECORD,
    _RECORDS,
    Records,
    _class_named,
    _is_record,
    _name_of,
    _RecordCoderImpl,
)
from transforms.records import ScoredPair
from transforms.vectors import SparseVector


def _pickled_rows(items: list) -> bytes:
    """`pickled_list` as it was: a list of one record class as the class and a plain tuple a record."""
    cls = type(items[0]) if items else tuple
    if not _is_record(cls) or any(type(item) is not cls for item in items):
        return pickle.dumps((None, items), pickle.HIGHEST_PROTOCOL)
    return pickle.dumps((cls, [tuple(item) for item in items]), pickle.HIGHEST_PROTOCOL)


def _unpickled_rows(data: bytes) -> list:
    cls, items = pickle.loads(data)
    if cls is None:
        return items
    new = tuple.__new__
    return [new(cls, item) for item in items]


class _BeforeImpl(_RecordCoderImpl):
    """`RecordCoder`'s element coder as it was before: dtypes made from their names each time, arrays reshaped,
    records made by `_make`, a sparse vector as a record, lists of records pickled a tuple a record."""

    def encode_to_stream(self, value, stream, nested):
        if type(value) is np.ndarray and value.dtype.kind in "biufcmM":
            stream.write_byte(_ARRAY)
            stream.write(value.dtype.str.encode("ascii"), True)
            stream.write_var_int64(value.ndim)
            for size in value.shape:
                stream.write_var_int64(size)
            stream.write(np.ascontiguousarray(value).tobytes(), True)
            return
        if type(value) is Records:
            stream.write_byte(_RECORDS)
            stream.write(_pickled_rows(value), True)
            return
        if type(value) is SparseVector:  # a record of its two arrays and its dimension
            stream.write_byte(_RECORD)
            stream.write(_name_of(SparseVector), True)
            self._fields.encode_to_stream(tuple(value), stream, True)
            return
        super().encode_to_stream(value, stream, nested)

    def decode_from_stream(self, stream, nested):
        marker = stream.read_byte()
        if marker == _PICKLED:
            return self._pickle.decode_from_stream(stream, nested)
        if marker == _RECORDS:
            return Records(_unpickled_rows(stream.read_all(True)))
        if marker == _ARRAY:
            dtype = np.dtype(stream.read_all(True).decode("ascii"))
            shape = tuple(stream.read_var_int64() for _ in range(stream.read_var_int64()))
            return np.frombuffer(stream.read_all(True), dtype).reshape(shape).copy()
        name = stream.read_all(True)
        cls = self._classes.get(name)
        if cls is None:
            cls = self._classes[name] = _class_named(name)
        return cls._make(self._fields.decode_from_stream(stream, True))


def _same(a, b) -> bool:
    """Equal records (and lists of them) of the same classes, arrays compared by value."""
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def scored_batches(pairs: int, batch: int, seed: int = 1) -> list:
    """`pairs` random `ScoredPair`s in `Records` lists of `batch`, as scoring gives them."""
    rng = random.Random(seed)
    found = [ScoredPair(rng.randrange(10**7), rng.randrange(10**7), rng.random(), rng.random(), "lexical")
             for _ in range(pairs)]
    return [Records(found[i:i + batch]) for i in range(0, pairs, batch)]


def _time(impl, items: list, count: int) -> tuple[float, float]:
    """(µs to encode, µs to decode) a unit of `count`, every item checked to come back equal."""
    began = time.process_time()
    encoded = [impl.encode(item) for item in items]
    encoded_at = time.process_time()
    decoded = [impl.decode(data) for data in encoded]
    decoded_at = time.process_time()
    if not all(_same(a, b) for a, b in zip(items, decoded)):
        raise AssertionError(f"{type(impl).__name__}: an item decoded unequal to the one encoded")
    return (encoded_at - began) / count * 1e6, (decoded_at - encoded_at) / count * 1e6


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    kinds = {"embedded": make_items(args.questions), "scored pair": scored_batches(args.questions, args.batch)}
    ways = {"before": _BeforeImpl(), "now": _RecordCoderImpl()}
    names = list(ways)
    timings: dict = {kind: {name: {"encode": [], "decode": []} for name in names} for kind in kinds}
    for i in range(args.repeat):
        for name in (names if i % 2 == 0 else names[::-1]):
            for kind, items in kinds.items():
                encode, decode = _time(ways[name], items, args.questions)
                timings[kind][name]["encode"].append(encode)
                timings[kind][name]["decode"].append(decode)
    summary = {kind: {name: {op: {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
                                  "max": round(max(values), 2)} for op, values in ops.items()}
                      for name, ops in by_way.items()} for kind, by_way in timings.items()}
    print(json.dumps({"questions": args.questions, "batch": args.batch, "repeat": args.repeat, "us_per_item": summary}))
    return summary


if __name__ == "__main__":
    main()
