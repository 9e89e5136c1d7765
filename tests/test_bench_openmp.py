"""The OpenMP benchmark runs each variant in its own process and reports both (benchmarks/bench_openmp.py)."""
import pytest

from benchmarks import bench_openmp


@pytest.mark.slow
def test_the_benchmark_times_both_settings_in_their_own_processes(capsys):
    bench_openmp.main(["--repeats", "1", "--batches", "1", "--pairs", "4", "--queries", "10", "--gap-ms", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("order: openmp package;")
    rows = [line.split() for line in lines[2:]]
    assert [(row[0], row[1], row[2]) for row in rows] == [
        ("tiny", "openmp", "300000"), ("tiny", "package", "10000"),
        ("faiss", "openmp", "300000"), ("faiss", "package", "10000")]
