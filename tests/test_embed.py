import functools
import json
import subprocess
import sys
import zlib

import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.options.pipeline_options import PipelineOptions
from transformers import AutoModel, AutoTokenizer

from pipelines.random_model import make_random_static_embedder
from tests.helpers import RUNNER_ARGS, lcqmc_pairs
from transforms.embed import (
    UNIGRAM_WEIGHT,
    DocumentFrequency,
    EmbedEncoder,
    MeanCovariance,
    _Embed,
    hashed_ngram_rows,
    hashed_ngrams,
    idf_weights,
    ngram_buckets,
    static_rows,
    static_vector,
    tfidf_rows,
    tfidf_vector,
    whitening,
)
from transforms.errors import QdedupError
from transforms.feeding import ModelSettings
from transforms.records import Representative
from transforms.sources import load_static_embedder, static_fingerprint


def _reference_ngrams(text: str) -> list[str]:
    """The n-grams as the design defines them: characters, then adjacent pairs, spaces left out."""
    text = text.replace(" ", "")
    return list(text) + [text[i:i + 2] for i in range(len(text) - 1)]


def _reference_buckets(text: str, dim: int) -> list[int]:
    return [zlib.crc32(gram.encode("utf-8")) % dim for gram in _reference_ngrams(text)]


@functools.cache
def _texts() -> tuple[str, ...]:
    """Real questions and the odd ones: none, one character, spaces, 2-, 3- and 4-byte UTF-8, the ends of each
    length."""
    return tuple(t for a, b, _ in lcqmc_pairs(300) for t in (a, b)) + (
        "", "银", "a b  c", "哈哈哈哈", "  ", "é😀中x", "😀😀", "Ab1２",
        "\x7f\x80ÿĀ\u07ff\u0800\uffff\U00010000\U0010ffff")


def test_ngram_buckets_are_the_crc32_of_each_character_then_each_pair():
    grams = ["银", "行", "卡", "银行", "行卡"]
    assert ngram_buckets("银行卡", 1 << 32).tolist() == [zlib.crc32(g.encode()) for g in grams]
    assert ngram_buckets("a b", 97).tolist() == [zlib.crc32(g.encode()) % 97 for g in ["a", "b", "ab"]]
    for text in _texts():
        buckets = ngram_buckets(text, 1024)
        assert buckets.dtype == np.int64 and buckets.tolist() == _reference_buckets(text, 1024), text


def test_hashed_ngrams_use_crc32_buckets_and_weigh_characters_more():
    buckets, weights = hashed_ngrams("哈哈哈", 64)
    expected = {}
    for gram in ["哈", "哈", "哈", "哈哈", "哈哈"]:
        bucket = zlib.crc32(gram.encode()) % 64
        expected[bucket] = expected.get(bucket, 0) + (UNIGRAM_WEIGHT if len(gram) == 1 else 1.0)
    assert dict(zip(buckets.tolist(), weights.tolist())) == expected
    assert UNIGRAM_WEIGHT > 1


def test_many_texts_hashed_together_equal_each_hashed_alone_by_zlib():
    """Bucket ids ascending and each bucket's weights summed, text by text, as zlib's crc32 of each n-gram and
    numpy's unique and bincount give them, on real questions and odd ones, in a small space where buckets
    collide and in a large one."""
    for dim in (16, 1024):
        starts, buckets, weights = hashed_ngram_rows(_texts(), dim)
        assert buckets.dtype == np.int64 and weights.dtype == np.float64 and len(starts) == len(_texts()) + 1
        for i, text in enumerate(_texts()):
            grams = _reference_ngrams(text)
            unique, inverse = np.unique(np.array(_reference_buckets(text, dim), dtype=np.int64), return_inverse=True)
            expected = np.bincount(inverse, weights=[UNIGRAM_WEIGHT if len(g) == 1 else 1.0 for g in grams],
                                   minlength=len(unique))
            assert buckets[starts[i]:starts[i + 1]].tolist() == unique.tolist(), text
            assert weights[starts[i]:starts[i + 1]].tolist() == expected.tolist(), text
            alone = hashed_ngrams(text, dim)
            assert alone[0].tolist() == unique.tolist() and alone[1].tolist() == expected.tolist()
    assert [len(rows) for rows in hashed_ngram_rows([], 8)] == [1, 0, 0]


def test_a_text_utf8_cannot_encode_fails_as_encoding_it_would():
    with pytest.raises(UnicodeEncodeError):
        hashed_ngram_rows(["好", "坏\ud800"], 64)


def test_tfidf_vectors_made_together_equal_the_definition_bit_for_bit():
    """Each vector of a batch is the text's summed n-gram weights times the idf, in float32, divided by
    np.linalg.norm of that row: the vector a text hashed and normalized alone gets, to the last bit."""
    idf = idf_weights(np.random.default_rng(0).integers(0, 50, 1024), 60)
    vectors = tfidf_rows(_texts(), idf)
    assert len(vectors) == len(_texts())
    for text, vector in zip(_texts(), vectors):
        buckets, weights = hashed_ngrams(text, 1024)
        values = (weights * idf[buckets]).astype(np.float32)
        norm = np.linalg.norm(values)
        expected = values / norm if norm > 0 else values
        assert vector.indices.dtype == np.int32 and vector.values.dtype == np.float32 and vector.dim == 1024
        assert vector.indices.tolist() == buckets.tolist() and vector.values.tobytes() == expected.tobytes(), text


def test_static_vectors_made_together_equal_each_made_alone_bit_for_bit():
    table = np.random.default_rng(1).standard_normal((64, 8)).astype(np.float32)
    for text, vector in zip(_texts(), static_rows(_texts(), table)):
        buckets = _reference_buckets(text, 64)
        expected = table[buckets].mean(axis=0) if buckets else np.zeros(8, np.float32)
        expected = expected / np.linalg.norm(expected) if buckets else expected
        assert vector.dtype == np.float32 and vector.tobytes() == expected.astype(np.float32).tobytes(), text


def test_vectors_are_unit_length_and_rank_by_shared_ngrams():
    idf = np.ones(256, dtype=np.float32)
    a, b, c = (tfidf_vector(t, idf) for t in ["信用卡怎么提额", "信用卡如何提额", "今天天气很好"])
    assert np.isclose(np.linalg.norm(a), 1.0)
    assert a @ b > a @ c
    assert np.all(tfidf_vector("", idf) == 0)


def test_rare_ngrams_weigh_more():
    idf = idf_weights(np.array([0, 10, 100]), 100)
    assert idf[0] > idf[1] > idf[2] >= 1.0


def test_document_frequency_combine_merges_like_one_pass():
    texts = ["银行卡丢了", "银行卡怎么办", "信用卡额度", "额度怎么提高"]
    fn = DocumentFrequency(128)
    whole = fn.extract_output(fn.add_inputs(fn.create_accumulator(), texts))
    parts = [fn.add_inputs(fn.create_accumulator(), texts[:1]), fn.add_inputs(fn.create_accumulator(), texts[1:])]
    merged = fn.extract_output(fn.merge_accumulators(parts))
    np.testing.assert_array_equal(whole, merged)
    df = np.zeros(128, dtype=np.int64)
    for t in texts:
        df[sorted(set(_reference_buckets(t, 128)))] += 1
    np.testing.assert_allclose(whole, idf_weights(df, len(texts)))


def test_document_frequency_counts_texts_a_batch_at_a_time():
    """Texts past a batch are counted together; the rest are held until compacted, merged or extracted."""
    fn = DocumentFrequency(64, batch=5)
    accumulator = fn.create_accumulator()
    for text in _texts()[:12]:
        accumulator = fn.add_input(accumulator, text)
    assert accumulator[0] == 10 and len(accumulator[2]) == 2  # two batches counted, two texts held
    df = np.zeros(64, dtype=np.int64)
    for text in _texts()[:10]:
        df[sorted(set(_reference_buckets(text, 64)))] += 1
    np.testing.assert_array_equal(accumulator[1], df)
    rest = fn.add_inputs(fn.create_accumulator(), _texts()[12:])
    held = [(a[0], a[1].copy(), list(a[2])) for a in (accumulator, rest)]
    merged = fn.merge_accumulators([accumulator, rest])
    assert merged[0] == len(_texts()) and merged[2] == []
    for (documents, df, texts), a in zip(held, (accumulator, rest)):  # merging changed neither
        assert a[0] == documents and np.array_equal(a[1], df) and a[2] == texts
    assert len(accumulator[2]) == 2
    np.testing.assert_array_equal(fn.extract_output(merged), fn.extract_output(
        fn.add_inputs(DocumentFrequency(64).create_accumulator(), _texts())))
    compacted = fn.compact(fn.add_inputs(fn.create_accumulator(), _texts()[:3]))
    assert compacted[0] == 3 and compacted[2] == []


def test_a_batch_given_the_wrong_number_of_vectors_is_made_again_text_by_text():
    """No question is lost to a batch function that gives fewer vectors than texts: the batch is remade one by one."""
    reps = [Representative(i, t, t, f"k{i}", 1) for i, t in enumerate(["银行卡", "信用卡", "怎么办"])]
    idf = np.ones(64, dtype=np.float32)
    embed = _Embed(lambda texts, idf: tfidf_rows(texts, idf)[:1], batch=3)  # one vector, whatever the batch
    embed.setup()
    embed.start_bundle()
    made = [output for rep in reps for output in embed.process(rep, idf)]
    made += [output.value for output in embed.finish_bundle()]
    assert [e.rep.id for e in made] == [0, 1, 2]
    assert all(e.vector.values.tobytes() == tfidf_rows([e.rep.normalized], idf)[0].values.tobytes() for e in made)


def test_a_batch_an_embedder_fails_on_is_made_again_text_by_text(tmp_path):
    """Questions are embedded a batch at a time; where the batch fails, only the questions that fail alone are set
    aside, each with its reason, and the others get the vectors they would have got."""
    texts = [a for a, _, _ in lcqmc_pairs(12)] + ["向量会失败的问题"]
    reps = [Representative(i, t, t, f"k{i}", 1) for i, t in enumerate(texts)]
    idf = np.ones(64, dtype=np.float32)
    calls = tmp_path / "calls.txt"

    def fragile(batch, idf):  # run by the pipeline's copy of the DoFn: it notes its batch sizes in a file
        with open(calls, "a") as handle:
            handle.write(f"{len(batch)}\n")
        if any("向量" in text for text in batch):
            raise ValueError("no vector")
        return tfidf_rows(batch, idf)

    out = tmp_path / "embedded.json"
    with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as pipeline:
        embedded = pipeline | beam.Create(reps) | beam.ParDo(
            _Embed(fragile, batch=5), beam.pvalue.AsSingleton(pipeline | "Idf" >> beam.Create([idf]))
        ).with_outputs("failed", main="vectors")
        vectors = embedded.vectors | "Vectors" >> beam.Map(lambda e: ("ok", e.rep.id, e.vector.indices.tolist(),
                                                                      e.vector.values.tolist()))
        failed = embedded.failed | "Failed" >> beam.Map(lambda r: ("failed", r.row, r.reason, r.detail))
        _ = ((vectors, failed) | beam.Flatten() | beam.combiners.ToList()
             | beam.Map(lambda items: out.write_text(json.dumps(items, ensure_ascii=False))))
    found = json.loads(out.read_text())
    failed = [item for item in found if item[0] == "failed"]
    assert len(failed) == 1 and json.loads(failed[0][1])["id"] == 12 and failed[0][2] == "embed_error"
    assert "no vector" in failed[0][3]
    alone = {rep.id: tfidf_rows([rep.normalized], idf)[0] for rep in reps[:12]}
    assert {item[1]: (item[2], item[3]) for item in found if item[0] == "ok"} == {
        i: (v.indices.tolist(), v.values.tolist()) for i, v in alone.items()}
    sizes = [int(size) for size in calls.read_text().split()]
    assert max(sizes) == 5 and sizes.count(1) >= 1  # batches of 5; the failed one then text by text


@pytest.mark.slow
def test_vectors_do_not_depend_on_the_process_hash_seed():
    code = ("import numpy as np; from transforms.embed import tfidf_vector;"
            "print(np.nonzero(tfidf_vector('跨进程相同的向量', np.ones(97, dtype=np.float32)))[0].tolist())")
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout for seed in ("1", "2")}
    assert len(outputs) == 1


def test_whitening_gives_identity_covariance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 6)) @ rng.normal(size=(6, 6)) + 3.0
    mean, matrix = whitening(x.mean(axis=0), np.cov(x, rowvar=False, bias=True))
    white = (x - mean) @ matrix
    np.testing.assert_allclose(np.cov(white, rowvar=False, bias=True), np.eye(6), atol=1e-3)


def test_mean_covariance_combine_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    fn = MeanCovariance()
    parts = [fn.add_inputs(fn.create_accumulator(), x[:100]), fn.add_inputs(fn.create_accumulator(), x[100:]),
             fn.create_accumulator()]
    mean, matrix = fn.extract_output(fn.merge_accumulators(parts))
    expected_mean, expected_matrix = whitening(x.mean(axis=0), np.cov(x.astype(np.float64), rowvar=False, bias=True))
    np.testing.assert_allclose(mean, expected_mean, atol=1e-5)
    np.testing.assert_allclose(np.abs(matrix), np.abs(expected_matrix), atol=1e-3)
    assert fn.extract_output(fn.create_accumulator()) is None


def test_mean_covariance_adds_vectors_a_batch_at_a_time_and_leaves_merged_accumulators_alone():
    """Vectors past a batch go into the sums as one product; the rest are held until they are needed."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(23, 4)).astype(np.float32)
    fn = MeanCovariance(batch=5)
    first = fn.create_accumulator()
    for vector in x[:12]:
        first = fn.add_input(first, vector)
    assert first[0] == 10 and len(first[3]) == 2  # two batches added, two vectors held
    second = fn.add_inputs(fn.create_accumulator(), x[12:])
    held = [list(a[3]) for a in (first, second)]
    merged = fn.merge_accumulators([fn.create_accumulator(), first, second])
    assert [list(a[3]) for a in (first, second)] == held  # merging changed neither
    assert merged[0] == 23
    np.testing.assert_allclose(merged[1], x.astype(np.float64).sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(merged[2], x.astype(np.float64).T @ x.astype(np.float64), rtol=1e-12)
    compacted = fn.compact(second)
    assert compacted[0] == 11 and compacted[3] == []


def _encoder_vectors(tiny_model, texts, pooling, whiten, tmp_path):
    reps = [Representative(i, t, t, f"k{i}", 1) for i, t in enumerate(texts)]
    path = tmp_path / f"vectors-{pooling}-{whiten}.npy"
    with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as pipeline:
        embedded = pipeline | beam.Create(reps) | EmbedEncoder(
            ModelSettings(tiny_model, device="cpu", token_budget=64), pooling, whiten)
        _ = (embedded.vectors
             | beam.MapTuple(lambda rep, vector: (rep.id, vector)) | beam.combiners.ToList()
             | beam.Map(lambda items: np.save(path, np.stack([v for _, v in sorted(items, key=lambda i: i[0])]))))
    return np.load(path)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_encoder_vectors_are_the_models_pooled_outputs_normalized(tiny_model, tmp_path, pooling):
    texts = ["银行卡丢了怎么办", "怎么办", "信用卡额度怎么提高呢", "你好"]
    vectors = _encoder_vectors(tiny_model, texts, pooling, False, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModel.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        for text, vector in zip(texts, vectors):
            hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
            expected = hidden[0] if pooling == "cls" else hidden.mean(dim=0)
            np.testing.assert_allclose(vector, (expected / expected.norm()).numpy(), atol=1e-5)


def test_whitened_encoder_vectors_are_unit_length_and_differ(tiny_model, tmp_path):
    texts = [a for a, _, _ in lcqmc_pairs(60)]
    plain = _encoder_vectors(tiny_model, texts, "mean", False, tmp_path)
    white = _encoder_vectors(tiny_model, texts, "mean", True, tmp_path)
    np.testing.assert_allclose(np.linalg.norm(white, axis=1), 1.0, atol=1e-5)
    assert np.abs(white - plain).max() > 0.1


# ---- static embedders ----

def test_a_static_vector_is_the_unit_mean_of_its_ngram_rows_repeats_counted(tmp_path):
    table = np.random.default_rng(1).standard_normal((64, 8)).astype(np.float32)
    rows = table[ngram_buckets("银行银", 64)]
    assert len(rows) == 3 + 2  # 银 twice, 行, 银行, 行银
    expected = rows.mean(axis=0)
    np.testing.assert_allclose(static_vector("银行银", table), expected / np.linalg.norm(expected), rtol=1e-6)
    assert not static_vector("", table).any() and static_vector("", table).shape == (8,)


def test_static_embedders_load_as_saved_and_refuse_what_is_not_one(tmp_path):
    made = make_random_static_embedder(str(tmp_path / "static"), buckets=128, dims=16, seed=3)
    table, config = load_static_embedder(made)
    assert table.shape == (128, 16) and config["buckets"] == 128 and config["trained"].startswith("random")
    other = load_static_embedder(make_random_static_embedder(str(tmp_path / "other"), 128, 16, seed=4))
    assert static_fingerprint(table, config) == static_fingerprint(*load_static_embedder(made))
    assert static_fingerprint(table, config) != static_fingerprint(*other)
    (tmp_path / "empty").mkdir()
    with pytest.raises(QdedupError, match="no embedder.json or embedder.safetensors there.*train-blocker"):
        load_static_embedder(str(tmp_path / "empty"))
    config_file = tmp_path / "static" / "embedder.json"
    config_file.write_text(config_file.read_text().replace('"buckets": 128', '"buckets": 256'))
    with pytest.raises(QdedupError, match="not a finite 256 x 16 table"):
        load_static_embedder(made)
    config_file.write_text('{"format": "something else"}')
    with pytest.raises(QdedupError, match="not a qdedup-static-embedder version 1 config"):
        load_static_embedder(made)
