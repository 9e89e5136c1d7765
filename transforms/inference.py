"""Feeding Hugging Face models inside RunInference, shared by scoring and the encoder embedder.

The hardware wants few, full, evenly long batches: inputs are dealt into shards
of about `sort_window` by a hash of their key, tokenized once per shard, sorted by
token length and packed under a token budget, padded only to each batch's own
longest input, run under `inference_mode` with SDPA attention (bf16/fp16 on CUDA,
fp32 on CPU), and a CUDA out-of-memory batch is split in half and retried rather
than lost. Because a batch's make-up follows from the set of inputs alone (never
from bundles or arrival order), an input gets the same score in every run,
runner mode and retry that scores the same set of inputs.

One ModelHandler, `PackedBatchHandler`, runs every model qdedup uses, in the way
of Beam's `PytorchModelHandlerTensor`: which Hugging Face class is loaded and what
its forward pass computes are given to its constructor, and so is sharing a model
between a worker's processes (Beam's own `model_copies` / `large_model`).
`RunModel` is the whole stage: tokenize, pack, run, and set aside what fails.
"""
from __future__ import annotations

import itertools
import logging
import math
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import (
    KeyedModelHandler,
    ModelHandler,
    PredictionResult,
    RunInference,
)

from transforms.devices import resolve_device
from transforms.errors import failure
from transforms.logs import quiet_libraries
from transforms.metrics import StageTimer

_LOG = logging.getLogger(__name__)
# Padded tokens per batch when --token-budget is 0, chosen by benchmarks/bench_scoring.py.
AUTO_TOKEN_BUDGET = {"cpu": 2048, "cuda": 32768}


@dataclass(frozen=True)
class ModelSettings:
    """How a model is loaded and fed; the defaults are the command line's."""

    model: str
    device: str = "auto"           # auto, cpu, cuda
    precision: str = "auto"        # auto (bf16/fp16 on CUDA, fp32 on CPU), fp32, bf16, fp16
    token_budget: int = 0          # padded tokens per batch; 0 = AUTO_TOKEN_BUDGET for the device
    sort_window: int = 4096        # inputs sorted together by length before packing
    max_length: int = 512          # longer inputs are truncated (longest_first) and counted
    symmetric: bool = False        # pairs only: score (a, b) and (b, a) and average: twice the cost
    model_copies: int = 0          # 0: one model per process; N: N copies shared by a worker's processes
    torch_threads: int = 0         # CPU threads per model; 0 = the cores this process may use
    positive_label: int = 1        # pair classifiers: the label whose probability is the score
    progress_seconds: float = 30.0


Encoding = tuple[list[int], list[int]]  # input_ids, token_type_ids


class TokenizedItem(NamedTuple):
    """One model input, tokenized: a text, a pair, or a pair in both orders (--symmetric)."""

    key: Any
    encodings: tuple[Encoding, ...]
    truncated: bool

    @property
    def cost(self) -> int:
        return len(self.encodings) * max(len(ids) for ids, _ in self.encodings)


def token_budget(settings: ModelSettings) -> int:
    return settings.token_budget or AUTO_TOKEN_BUDGET[resolve_device(settings.device)]


def tokenize(tokenizer, inputs: Sequence[tuple[str, ...]], max_length: int) -> list[tuple[Encoding, bool]]:
    """(encoding, truncated) per input: `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`, cut longest-first."""
    if not inputs:
        return []
    columns = list(zip(*inputs))
    first, second = list(columns[0]), (list(columns[1]) if len(columns) > 1 else None)

    def encode(indices, **options):
        return tokenizer([first[i] for i in indices], [second[i] for i in indices] if second else None,
                         return_token_type_ids=True, verbose=False, **options)

    if hasattr(tokenizer, "backend_tokenizer"):
        encoded = _encode_whole(tokenizer, inputs)
    else:  # a slow (Python) tokenizer: each input encoded as it is
        full = encode(range(len(inputs)), truncation=False)
        encoded = [((ids, types), False) for ids, types in zip(full["input_ids"], full["token_type_ids"])]
    too_long = [i for i, (enc, _) in enumerate(encoded) if len(enc[0]) > max_length]
    if too_long:
        cut = encode(too_long, truncation="longest_first", max_length=max_length)
        for j, i in enumerate(too_long):
            encoded[i] = ((cut["input_ids"][j], cut["token_type_ids"][j]), True)
    return encoded


def _encode_whole(tokenizer, inputs: Sequence[tuple[str, ...]]) -> list[tuple[Encoding, bool]]:
    """Each input encoded whole by a fast tokenizer, each distinct text tokenized once.

    A question meets many others in its pairs (a shard sorted by key holds a question's pairs
    together), so its text is encoded once, then every pair is assembled by the tokenizer's own
    post-processor (its special tokens and segment ids): the same ids as encoding the pair whole.
    """
    backend = tokenizer.backend_tokenizer
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
    index: dict = {}
    for texts in inputs:
        for text in texts:
            index.setdefault(text, len(index))
    pieces = backend.encode_batch(list(index), add_special_tokens=False)
    encoded = []
    for texts in inputs:
        whole = backend.post_process(*(pieces[index[text]] for text in texts), add_special_tokens=True)
        encoded.append(((whole.ids, whole.type_ids), False))
    return encoded


def pack_batches(costs: Sequence[int], budget: int) -> list[list[int]]:
    """Indices sorted by cost, cut into batches whose padded size (count x largest) fits the budget.

    A single element larger than the budget gets a batch of its own.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    largest = 0
    for i in sorted(range(len(costs)), key=lambda i: costs[i]):
        if current and max(largest, costs[i]) * (len(current) + 1) > budget:
            batches.append(current)
            current, largest = [], 0
        current.append(i)
        largest = max(largest, costs[i])
    if current:
        batches.append(current)
    return batches


def collate(encodings: Sequence[Encoding], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors for a batch, padded to its longest encoding only.

    Filled in one vectorized step (a row-major mask of real tokens takes the concatenated ids):
    building a tensor per row cost more CPU than the tiny scorer's forward pass.
    """
    import torch
    lengths = np.fromiter((len(ids) for ids, _ in encodings), dtype=np.int64, count=len(encodings))
    real = np.arange(lengths.max()) < lengths[:, None]
    input_ids = np.full(real.shape, pad_id, dtype=np.int64)
    input_ids[real] = np.fromiter(itertools.chain.from_iterable(ids for ids, _ in encodings), dtype=np.int64,
                                  count=int(lengths.sum()))
    token_type_ids = np.zeros(real.shape, dtype=np.int64)
    token_type_ids[real] = np.fromiter(itertools.chain.from_iterable(types for _, types in encodings),
                                       dtype=np.int64, count=int(lengths.sum()))
    return {"input_ids": torch.from_numpy(input_ids), "token_type_ids": torch.from_numpy(token_type_ids),
            "attention_mask": torch.from_numpy(real.astype(np.int64))}


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class ModelFailure(NamedTuple):
    """The inference of an input the model failed on (RunInference's result stands in for a score)."""

    detail: str


class Forwarded(NamedTuple):
    outputs: list             # one per encoding; None where the model failed on it
    oom_splits: int           # batches halved after running out of memory
    errors: dict              # encoding index -> what failed


def run_splitting_on_failure(forward: Callable[[dict], np.ndarray], encodings: Sequence[Encoding], pad_id: int,
                             device: str) -> Forwarded:
    """forward(padded batch) over the encodings.

    A batch that fails is halved and retried: out of memory, down to one input
    (which then fails the run: it is the hardware, not the data); any other
    error, down to the inputs that fail on their own, which are reported, not raised.
    """
    import torch
    try:
        batch = {k: v.to(device, non_blocking=True) for k, v in collate(encodings, pad_id).items()}
        with torch.inference_mode():
            return Forwarded(list(forward(batch)), 0, {})
    except Exception as exc:
        out_of_memory = _is_out_of_memory(exc)
        if len(encodings) == 1:
            if out_of_memory:
                raise
            return Forwarded([None], 0, {0: failure(exc)})
    if out_of_memory and device == "cuda":
        torch.cuda.empty_cache()
    half = len(encodings) // 2
    first = run_splitting_on_failure(forward, encodings[:half], pad_id, device)
    second = run_splitting_on_failure(forward, encodings[half:], pad_id, device)
    errors = {**first.errors, **{half + i: error for i, error in second.errors.items()}}
    return Forwarded(first.outputs + second.outputs, int(out_of_memory) + first.oom_splits + second.oom_splits,
                     errors)


class _PackShard(beam.DoFn):
    """(shard, [(key, inputs in one or more orders)]) -> batches of (key, `TokenizedItem`) under the budget.

    The shard is sorted by key, tokenized in one call per order, sorted by length and packed: the
    batches follow from the shard's contents alone.
    """

    def __init__(self, settings: ModelSettings, stage: str, load_tokenizer: Callable[[str], Any]):
        self._settings = settings
        self._load_tokenizer = load_tokenizer
        self._truncated = Metrics.counter("qdedup", f"{stage}_truncated")
        self._timer = StageTimer(f"{stage}_tokenize")

    def setup(self):
        self._tokenizer = self._load_tokenizer(self._settings.model)
        self._budget = token_budget(self._settings)

    def process(self, element):
        _, elements = element
        elements = sorted(elements, key=lambda e: e[0])
        window = self._settings.sort_window
        for start in range(0, len(elements), window):
            yield from self._pack(elements[start:start + window])

    def _tokenize(self, window: list) -> list[TokenizedItem]:
        orders = len(window[0][1])
        tokenized = [tokenize(self._tokenizer, [inputs[order] for _, inputs in window], self._settings.max_length)
                     for order in range(orders)]
        return [TokenizedItem(key, tuple(enc for enc, _ in encoded), any(cut for _, cut in encoded))
                for (key, _), *encoded in zip(window, *tokenized)]

    def _pack(self, window: list) -> Iterable:
        with self._timer:
            try:
                items = self._tokenize(window)
            except Exception:  # find the inputs the tokenizer fails on; the others go on
                items = []
                for element in window:
                    try:
                        items += self._tokenize([element])
                    except Exception as exc:
                        yield beam.pvalue.TaggedOutput("failed", (element[0], failure(exc)))
            batches = pack_batches([item.cost for item in items], self._budget)
        self._truncated.inc(sum(item.truncated for item in items))
        for indices in batches:
            yield [(items[i].key, items[i]) for i in indices]


def shard_of(key: object, count: int, shard_size: int) -> int:
    """Which of ceil(count / shard_size) shards a key goes to: by a hash stable across processes and runs."""
    return zlib.crc32(repr(key).encode("utf-8")) % max(1, math.ceil(count / shard_size))


class TokenizeAndPack(beam.PTransform):
    """(key, inputs in one or more orders) -> `.batches`: lists of (key, `TokenizedItem`); `.failed`: (key, detail).

    Inputs are dealt into shards of about `sort_window` by a hash of their key (a key must be
    unique, sortable, and have a stable repr), so that similar lengths meet in a batch whatever the
    bundles, and a batch's make-up, hence every float it produces, depends only on the set of inputs.
    """

    def __init__(self, settings: ModelSettings, stage: str, load_tokenizer: Callable[[str], Any]):
        super().__init__()
        self._settings = settings
        self._stage = stage
        self._load_tokenizer = load_tokenizer

    def expand(self, inputs):
        size = self._settings.sort_window
        count = beam.pvalue.AsSingleton(inputs | "CountInputs" >> beam.combiners.Count.Globally())
        return (
            inputs
            | "DealIntoShards" >> beam.Map(lambda e, n: (shard_of(e[0], n, size), e), n=count)
            | "GatherShard" >> beam.GroupByKey()
            | "PackShard" >> beam.ParDo(_PackShard(self._settings, self._stage, self._load_tokenizer)).with_outputs(
                "failed", main="batches")
        )


class LoadedModel:
    """A model on its device with its forward pass: encodings in, one output per encoding.

    `forward(model, padded batch)` -> one row per encoding (a probability, a pooled vector, ...).
    """

    def __init__(self, model, device: str, pad_id: int, forward: Callable[[Any, dict], np.ndarray]):
        self.model = model
        self.device = device
        self.pad_id = pad_id
        self.forward = forward

    def run(self, encodings: Sequence[Encoding]) -> Forwarded:
        """Outputs per encoding (None where the model failed on it), and the out-of-memory splits."""
        return run_splitting_on_failure(lambda batch: self.forward(self.model, batch), encodings, self.pad_id,
                                        self.device)


class PackedBatchHandler(ModelHandler[TokenizedItem, Any, LoadedModel]):
    """RunInference handler: pre-packed batches of `TokenizedItem`s in, one output per item out.

    Args:
        settings: how the model is loaded and shared (`model_copies` > 0: that many copies per
            worker, shared by its processes, through Beam's `large_model` / `model_copies`).
        load: `load(settings)` -> (model on its device, device, pad token id): where the model comes
            from (`transforms/sources.py`).
        forward: `forward(model, padded batch)` -> one output row per encoding; an item with
            several encodings (a pair in both orders) gets their mean.
        stage: the name its time is counted under in report.json's `stage_seconds`.
    """

    def __init__(self, settings: ModelSettings, load: Callable[[ModelSettings], tuple],
                 forward: Callable[[Any, dict], np.ndarray], stage: str):
        copies = settings.model_copies
        super().__init__(large_model=copies > 0, model_copies=copies or None)
        self._settings = settings
        self._load = load
        self._forward = forward
        self._stage = stage
        self._oom_splits = Metrics.counter("qdedup", "oom_splits")
        self._timer = StageTimer(stage)

    def load_model(self) -> LoadedModel:
        quiet_libraries()  # in a worker process: before transformers speaks
        model, device, pad_id = self._load(self._settings)
        return LoadedModel(model, device, pad_id, self._forward)

    def run_inference(self, batch: Sequence[TokenizedItem], model: LoadedModel,
                      inference_args: Optional[dict] = None) -> Iterable[PredictionResult]:
        flat = [encoding for item in batch for encoding in item.encodings]
        with self._timer:
            forwarded = model.run(flat)
        self._oom_splits.inc(forwarded.oom_splits)
        results, start = [], 0
        for item in batch:
            end = start + len(item.encodings)
            errors = [forwarded.errors[i] for i in range(start, end) if i in forwarded.errors]
            if errors:
                output = ModelFailure(errors[0])
            elif end - start == 1:
                output = forwarded.outputs[start]
            else:
                output = np.mean(forwarded.outputs[start:end], axis=0)
            results.append(PredictionResult(item, output))
            start = end
        return results

    def get_metrics_namespace(self) -> str:
        return f"qdedup.{self._stage}"


class ModelOutputs(NamedTuple):
    """What `RunModel` gives: (key, output) per input, and (key, reason, detail, stage) per input set aside."""

    outputs: beam.PCollection
    failed: beam.PCollection


def _outcome(element: tuple, stage: str) -> Iterable:
    key, result = element
    if isinstance(result.inference, ModelFailure):
        yield beam.pvalue.TaggedOutput("failed", (key, f"{stage}_error", result.inference.detail, stage))
    else:
        yield key, result.inference


class RunModel(beam.PTransform):
    """(key, inputs in one or more orders) -> `ModelOutputs`: tokenized, packed and run through RunInference.

    An input the tokenizer or the model fails on is set aside with its reason (`tokenize_error` at
    stage `<counter>_tokenize`, `<stage>_error` at `stage`); the others go on.
    """

    def __init__(self, settings: ModelSettings, handler: PackedBatchHandler, load_tokenizer: Callable[[str], Any],
                 counter: str, stage: str):
        super().__init__()
        self._load_tokenizer = load_tokenizer
        self._settings = settings
        self._handler = handler
        self._counter = counter
        self._stage = stage

    def expand(self, inputs):
        tokenized = inputs | "TokenizeAndPack" >> TokenizeAndPack(self._settings, self._counter, self._load_tokenizer)
        ran = (
            tokenized.batches
            | "RunInference" >> RunInference(KeyedModelHandler(self._handler).with_no_batching())
            | "Outcome" >> beam.FlatMap(_outcome, self._stage).with_outputs("failed", main="outputs")
        )
        tokenize_stage = f"{self._counter}_tokenize"
        failed = (
            (tokenized.failed | "TokenizeFailed" >> beam.MapTuple(
                lambda key, detail: (key, "tokenize_error", detail, tokenize_stage)), ran.failed)
            | "AllFailed" >> beam.Flatten()
        )
        return ModelOutputs(ran.outputs, failed)
