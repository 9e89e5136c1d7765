import json

import numpy as np

from benchmarks import bench_embed
from tests.helpers import lcqmc_pairs


def test_both_ways_of_embedding_make_the_same_vectors_bit_for_bit():
    """The baseline (a crc32 call an n-gram, a text at a time) and the batched code agree on real questions and
    odd ones, so the benchmark compares the same work."""
    texts = sorted({t for a, b, _ in lcqmc_pairs(300) for t in (a, b)} | {"", "银", "a b", "é😀中x"})
    idf_a, before = bench_embed.before_lexical(texts, 256)
    idf_b, batched = bench_embed.batched_lexical(texts, 256)
    assert idf_a.tobytes() == idf_b.tobytes() and len(before) == len(batched) == len(texts)
    assert all(map(bench_embed._same, before, batched))
    table = np.random.default_rng(0).standard_normal((128, 8)).astype(np.float32)
    assert all(map(bench_embed._same, bench_embed.before_static(texts, table),
                   bench_embed.batched_static(texts, table)))
    assert not bench_embed._same(before[0], batched[1])


def test_the_benchmark_times_both_ways_interleaved(capsys):
    bench_embed.main(["--repeat", "2", "--questions", "300", "--dim", "64"])
    figures = json.loads(capsys.readouterr().out)
    assert figures["questions"] == 300 and figures["dim"] == 64
    assert set(figures["cpu_us_per_question"]) == {"lexical before", "lexical batched", "static before",
                                                   "static batched"}
    assert all(way["runs"] == 2 and 0 < way["min"] <= way["median"] <= way["max"]
               for way in figures["cpu_us_per_question"].values())
