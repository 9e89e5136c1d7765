"""benchmarks/bench_lookup.py routes pairs by their first end the way `LookUp(_route_by_end_a)` does, on arrays."""
import json

import pytest

from benchmarks import bench_lookup
from transforms.chaining import _route_by_end_a


def test_the_array_look_up_routes_every_pair_as_the_records_do():
    pairs, routes = bench_lookup.make_inputs(3000, 400)
    arrays = bench_lookup.as_arrays(pairs, routes)
    pairs = [p._replace(score=float(s)) for p, s in zip(pairs, arrays[2])]
    by_records = bench_lookup.by_records(pairs, routes)
    assert all(by_records.values())  # every way a pair can go is taken
    assert bench_lookup.routed_arrays(bench_lookup.by_arrays(*arrays, 256)) == by_records
    # and the records' way is chaining control's own: one pair through `_route_by_end_a` itself
    pair = next(p for p in pairs if p.score >= bench_lookup.THRESHOLD and dict(routes)[p.id_a][1] is None)
    label, edge = next(_route_by_end_a(pair, dict(routes)[pair.id_a], bench_lookup.THRESHOLD))
    assert (label, edge.a, edge.b) in by_records["kept"]


def test_the_benchmark_interleaves_both_ways_and_refuses_a_difference(capsys, monkeypatch):
    bench_lookup.main(["--pairs", "2000", "--nodes", "300", "--repeat", "2"])
    result = json.loads(capsys.readouterr().out)
    assert result["repeat"] == 2 and set(result["us_per_pair"]) == {"records", "arrays"}
    assert all(f["min"] <= f["median"] <= f["max"] for f in result["us_per_pair"].values())
    assert sum(result["routed"].values()) > 0
    wrong = bench_lookup.by_arrays
    monkeypatch.setattr(bench_lookup, "by_arrays",
                        lambda *args: (("cut" if out == "kept" else out, *rest) for out, *rest in wrong(*args)))
    with pytest.raises(AssertionError, match="routed the pairs differently"):
        bench_lookup.main(["--pairs", "2000", "--nodes", "300", "--repeat", "1"])
