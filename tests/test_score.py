import collections
import functools
import json
import os
import pickle
import random
from operator import attrgetter
from types import SimpleNamespace

import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that
from apache_beam.utils.windowed_value import WindowedValue
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

from pipelines.options import QdedupOptions
from pipelines.preflight import check_scorer_model, scoring_precision
from pipelines.report import largest_distributions, run_counts
from tests.helpers import RUNNER_ARGS, break_scorer, lcqmc_pairs, reference_scores
from transforms.coders import Records
from transforms.devices import cpu_threads, hardware, model_device, resolve_device, resolve_dtype
from transforms.errors import QdedupError
from transforms.feeding import (
    NOT_FINITE,
    LoadedModel,
    ModelSettings,
    TokenizedItem,
    ahead_of_scoring,
    collate,
    pack_batches,
    positive_probability,
    run_splitting_on_failure,
    token_budget,
    token_dtype,
    tokenize,
)
from transforms.inference import PackedBatch, TokenizeAndPack
from transforms.records import CandidatePair, ScoredPair, pairs_in
from transforms.score import (
    AHEAD_BATCH,
    PAIR_OF_FOUND,
    ScoreNeighbours,
    ScorePairs,
    TokenizeAhead,
    _TokenizeAhead,
    _ToScoredPairs,
    pair_scorer,
)
from transforms.sources import load_tokenizer, load_tokenizer_and_width, model_width


@pytest.fixture(scope="module")
def thirty_pairs():
    return [(a, b) for a, b, _ in lcqmc_pairs(30)]


def _score_packed(classifier, encodings, budget, order):
    scores = np.empty(len(encodings))
    shuffled = [encodings[i] for i in order]
    for batch in pack_batches([len(ids) for ids, _ in shuffled], budget):
        scores[[order[i] for i in batch]] = classifier.run([shuffled[i] for i in batch])[0]
    return scores


@pytest.mark.parametrize("budget", [1, 100, 400, 100_000])
def test_scores_equal_reference_for_any_batching(tiny_model, thirty_pairs, budget):
    expected = np.array(reference_scores(tiny_model, thirty_pairs))
    assert np.std(expected) > 0.05  # a near-constant model would prove nothing
    classifier = pair_scorer(ModelSettings(tiny_model, device="cpu")).load_model()
    encodings = [enc for enc, _ in tokenize(load_tokenizer(tiny_model), thirty_pairs, 512)]
    order = list(range(30))
    random.Random(budget).shuffle(order)
    np.testing.assert_allclose(_score_packed(classifier, encodings, budget, order), expected, atol=1e-5)


def _as_lists(encoded: list) -> list:
    """`tokenize`'s output with each encoding's arrays as lists, to compare with the tokenizer's."""
    return [((ids.tolist(), types.tolist()), truncated) for (ids, types), truncated in encoded]


def test_tokenize_pairs_matches_the_pair_encoding_and_counts_truncation(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    short = [("怎么开通网银", "网银怎么开通"), ("iPhone多少钱", "手机价格"), ("你好", "您好！")]
    long_pair = ("长" * 40, "短问题")
    encoded = tokenize(tokenizer, short + [long_pair], max_length=16)
    assert all(ids.dtype == token_dtype(tokenizer) and types.dtype == np.uint8 for (ids, types), _ in encoded)
    encoded = _as_lists(encoded)
    for (a, b), ((ids, types), truncated) in zip(short, encoded):
        reference = tokenizer(a, b)
        assert len(reference["input_ids"]) <= 16 and not truncated
        assert (ids, types) == (reference["input_ids"], reference["token_type_ids"])
        assert tokenizer.unk_token_id not in ids
    (ids, types), truncated = encoded[-1]
    assert truncated and len(ids) == 16 and types[-1] == 1
    assert ids[-4:] == tokenizer(long_pair[0], long_pair[1])["input_ids"][-4:]  # "短问题" [SEP] kept whole
    assert tokenize(tokenizer, [], 16) == []


def test_tokenize_equals_encoding_each_input_whole(tiny_model, thirty_pairs):
    """Each distinct text is tokenized once and pairs are assembled from the pieces: the ids must be
    those of the tokenizer encoding the whole pair (or text), whatever repeats in the batch."""
    from transforms.feeding import _template
    tokenizer = load_tokenizer(tiny_model)
    assert _template(tokenizer.backend_tokenizer, 1) and _template(tokenizer.backend_tokenizer, 2)  # no fallback
    pairs = thirty_pairs + [(b, a) for a, b in thirty_pairs[:10]] + [(thirty_pairs[0][0], b) for _, b in thirty_pairs]
    for (a, b), ((ids, types), truncated) in zip(pairs, _as_lists(tokenize(tokenizer, pairs, 512))):
        whole = tokenizer(a, b)
        assert (ids, types, truncated) == (whole["input_ids"], whole["token_type_ids"], False)
    texts = [(a,) for a, _ in pairs]
    for (a,), ((ids, types), _) in zip(texts, _as_lists(tokenize(tokenizer, texts, 512))):
        assert (ids, types) == (tokenizer(a)["input_ids"], tokenizer(a)["token_type_ids"])
    mixed = [inputs for pair in zip(pairs, texts) for inputs in pair]  # single texts and pairs in one window
    assert _as_lists(tokenize(tokenizer, mixed, 512)) == [
        encoded for pair in zip(_as_lists(tokenize(tokenizer, pairs, 512)), _as_lists(tokenize(tokenizer, texts, 512)))
        for encoded in pair]


@pytest.mark.parametrize("processor", ["roberta", "no_template"])
def test_tokenize_follows_other_post_processors(tiny_model, thirty_pairs, processor, monkeypatch):
    """A RoBERTa-style template (<s> a </s></s> b </s>, one segment id) is read off the post-processor
    like BERT's; where no template is found, each input is post-processed: the ids are the same."""
    import copy

    from tokenizers.processors import RobertaProcessing

    import transforms.feeding
    tokenizer = copy.deepcopy(load_tokenizer(tiny_model))
    backend = tokenizer.backend_tokenizer
    if processor == "roberta":
        backend.post_processor = RobertaProcessing(("[SEP]", tokenizer.sep_token_id), ("[CLS]", tokenizer.cls_token_id))
        assert transforms.feeding._template(backend, 2) is not None
    else:
        monkeypatch.setattr(transforms.feeding, "_template", lambda backend, count: None)
    pairs = thirty_pairs + [(thirty_pairs[0][0], b) for _, b in thirty_pairs]
    for (a, b), ((ids, types), _) in zip(pairs, _as_lists(tokenize(tokenizer, pairs, 512))):
        whole = backend.encode(a, b)
        assert (ids, types) == (whole.ids, whole.type_ids)
    if processor == "roberta":
        assert ids.count(tokenizer.sep_token_id) == 3


@pytest.mark.parametrize("max_length", [12, 17, 24, 40, 512])
def test_texts_tokenized_ahead_give_the_ids_of_their_pairs_tokenized_whole(tiny_model, thirty_pairs, max_length):
    """Scoring assembles a pair from texts tokenized ahead, alone or beside a text: the ids, the cut of a
    pair too long (longest first, as the tokenizer cuts it) and the truncated flag are the tokenizer's."""
    tokenizer = load_tokenizer(tiny_model)
    ahead = ahead_of_scoring(tokenizer, max_length)
    rng = random.Random(max_length)
    texts = [t for pair in thirty_pairs for t in pair] + ["长" * n for n in (3, 5, 6, 7, 8, 9, 11, 20, 300)]
    pairs = [(rng.choice(texts), rng.choice(texts)) for _ in range(400)]
    forms = dict(zip(texts, ahead(texts)))
    kinds = {type(form) for form in forms.values()}
    assert kinds == {bytes, str}  # short texts ahead, long ones not (300 ids are more than half of 512)
    for (a, b), from_ahead in zip(pairs, _as_lists(tokenize(tokenizer, [(forms[a], forms[b]) for a, b in pairs],
                                                            max_length))):
        whole = tokenizer(a, b, truncation="longest_first", max_length=max_length)
        assert from_ahead == ((whole["input_ids"], whole["token_type_ids"]),
                              len(tokenizer(a, b)["input_ids"]) > max_length)
    mixed = [(forms[a], b) for a, b in pairs] + [(forms[a], forms[b]) for a, b in pairs]
    assert _as_lists(tokenize(tokenizer, mixed, max_length)) == _as_lists(
        tokenize(tokenizer, pairs + pairs, max_length))


def test_texts_stay_texts_where_tokenizing_ahead_would_not_be_exact(tiny_model, monkeypatch):
    import copy

    import transforms.feeding
    tokenizer = load_tokenizer(tiny_model)
    form = ahead_of_scoring(tokenizer, 512)(["怎么开通网银"])[0]
    assert token_dtype(tokenizer) == np.dtype("<u2") and isinstance(form, bytes)
    assert np.frombuffer(form, "<u2").tolist() == tokenizer("怎么开通网银", add_special_tokens=False)["input_ids"]
    assert ahead_of_scoring(tokenizer, 13)(["长" * 6])[0] == "长" * 6  # (13 - 3) // 2 = 5 ids at most
    with pytest.raises(TypeError, match="not one text"):
        ahead_of_scoring(tokenizer, 512)("怎么开通网银")
    left = copy.deepcopy(tokenizer)
    left.truncation_side = "left"
    from transformers import BertTokenizerLegacy  # Python, no fast backend
    slow = BertTokenizerLegacy.from_pretrained(tiny_model)
    assert not hasattr(slow, "backend_tokenizer")
    for other in (left, slow):
        assert ahead_of_scoring(other, 512)(["怎么开通网银"])[0] == "怎么开通网银"
    # one the tokenizer fails on stays as it is; the others of its call are still tokenized
    assert ahead_of_scoring(tokenizer, 512)(["怎么开通网银", None, "长" * 6]) == [form, None, ahead_of_scoring(
        tokenizer, 512)(["长" * 6])[0]]
    monkeypatch.setattr(transforms.feeding, "_template", lambda backend, count: None)  # no one template
    assert ahead_of_scoring(tokenizer, 512)(["怎么开通网银"])[0] == "怎么开通网银"
    monkeypatch.undo()
    with pytest.raises(ValueError, match="another max_length"):
        tokenize(tokenizer, [(ahead_of_scoring(tokenizer, 64)(["长" * 20])[0], "短" * 20)], 24)


def test_tokenize_ahead_gives_every_text_its_own_form_whatever_the_calls(tiny_model, thirty_pairs):
    """Texts are encoded many a call (`AHEAD_BATCH`); each key still gets its own text's form, the one
    the text gets alone, and a text the tokenizer fails on stays as it is beside the others."""
    tokenizer = load_tokenizer(tiny_model)
    texts = [t for pair in thirty_pairs for t in pair]
    elements = [(i, texts[i % len(texts)] + str(i)) for i in range(2 * AHEAD_BATCH + 17)] + [(-1, None)]
    expected = {key: ahead_of_scoring(tokenizer, 512)([text])[0] for key, text in elements}
    assert sum(isinstance(form, bytes) for form in expected.values()) == len(elements) - 1

    def check(formed):
        assert len(formed) == len(elements) and dict(formed) == expected

    with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as pipeline:
        assert_that(pipeline | beam.Create(elements) | TokenizeAhead(ModelSettings(tiny_model)), check)


def test_tokenize_ahead_holds_a_bundles_texts_and_carries_each_form_back_into_its_element(tiny_model):
    """Any element: its text taken by `text`, up to `AHEAD_BATCH` encoded in one call, each form put back by `carry`
    into its own element; what a bundle holds at its end is given then, in the global window."""
    calls = []
    fn = _TokenizeAhead(ModelSettings(tiny_model), attrgetter("text"), lambda item, form: item._replace(text=form))
    fn._ahead = lambda texts: calls.append(len(texts)) or [text.upper() for text in texts]
    Item = collections.namedtuple("Item", "id text")
    items = [Item(i, f"q{i}") for i in range(2 * AHEAD_BATCH + 5)]
    fn.start_bundle()
    given = [out for item in items for out in fn.process(item)]
    assert calls == [AHEAD_BATCH, AHEAD_BATCH]
    at_end = list(fn.finish_bundle())
    assert calls == [AHEAD_BATCH, AHEAD_BATCH, 5] and all(isinstance(out, WindowedValue) for out in at_end)
    assert given + [out.value for out in at_end] == [Item(i, f"Q{i}") for i in range(len(items))]
    fn.start_bundle()
    assert list(fn.finish_bundle()) == [] and len(calls) == 3  # nothing held: no call
    fn._ahead = lambda texts: texts[1:]  # one form short: the bundle fails rather than lose an element
    fn.start_bundle()
    assert [out for item in items[:5] for out in fn.process(item)] == []
    with pytest.raises(ValueError, match="gave 4 forms for 5 texts"):
        list(fn.finish_bundle())


def test_pack_batches_respects_the_budget_and_keeps_every_element():
    rng = random.Random(3)
    costs = [rng.randint(5, 120) for _ in range(500)] + [300]
    batches = pack_batches(costs, budget=256)
    assert sorted(i for batch in batches for i in batch) == list(range(len(costs)))
    for batch in batches:
        assert len(batch) * max(costs[i] for i in batch) <= 256 or len(batch) == 1
    flat = [costs[i] for batch in batches for i in batch]
    assert flat == sorted(flat)  # length-sorted: padding only to similar lengths
    padded = sum(len(b) * max(costs[i] for i in b) for b in batches)
    assert padded < 1.2 * sum(costs)


def _packed_one_by_one(costs: list, budget: int) -> list:
    """The greedy packing `pack_batches` makes, an element at a time."""
    batches, current, largest = [], [], 0
    for i in sorted(range(len(costs)), key=lambda i: costs[i]):
        if current and max(largest, costs[i]) * (len(current) + 1) > budget:
            batches.append(current)
            current, largest = [], 0
        current.append(i)
        largest = max(largest, costs[i])
    return batches + [current] if current else batches


@pytest.mark.parametrize("seed, budget", [(0, 256), (1, 8192), (2, 40), (3, 1), (4, 512)])
def test_pack_batches_equals_packing_one_element_at_a_time(seed, budget):
    rng = random.Random(seed)
    costs = [rng.choice([rng.randint(1, 60), rng.randint(1, 600)]) for _ in range(rng.randint(0, 3000))]
    assert pack_batches(costs, budget) == _packed_one_by_one(costs, budget)
    assert pack_batches([7] * 10, 21) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]  # ties in index order


def test_automatic_token_budget_follows_the_model_width_on_the_cpu(monkeypatch):
    cpu = ModelSettings("m", device="cpu")
    assert [token_budget(cpu, width) for width in (0, 768, 1024, 384, 256, 32)] == [2048, 2048, 2048, 4096, 6144, 8192]
    assert token_budget(ModelSettings("m", device="cpu", token_budget=300), 32) == 300  # asked for: kept
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert token_budget(ModelSettings("m", device="cuda"), 32) == 32768  # the GPU's budget was not measured by width


@pytest.mark.parametrize("asked, largest, orders", [(0, 8192, 1), (2048, 2048, 1), (2048, 2048, 2)])
def test_packing_takes_the_automatic_budget_of_the_models_width(tiny_model, asked, largest, orders):
    """Full batches under the budget, each with the count of its token ids that Beam's metrics take (an
    input in both orders, --symmetric, counts both encodings)."""
    assert model_width(tiny_model) == 32
    pairs = [((i, j), ((a, b), (b, a))[:orders]) for i, (a, b, _) in enumerate(lcqmc_pairs(600)) for j in range(2)]
    settings = ModelSettings(tiny_model, device="cpu", token_budget=asked)

    def check(batches):
        padded = [len(batch) * max(item.cost for item in batch) for (batch,) in batches]
        assert sum(len(batch) for (batch,) in batches) == len(pairs)
        assert max(padded) <= largest and max(padded) > largest // 2  # full batches, under the budget
        assert all(len(item.encodings) == orders for (batch,) in batches for item in batch)
        assert [batch.tokens for (batch,) in batches] == [
            sum(len(ids) for item in batch for ids, _ in item.encodings) for (batch,) in batches]

    pipeline = beam.Pipeline(options=PipelineOptions(RUNNER_ARGS))
    packed = pipeline | beam.Create(pairs) | TokenizeAndPack(settings, "score", load_tokenizer_and_width)
    assert_that(packed.batches, check)
    result = pipeline.run()
    result.wait_until_finish()
    biggest = max(value.max for value in largest_distributions(result)["score_batch_tokens"])
    assert largest // 2 < biggest <= largest  # report.json's figure: the largest batch packed


def test_collate_pads_right_with_a_mask():
    batch = collate([([2, 7, 3], [0, 0, 0]), ([2, 5, 3, 9, 3], [0, 0, 0, 1, 1])], pad_id=0)
    assert batch["input_ids"].tolist() == [[2, 7, 3, 0, 0], [2, 5, 3, 9, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 1, 1]]


class _FakeModel:
    """Raises CUDA-style out-of-memory above `limit` rows; otherwise logit 1 = first token id."""

    def __init__(self, limit, poison=None, overflow=None):
        self.limit = limit
        self.poison = poison
        self.overflow = overflow  # a first token id whose logits come out as inf and NaN
        self.calls = []

    def __call__(self, input_ids, token_type_ids, attention_mask):
        self.calls.append(len(input_ids))
        if len(input_ids) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if self.poison is not None and bool((input_ids[:, 0] == self.poison).any()):
            raise ValueError(f"cannot handle token {self.poison}")
        logits = torch.stack([torch.zeros(len(input_ids)), input_ids[:, 0].float() / 10], dim=1)
        if self.overflow is not None:
            logits[input_ids[:, 0] == self.overflow] = torch.tensor([float("inf"), float("nan")])
        return SimpleNamespace(logits=logits)


def _fake_scorer(model) -> LoadedModel:
    return LoadedModel(model, "cpu", 0, functools.partial(positive_probability, label=1))


def test_the_hardware_is_named_where_the_model_is_loaded_and_asked_of_the_model(tiny_model, monkeypatch):
    """With --model-copies the workers reach the model through Beam's proxy: the GPU's name comes from the process
    that loaded it (`LoadedModel.hardware`), not from torch in each worker, where asking made a CUDA context."""
    import transforms.inference as inference
    handler = pair_scorer(ModelSettings(tiny_model, device="cpu"))
    loaded = handler.load_model()
    assert loaded.hardware() == hardware("cpu", "auto", cpu_threads(0))

    def no_asking_here(*args):
        raise AssertionError("the worker asked torch what the model runs on")

    named = []
    monkeypatch.setattr(inference, "hardware", no_asking_here)
    monkeypatch.setattr(inference, "hardware_rows", lambda stage, label: named.append((stage, label)) or
                        SimpleNamespace(inc=lambda n: named.append(n)))
    elsewhere = LoadedModel(loaded.model, "cpu", loaded.pad_id, loaded.forward, "cuda NVIDIA H100 80GB HBM3")
    packed = PackedBatch([TokenizedItem(i, (([2, 7 + i, 3], [0, 0, 0]),), False) for i in range(3)], 9)
    [result] = handler.run_inference([packed], elsewhere)
    assert len(result.inference) == 3 and named == [("score", "cuda NVIDIA H100 80GB HBM3"), 3]


def test_out_of_memory_splits_the_batch_and_loses_no_pair():
    model = _FakeModel(limit=3)
    encodings = [([i, 1], [0, 0]) for i in range(10)]
    scored = _fake_scorer(model).run(encodings)
    expected = torch.softmax(torch.stack([torch.zeros(10), torch.arange(10) / 10], dim=1), dim=-1)[:, 1]
    np.testing.assert_allclose(scored.outputs, expected.numpy(), atol=1e-6)
    assert scored.oom_splits == 3 and max(c for c in model.calls if c <= 3) <= 3 and scored.errors == {}


def test_a_pair_the_model_fails_on_is_set_aside_and_the_rest_scored():
    encodings = [([i, 1], [0, 0]) for i in range(10)]
    scored = _fake_scorer(_FakeModel(limit=100, poison=7)).run(encodings)
    assert scored.errors == {7: "ValueError: cannot handle token 7"} and scored.outputs[7] is None
    expected = torch.softmax(torch.stack([torch.zeros(10), torch.arange(10) / 10], dim=1), dim=-1)[:, 1]
    np.testing.assert_allclose([s for i, s in enumerate(scored.outputs) if i != 7],
                               np.delete(expected.numpy(), 7), atol=1e-6)


def test_a_score_that_is_not_a_finite_number_fails_its_pair_and_says_what_to_do():
    """fp16 can overflow: a NaN score must not pass for a decision (a NaN compares below every threshold)."""
    encodings = [([i, 1], [0, 0]) for i in range(10)]
    model = _FakeModel(limit=100, overflow=4)
    scored = _fake_scorer(model).run(encodings)
    assert model.calls == [10]  # the batch is not split for it: the other pairs' scores stand as they came
    assert scored.outputs[4] is None and scored.errors == {4: NOT_FINITE} and "--precision fp32" in NOT_FINITE
    expected = torch.softmax(torch.stack([torch.zeros(10), torch.arange(10) / 10], dim=1), dim=-1)[:, 1]
    np.testing.assert_allclose([s for i, s in enumerate(scored.outputs) if i != 4],
                               np.delete(expected.numpy(), 4), atol=1e-6)


def test_vectors_with_a_non_finite_component_are_failed_whole():
    vectors = np.ones((3, 4), dtype=np.float32)
    vectors[1, 2] = np.inf
    forwarded = run_splitting_on_failure(lambda batch: vectors, [([1], [0])] * 3, 0, "cpu")
    assert forwarded.outputs[1] is None and set(forwarded.errors) == {1}
    np.testing.assert_array_equal(forwarded.outputs[2], vectors[2])


def test_pairs_scored_nan_in_the_stage_go_to_the_failed_output_with_what_to_do(tiny_model, thirty_pairs,
                                                                               monkeypatch):
    """The Beam glue of the finiteness check: the pairs whose score overflowed are dead letters naming the
    precision to use, the others scored as always."""
    token = "么"
    holding = {i for i, (a, b) in enumerate(thirty_pairs) if token in a + b}
    assert 0 < len(holding) < 30
    break_scorer(monkeypatch, tiny_model, token, overflow=True)
    expected = reference_scores(tiny_model, thirty_pairs)
    candidates = [CandidatePair(i, 100 + i, a, b, 0.5) for i, (a, b) in enumerate(thirty_pairs)]

    def check_scored(scored):
        assert sorted(p.id_a for p in scored) == sorted(set(range(30)) - holding)
        assert all(p.score == pytest.approx(expected[p.id_a], abs=1e-5) for p in scored)

    def check_failed(failed):
        assert sorted(json.loads(r.row)["id_a"] for r in failed) == sorted(holding)
        assert {(r.stage, r.kind, r.reason) for r in failed} == {("score", "pair", "score_error")}
        assert all(NOT_FINITE in r.detail for r in failed)

    with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as pipeline:
        scoring = pipeline | beam.Create(candidates) | ScorePairs(ModelSettings(tiny_model, device="cpu"))
        assert_that(scoring.scored | beam.FlatMap(pairs_in), check_scored, label="Scored")
        assert_that(scoring.failed, check_failed, label="Failed")


def test_out_of_memory_on_a_single_pair_is_raised():
    with pytest.raises(torch.OutOfMemoryError):
        _fake_scorer(_FakeModel(limit=0)).run([([1, 2], [0, 0])])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="device cuda asked for, but no usable GPU"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"


def test_auto_precision_is_fp16_on_cuda_and_a_state_records_what_scores_ran_in(monkeypatch):
    """fp16 on CUDA (the GPU check's agreement figures), bf16 support or not; a remote run names it too, so that
    an extension of a run scored in another precision is refused."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolve_dtype("auto", "cuda") == torch.float16 and resolve_dtype("auto", "cpu") == torch.float32

    def recorded(*args):
        pipeline_options = PipelineOptions(list(args))
        return scoring_precision(pipeline_options.view_as(QdedupOptions), pipeline_options)

    assert recorded("--runner=DataflowRunner", "--device=cuda") == "float16"
    assert recorded("--runner=DataflowRunner", "--device=cpu") == "float32"
    assert recorded("--runner=DataflowRunner") == "auto on auto (fp16 on a GPU)"  # GPUs ran bf16 under "auto on auto"
    assert recorded("--runner=DataflowRunner", "--device=cuda", "--precision=bf16") == "bf16"
    assert recorded(*RUNNER_ARGS, "--device=cpu") == "float32"


def test_the_hardware_a_forward_ran_on_names_the_cpu_model_and_instruction_set(monkeypatch):
    with open("/proc/cpuinfo", encoding="utf-8") as info:
        model = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    capability = torch.backends.cpu.get_cpu_capability()
    assert hardware("cpu", "auto", 2) == hardware("cpu", "fp32", 2) == f"cpu {model} ({capability}, 2 threads)"
    assert hardware("cpu", "int8", 1) == f"cpu int8 {model} ({capability}, 1 thread)"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "NVIDIA H200")
    assert hardware("cuda", "bf16", 2) == "cuda NVIDIA H200"
    assert cpu_threads(3) == 3 and cpu_threads(0) == len(os.sched_getaffinity(0))


def test_int8_models_run_on_the_cpu_whatever_the_device_says_and_are_batched_for_it():
    assert model_device("cuda", "int8") == model_device("auto", "int8") == model_device("cpu", "fp32") == "cpu"
    assert token_budget(ModelSettings("m", device="cuda", precision="int8"), 768) == token_budget(
        ModelSettings("m", device="cpu"), 768)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_half_precision_scores_close_to_fp32(tiny_model, thirty_pairs):
    expected = np.array(reference_scores(tiny_model, thirty_pairs))
    encodings = [enc for enc, _ in tokenize(load_tokenizer(tiny_model), thirty_pairs, 512)]
    for precision in ("fp32", "bf16", "fp16"):
        classifier = pair_scorer(ModelSettings(tiny_model, device="cuda", precision=precision)).load_model()
        assert classifier.device == "cuda"
        got = _score_packed(classifier, encodings, 4096, list(range(30)))
        np.testing.assert_allclose(got, expected, atol=1e-4 if precision == "fp32" else 2e-2)


def _run_score_pairs(candidates, settings, check):
    """Runs ScorePairs; `check` sees the scored pairs inside the pipeline (where assert_that runs)."""
    with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as pipeline:
        assert_that((pipeline | beam.Create(candidates) | ScorePairs(settings)).scored | beam.FlatMap(pairs_in), check)


@pytest.mark.parametrize("extra", [{"token_budget": 64, "sort_window": 7}, {"model_copies": 1}])
def test_score_pairs_transform_keeps_ids_and_similarity(tiny_model, thirty_pairs, extra):
    expected = reference_scores(tiny_model, thirty_pairs)
    candidates = [CandidatePair(i, 100 + i, a, b, 0.5 + i / 100) for i, (a, b) in enumerate(thirty_pairs)]

    def check(scored):
        assert sorted(p.id_a for p in scored) == list(range(30))
        for pair in scored:
            assert pair.id_b == 100 + pair.id_a
            assert pair.similarity == pytest.approx(0.5 + pair.id_a / 100)
            assert pair.score == pytest.approx(expected[pair.id_a], abs=1e-5)

    _run_score_pairs(candidates, ModelSettings(tiny_model, device="cpu", **extra), check)


def test_scored_pairs_leave_the_model_in_the_batches_it_scored(tiny_model, thirty_pairs):
    """What follows scoring takes a batch as one element: 30 pairs in shards of 7 come as 5 or more lists
    (a shard packs into one batch or more), never a pair alone unless its shard held one."""
    candidates = [CandidatePair(i, 100 + i, a, b, 0.5) for i, (a, b) in enumerate(thirty_pairs)]

    def check(batches):
        assert all(type(batch) is Records and all(isinstance(p, ScoredPair) for p in batch)  # the class once a list
                   for batch in batches)
        assert sorted(p.id_a for batch in batches for p in batch) == list(range(30))
        assert 5 <= len(batches) < 30 and max(len(batch) for batch in batches) <= 7

    with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as pipeline:
        assert_that((pipeline | beam.Create(candidates)
                     | ScorePairs(ModelSettings(tiny_model, device="cpu", sort_window=7))).scored, check)


def test_progress_is_logged_with_counts_and_rate(tiny_model, thirty_pairs, caplog):
    candidates = [CandidatePair(i, 100 + i, a, b, 0.5) for i, (a, b) in enumerate(thirty_pairs)]
    settings = ModelSettings(tiny_model, device="cpu", progress_seconds=0.0, sort_window=7)  # several batches
    with caplog.at_level("INFO", logger="transforms.score"):
        _run_score_pairs(candidates, settings, lambda scored: None)
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("scoring:")]
    assert progress and "of 30 pairs" in progress[-1] and "pairs/s" in progress[-1]


def test_neighbour_lists_are_scored_once_a_pair_from_both_ends_and_every_embedder(tiny_model, thirty_pairs, caplog):
    """`ScoreNeighbours`: pairs found from one end or both, by one embedder or two, each scored once, with
    the best similarity and every source, in several shards and batches, and counted as candidate pairs."""
    a, b = [p[0] for p in thirty_pairs], [p[1] for p in thirty_pairs]
    lexical = [(i, (a[i], {100 + i: (0.5 + i / 100, b[i])})) for i in range(30)]
    lexical += [(100 + i, (b[i], {i: (0.5 + i / 100, a[i])})) for i in range(0, 30, 2)]  # the other end
    encoder = [(i, (a[i], {100 + i: (0.9, b[i]), 101 + i: (0.7, b[i + 1])})) for i in range(5)]
    expected = dict(zip(((i, 100 + i) for i in range(30)), reference_scores(tiny_model, thirty_pairs)))
    expected.update(zip(((i, 101 + i) for i in range(5)),
                        reference_scores(tiny_model, [(a[i], b[i + 1]) for i in range(5)])))

    def check(scored):
        assert sorted((p.id_a, p.id_b) for p in scored) == sorted(expected)
        for pair in scored:
            assert pair.score == pytest.approx(expected[pair.id_a, pair.id_b], abs=1e-5)
            if pair.id_b == 101 + pair.id_a:
                assert (pair.similarity, pair.source) == (0.7, "encoder")
            elif pair.id_a < 5:
                assert (pair.similarity, pair.source) == (0.9, "encoder,lexical")
            else:
                assert (pair.similarity, pair.source) == (pytest.approx(0.5 + pair.id_a / 100), "lexical")

    settings = ModelSettings(tiny_model, device="cpu", token_budget=64, sort_window=7, progress_seconds=0.0)
    pipeline = beam.Pipeline(options=PipelineOptions(RUNNER_ARGS))
    found = {"lexical": pipeline | "Lexical" >> beam.Create(lexical),
             "encoder": pipeline | "Encoder" >> beam.Create(encoder)}
    most_found = (pipeline | "MostLexical" >> beam.Create([45 * 2]),  # 45 lists of 1 entry, at most 2 each
                  pipeline | "MostEncoder" >> beam.Create([5 * 2]))         # 5 lists of 2 entries
    scoring = found | ScoreNeighbours(settings, most_found, batch=4)
    assert_that(scoring.scored | beam.FlatMap(pairs_in), check)
    assert_that(scoring.reused, lambda reused: reused == [] or pytest.fail(reused), label="NoneReused")
    with caplog.at_level("INFO", logger="transforms.score"):
        result = pipeline.run()
        result.wait_until_finish()
    assert run_counts(result)["candidate_pairs"] == 35
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("scoring:")]
    assert progress and "of at most 100 pairs" in progress[-1]  # the bound given, not the 55 entries counted


def test_a_question_in_every_list_spreads_over_the_scoring_shards():
    """Skew: one question is a neighbour of all 20,000 others (a template question). Its pairs differ, so
    they are dealt over every shard; no shard holds more than about `sort_window` entries."""
    import collections

    from transforms.joins import DealIntoShards, dealt
    from transforms.records import found_pairs
    lists = [(q, (b"t", {0: (0.9, b"h"), q + 1: (0.5, b"t")})) for q in range(1, 20_001)]
    entries, window = 2 * len(lists), 500
    deal = DealIntoShards(0, PAIR_OF_FOUND, window, 1000, functools.partial(found_pairs, source="lexical"))
    deal.start_bundle()
    given = [out for element in lists for out in deal.process(element, keys=entries)]
    given += [v.value for v in deal.finish_bundle()]
    shards = collections.defaultdict(list)
    for shard, value in given:
        shards[shard].append(value)
    sizes = {shard: sum(1 for _ in dealt(values, 0)) for shard, values in shards.items()}
    assert len(sizes) == entries // window and sum(sizes.values()) == entries
    assert max(sizes.values()) < 1.3 * window  # hash-balanced: the hot question's 20,000 pairs too
    hot = collections.Counter(shard for shard, values in shards.items() for pair, _, _ in dealt(values, 0)
                              if pair[0] == 0)
    assert len(hot) == len(sizes) and max(hot.values()) < 1.3 * 20_000 / len(sizes)


def test_symmetric_scoring_averages_both_orders(tiny_model, thirty_pairs):
    forward = reference_scores(tiny_model, thirty_pairs[:10])
    backward = reference_scores(tiny_model, [(b, a) for a, b in thirty_pairs[:10]])
    candidates = [CandidatePair(i, 100 + i, a, b, 0.5) for i, (a, b) in enumerate(thirty_pairs[:10])]

    def check(scored):
        assert len(scored) == 10
        for pair in scored:
            assert pair.score == pytest.approx((forward[pair.id_a] + backward[pair.id_a]) / 2, abs=1e-5)

    _run_score_pairs(candidates, ModelSettings(tiny_model, device="cpu", symmetric=True), check)
    assert max(abs(f - b) for f, b in zip(forward, backward)) > 0.01  # the orders do differ


def test_check_scorer_model_accepts_a_complete_model(tiny_model):
    check_scorer_model(tiny_model)


def test_check_scorer_model_names_the_problem(tiny_model, tmp_path):
    with pytest.raises(QdedupError, match="no such directory"):
        check_scorer_model(str(tmp_path / "absent"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(QdedupError, match=r"missing config.json, model.safetensors \(weights are read from "
                                          r"safetensors only\), tokenizer.json or vocab.txt"):
        check_scorer_model(str(empty))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"")
    (broken / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(QdedupError, match=r"cannot load model .*\(--scorer-model\)"):
        check_scorer_model(str(broken))


def test_check_scorer_model_refuses_a_model_without_two_labels(tiny_model, tmp_path):
    one_label = tmp_path / "one"
    config = BertConfig.from_pretrained(tiny_model, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(one_label)
    BertTokenizer.from_pretrained(tiny_model).save_pretrained(one_label)
    with pytest.raises(QdedupError, match="not a pair classifier with 2 labels"):
        check_scorer_model(str(one_label))


def test_the_test_models_vocabulary_covers_every_lcqmc_text(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    texts = [t for a, b, _ in lcqmc_pairs() for t in (a, b)]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert [t for t, ids in zip(texts, encoded) if tokenizer.unk_token_id in ids] == []


def test_sharing_a_model_goes_through_beams_public_constructor(tiny_model):
    """--model-copies N: Beam's own large_model / model_copies, set through ModelHandler.__init__."""
    alone = pair_scorer(ModelSettings(tiny_model, device="cpu"))
    assert not alone.share_model_across_processes() and alone.model_copies() == 1
    shared = pair_scorer(ModelSettings(tiny_model, device="cpu", model_copies=2))
    assert shared.share_model_across_processes() and shared.model_copies() == 2


def test_a_batchs_size_for_beams_metrics_is_its_ids_counted_where_packed_not_pickled():
    batch = PackedBatch([TokenizedItem("k", (([101, 7, 102], [0, 0, 0]),), False)], tokens=11)
    assert pair_scorer(ModelSettings("unused")).get_num_bytes([batch]) == 16 * 11
    assert pickle.loads(pickle.dumps(batch)) == batch and pickle.loads(pickle.dumps(batch)).tokens == 11


def test_a_scored_batch_becomes_the_records_of_its_pairs_with_each_score_a_python_float():
    """Records made field by field in columns equal `ScoredPair`s made one by one, as pairs/ writes them."""
    to_pairs = _ToScoredPairs(None)
    to_pairs.setup()
    keys = [(1, 2, 0.9, "lexical"), ("a", "b", None, "lexical,static")]
    (batch,) = to_pairs.process((keys, np.array([0.25, 0.7], dtype=np.float32)), total=2)
    assert type(batch) is Records and batch == [ScoredPair(1, 2, float(np.float32(0.25)), 0.9, "lexical"),
                                                 ScoredPair("a", "b", float(np.float32(0.7)), None, "lexical,static")]
    assert [type(pair.score) for pair in batch] == [float, float] and batch[1].reused is False
    assert all(type(pair) is ScoredPair for pair in batch)
