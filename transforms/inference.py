"""Feeding Hugging Face models inside RunInference, shared by scoring and the encoder embedder.

The hardware wants few, full, evenly long batches: inputs are dealt into shards
of about `sort_window` by a hash of their key, then each shard is tokenized,
packed and padded by the core in `transforms/feeding.py` and run under
`inference_mode` with SDPA attention (bf16/fp16 on CUDA, fp32 on CPU); a CUDA
out-of-memory batch is split in half and retried rather than lost. Because a
batch's make-up follows from the set of inputs alone (never from bundles or
arrival order), an input gets the same score in every run, runner mode and
retry that scores the same set of inputs.

One ModelHandler, `PackedBatchHandler`, runs every model qdedup uses, in the way
of Beam's `PytorchModelHandlerTensor`: which Hugging Face class is loaded and what
its forward pass computes are given to its constructor, and so is sharing a model
between a worker's processes (Beam's own `model_copies` / `large_model`). Its
example is a whole packed batch and its inference the batch's outputs, so that
what follows the model can take a batch as one element (`RunModel(batched=True)`):
a step each input passes costs CPU that keeps the model waiting.
`RunModel` is the whole stage: tokenize, pack, run, and set aside what fails.
"""
from __future__ import annotations

import logging
from operator import itemgetter
from typing import Any, Callable, Iterable, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from transforms.devices import cpu_threads, hardware, model_device
from transforms.errors import failure
from transforms.feeding import (
    LoadedModel,
    ModelSettings,
    TokenizedItem,
    pack_batches,
    token_budget,
    tokenize,
)
from transforms.joins import DealIntoShards, dealt
from transforms.logs import quiet_libraries
from transforms.metrics import StageTimer, hardware_rows, largest

_LOG = logging.getLogger(__name__)


class ModelFailure(NamedTuple):
    """The inference of an input the model failed on (RunInference's result stands in for a score)."""

    detail: str


class _PackShard(beam.DoFn):
    """(shard, [(key, inputs in one or more orders)]) -> packed batches under the budget, each a `PackedBatch` in
    a 1-tuple (RunInference without batching takes an element as a sequence of examples, and a packed batch is
    one example of `PackedBatchHandler`).

    The shard is sorted by key, tokenized in one call per order, sorted by length and packed: the
    batches follow from the shard's contents alone. `prepare`: the shard's grouped values -> its
    (key, inputs), where they were dealt in another form.
    """

    def __init__(self, settings: ModelSettings, stage: str, load_tokenizer_and_width: Callable[[str], tuple[Any, int]],
                 prepare: Optional[Callable[[Iterable], list]] = None):
        self._settings = settings
        self._stage = stage
        self._load_tokenizer_and_width = load_tokenizer_and_width
        self._prepare = prepare
        self._truncated = Metrics.counter("qdedup", f"{stage}_truncated")
        self._timer = StageTimer(f"{stage}_tokenize")
        self._batch_tokens = largest(f"{stage}_batch_tokens")  # report.json: the budget at work

    def setup(self):
        self._tokenizer, width = self._load_tokenizer_and_width(self._settings.model)
        self._budget = token_budget(self._settings, width)
        if not self._settings.token_budget:
            _LOG.info("%s: batches of up to %d padded tokens (automatic for a %d-wide model on %s)", self._stage,
                      self._budget, width, model_device(self._settings.device, self._settings.precision))

    def process(self, element):
        _, elements = element
        if self._prepare is not None:
            elements = self._prepare(elements)
        elements = sorted(elements, key=lambda e: e[0])
        window = self._settings.sort_window
        for start in range(0, len(elements), window):
            yield from self._pack(elements[start:start + window])

    def _tokenize(self, window: list) -> tuple[list[TokenizedItem], list[int]]:
        """The window's items, and each one's cost (`TokenizedItem.cost`), worked out once, where the item is made
        (a cost asked of an item again took 1.1 µs, twenty-ninth session)."""
        orders = len(window[0][1])
        tokenized = [tokenize(self._tokenizer, [inputs[order] for _, inputs in window], self._settings.max_length)
                     for order in range(orders)]
        if orders == 1:  # one encoding an item (most runs): no generator an item
            items = [TokenizedItem(key, (encoding,), cut) for (key, _), (encoding, cut) in zip(window, tokenized[0])]
            return items, [len(ids) for (ids, _), _ in tokenized[0]]
        items = [TokenizedItem(key, tuple(enc for enc, _ in encoded), any(cut for _, cut in encoded))
                 for (key, _), *encoded in zip(window, *tokenized)]
        return items, [item.cost for item in items]

    def _pack(self, window: list) -> Iterable:
        with self._timer:
            try:
                items, costs = self._tokenize(window)
            except Exception:  # find the inputs the tokenizer fails on; the others go on
                items, costs = [], []
                for element in window:
                    try:
                        item, cost = self._tokenize([element])
                    except Exception as exc:
                        yield beam.pvalue.TaggedOutput("failed", (element[0], failure(exc)))
                        continue
                    items += item
                    costs += cost
            batches = pack_batches(costs, self._budget)
        self._truncated.inc(sum(item.truncated for item in items))
        for indices in batches:
            batch_costs = list(map(costs.__getitem__, indices))
            self._batch_tokens.update(len(indices) * max(batch_costs))
            yield (PackedBatch(map(items.__getitem__, indices), sum(batch_costs)),)


DEAL_BATCH = 1000  # inputs a dealt list holds at most


def _dealt_inputs(grouped: Iterable) -> list:
    return list(dealt(grouped, 0))


class PackedBatch(list):
    """A packed batch: its `TokenizedItem`s, and `tokens`, the count of their token ids (every encoding's,
    unpadded: their costs' sum, an item in both orders having two encodings of one length), which Beam's
    metrics ask of each batch (`PackedBatchHandler.get_num_bytes`) and which packing knows already."""

    def __init__(self, items: Iterable[TokenizedItem], tokens: int):
        super().__init__(items)
        self.tokens = tokens


class TokenizeAndPack(beam.PTransform):
    """(key, inputs in one or more orders) -> `.batches`: packed batches (`PackedBatch`es of `TokenizedItem`, each
    in a 1-tuple); `.failed`: (key, detail).

    Inputs are dealt into shards of about `sort_window` by a hash of their key (a key must be
    unique, sortable, and have a stable repr), in lists of up to `DEAL_BATCH` (`joins.DealIntoShards`),
    so that similar lengths meet in a batch whatever the bundles, and a batch's make-up, hence every
    float it produces, depends only on the set of inputs.
    `load_tokenizer_and_width(model)` -> (tokenizer, hidden width): batches are packed under `--token-budget`,
    or the automatic budget for the device and that width (`feeding.token_budget`).
    `count`: a one-element PCollection holding the number of inputs, where the caller counts them
    already (counted here otherwise: one global count of every input is a step each input passes).
    `prepare`: where the caller deals its inputs into shards itself, in another form (e.g. lists, see
    `joins.DealIntoShards`): the input is then (shard, value), and `prepare` turns a shard's values
    into its (key, inputs); `count` is not used.
    """

    def __init__(self, settings: ModelSettings, stage: str, load_tokenizer_and_width: Callable[[str], tuple[Any, int]],
                 count: Optional[beam.PCollection] = None, prepare: Optional[Callable[[Iterable], list]] = None):
        super().__init__()
        self._settings = settings
        self._stage = stage
        self._load_tokenizer_and_width = load_tokenizer_and_width
        self._count = count
        self._prepare = prepare

    def expand(self, inputs):
        shards, prepare = inputs, self._prepare
        if prepare is None:  # dealt here, in lists: no input crosses the shuffle on its own
            count = beam.pvalue.AsSingleton(
                self._count if self._count is not None else inputs | "CountInputs" >> beam.combiners.Count.Globally())
            shards = inputs | "DealIntoShards" >> beam.ParDo(
                DealIntoShards(0, itemgetter(0), self._settings.sort_window, DEAL_BATCH), keys=count)
            prepare = _dealt_inputs
        pack = _PackShard(self._settings, self._stage, self._load_tokenizer_and_width, prepare)
        return (
            shards
            | "GatherShard" >> beam.GroupByKey()
            | "PackShard" >> beam.ParDo(pack).with_outputs("failed", main="batches")
        )



class PackedBatchHandler(ModelHandler[list, list, LoadedModel]):
    """RunInference handler: an example is a packed batch (a `PackedBatch` of `TokenizedItem`s), its inference the
    list of the items' outputs (a `ModelFailure` for an item the model failed on). Used without batching
    (`with_no_batching`): the batches are packed already (`TokenizeAndPack`).

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
        self._hardware_rows = None  # made where the model runs: the launcher's hardware is not the workers'

    def load_model(self) -> LoadedModel:
        """The model, and what it runs on, named in the process that loads it: with `--model-copies` the
        worker processes reach it through Beam's proxy, and asking torch for the GPU's name in each of them
        (`torch.cuda.get_device_name` initializes CUDA) made a CUDA context there: 16 processes sharing one
        model on an H100 held 7.9 GiB of GPU memory (benchmarks/README.md, "The second session lent a GPU";
        not measured again since)."""
        quiet_libraries()  # in a worker process: before transformers speaks
        settings = self._settings
        model, device, pad_id = self._load(settings)
        return LoadedModel(model, device, pad_id, self._forward, hardware(
            model_device(settings.device, settings.precision), settings.precision,
            cpu_threads(settings.torch_threads)))

    def run_inference(self, batch: Sequence[PackedBatch], model: LoadedModel,
                      inference_args: Optional[dict] = None) -> Iterable[PredictionResult]:
        return [PredictionResult(packed, self._outputs(packed, model)) for packed in batch]

    def _outputs(self, packed: list[TokenizedItem], model: LoadedModel) -> list:
        flat = [encoding for item in packed for encoding in item.encodings]
        with self._timer:
            forwarded = model.run(flat)
        self._oom_splits.inc(forwarded.oom_splits)
        if self._hardware_rows is None:
            self._hardware_rows = hardware_rows(self._stage, model.hardware())
        self._hardware_rows.inc(len(flat))
        if not forwarded.errors and len(flat) == len(packed):  # one encoding an item, none failed: the outputs
            return forwarded.outputs
        outputs, start = [], 0
        for item in packed:
            end = start + len(item.encodings)
            errors = [forwarded.errors[i] for i in range(start, end) if i in forwarded.errors]
            if errors:
                outputs.append(ModelFailure(errors[0]))
            elif end - start == 1:
                outputs.append(forwarded.outputs[start])
            else:
                outputs.append(np.mean(forwarded.outputs[start:end], axis=0))
            start = end
        return outputs

    def get_num_bytes(self, batch: Sequence[PackedBatch]) -> int:
        """The batches' token and segment ids as int64, unpadded (Beam's default pickles the batch to count): their
        count was worked out where each batch was packed."""
        return 16 * sum(packed.tokens for packed in batch)

    def get_metrics_namespace(self) -> str:
        return f"qdedup.{self._stage}"


class ModelOutputs(NamedTuple):
    """What `RunModel` gives: (key, output) per input, or ([keys], [outputs]) per batch (`batched`), and
    (key, reason, detail, stage) per input set aside."""

    outputs: beam.PCollection
    failed: beam.PCollection


def _outcome(result: PredictionResult, stage: str, batched: bool) -> Iterable:
    """A packed batch's result -> its inputs' outputs, as (key, output) each or as one ([keys], [outputs]);
    an input the model failed on to "failed"."""
    if batched and isinstance(result.inference, np.ndarray):  # none failed: the model's outputs as they came
        yield list(map(itemgetter(0), result.example)), result.inference  # each item's key
        return
    keys, outputs = [], []
    for item, output in zip(result.example, result.inference):
        if isinstance(output, ModelFailure):
            yield beam.pvalue.TaggedOutput("failed", (item.key, f"{stage}_error", output.detail, stage))
        else:
            keys.append(item.key)
            outputs.append(output)
    if not batched:
        yield from zip(keys, outputs)
    elif keys:
        yield keys, outputs


class RunModel(beam.PTransform):
    """(key, inputs in one or more orders) -> `ModelOutputs`: tokenized, packed and run through RunInference.

    An input the tokenizer or the model fails on is set aside with its reason (`tokenize_error` at
    stage `<counter>_tokenize`, `<stage>_error` at `stage`); the others go on. `count`, `prepare`: as
    `TokenizeAndPack`'s. `batched`: the outputs come as one element per batch, ([keys], [outputs]).
    """

    def __init__(self, settings: ModelSettings, handler: PackedBatchHandler,
                 load_tokenizer_and_width: Callable[[str], tuple[Any, int]],
                 counter: str, stage: str, count: Optional[beam.PCollection] = None,
                 prepare: Optional[Callable[[Iterable], list]] = None, batched: bool = False):
        super().__init__()
        self._prepare = prepare
        self._batched = batched
        self._load_tokenizer_and_width = load_tokenizer_and_width
        self._settings = settings
        self._handler = handler
        self._counter = counter
        self._stage = stage
        self._count = count

    def expand(self, inputs):
        tokenized = inputs | "TokenizeAndPack" >> TokenizeAndPack(
            self._settings, self._counter, self._load_tokenizer_and_width, self._count, self._prepare)
        ran = (
            tokenized.batches
            | "RunInference" >> RunInference(self._handler.with_no_batching())
            | "Outcome" >> beam.FlatMap(_outcome, self._stage, self._batched).with_outputs("failed", main="outputs")
        )
        tokenize_stage = f"{self._counter}_tokenize"
        failed = (
            (tokenized.failed | "TokenizeFailed" >> beam.MapTuple(
                lambda key, detail: (key, "tokenize_error", detail, tokenize_stage)), ran.failed)
            | "AllFailed" >> beam.Flatten()
        )
        return ModelOutputs(ran.outputs, failed)
