"""What a blocking entry costs to pack, unpack and hold: the whole record as `RecordCoder` writes it, against
`block.pack_entry` (the search's fields only, pickled once).

Blocking packs each question once (`_AssignPartitions`) and unpacks it in every work item it is dealt into
(one a probe) and where a hot partition routes it; the in-process runner holds the packed bytes of every
entry of the work-item shuffle. This makes `--questions` entries as a lexical run makes them: the shared
LCQMC and BQ questions, normalized, their lexical vectors with the idf of their own document frequencies,
their text as the scorer's token ids (2 bytes a token, as `TokenizeAhead` gives it), and times both ways in
this process, interleaved A B B A ..., `--repeat` times each: median (min-max) µs an entry to pack and to
unpack, and the bytes of an entry. Both ways must give the search the same id, text and vector (checked every
run).

    python -m benchmarks.bench_entries [--questions 20000] [--repeat 5]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Optional

import numpy as np

from benchmarks.bench_blocking import DIM, base_questions
from transforms.block import pack_entry, unpack_entry
from transforms.coders import RecordCoder
from transforms.embed import fit_idf, tfidf_rows
from transforms.normalize import normalize_text, text_key
from transforms.records import Embedded, Representative


def make_items(count: int) -> list:
    """`Embedded` items of `count` questions (the shared ones, repeated with a suffix past their number)."""
    base = base_questions()
    texts = [normalize_text(base[i % len(base)]) + ("" if i < len(base) else str(i)) for i in range(count)]
    vectors = tfidf_rows(texts, fit_idf(texts, DIM))
    return [Embedded(Representative(1_000_000 + i, np.arange(len(text) + 3, dtype=np.uint16).tobytes(), text,
                                    text_key(text), 1), vector)
            for i, (text, vector) in enumerate(zip(texts, vectors))]


def _records():
    impl = RecordCoder().get_impl()
    return impl.encode, impl.decode


WAYS = {"records": _records, "entries": lambda: (pack_entry, unpack_entry)}


def _search_fields(value) -> tuple:
    """What the search reads of an unpacked value, whichever way packed it."""
    rep_id, text = (value.rep.id, value.rep.text) if isinstance(value, Embedded) else (value.id, value.text)
    vector = value.vector
    return rep_id, text, vector.dim, vector.indices.tolist(), vector.values.tolist()


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    items = make_items(args.questions)
    timings: dict = {way: {"pack": [], "unpack": []} for way in WAYS}
    sizes: dict = {}
    for i in range(args.repeat):
        unpacked = {}
        for way in (list(WAYS) if i % 2 == 0 else list(WAYS)[::-1]):
            pack, unpack = WAYS[way]()
            started = time.process_time()
            data = [pack(item) for item in items]
            packed_at = time.process_time()
            unpacked[way] = [unpack(entry) for entry in data]
            done = time.process_time()
            timings[way]["pack"].append((packed_at - started) / len(items) * 1e6)
            timings[way]["unpack"].append((done - packed_at) / len(items) * 1e6)
            sizes[way] = sum(map(len, data)) / len(items)
        if [_search_fields(v) for v in unpacked["records"]] != [_search_fields(v) for v in unpacked["entries"]]:
            raise SystemExit("the two ways give the search different entries")
    result = {"questions": args.questions, "repeat": args.repeat,
              "us_per_entry": {way: {step: {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
                                            "max": round(max(values), 2)} for step, values in steps.items()}
                               for way, steps in timings.items()},
              "bytes_per_entry": {way: round(size, 1) for way, size in sizes.items()}}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
