"""benchmarks/bench_feeding.py measures the scoring stage with a forward pass that costs nothing, and checks that
every pair it made came out scored."""
import json
import math

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
    assert [f"{line['path']}/{line['token_budget']}" for line in lines[:-1]] == summary["order"] == [
        "pairs/512", "pairs/4096"]
    for variant in ("pairs/512", "pairs/4096"):  # a figure for each (its size is the machine's: not asserted)
        assert math.isfinite(summary["cpu_us_per_pair"][variant]["median"])
    # The budget decides the batches: a larger one packs more pairs a forward pass.
    assert 1 < summary["pairs_per_batch"]["pairs/512"] < summary["pairs_per_batch"]["pairs/4096"]
    assert transforms.score.positive_probability is forward  # later tests in this process score with the model


@pytest.mark.slow
def test_neighbour_lists_are_scored_by_either_path_every_pair_once(capsys, monkeypatch):
    """From neighbour lists, through ScoreNeighbours and through DistinctCandidates + ScorePairs: every distinct
    pair the lists make comes out scored once (the count is checked inside the pipeline)."""
    monkeypatch.setenv("QDEDUP_SHARED_DATA", str(shared_data("lcqmc/dev.tsv").parents[1]))
    bench_feeding.main(["--pairs", "2800", "--small", "1400", "--budgets", "4096", "--paths", "lists,lists-made",
                        "--repeats", "1"])
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["order"] == ["lists/4096", "lists-made/4096"]
    # A figure for each path, not its size: a CPU difference between two short runs is the machine's to
    # decide (it came out below 0 once, with other work running beside the suite).
    assert all(math.isfinite(summary["cpu_us_per_pair"][variant]["median"]) for variant in summary["order"])


def test_neighbour_lists_make_the_pairs_they_are_said_to():
    tokens = [b"\x01\x00", b"\x03\x00", b"\x04\x00\x05\x00"]
    lists = list(bench_feeding._MakeLists(tokens).process(3))
    assert len(lists) == bench_feeding.QUESTIONS and all(len(best) == 10 for _, (_, best) in lists)
    pairs = {tuple(sorted((query, n))) for query, (_, best) in lists for n in best}
    assert len(pairs) == bench_feeding.LIST_PAIRS == 700
    assert all(300 <= q < 400 for pair in pairs for q in pair)


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
