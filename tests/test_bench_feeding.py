"""benchmarks/bench_feeding.py measures the scoring stage with a forward pass that costs nothing, and checks that
every pair it made came out scored."""
import json

import pytest

import transforms.score
from benchmarks import bench_feeding
from tests.helpers import shared_data


@pytest.mark.slow
def test_the_feeding_benchmark_scores_every_pair_in_batches_and_reports_cpu_a_pair(capsys, monkeypatch):
    monkeypatch.setenv("QDEDUP_SHARED_DATA", str(shared_data("lcqmc/dev.tsv").parents[1]))
    forward = transforms.score.positive_probability
    bench_feeding.main(["--pairs", "4000", "--small", "1000", "--budgets", "512,4096", "--repeats", "1"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    summary = lines[-1]
    assert [line["token_budget"] for line in lines[:-1]] == summary["order"] == [512, 4096]
    for budget in ("512", "4096"):
        assert summary["cpu_us_per_pair"][budget]["median"] > 0
    # The budget decides the batches: a larger one packs more pairs a forward pass.
    assert 1 < summary["pairs_per_batch"]["512"] < summary["pairs_per_batch"]["4096"]
    assert transforms.score.positive_probability is forward  # later tests in this process score with the model


def test_sizes_that_leave_nothing_to_measure_are_refused(capsys):
    with pytest.raises(SystemExit):
        bench_feeding.main(["--pairs", "2000", "--small", "2000"])
    assert "--pairs more than --small" in capsys.readouterr().err


def test_pairs_are_made_on_the_worker_distinct_and_tokenized_ahead():
    tokens = [b"\x01\x00\x02\x00", b"\x03\x00", b"\x04\x00\x05\x00\x06\x00"]
    pairs = list(bench_feeding._MakePairs(tokens).process(2))
    assert len(pairs) == bench_feeding.CHUNK
    assert len({(p.id_a, p.id_b) for p in pairs}) == len(pairs)
    assert all(p.text_a in tokens and p.text_b in tokens and p.text_a != p.text_b for p in pairs)
    assert pairs == list(bench_feeding._MakePairs(tokens).process(2))  # seeded by the chunk


def test_a_pair_lost_on_the_way_fails_the_measurement():
    with pytest.raises(RuntimeError, match="3 pairs scored of 4"):
        bench_feeding._check_count(3, 4)
