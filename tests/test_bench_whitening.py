"""The whitening benchmark runs both ways of summing and checks they agree (benchmarks/bench_whitening.py)."""
from benchmarks import bench_whitening


def test_the_benchmark_times_both_ways_on_the_same_vectors(capsys):
    bench_whitening.main(["--dim", "8", "--vectors", "600", "--repeats", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "one outer product a vector (before)", "a batch a product (MeanCovariance)"]
    assert all("same sums" in line for line in lines)
