"""benchmarks/bench_entries.py packs blocking entries both ways, interleaved, and refuses entries that differ."""
import json

import pytest

from benchmarks import bench_entries


def test_the_benchmark_times_both_ways_and_the_entries_are_smaller(capsys):
    result = bench_entries.main(["--questions", "500", "--repeat", "2"])
    assert json.loads(capsys.readouterr().out) == result
    assert set(result["us_per_entry"]) == {"records", "entries"}
    for steps in result["us_per_entry"].values():
        assert all(0 < f["min"] <= f["median"] <= f["max"] for f in steps.values())
    assert result["bytes_per_entry"]["entries"] < result["bytes_per_entry"]["records"]


def test_entries_that_differ_are_refused(monkeypatch):
    """An unpacking that loses a vector's last value is caught: the benchmark compares what the search reads."""
    unpack = bench_entries.unpack_entry

    def lossy(data):
        entry = unpack(data)
        return entry._replace(vector=entry.vector._replace(values=entry.vector.values[:-1]))

    monkeypatch.setitem(bench_entries.WAYS, "entries", lambda: (bench_entries.pack_entry, lossy))
    with pytest.raises(SystemExit, match="different entries"):
        bench_entries.main(["--questions", "200", "--repeat", "1"])
