"""Cross-encoder scoring of candidate pairs inside RunInference (DESIGN.md step 6).

Scoring is where a run spends its time, so the stage feeds the model the way
the hardware wants it: every pair is tokenized once, pairs are sorted by token
length within a window and packed into batches under a token budget (padding
only to each batch's own longest pair), and the model runs under
`inference_mode`, in bf16/fp16 with SDPA attention on CUDA. `PairScorer` is a
small ModelHandler in the style of Beam's own; it returns, per pair, the
probability of label 1 ("same meaning" for Erlangshen-Roberta-Similarity).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference
from apache_beam.transforms.window import GlobalWindows

from transforms.errors import QdedupError
from transforms.metrics import StageTimer

_LOG = logging.getLogger(__name__)
DEFAULT_SCORER = "IDEA-CCNL/Erlangshen-Roberta-110M-Similarity"
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
# Padded tokens per batch when --token-budget is 0, chosen by benchmarks/bench_scoring.py.
AUTO_TOKEN_BUDGET = {"cpu": 2048, "cuda": 32768}


@dataclass(frozen=True)
class ScorerSettings:
    """Everything the scoring stage needs; the defaults are the command line's."""

    model: str = DEFAULT_SCORER
    device: str = "auto"           # auto, cpu, cuda
    precision: str = "auto"        # auto (bf16/fp16 on CUDA, fp32 on CPU), fp32, bf16, fp16
    token_budget: int = 0          # padded tokens per batch; 0 = AUTO_TOKEN_BUDGET for the device
    sort_window: int = 4096        # pairs sorted together by length before packing
    max_length: int = 512          # longer pairs are truncated (longest_first) and counted
    symmetric: bool = False        # score (a, b) and (b, a) and average: twice the cost
    model_copies: int = 0          # 0: one model per process; N: N copies shared by a worker's processes
    torch_threads: int = 0         # CPU threads per model; 0 = the cores this process may use
    progress_seconds: float = 30.0


class ScoredPair(NamedTuple):
    id_a: object
    id_b: object
    score: float
    similarity: float
    source: str


Encoding = tuple[list[int], list[int]]  # input_ids, token_type_ids


class TokenizedPair(NamedTuple):
    """A candidate pair ready for the model: one encoding, two with --symmetric."""

    key: tuple  # (id_a, id_b, similarity, source)
    encodings: tuple[Encoding, ...]
    truncated: bool

    @property
    def cost(self) -> int:
        return len(self.encodings) * max(len(ids) for ids, _ in self.encodings)


def resolve_device(device: str) -> str:
    """`auto` means CUDA when usable; `cuda` without a GPU is an error, never a silent CPU fallback."""
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise QdedupError(
            "--device cuda, but no usable GPU here (torch.cuda.is_available() is False): check the "
            "GPU driver and that torch is a CUDA build, or run with --device cpu")
    return device


def resolve_dtype(precision: str, device: str):
    import torch
    if precision == "auto":
        if device != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def token_budget(settings: ScorerSettings) -> int:
    return settings.token_budget or AUTO_TOKEN_BUDGET[resolve_device(settings.device)]


def check_scorer_model(name: str) -> None:
    """Fails fast, naming what is wrong, when the scoring model cannot be loaded."""
    from transformers import AutoConfig, AutoTokenizer
    looks_local = name.startswith((".", "/", "~")) or os.path.exists(name)
    if looks_local:
        path = os.path.expanduser(name)
        if not os.path.isdir(path):
            raise QdedupError(f"--scorer-model {name!r}: no such directory")
        missing = [f for f in ("config.json",) if not os.path.exists(os.path.join(path, f))]
        if not any(os.path.exists(os.path.join(path, f)) for f in _WEIGHT_FILES):
            missing.append(" or ".join(_WEIGHT_FILES[::2]))
        if missing:
            raise QdedupError(
                f"--scorer-model {name!r} is not a complete model directory: missing {', '.join(missing)}")
    try:
        config = AutoConfig.from_pretrained(name)
        AutoTokenizer.from_pretrained(name)
    except Exception as exc:
        hint = "" if looks_local else (
            "; if the model hub is unreachable, download the model elsewhere "
            "and pass its local directory as --scorer-model")
        reason = str(exc).strip().rstrip(".")
        raise QdedupError(f"cannot load scoring model {name!r}: {reason}{hint}") from exc
    if getattr(config, "num_labels", 0) < 2:
        raise QdedupError(
            f"--scorer-model {name!r} is not a pair classifier with 2 labels "
            f"(num_labels={getattr(config, 'num_labels', None)})")


def load_tokenizer(name: str):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(name)


def tokenize_pairs(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int) -> list[tuple[Encoding, bool]]:
    """One encoding `[CLS] a [SEP] b [SEP]` per pair, truncated longest-first to max_length."""
    if not pairs:
        return []
    first, second = [a for a, _ in pairs], [b for _, b in pairs]
    full = tokenizer(first, second, truncation=False, verbose=False)
    encoded = [((ids, types), False) for ids, types in zip(full["input_ids"], full["token_type_ids"])]
    too_long = [i for i, (enc, _) in enumerate(encoded) if len(enc[0]) > max_length]
    if too_long:
        cut = tokenizer([first[i] for i in too_long], [second[i] for i in too_long],
                        truncation="longest_first", max_length=max_length)
        for j, i in enumerate(too_long):
            encoded[i] = ((cut["input_ids"][j], cut["token_type_ids"][j]), True)
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
    """Right-padded tensors for a batch, padded to its longest encoding only."""
    import torch
    longest = max(len(ids) for ids, _ in encodings)
    input_ids = torch.full((len(encodings), longest), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((len(encodings), longest), dtype=torch.long)
    attention_mask = torch.zeros((len(encodings), longest), dtype=torch.long)
    for row, (ids, types) in enumerate(encodings):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        token_type_ids[row, :len(types)] = torch.tensor(types)
        attention_mask[row, :len(ids)] = 1
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class PairClassifier:
    """A loaded cross-encoder: encodings in, P(label 1) out. One per process, or shared via a proxy."""

    def __init__(self, model, device: str, pad_id: int):
        self.model = model
        self.device = device
        self.pad_id = pad_id

    def score(self, encodings: Sequence[Encoding]) -> tuple[np.ndarray, int]:
        """(probabilities, number of out-of-memory splits it took)."""
        import torch
        try:
            batch = {k: v.to(self.device, non_blocking=True) for k, v in collate(encodings, self.pad_id).items()}
            with torch.inference_mode():
                logits = self.model(**batch).logits
            return torch.softmax(logits.float(), dim=-1)[:, 1].cpu().numpy(), 0
        except Exception as exc:
            if not _is_out_of_memory(exc) or len(encodings) == 1:
                raise
        if self.device == "cuda":
            torch.cuda.empty_cache()
        half = len(encodings) // 2
        first, splits_a = self.score(encodings[:half])
        second, splits_b = self.score(encodings[half:])
        return np.concatenate([first, second]), 1 + splits_a + splits_b


def load_classifier(settings: ScorerSettings) -> PairClassifier:
    import torch
    from transformers import AutoModelForSequenceClassification
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.precision, device)
    if device == "cpu":
        torch.set_num_threads(settings.torch_threads or len(os.sched_getaffinity(0)))
    model = AutoModelForSequenceClassification.from_pretrained(settings.model, attn_implementation="sdpa")
    model = model.eval().to(device=device, dtype=dtype)
    pad_id = load_tokenizer(settings.model).pad_token_id or 0
    _LOG.info("loaded scoring model %s on %s (%s, %d threads)", settings.model, device, dtype,
              torch.get_num_threads())
    return PairClassifier(model, device, pad_id)


class PairScorer(ModelHandler[TokenizedPair, float, PairClassifier]):
    """RunInference handler: pre-packed batches of `TokenizedPair` -> P(same meaning)."""

    def __init__(self, settings: ScorerSettings):
        super().__init__()
        self._settings = settings
        self._share_across_processes = settings.model_copies > 0
        self._model_copies = max(settings.model_copies, 1)
        self._oom_splits = Metrics.counter("qdedup", "oom_splits")
        self._timer = StageTimer("score")

    def load_model(self) -> PairClassifier:
        return load_classifier(self._settings)

    def run_inference(self, batch: Sequence[TokenizedPair], model: PairClassifier,
                      inference_args: Optional[dict] = None) -> Iterable[PredictionResult]:
        flat = [encoding for pair in batch for encoding in pair.encodings]
        with self._timer:
            probabilities, splits = model.score(flat)
        self._oom_splits.inc(splits)
        results, start = [], 0
        for pair in batch:
            end = start + len(pair.encodings)
            results.append(PredictionResult(pair, float(np.mean(probabilities[start:end]))))
            start = end
        return results

    def get_metrics_namespace(self) -> str:
        return "qdedup.scoring"


class _TokenizeAndPack(beam.DoFn):
    """Candidate pairs -> batches of `TokenizedPair`, sorted by length within a window."""

    def __init__(self, settings: ScorerSettings):
        self._settings = settings
        self._truncated = Metrics.counter("qdedup", "truncated_pairs")
        self._timer = StageTimer("tokenize")

    def setup(self):
        self._tokenizer = load_tokenizer(self._settings.model)
        self._budget = token_budget(self._settings)

    def start_bundle(self):
        self._window = []

    def process(self, candidate):
        self._window.append(candidate)
        if len(self._window) >= self._settings.sort_window:
            yield from self._flush()

    def finish_bundle(self):
        for batch in self._flush():
            yield GlobalWindows.windowed_value(batch)

    def _flush(self) -> Iterable[list]:
        window, self._window = self._window, []
        if not window:
            return
        with self._timer:
            texts = [(c.text_a, c.text_b) for c in window]
            forward = tokenize_pairs(self._tokenizer, texts, self._settings.max_length)
            orders = [forward]
            if self._settings.symmetric:
                orders.append(tokenize_pairs(self._tokenizer, [(b, a) for a, b in texts], self._settings.max_length))
            pairs = [
                TokenizedPair((c.id_a, c.id_b, c.similarity, c.source), tuple(enc for enc, _ in encoded),
                              any(cut for _, cut in encoded))
                for c, *encoded in zip(window, *orders)
            ]
            batches = pack_batches([p.cost for p in pairs], self._budget)
        self._truncated.inc(sum(p.truncated for p in pairs))
        for indices in batches:
            yield [(pairs[i].key, pairs[i]) for i in indices]


class _LogProgress(beam.DoFn):
    """Logs pairs scored, pairs/s and the estimated time left in this worker, at a steady interval."""

    def __init__(self, interval_seconds: float):
        self._interval = interval_seconds

    def setup(self):
        self._scored = 0
        self._started = self._last = None

    def process(self, pair, total: int):
        now = time.monotonic()
        if self._started is None:
            self._started = self._last = now
        self._scored += 1
        if now - self._last >= self._interval and now > self._started:
            self._last = now
            rate = self._scored / (now - self._started)
            left = max(total - self._scored, 0) / rate
            _LOG.info("scoring: %d of %d pairs (%.1f%%) scored by this worker, %.1f pairs/s, "
                      "~%.0f s left if it scored the rest alone", self._scored, total,
                      100.0 * self._scored / max(total, 1), rate, left)
        yield pair


class ScorePairs(beam.PTransform):
    """`CandidatePair`s -> `ScoredPair`s, through RunInference with pre-packed batches."""

    def __init__(self, settings: ScorerSettings):
        super().__init__()
        self._settings = settings

    def expand(self, candidates):
        total = candidates | "CountCandidates" >> beam.combiners.Count.Globally()
        return (
            candidates
            | "TokenizeAndPack" >> beam.ParDo(_TokenizeAndPack(self._settings))
            | "RunCrossEncoder" >> RunInference(KeyedModelHandler(PairScorer(self._settings)).with_no_batching())
            | "ToScoredPair" >> beam.MapTuple(
                lambda key, result: ScoredPair(key[0], key[1], float(result.inference), key[2], key[3]))
            | "LogProgress" >> beam.ParDo(_LogProgress(self._settings.progress_seconds),
                                          total=beam.pvalue.AsSingleton(total))
        )
