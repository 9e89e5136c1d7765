"""benchmarks/bench_coder.py codes records with arrays the old way and the current one, interleaved, and refuses
an item that does not come back equal."""
import json

import pytest

from benchmarks import bench_coder
from transforms.vectors import SparseVector


def test_the_benchmark_times_both_ways_on_the_same_items(capsys):
    result = bench_coder.main(["--questions", "300", "--batch", "100", "--repeat", "2"])
    assert json.loads(capsys.readouterr().out)["us_per_item"] == result
    assert set(result) == {"embedded", "scored pair"}
    for kind in result.values():
        assert set(kind) == {"before", "now"}
        for way in kind.values():
            assert set(way) == {"encode", "decode"}
            assert all(0 < f["min"] <= f["median"] <= f["max"] for f in way.values())


def test_an_item_decoded_unequal_is_refused(monkeypatch):
    """A decoding that loses a vector's last value is caught: every item is compared, arrays by value (the old
    coder, which decodes on its own, passes first)."""
    decode = bench_coder._RecordCoderImpl.decode_from_stream

    def lossy(self, stream, nested):
        found = decode(self, stream, nested)
        return found._replace(values=found.values[:-1]) if isinstance(found, SparseVector) else found

    monkeypatch.setattr(bench_coder._RecordCoderImpl, "decode_from_stream", lossy)
    with pytest.raises(AssertionError, match="^_RecordCoderImpl: an item decoded unequal"):
        bench_coder.main(["--questions", "100", "--repeat", "1"])
