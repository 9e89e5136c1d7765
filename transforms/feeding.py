"""Feeding a Hugging Face model the way the hardware wants it: the pure core, without Beam.

Inputs are tokenized (each distinct text of a window once), sorted by token
length and packed under a token budget, padded only to each batch's own longest
input, and run under `inference_mode`; a batch that fails is halved and retried
rather than lost. `transforms/inference.py` runs this core inside Beam's
RunInference; `benchmarks/gpu_check.py` calls it directly on machines that have
torch and transformers but no Beam.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import numpy as np

from transforms.devices import model_device
from transforms.errors import failure

# Padded tokens per batch when --token-budget is 0, chosen by benchmarks/bench_scoring.py for a 768-wide model.
AUTO_TOKEN_BUDGET = {"cpu": 2048, "cuda": 32768}
# On the CPU a narrower model gets proportionally more tokens (its activations are as large at the same
# cache cost), up to the budget where the tests' 32-wide scorer stopped getting cheaper a pair (benchmarks/README.md).
AUTO_WIDTH, AUTO_CPU_MAX_TOKEN_BUDGET = 768, 8192


@dataclass(frozen=True)
class ModelSettings:
    """How a model is loaded and fed; the defaults are the command line's."""

    model: str
    device: str = "auto"           # auto, cpu, cuda
    precision: str = "auto"        # auto (bf16/fp16 on CUDA, fp32 on CPU), fp32, bf16, fp16, int8 (CPU)
    token_budget: int = 0          # padded tokens per batch; 0 = AUTO_TOKEN_BUDGET for the device
    sort_window: int = 4096        # inputs sorted together by length before packing
    max_length: int = 512          # longer inputs are truncated (longest_first) and counted
    symmetric: bool = False        # pairs only: score (a, b) and (b, a) and average: twice the cost
    model_copies: int = 0          # 0: one model per process; N: N copies shared by a worker's processes
    torch_threads: int = 0         # CPU threads per model; 0 = the cores this process may use
    positive_label: int = 1        # pair classifiers: the label whose probability is the score
    int8_model: str = ""           # precision int8: the quantized model's folder, prepared at launch
    progress_seconds: Optional[float] = None  # how often scoring logs how far it has come (None: PROGRESS_SECONDS)


Encoding = tuple[np.ndarray, np.ndarray]  # input_ids (`token_dtype`), token_type_ids (uint8): views of arrays
Text = Union[str, bytes]  # a text, or its token ids as `ahead_of_scoring` stores them


class TokenizedItem(NamedTuple):
    """One model input, tokenized: a text, a pair, or a pair in both orders (--symmetric)."""

    key: Any
    encodings: tuple[Encoding, ...]
    truncated: bool

    @property
    def cost(self) -> int:
        return len(self.encodings) * max(len(ids) for ids, _ in self.encodings)


def token_budget(settings: ModelSettings, width: int = 0) -> int:
    """Padded tokens per batch: `--token-budget`, or the device's automatic budget for a model `width` wide
    (its hidden size; 0: unknown, taken as `AUTO_WIDTH`)."""
    if settings.token_budget:
        return settings.token_budget
    device = model_device(settings.device, settings.precision)
    budget = AUTO_TOKEN_BUDGET[device]
    if device == "cpu" and 0 < width < AUTO_WIDTH:
        budget = min(AUTO_CPU_MAX_TOKEN_BUDGET, budget * AUTO_WIDTH // width)
    return budget


def tokenize(tokenizer, inputs: Sequence[tuple[Text, ...]], max_length: int) -> list[tuple[Encoding, bool]]:
    """(encoding, truncated) per input: `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`, cut longest-first.

    A text is a string, or the bytes `ahead_of_scoring` made of it for this tokenizer and `max_length`.
    """
    if not inputs:
        return []
    columns = list(zip(*inputs))
    first, second = list(columns[0]), (list(columns[1]) if len(columns) > 1 else None)

    def encode(indices, **options):
        return tokenizer([first[i] for i in indices], [second[i] for i in indices] if second else None,
                         return_token_type_ids=True, verbose=False, **options)

    dtype = token_dtype(tokenizer)
    if hasattr(tokenizer, "backend_tokenizer"):
        encoded = _encode_whole(tokenizer, inputs, max_length)
    else:  # a slow (Python) tokenizer: each input encoded as it is
        full = encode(range(len(inputs)), truncation=False)
        encoded = [(_arrays(ids, types, dtype), False) for ids, types in zip(full["input_ids"], full["token_type_ids"])]
    too_long = [i for i, (enc, _) in enumerate(encoded) if len(enc[0]) > max_length]
    if too_long:  # texts only: `_encode_whole` has cut those with a text tokenized ahead
        cut = encode(too_long, truncation="longest_first", max_length=max_length)
        for j, i in enumerate(too_long):
            encoded[i] = (_arrays(cut["input_ids"][j], cut["token_type_ids"][j], dtype), True)
    return encoded


def _arrays(ids: Sequence[int], types: Sequence[int], dtype: np.dtype) -> Encoding:
    return np.asarray(ids, dtype=dtype), np.asarray(types, dtype=np.uint8)


def _encode_whole(tokenizer, inputs: Sequence[tuple[Text, ...]], max_length: int) -> list[tuple[Encoding, bool]]:
    """Each input encoded whole by a fast tokenizer, each distinct text tokenized once.

    A question meets many others in its pairs, so each distinct text of the window is encoded once
    (a text tokenized ahead, not at all); then every input is assembled around them by the template
    the tokenizer's own post-processor follows (its special tokens and segment ids, read off it by
    `_template`), or, where no one template reproduces it, by the post-processor itself: the same ids
    as encoding the input whole. A pair too long for `max_length` with a text tokenized ahead is cut
    here, as the tokenizer cuts it (`_cut_beside`); other inputs too long are left to the caller.
    """
    backend = _plain(tokenizer)
    dtype = token_dtype(tokenizer)
    distinct = list(dict.fromkeys(text for texts in inputs for text in texts))
    strings = [text for text in distinct if isinstance(text, str)]
    pieces = dict(zip(strings, backend.encode_batch(strings, add_special_tokens=False)))
    ahead = len(strings) < len(distinct)
    packed = {text: np.asarray(pieces[text].ids, dtype).tobytes() if isinstance(text, str) else text
              for text in distinct}  # every text's ids as bytes of `dtype`
    encoded: list = [None] * len(inputs)
    counts = list(map(len, inputs))
    kinds = set(counts)  # one text count in a window as a rule: single texts, or pairs
    for count in kinds:
        indices = range(len(inputs)) if len(kinds) == 1 else [i for i, c in enumerate(counts) if c == count]
        template = _template(backend, count)
        if template is None:
            if ahead:
                raise ValueError("texts tokenized ahead need a tokenizer whose inputs follow one template")
            for i in indices:
                whole = backend.post_process(*(pieces[text] for text in inputs[i]), add_special_tokens=True)
                encoded[i] = (_arrays(whole.ids, whole.type_ids, dtype), False)
            continue
        group = [inputs[i] for i in indices]
        columns = [list(map(packed.__getitem__, texts)) for texts in zip(*group)]
        truncated = [False] * len(group)
        if ahead:
            _cut_tokenized_ahead(template, group, columns, truncated, dtype, max_length)
        for i, encoding, cut in zip(indices, _assembled(template, columns, dtype), truncated):
            encoded[i] = (encoding, cut)
    return encoded


def _cut_tokenized_ahead(template: tuple, group: Sequence[tuple[Text, ...]], columns: list[list[bytes]],
                         truncated: list[bool], dtype: np.dtype, max_length: int) -> None:
    """Cuts in place, as the tokenizer cuts them (`_cut_beside`), the inputs of `group` (their texts' ids as
    bytes in `columns`, a list a text position) too long for `max_length` that hold a text tokenized ahead;
    marks them in `truncated`."""
    text_ids = sum(np.fromiter(map(len, column), np.int64, len(column)) for column in columns) // dtype.itemsize
    lengths = _length(template, []) + text_ids
    for j in np.flatnonzero(lengths > max_length).tolist():
        texts = group[j]
        if not any(isinstance(text, bytes) for text in texts):
            continue  # texts only: the caller cuts it
        text_ids = [np.frombuffer(column[j], dtype).tolist() for column in columns]
        for column, ids in zip(columns, _cut_beside(template, texts, text_ids, max_length)):
            column[j] = np.asarray(ids, dtype).tobytes()
        truncated[j] = True


def _assembled(template: tuple, columns: list[list[bytes]], dtype: np.dtype) -> list[Encoding]:
    """Inputs assembled in `template` from their texts' ids as bytes (`columns`: a list a text position, an
    entry an input): every input's ids and type ids joined into one array each in one pass, of which each
    input's encoding is a view. Assembling took 5.3 µs a pair with a Python list an input, 3.7 with each
    input's pieces appended as bytes (`bench_tokenize.py`; benchmarks/README.md, twenty-first session); here
    the pieces of all inputs are interleaved and joined without a Python step an input."""
    (special_ids, text_types), size, n = template, dtype.itemsize, len(columns[0])
    ids_parts = [itertools.repeat(np.asarray(special_ids[0][0], dtype).tobytes(), n)]
    types_parts = [itertools.repeat(bytes(special_ids[0][1]), n)]
    lengths = np.full(n, _length(template, []), np.int64)
    for column, text_type, (after_ids, after_types) in zip(columns, text_types, special_ids[1:]):
        text_lengths = np.fromiter(map(len, column), np.int64, n) // size
        lengths += text_lengths
        ids_parts += (column, itertools.repeat(np.asarray(after_ids, dtype).tobytes(), n))
        types_parts += (map(bytes.__mul__, itertools.repeat(bytes([text_type]), n), text_lengths.tolist()),
                        itertools.repeat(bytes(after_types), n))
    ids = np.frombuffer(b"".join(itertools.chain.from_iterable(zip(*ids_parts))), dtype)
    types = np.frombuffer(b"".join(itertools.chain.from_iterable(zip(*types_parts))), np.uint8)
    ends = np.cumsum(lengths).tolist()
    return [(ids[start:end], types[start:end]) for start, end in zip([0] + ends[:-1], ends)]


def token_dtype(tokenizer) -> np.dtype:
    """How `ahead_of_scoring` stores a token id: two bytes where the vocabulary allows, else four."""
    return np.dtype("<u2") if len(tokenizer) <= 2 ** 16 else np.dtype("<u4")


def ahead_of_scoring(tokenizer, max_length: int) -> Callable[[Sequence[str]], list[Text]]:
    """texts -> each text as pair scoring with this tokenizer and `max_length` takes it: the bytes of its
    token ids (`token_dtype`, no special tokens), or, where that would not be exact, the text itself.

    Scoring then assembles a pair from its two texts' ids without tokenizing them again: a question
    meets many others in its pairs (about 20 each at 1M rows), and tokenizing was most of scoring's
    CPU outside the model. Texts stay texts unless the tokenizer is a fast one that truncates on the
    right and whose pairs follow one template, and a text with more than half the tokens a pair may
    hold stays a text: a pair with a text tokenized ahead is then cut on its other side alone, as the
    tokenizer's longest-first truncation cuts it, and a pair of two never needs cutting. A text the
    tokenizer fails on stays a text too: scoring sets aside the pairs it fails on again. The texts are
    encoded in one call (half the CPU of one call a text); where it fails, one by one.
    """
    backend = template = None
    if hasattr(tokenizer, "backend_tokenizer") and getattr(tokenizer, "truncation_side", "right") == "right":
        backend = _plain(tokenizer)
        template = _template(backend, 2)
    if template is not None:
        limit, dtype = _half(template, max_length), token_dtype(tokenizer)

    def form(text: str, encoding) -> Text:
        ids = encoding.ids
        return text if len(ids) > limit else np.asarray(ids, dtype=dtype).tobytes()

    def one(text: str) -> Text:
        try:
            encoding = backend.encode(text, add_special_tokens=False)
        except Exception:  # scoring tokenizes it again, and sets aside the pairs it fails on
            return text
        return form(text, encoding)

    def ahead(texts: Sequence[str]) -> list[Text]:
        if isinstance(texts, (str, bytes)):
            raise TypeError("ahead_of_scoring's function takes a sequence of texts, not one text")
        texts = list(texts)
        if template is None:
            return texts
        try:
            encodings = backend.encode_batch(texts, add_special_tokens=False)
        except Exception:
            return [one(text) for text in texts]
        return [form(text, encoding) for text, encoding in zip(texts, encodings)]

    return ahead


def _plain(tokenizer):
    """The fast tokenizer's backend, with no truncation or padding of its own: qdedup cuts and pads."""
    backend = tokenizer.backend_tokenizer
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
    return backend


def _half(template: tuple, max_length: int) -> int:
    """The most ids a text tokenized ahead may have: half of what a pair may hold besides its special tokens."""
    return (max_length - _length(template, [[], []])) // 2


def _length(template: tuple, texts: Sequence[list[int]]) -> int:
    """How many ids an input of these texts' ids has in the template."""
    return sum(len(ids) for ids, _ in template[0]) + sum(len(ids) for ids in texts)


def _cut_beside(template: tuple, texts: Sequence[Text], text_ids: list[list[int]], max_length: int) -> list:
    """A pair's ids cut to `max_length` where one text was tokenized ahead (so it holds at most half of what
    a pair may): longest-first truncation takes from the other, longer, text alone, at its end."""
    short = 0 if isinstance(texts[0], bytes) else 1
    if len(text_ids[short]) > _half(template, max_length):
        raise ValueError(f"a text tokenized ahead has {len(text_ids[short])} ids, more than half of what "
                         f"max_length {max_length} leaves a pair: tokenized for another max_length?")
    room = max_length - _length(template, [text_ids[short], []])
    cut = list(text_ids)
    cut[1 - short] = text_ids[1 - short][:room]
    return cut


_PROBES = (("银", "行卡"), ("银行卡丢", "了怎么办呢"))  # two lengths: a template must fit both


def _template(backend, count: int) -> Optional[tuple]:
    """((special ids, their type ids) before, between and after `count` texts, each text's type id), as the
    tokenizer's post-processor places them; None where one such template does not reproduce it."""
    found = None
    for probe in _PROBES:
        pieces = backend.encode_batch(list(probe[:count]), add_special_tokens=False)
        whole = backend.post_process(*pieces, add_special_tokens=True)
        ids, types = whole.ids, whole.type_ids
        specials, text_types, cursor = [], [], 0
        for piece in pieces:
            start = next((i for i in range(cursor, len(ids) - len(piece.ids) + 1)
                          if ids[i:i + len(piece.ids)] == piece.ids), None)
            if start is None or len(set(types[start:start + len(piece.ids)])) != 1:
                return None
            specials.append((tuple(ids[cursor:start]), tuple(types[cursor:start])))
            text_types.append(types[start])
            cursor = start + len(piece.ids)
        specials.append((tuple(ids[cursor:]), tuple(types[cursor:])))
        template = (tuple(specials), tuple(text_types))
        if found is not None and template != found:
            return None
        found = template
    return found


def pack_batches(costs: Sequence[int], budget: int) -> list[list[int]]:
    """Indices sorted by cost (ties in index order), cut into batches whose padded size (count x largest) fits
    the budget: each batch as long as it fits, in order. A single element larger than the budget gets a
    batch of its own.

    Sorted, a batch's largest cost is its last: a batch from `start` takes the leading positions k where
    cost[start + k - 1] x k <= budget, an increasing run found with one search (at most budget / cost[start]
    + 1 of them), not with a Python step an element.
    """
    order = np.argsort(np.asarray(costs, dtype=np.int64), kind="stable")
    ordered = np.asarray(costs, dtype=np.int64)[order]
    batches: list[list[int]] = []
    start = 0
    while start < len(ordered):
        reach = min(len(ordered), start + budget // max(int(ordered[start]), 1) + 1)
        padded = ordered[start:reach] * np.arange(1, reach - start + 1)
        end = start + max(1, int(np.searchsorted(padded, budget, side="right")))
        batches.append(order[start:end].tolist())
        start = end
    return batches


def collate(encodings: Sequence[Encoding], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors for a batch, padded to its longest encoding only.

    Filled in one vectorized step (a row-major mask of real tokens takes the concatenated ids):
    building a tensor per row cost more CPU than the tiny scorer's forward pass.
    """
    import torch
    all_ids, all_types = zip(*encodings)  # no Python step an encoding: every one is a pair the batch scores
    lengths = np.fromiter(map(len, all_ids), dtype=np.int64, count=len(encodings))
    real = np.arange(lengths.max()) < lengths[:, None]
    input_ids = np.full(real.shape, pad_id, dtype=np.int64)
    input_ids[real] = np.concatenate(all_ids)
    token_type_ids = np.zeros(real.shape, dtype=np.int64)
    token_type_ids[real] = np.concatenate(all_types)
    return {"input_ids": torch.from_numpy(input_ids), "token_type_ids": torch.from_numpy(token_type_ids),
            "attention_mask": torch.from_numpy(real.astype(np.int64))}


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class Forwarded(NamedTuple):
    outputs: list             # one per encoding; None where the model failed on it
    oom_splits: int           # batches halved after running out of memory
    errors: dict              # encoding index -> what failed


NOT_FINITE = ("the model's output is not a finite number (half precision overflowing, say): "
              "run again with --precision fp32 or bf16")


def _finite(outputs: np.ndarray) -> Forwarded:
    """The outputs of one batch, those with a NaN or an infinity set aside as failed (`NOT_FINITE`)."""
    finite = np.isfinite(np.asarray(outputs))
    bad = np.flatnonzero(~finite.reshape(len(finite), -1).all(axis=1)) if finite.size else ()
    if not len(bad):
        return Forwarded(list(outputs), 0, {})
    kept = list(outputs)
    for i in bad:
        kept[i] = None
    return Forwarded(kept, 0, {int(i): NOT_FINITE for i in bad})


def run_splitting_on_failure(forward: Callable[[dict], np.ndarray], encodings: Sequence[Encoding], pad_id: int,
                             device: str) -> Forwarded:
    """forward(padded batch) over the encodings.

    A batch that fails is halved and retried: out of memory, down to one input
    (which then fails the run: it is the hardware, not the data); any other
    error, down to the inputs that fail on their own, which are reported, not raised.
    An output that is not all finite numbers (half precision overflowing, say) is
    reported as its input's failure, never passed on as a score or a vector.
    """
    import torch
    try:
        batch = {k: v.to(device, non_blocking=True) for k, v in collate(encodings, pad_id).items()}
        with torch.inference_mode():
            return _finite(forward(batch))
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


class LoadedModel:
    """A model on its device with its forward pass: encodings in, one output per encoding.

    `forward(model, padded batch)` -> one row per encoding (a probability, a pooled vector, ...).
    `hardware`: what the forward pass runs on, as report.json's `forward_hardware` names it (`devices.hardware`),
    worked out where the model was loaded.
    """

    def __init__(self, model, device: str, pad_id: int, forward: Callable[[Any, dict], np.ndarray],
                 hardware: str = ""):
        self.model = model
        self.device = device
        self.pad_id = pad_id
        self.forward = forward
        self._hardware = hardware

    def hardware(self) -> str:
        """`hardware`, asked of the process that holds the model: a method, so that a process reaching a
        shared model through Beam's proxy (`--model-copies`) gets it from there."""
        return self._hardware

    def run(self, encodings: Sequence[Encoding]) -> Forwarded:
        """Outputs per encoding (None where the model failed on it), and the out-of-memory splits."""
        return run_splitting_on_failure(lambda batch: self.forward(self.model, batch), encodings, self.pad_id,
                                        self.device)


def positive_probability(model, batch: dict, label: int) -> np.ndarray:
    """The cross-encoder's forward pass: P(label) per pair of the padded batch."""
    import torch
    return torch.softmax(model(**batch).logits.float(), dim=-1)[:, label].cpu().numpy()
