"""benchmarks/bench_tokenize.py times scoring's pure functions around the model, a window at a time."""
import json

from benchmarks import bench_tokenize
from tests.helpers import shared_data


def test_the_tokenize_benchmark_times_each_function_over_every_window(capsys, monkeypatch):
    monkeypatch.setenv("QDEDUP_SHARED_DATA", str(shared_data("lcqmc/dev.tsv").parents[1]))
    calls = []
    tokenize = bench_tokenize.tokenize
    monkeypatch.setattr(bench_tokenize, "tokenize", lambda *args: calls.append(len(args[1])) or tokenize(*args))
    bench_tokenize.main(["--pairs", "1000", "--window", "300", "--repeats", "2"])
    result = json.loads(capsys.readouterr().out)
    assert calls == [300, 300, 300, 100] * 2  # every pair, a window at a time, each repeat
    assert set(result["us_per_pair"]) == {"tokenize", "pack", "collate"}
    assert all(f["min"] <= f["median"] <= f["max"] for f in result["us_per_pair"].values())
