"""CPU to encode and decode a record carrying numpy arrays with `RecordCoder`, before and after the thirty-first
session's cut.

A lexical question crosses a stage boundary as an `Embedded` record (its representative and its sparse
vector's two arrays) several times a run (made, tokenized ahead, sampled for the centroids, partitioned,
written to state/). Before, each array's dtype was made again from its name on every decode (and its name
from the dtype on every encode), a one-dimensional array was reshaped to its own shape, and each record was
made through its class's `_make`; now dtypes are looked up once a coder, a vector is not reshaped, and a
record is made by `tuple.__new__` as `_make` makes it. The "before" coder is the old code, kept here only.
Both run in this process on the same `Embedded` items as `bench_entries.py` makes them, interleaved A B B A
..., and must decode every item to an equal one of the same class.

    python -m benchmarks.bench_coder [--questions 20000] [--repeat 7]

Prints one JSON line: median (min-max) µs an item to encode and to decode, each way.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from benchmarks.bench_entries import make_items
from transforms.coders import _ARRAY, _PICKLED, _RECORDS, Records, _class_named, _RecordCoderImpl, unpickled_list


class _BeforeImpl(_RecordCoderImpl):
    """`RecordCoder`'s element coder as it was before: dtypes made from their names each time, arrays reshaped,
    records made by `_make`."""

    def encode_to_stream(self, value, stream, nested):
        if type(value) is np.ndarray and value.dtype.kind in "biufcmM":
            stream.write_byte(_ARRAY)
            stream.write(value.dtype.str.encode("ascii"), True)
            stream.write_var_int64(value.ndim)
            for size in value.shape:
                stream.write_var_int64(size)
            stream.write(np.ascontiguousarray(value).tobytes(), True)
            return
        super().encode_to_stream(value, stream, nested)

    def decode_from_stream(self, stream, nested):
        marker = stream.read_byte()
        if marker == _PICKLED:
            return self._pickle.decode_from_stream(stream, nested)
        if marker == _RECORDS:
            return Records(unpickled_list(stream.read_all(True)))
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
    """Equal records of the same classes, arrays compared by value."""
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    items = make_items(args.questions)
    ways = {"before": _BeforeImpl(), "now": _RecordCoderImpl()}
    names = list(ways)
    timings: dict = {name: {"encode": [], "decode": []} for name in names}
    for i in range(args.repeat):
        for name in (names if i % 2 == 0 else names[::-1]):
            impl = ways[name]
            began = time.process_time()
            encoded = [impl.encode(item) for item in items]
            encoded_at = time.process_time()
            decoded = [impl.decode(data) for data in encoded]
            decoded_at = time.process_time()
            timings[name]["encode"].append((encoded_at - began) / len(items) * 1e6)
            timings[name]["decode"].append((decoded_at - encoded_at) / len(items) * 1e6)
            if not all(_same(a, b) for a, b in zip(items, decoded)):
                raise AssertionError(f"{name}: an item decoded unequal to the one encoded")
    summary = {name: {op: {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
                           "max": round(max(values), 2)} for op, values in ops.items()}
               for name, ops in timings.items()}
    print(json.dumps({"questions": args.questions, "repeat": args.repeat, "us_per_item": summary}))
    return summary


if __name__ == "__main__":
    main()
