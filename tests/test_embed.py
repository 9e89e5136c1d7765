import subprocess
import sys
import zlib

import numpy as np

from transforms.embed import DocumentFrequency, char_ngrams, hashed_counts, idf_weights, tfidf_vector


def test_char_ngrams_are_characters_and_pairs():
    assert char_ngrams("银行卡") == ["银", "行", "卡", "银行", "行卡"]
    assert char_ngrams("a b") == ["a", "b", "a ", " b"]


def test_hashed_counts_use_crc32_buckets():
    buckets, counts = hashed_counts("哈哈哈", 64)
    expected = {}
    for gram in ["哈", "哈", "哈", "哈哈", "哈哈"]:
        bucket = zlib.crc32(gram.encode()) % 64
        expected[bucket] = expected.get(bucket, 0) + 1
    assert dict(zip(buckets.tolist(), counts.tolist())) == expected


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
        df[hashed_counts(t, 128)[0]] += 1
    np.testing.assert_allclose(whole, idf_weights(df, len(texts)))


def test_vectors_do_not_depend_on_the_process_hash_seed():
    code = ("import numpy as np; from transforms.embed import tfidf_vector;"
            "print(np.nonzero(tfidf_vector('跨进程相同的向量', np.ones(97, dtype=np.float32)))[0].tolist())")
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout for seed in ("1", "2")}
    assert len(outputs) == 1
