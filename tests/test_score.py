import random

import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

from tests.conftest import RUNNER_ARGS, lcqmc_pairs
from transforms.block import CandidatePair
from transforms.errors import QdedupError
from transforms.score import PairScorer, ScorePairs, check_scorer_model, load_scorer, score_pairs


def reference_scores(model_dir, pairs):
    """The model card's usage: one pair at a time, no padding."""
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    model = BertForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return [float(torch.softmax(model(**tokenizer(a, b, return_tensors="pt")).logits, dim=-1)[0, 1])
                for a, b in pairs]


@pytest.fixture(scope="module")
def thirty_pairs():
    return [(a, b) for a, b, _ in lcqmc_pairs(30)]


def test_scores_equal_reference_for_any_batching(tiny_model, thirty_pairs):
    expected = np.array(reference_scores(tiny_model, thirty_pairs))
    scorer = load_scorer(tiny_model, "cpu")
    order = list(range(30))
    random.Random(0).shuffle(order)
    for batch_size in (1, 7, 30):
        got = np.empty(30)
        for start in range(0, 30, batch_size):
            chunk = order[start:start + batch_size]
            got[chunk] = score_pairs(scorer, [thirty_pairs[i] for i in chunk])
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert len(set(np.round(expected, 6))) > 1  # a constant model would prove nothing


def test_score_pairs_transform_keeps_ids_and_similarity(tiny_model, thirty_pairs):
    expected = reference_scores(tiny_model, thirty_pairs)
    candidates = [CandidatePair(i, 100 + i, a, b, 0.5 + i / 100) for i, (a, b) in enumerate(thirty_pairs)]

    def check(scored):
        assert sorted(p.id_a for p in scored) == list(range(30))
        for pair in scored:
            assert pair.id_b == 100 + pair.id_a
            assert pair.similarity == pytest.approx(0.5 + pair.id_a / 100)
            assert pair.score == pytest.approx(expected[pair.id_a], abs=1e-5)

    with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as pipeline:
        scored = (pipeline | beam.Create(candidates)
                  | ScorePairs(PairScorer(tiny_model, batch_size=4, device="cpu")))
        assert_that(scored, check)


def test_check_scorer_model_accepts_a_complete_model(tiny_model):
    check_scorer_model(tiny_model)


def test_check_scorer_model_names_the_problem(tiny_model, tmp_path):
    with pytest.raises(QdedupError, match="no such directory"):
        check_scorer_model(str(tmp_path / "absent"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(QdedupError, match="missing config.json, model.safetensors or pytorch_model.bin"):
        check_scorer_model(str(empty))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"")
    with pytest.raises(QdedupError, match="cannot load scoring model"):
        check_scorer_model(str(broken))


def test_check_scorer_model_refuses_a_model_without_two_labels(tiny_model, tmp_path):
    one_label = tmp_path / "one"
    config = BertConfig.from_pretrained(tiny_model, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(one_label)
    BertTokenizer.from_pretrained(tiny_model).save_pretrained(one_label)
    with pytest.raises(QdedupError, match="not a pair classifier with 2 labels"):
        check_scorer_model(str(one_label))
