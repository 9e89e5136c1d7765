"""What routing scored pairs by a look-up costs a pair: today's records against the same look-up on arrays.

Issue 12 asks for at most 60 µs of CPU a candidate pair outside the model and blocking; the pair path spends
it in some 20 steps of a few µs each (`bench_steps.py`), most of them a look-up or a join whose Python runs
once a pair. This measures what one such step would cost if pairs travelled as arrays of int64 ids (a
representative numbered at normalizing time; not built yet) rather than as `ScoredPair` records: chaining
control's `WholeRouteByA` (`chaining._route_by_end_a`: each pair to its first end's component and verdict),
both ways, in one process, without Beam (what Beam adds is one element a list or a batch either way):

- records: `DealIntoShards` deals the routes and the pairs into shards in lists of 1,000, pickled
  (`pickled_list`), and `_LookUpShard` looks each pair up and calls `_route_by_end_a`, as `LookUp` does;
- arrays: pairs in batches of `--batch` as three arrays (ids a and b, score), dealt by id modulo the shards,
  each shard's routes sorted once, looked up with `np.searchsorted`, routed with masks.

Both route the same pairs the same way (checked on every run). Interleaved records, arrays, arrays, records,
... `--repeat` times each; median and range of CPU µs a pair.

    python -m benchmarks.bench_lookup [--pairs 572623] [--nodes 79102] [--batch 8192] [--repeat 5]

The default sizes are `bench_steps.py`'s 100k-row run's pairs and representatives.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Iterator

import numpy as np
from apache_beam.pvalue import TaggedOutput

from transforms.chaining import _route_by_end_a
from transforms.joins import DealIntoShards, _LookUpShard, shard_count
from transforms.records import ScoredPair

THRESHOLD = 0.5
SHARD_KEYS = 20_000   # `ChainingSettings.join_shard_keys`' default
LIST = 1000           # `LookUp`'s lists
VERDICTS = (None, "resplit", "cut", "too_large")


def make_inputs(pairs: int, nodes: int, seed: int = 1) -> tuple[list, list]:
    """(scored pairs, routes as (node, (label, verdict))): components of 7 consecutive nodes, one in five
    re-split or cut; pairs from a node to one up to 500 above it, scores uniform."""
    rng = random.Random(seed)
    found = []
    for _ in range(pairs):
        a = rng.randrange(nodes)
        found.append(ScoredPair(a, a + rng.randint(1, 500), rng.random(), rng.random(), "lexical"))
    routes = [(n, (n // 7, VERDICTS[(n // 7) % 4] if (n // 7) % 10 < 2 else None)) for n in range(nodes)]
    return found, routes


def by_records(pairs: list, routes: list) -> dict:
    """`LookUp(_route_by_end_a)`'s work without Beam -> {output: set of routed tuples}."""
    dealt: dict = {}

    def deal(dealer: DealIntoShards, elements) -> None:
        dealer.start_bundle()
        for element in elements:
            for shard, listed in dealer.process(element, keys=len(routes)):
                dealt.setdefault(shard, []).append(listed)
        for given in dealer.finish_bundle():  # what the bundle held at its end, in the global window
            shard, listed = given.value
            dealt.setdefault(shard, []).append(listed)

    deal(DealIntoShards(0, lambda route: route[0], SHARD_KEYS, LIST), routes)
    deal(DealIntoShards(1, lambda pair: pair.id_a, SHARD_KEYS, LIST, items=iter),
         (pairs[i:i + LIST] for i in range(0, len(pairs), LIST)))
    look_up = _LookUpShard(_route_by_end_a, lambda pair: pair.id_a, (THRESHOLD,), frozenset(["cut", "end_b"]), LIST)
    routed: dict = {"kept": set(), "resplit": set(), "cut": set(), "end_b": set()}
    for shard, grouped in dealt.items():
        for output in look_up.process((shard, grouped)):
            if not isinstance(output, TaggedOutput):
                label, edge = output
                routed["kept"].add((label, edge.a, edge.b))
            elif output.tag == "resplit":
                label, pair = output.value
                routed["resplit"].add((label, pair.id_a, pair.id_b))
            elif output.tag == "cut":
                routed["cut"].update((pair.id_a, pair.id_b) for pair in output.value)
            else:
                routed["end_b"].update((label, pair.id_a, pair.id_b) for label, _, pair in output.value)
    return routed


def _dealt_arrays(ids_a: np.ndarray, ids_b: np.ndarray, scores: np.ndarray, shards: int, batch: int) -> dict:
    """{shard: [(ids a, ids b, scores) as bytes, ...]}: each batch split by shard, as a shuffle would carry it."""
    dealt: dict = {}
    for start in range(0, len(ids_a), batch):
        a, b, s = ids_a[start:start + batch], ids_b[start:start + batch], scores[start:start + batch]
        shard_of = a % shards
        for shard in np.unique(shard_of):
            mask = shard_of == shard
            dealt.setdefault(int(shard), []).append((a[mask].tobytes(), b[mask].tobytes(), s[mask].tobytes()))
    return dealt


def by_arrays(ids_a: np.ndarray, ids_b: np.ndarray, scores: np.ndarray, nodes: np.ndarray, labels: np.ndarray,
              verdicts: np.ndarray, batch: int) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """The same look-up on arrays -> (output, labels, ids a, ids b) per batch and output; `verdicts` are
    indexes into `VERDICTS`."""
    shards = shard_count(len(nodes), SHARD_KEYS)
    table_shard = nodes % shards
    for shard, parts in _dealt_arrays(ids_a, ids_b, scores, shards, batch).items():
        mine = table_shard == shard
        order = np.argsort(nodes[mine], kind="stable")
        keys, label_of, verdict_of = nodes[mine][order], labels[mine][order], verdicts[mine][order]
        for part_a, part_b, part_s in parts:
            a, b = np.frombuffer(part_a, np.int64), np.frombuffer(part_b, np.int64)
            s = np.frombuffer(part_s, np.float32)
            at = np.minimum(np.searchsorted(keys, a), len(keys) - 1)
            found = keys[at] == a
            label, verdict, edge = label_of[at], verdict_of[at], s >= THRESHOLD
            sent = {"kept": found & edge & ((verdict == 0) | (verdict == 3)),
                    "resplit": found & edge & (verdict == 1), "cut": found & edge & (verdict == 2),
                    "end_b": found & ~edge & ((verdict == 1) | (verdict == 2))}
            for output, mask in sent.items():
                yield output, label[mask], a[mask], b[mask]


def routed_arrays(outputs) -> dict:
    """`by_arrays`' outputs as `by_records`' sets."""
    routed: dict = {"kept": set(), "resplit": set(), "cut": set(), "end_b": set()}
    for output, labels, ids_a, ids_b in outputs:
        if output == "cut":
            routed["cut"].update(zip(ids_a.tolist(), ids_b.tolist()))
        else:
            routed[output].update(zip(labels.tolist(), ids_a.tolist(), ids_b.tolist()))
    return routed


def as_arrays(pairs: list, routes: list) -> tuple:
    """The inputs as `by_arrays` takes them (what a redesign's scoring and components would give)."""
    return (np.array([p.id_a for p in pairs], np.int64), np.array([p.id_b for p in pairs], np.int64),
            np.array([p.score for p in pairs], np.float32), np.array([n for n, _ in routes], np.int64),
            np.array([label for _, (label, _) in routes], np.int64),
            np.array([VERDICTS.index(v) for _, (_, v) in routes], np.int8))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=572_623)
    parser.add_argument("--nodes", type=int, default=79_102)
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    pairs, routes = make_inputs(args.pairs, args.nodes)
    arrays = as_arrays(pairs, routes)
    # scores as float32 in both, so that a score at the threshold's edge routes alike
    pairs = [p._replace(score=float(s)) for p, s in zip(pairs, arrays[2])]
    seconds: dict = {"records": [], "arrays": []}
    reference = None
    for way in ["records", "arrays", "arrays", "records"] * args.repeat:
        if len(seconds[way]) == args.repeat:
            continue
        started = time.process_time()
        if way == "records":
            routed = by_records(pairs, routes)
            seconds[way].append(time.process_time() - started)
        else:
            outputs = list(by_arrays(*arrays, args.batch))
            seconds[way].append(time.process_time() - started)
            routed = routed_arrays(outputs)
        if reference is None:
            reference = routed
        elif routed != reference:
            raise AssertionError(f"the {way} way routed the pairs differently")
    per_pair = {way: sorted(s / args.pairs * 1e6 for s in found) for way, found in seconds.items()}
    result = {"pairs": args.pairs, "nodes": args.nodes, "batch": args.batch, "repeat": args.repeat,
              "routed": {output: len(found) for output, found in reference.items()},
              "us_per_pair": {way: {"median": round(statistics.median(found), 3), "min": round(found[0], 3),
                                    "max": round(found[-1], 3)} for way, found in per_pair.items()}}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
