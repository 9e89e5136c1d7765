"""benchmarks/bench_judge.py judges the same pairs both ways, in processes of their own, and refuses a difference."""
import json

import pytest

from benchmarks import bench_judge
from transforms import chaining


@pytest.mark.slow  # four processes of their own
def test_both_ways_judge_the_pairs_alike_and_are_timed_interleaved(capsys):
    result = bench_judge.main(["--synthetic", "4000", "--repeat", "2"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert result["repeat"] == 2 and result["outputs"] > 0
    for way in ("table", "sort"):
        seconds = result["cpu_s"][way]
        assert len(seconds["runs"]) == 2 and seconds["min"] <= seconds["median"] <= seconds["max"]


def test_both_ways_give_one_digest_and_other_outputs_another():
    pairs = bench_judge.scored_pairs(None, 3000)
    table, sort = bench_judge.judge_once(pairs, "table"), bench_judge.judge_once(pairs, "sort")
    assert chaining.DENSE_SPAN == bench_judge.WAYS["table"] > 0  # the sort's setting is put back
    assert (table["digest"], table["outputs"]) == (sort["digest"], sort["outputs"]) and table["outputs"] > 0
    changed = [pairs[0]._replace(score=1.0 - pairs[0].score), *pairs[1:]]
    assert bench_judge.judge_once(changed, "table")["digest"] != table["digest"]
