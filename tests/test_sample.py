from pathlib import Path

import pyarrow.parquet as pq

from samples.make_sample import build_rows, write_sample


def test_committed_sample_is_what_the_script_writes(tmp_path):
    write_sample(str(tmp_path / "q.parquet"))
    committed = pq.read_table(Path(__file__).resolve().parents[1] / "samples" / "questions.parquet")
    assert committed.equals(pq.read_table(tmp_path / "q.parquet"))
    assert committed.num_rows == len(build_rows()) >= 200
