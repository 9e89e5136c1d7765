"""Bad inputs, each with its expected outcome: a clear error before the run, or a rejected row; the
row accounting holds in every run that starts."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main
from tests.helpers import RUNNER_ARGS, break_scorer, read_part, run_qdedup, watch_tokenizer

pytestmark = pytest.mark.e2e  # every test here runs qdedup end to end

INVALID_UTF8 = pa.array([b"\xed\xa0\x80\xe9\x97\xae"], pa.binary()).view(pa.string())  # a lone surrogate

# (id, text, expected): expected is a rejection reason, or "accepted".
ROWS = [
    (1, None, "null_text"),
    (None, "没有编号的问题", "null_id"),
    (3, "", "empty_text"),
    (4, " \t\u3000 ", "empty_text"),
    (5, "问" * 100_000, "text_too_long"),
    (6, "\x00\x07怎么办\u200b", "accepted"),        # control and zero-width characters are dropped
    (7, "怎么办", "accepted"),                      # ... so 6 is its exact duplicate
    (8, "😀😀😀", "accepted"),                      # emoji are kept: a question of its own
    (9, "😀😀😀！", "accepted"),                    # ... and this is its exact duplicate
    (10, "這個問題怎麼辦", "accepted"),              # traditional and simplified stay two texts
    (11, "这个问题怎么办", "accepted"),
    (12, "编号重复的问题", "accepted"),
    (12, "编号重复的另一个问题", "duplicate_id"),      # the later row with an id is rejected
    (13, "！？。……", "empty_after_normalization"),
]


def _write_rows(path, rows):
    pq.write_table(pa.table({"id": pa.array([r[0] for r in rows], pa.int64()),
                             "question": pa.array([r[1] for r in rows], pa.string())}), path)


@pytest.fixture(scope="module")
def bad_run(tiny_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("bad")
    _write_rows(directory / "a.parquet", [r[:2] for r in ROWS])
    pq.write_table(pa.table({"id": pa.array([20], pa.int64()), "question": INVALID_UTF8}), directory / "b.parquet")
    pq.write_table(pa.table({"id": pa.array([21, 22], pa.int64()), "question": [7, 8]}), directory / "c.parquet")
    _write_rows(directory / "d.parquet", [])  # an empty file
    # A file whose footer is sound but whose text page is damaged: its rows are set aside.
    pq.write_table(pa.table({"id": list(range(30, 40)), "question": [f"问题{i}" for i in range(10)]}),
                   directory / "e.parquet", compression="none")
    column = pq.ParquetFile(directory / "e.parquet").metadata.row_group(0).column(1)
    data = bytearray((directory / "e.parquet").read_bytes())
    data[column.data_page_offset:column.data_page_offset + 8] = b"\xff" * 8
    (directory / "e.parquet").write_bytes(bytes(data))
    out = tmp_path_factory.mktemp("out") / "out"
    return out, run_qdedup(directory / "*.parquet", out, tiny_model)


def _outcomes(out) -> dict:
    """{(file, row): reason or "accepted"}."""
    outcomes = {}
    for r in read_part(out, "rejected"):
        path, row = r["source"].rsplit("#", 1)
        outcomes[(path.rsplit("/", 1)[-1], int(row))] = r["reason"]
    return outcomes


def test_each_bad_row_has_its_outcome(bad_run):
    out, report = bad_run
    outcomes = _outcomes(out)
    accepted = {g["id"] for g in read_part(out, "groups")}
    for index, (row_id, _, expected) in enumerate(ROWS):
        if expected == "accepted":
            assert row_id in accepted and ("a.parquet", index) not in outcomes, row_id
        else:
            assert outcomes[("a.parquet", index)] == expected, (row_id, outcomes.get(("a.parquet", index)))
    assert outcomes[("b.parquet", 0)] == "invalid_unicode"
    assert outcomes[("c.parquet", 0)] == outcomes[("c.parquet", 1)] == "text_not_string"
    assert [outcomes[("e.parquet", i)] for i in range(10)] == ["unreadable_row"] * 10
    assert report["rows_in"] == len(ROWS) + 1 + 2 + 10
    assert report["accounting_ok"] and report["rows_in"] == report["rows_out"] + report["rows_rejected"]


def test_normalization_decides_exact_duplicates(bad_run):
    out, _ = bad_run
    groups = {g["id"]: g for g in read_part(out, "groups")}
    assert groups[6]["group_id"] == groups[7]["group_id"] and groups[6]["match_kind"] == "exact"
    assert groups[8]["group_id"] == groups[9]["group_id"] and groups[9]["match_kind"] == "exact"
    assert groups[10]["match_kind"] != "exact" or groups[10]["group_id"] != groups[11]["group_id"]


def test_rejected_rows_say_what_and_where(bad_run):
    out, _ = bad_run
    for r in read_part(out, "rejected"):
        assert r["detail"] and r["stage"] in ("read", "normalize") and r["kind"] == "row"
        json.loads(r["row"])  # always valid JSON, even for invalid UTF-8
    too_long = [r for r in read_part(out, "rejected") if r["reason"] == "text_too_long"]
    assert "100000 characters" in too_long[0]["detail"]


def _write_table(path, **columns):
    pq.write_table(pa.table(columns), path)


FILE_CASES = {
    "missing_column": (lambda d: _write_table(d / "q.parquet", id=[1], text=["问题"]),
                       "has no column 'question'"),
    "wrong_id_type": (lambda d: _write_table(d / "q.parquet", id=[1.5], question=["问题"]),
                      "ids must be integers or strings"),
    "mixed_id_types": (lambda d: (_write_table(d / "a.parquet", id=[1], question=["问题"]),
                                  _write_table(d / "b.parquet", id=["x"], question=["问题"])),
                       "id column types differ between files"),
    "corrupt_file": (lambda d: (d / "q.parquet").write_bytes(b"PAR1 this is not parquet"),
                     "is not a readable Parquet file"),
    "no_match": (lambda d: None, "matches no files"),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_whole_input_problems_stop_before_the_run(case, tiny_model, tmp_path, capsys):
    make, message = FILE_CASES[case]
    make(tmp_path)
    argv = ["run", "--input", str(tmp_path / "*.parquet"), "--output", str(tmp_path / "out"),
            "--scorer-model", tiny_model, *RUNNER_ARGS]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_string_ids_are_accepted_like_integer_ids(tiny_model, tmp_path):
    _write_table(tmp_path / "q.parquet", id=["a", "b", ""], question=["怎么办", "怎么办？", "为什么"])
    report = run_qdedup(tmp_path / "q.parquet", tmp_path / "out", tiny_model)
    groups = {g["id"]: g["group_id"] for g in read_part(tmp_path / "out", "groups")}
    assert groups == {"a": "a", "b": "a"} and report["rows_rejected"] == 1
    assert read_part(tmp_path / "out", "rejected")[0]["reason"] == "empty_id"


def test_a_failure_inside_any_stage_sets_the_element_aside(tiny_model, tmp_path, monkeypatch, capsys):
    """Stages that fail on one element (normalizing a row, embedding a question, tokenizing or scoring a
    pair) put it in rejected/ with the stage and the reason, and the run goes on."""
    import transforms.embed
    import transforms.normalize

    texts = {1: "银行卡丢了怎么办", 2: "银行卡丢了怎么处理", 3: "银行卡丢了该怎么办呢", 4: "规范化会失败的问题",
             5: "向量会失败的问题", 6: "银行卡丢失了怎么办", 7: "分词会失败的银行卡丢了怎么办",
             8: "模型会失败的银行卡丢了怎么办"}
    _write_table(tmp_path / "q.parquet", id=list(texts), question=list(texts.values()))

    normalize_text = transforms.normalize.normalize_text
    monkeypatch.setattr(transforms.normalize, "normalize_text",
                        lambda t: 1 / 0 if "规范化" in t else normalize_text(t))
    tfidf_rows = transforms.embed.tfidf_rows  # a batch holding the question fails, then the question alone
    monkeypatch.setattr(transforms.embed, "tfidf_rows",
                        lambda ts, idf: (_ for _ in ()).throw(ValueError("no vector")) if any("向量" in t for t in ts)
                        else tfidf_rows(ts, idf))

    def fragile(way, texts):  # the fast backend, ahead of scoring and in scoring: a batch, or one text
        if any("分词" in text for text in texts):
            raise RuntimeError("tokenizer broke")

    watch_tokenizer(monkeypatch, fragile)
    break_scorer(monkeypatch, tiny_model, "模")

    report = run_qdedup(tmp_path / "q.parquet", tmp_path / "out", tiny_model, "--min-similarity=0.1",
                        "--max-failed-share=1")
    rejected = read_part(tmp_path / "out", "rejected")
    by_stage = {}
    for r in rejected:
        by_stage.setdefault((r["stage"], r["kind"], r["reason"]), []).append(json.loads(r["row"]))
    assert [row["id"] for row in by_stage[("normalize", "row", "normalize_error")]] == [4]
    assert [row["id"] for row in by_stage[("embed", "question", "embed_error")]] == [5]
    tokenize_failed = by_stage[("score_tokenize", "pair", "tokenize_error")]
    assert tokenize_failed and all(7 in (p["id_a"], p["id_b"]) for p in tokenize_failed)
    score_failed = by_stage[("score", "pair", "score_error")]
    assert score_failed and all(8 in (p["id_a"], p["id_b"]) for p in score_failed)
    # Only row 4 is lost to the groups; the others are grouped, their failed pairs unscored.
    groups = {g["id"] for g in read_part(tmp_path / "out", "groups")}
    assert groups == set(texts) - {4}
    assert (report["rows_rejected"], report["questions_failed"]) == (1, 1)
    assert report["pairs_failed"] == len(tokenize_failed) + len(score_failed)
    assert report["accounting_ok"]
    pairs = read_part(tmp_path / "out", "pairs")
    assert pairs and not any({7, 8} & {p["id_a"], p["id_b"]} for p in pairs if p["source"] != "resplit")
    # `qdedup explain` names the dead letters: a pair the scorer failed on, a row that failed normalizing.
    group_of = {g["id"]: g["group_id"] for g in read_part(tmp_path / "out", "groups")}
    apart = next(p for p in score_failed if group_of[p["id_a"]] != group_of[p["id_b"]])
    capsys.readouterr()
    assert main(["explain", "--run", str(tmp_path / "out"), str(apart["id_a"]), str(apart["id_b"])]) == 0
    assert "their pair was dead-lettered: the scorer failed on it" in capsys.readouterr().out
    assert main(["explain", "--run", str(tmp_path / "out"), "4"]) == 0
    assert "row 4: rejected: normalize_error" in capsys.readouterr().out
