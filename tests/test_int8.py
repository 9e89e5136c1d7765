"""--precision int8: calibration set, quantization cached once, scores independent of their batch, fidelity to
fp32 on the tiny random model, the launcher's refusals, and a whole run with an int8 scorer and encoder."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import transforms.int8
import transforms.sources
from pipelines.options import QdedupOptions
from pipelines.preflight import check_int8, differing_option
from samples.make_sample import calibration_pairs
from tests.helpers import MULTI_PROCESSING, lcqmc_pairs, read_part, run_qdedup
from tests.object_store import PREFIX
from transforms.errors import QdedupError
from transforms.feeding import ModelSettings, collate, pack_batches, tokenize
from transforms.int8 import (
    int8_key,
    prepare_int8,
    publish_int8,
    read_calibration_pairs,
    read_info,
)
from transforms.sources import fingerprint, load_int8, load_pretrained, load_tokenizer

CLASSIFIER = "AutoModelForSequenceClassification"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("int8_cache"))


# --dist loadfile keeps this module on one worker: the tiny scorer is quantized once per session.
@pytest.fixture(scope="module")
def prepared(tiny_model, cache):
    """The tiny scorer quantized on the default calibration set: (folder, spec)."""
    from transformers import AutoModelForSequenceClassification
    pairs = read_calibration_pairs()
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model)
    spec = int8_key(fingerprint(model, load_tokenizer(tiny_model)), CLASSIFIER, pairs, 512)
    return prepare_int8(tiny_model, spec, pairs, cache), spec


def _scores(model, tiny_model, pairs, budget):
    """P(label 1) per pair, packed in batches of `budget` padded tokens as the pipeline packs them."""
    import torch
    encodings = [encoding for encoding, _ in tokenize(load_tokenizer(tiny_model), pairs, 512)]
    scores = np.zeros(len(pairs))
    for indices in pack_batches([len(ids) for ids, _ in encodings], budget):
        with torch.inference_mode():
            logits = model(**collate([encodings[i] for i in indices], 0)).logits
        scores[indices] = torch.softmax(logits.float(), dim=-1)[:, 1].numpy()
    return scores


def test_the_shipped_calibration_set_is_the_sample_corpus_one():
    assert read_calibration_pairs() == calibration_pairs()
    assert len(calibration_pairs()) == 260


def test_a_calibration_file_without_its_columns_or_texts_is_named(tmp_path):
    bad = tmp_path / "pairs.csv"
    bad.write_text("a,b\nx,y\n", encoding="utf-8")
    with pytest.raises(QdedupError, match="needs a header with columns text_a and text_b"):
        read_calibration_pairs(str(bad))
    bad.write_text("text_a,text_b,label\n问题一,问题二,1\n问题三,,0\n", encoding="utf-8")
    with pytest.raises(QdedupError, match="line 3: text_a and text_b must both be filled"):
        read_calibration_pairs(str(bad))
    with pytest.raises(QdedupError, match="cannot be read"):
        read_calibration_pairs(str(tmp_path / "missing.csv"))


def test_the_key_follows_the_calibration_set_and_the_model():
    pairs = calibration_pairs()
    key = int8_key("f" * 32, CLASSIFIER, pairs, 512)["key"]
    assert int8_key("f" * 32, CLASSIFIER, list(pairs), 512)["key"] == key
    assert int8_key("f" * 32, CLASSIFIER, pairs[:-1], 512)["key"] != key
    assert int8_key("e" * 32, CLASSIFIER, pairs, 512)["key"] != key
    assert int8_key("f" * 32, "AutoModel", pairs, 512)["key"] != key
    assert int8_key("f" * 32, CLASSIFIER, pairs, 256)["key"] != key


def test_a_prepared_model_is_reused_not_quantized_again(prepared, tiny_model, cache, monkeypatch):
    folder, spec = prepared
    info = read_info(folder)
    assert info["key"] == spec["key"] and os.path.basename(folder) == f"int8-{spec['key']}"
    assert info["calibration_fidelity"]["inputs"] == 260
    monkeypatch.setattr(transforms.int8, "quantize", lambda *args: pytest.fail("quantized again"))
    assert prepare_int8(tiny_model, spec, read_calibration_pairs(), cache) == folder
    assert not [name for name in os.listdir(cache) if name.startswith(".")]  # no staging folder left


@pytest.mark.slow
def test_quantizing_again_gives_the_same_model(prepared, tiny_model, tmp_path):
    """The same weights and scales (node names aside, which count the nodes made in the process)."""
    folder, spec = prepared
    again = prepare_int8(tiny_model, spec, read_calibration_pairs(), str(tmp_path))
    assert open(os.path.join(again, "model.bin"), "rb").read() == open(os.path.join(folder, "model.bin"), "rb").read()
    pairs = [(a, b) for a, b, _ in lcqmc_pairs(50)]
    assert np.array_equal(_scores(load_int8(again, 2), tiny_model, pairs, 2048),
                          _scores(load_int8(folder, 2), tiny_model, pairs, 2048))


def test_int8_scores_do_not_depend_on_the_batch(prepared, tiny_model):
    """Static quantization: a pair scores the same alone (unpadded) and inside any batch."""
    model = load_int8(prepared[0], threads=2)
    pairs = [(a, b) for a, b, _ in lcqmc_pairs(200)]
    batched = _scores(model, tiny_model, pairs, 2048)
    assert np.array_equal(batched, _scores(model, tiny_model, pairs, 1))
    assert np.array_equal(batched, _scores(model, tiny_model, pairs, 16384))
    assert np.array_equal(batched, _scores(load_int8(prepared[0], threads=1), tiny_model, pairs, 2048))


def test_threads_sharing_one_int8_model_get_the_scores_of_one_thread(prepared, tiny_model):
    """Beam shares a model between a worker's threads: each must get its own answers, unchanged."""
    import threading
    model = load_int8(prepared[0], threads=1)
    pairs = [(a, b) for a, b, _ in lcqmc_pairs(400)]
    encodings = [encoding for encoding, _ in tokenize(load_tokenizer(tiny_model), pairs, 512)]
    batches = pack_batches([len(ids) for ids, _ in encodings], 512)

    def logits(indices):
        return model(**collate([encodings[i] for i in indices], 0)).logits.numpy()

    alone = [logits(indices) for indices in batches]
    together: list = [None] * len(batches)

    def work(first: int):
        for j in range(first, len(batches), 4):
            together[j] = logits(batches[j])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(batches) > 8 and all(np.array_equal(a, b) for a, b in zip(alone, together))


def test_int8_keeps_the_tiny_models_decisions(prepared, tiny_model):
    """1,000 LCQMC dev pairs, int8 against fp32 PyTorch. The tiny random model (weights drawn with range 0.3:
    scores spread, standard deviation ~0.16) loses more to int8 than the issue's bar (>= 99% agreement, mean
    |difference| <= 0.01): measured 98.4% and 0.017 on a CPU with VNNI, 97.9% and 0.019 on one without
    (with the overflow fix; 91.9% and 0.072 without it) (benchmarks/README.md, "int8 on CPU"); this holds
    it there."""
    from transformers import AutoModelForSequenceClassification
    pairs = [(a, b) for a, b, _ in lcqmc_pairs(1000)]
    reference = _scores(AutoModelForSequenceClassification.from_pretrained(tiny_model).eval(), tiny_model, pairs, 2048)
    scores = _scores(load_int8(prepared[0], threads=2), tiny_model, pairs, 2048)
    assert reference.std() > 0.1  # the scores spread: agreeing means something
    difference = np.abs(scores - reference)
    assert np.mean((scores >= 0.5) == (reference >= 0.5)) >= 0.975
    assert difference.mean() <= 0.02 and difference.max() < 0.3


def test_a_published_model_is_copied_to_workers_and_loads(prepared, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(transforms.sources, "_CACHE", str(tmp_path / "worker_cache"))
    remote = publish_int8(prepared[0], f"{PREFIX}{tmp_path}/bucket/qdedup-int8")
    assert remote.startswith(PREFIX) and remote.endswith(os.path.basename(prepared[0]))
    assert publish_int8(prepared[0], f"{PREFIX}{tmp_path}/bucket/qdedup-int8") == remote  # already there
    settings = ModelSettings(tiny_model, precision="int8", int8_model=remote, torch_threads=1)
    model, device, _ = load_pretrained(settings, CLASSIFIER)
    pairs = [(a, b) for a, b, _ in lcqmc_pairs(20)]
    assert device == "cpu"
    assert np.array_equal(_scores(model, tiny_model, pairs, 2048),
                          _scores(load_int8(prepared[0], threads=1), tiny_model, pairs, 2048))


def _options(*flags):
    return QdedupOptions(["--runner=FnApiRunner", *flags])


def test_int8_with_cuda_is_refused_naming_both_options():
    options = _options("--precision=int8", "--device=cuda")
    with pytest.raises(QdedupError, match="--precision int8 runs on CPU workers.*--device cpu"):
        check_int8(options, options, {"scorer": "f" * 32})


def test_int8_without_openvino_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    options = _options("--precision=int8", "--device=cpu")
    with pytest.raises(QdedupError, match=r"pip install 'qdedup\[int8\]'"):
        check_int8(options, options, {"scorer": "f" * 32})


def test_a_remote_int8_run_needs_a_temp_location():
    options = QdedupOptions(["--runner=DataflowRunner", "--precision=int8", "--device=cpu"])
    with pytest.raises(QdedupError, match="needs --temp_location"):
        check_int8(options, options, {"scorer": "f" * 32})


def test_other_precisions_prepare_nothing():
    options = _options("--precision=fp32")
    assert check_int8(options, options, {"scorer": "f" * 32}) == {}


def test_reusing_a_run_quantized_otherwise_is_refused():
    earlier = {"scoring_precision": "int8", "int8_keys": {"scorer": "aaa"}}
    assert "another int8 quantization" in differing_option(
        earlier, {"scoring_precision": "int8", "int8_keys": {"scorer": "bbb"}}, ["scoring_precision", "int8_keys"])
    assert "--scoring-precision='int8', this run has 'float32'" in differing_option(
        earlier, {"scoring_precision": "float32", "int8_keys": None}, ["scoring_precision", "int8_keys"])
    assert differing_option(earlier, dict(earlier), ["scoring_precision", "int8_keys"]) is None
    assert differing_option({"scoring_precision": "float32"}, {"scoring_precision": "float32", "int8_keys": None},
                            ["scoring_precision", "int8_keys"]) is None  # a run from before int8 existed


@pytest.mark.e2e
def test_a_run_in_int8_scores_and_embeds_with_the_prepared_models(corpus, tiny_model, reference_run, cache,
                                                                  prepared, tmp_path, monkeypatch, capfd):
    """The launcher quantizes the encoder (the scorer is in the cache already), the workers — two local
    processes, so that what they are sent must pickle and they load the models themselves — load both, and
    the pairs the fp32 reference run scored get close scores."""
    monkeypatch.setattr(transforms.sources, "_CACHE", cache)
    directory, _ = corpus
    report = run_qdedup(directory / "*.parquet", tmp_path / "out", tiny_model, "--precision=int8",
                        f"--embedders=lexical,encoder:{tiny_model}", *MULTI_PROCESSING)
    printed = capfd.readouterr()
    for noise in ("Statistics collection", "Smooth Quant", "TracerWarning"):  # quantizing the encoder is quiet
        assert noise not in printed.out + printed.err
    made = report["configuration"]["int8_models"]
    assert made["scorer"]["folder"] == prepared[0]
    assert set(made) == {"scorer", "encoder"} and made["encoder"]["model_class"] == "AutoModel"
    assert made["encoder"]["calibration_fidelity"]["mean_cosine"] > 0.99
    assert report["configuration"]["scoring_precision"] == "int8"
    assert report["configuration"]["int8_keys"] == {role: m["key"] for role, m in made.items()}
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "<h2>int8 models</h2>" in page and made["encoder"]["key"] in page and "mean_cosine" in page
    reference_out, _ = reference_run
    fp32 = {(p["id_a"], p["id_b"]): p["score"] for p in read_part(reference_out, "pairs")}
    int8 = {(p["id_a"], p["id_b"]): p["score"] for p in read_part(tmp_path / "out", "pairs")}
    common = sorted(set(fp32) & set(int8))
    assert len(common) > 100
    difference = np.abs(np.array([int8[k] for k in common]) - np.array([fp32[k] for k in common]))
    assert 0 < difference.mean() <= 0.03
