"""Feeding Hugging Face models inside RunInference, shared by scoring and the encoder embedder.

The hardware wants few, full, evenly long batches: inputs are dealt into shards
of about `sort_window` by a hash of their key, tokenized once per shard, sorted by
token length and packed under a token budget, padded only to each batch's own
longest input, run under `inference_mode` with SDPA attention (bf16/fp16 on CUDA,
fp32 on CPU), and a CUDA out-of-memory batch is split in half and retried rather
than lost. Because a batch's make-up follows from the set of inputs alone (never
from bundles or arrival order), an input gets the same score in every run,
runner mode and retry that scores the same set of inputs.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import posixpath
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from transforms.commit import is_remote
from transforms.errors import QdedupError, failure
from transforms.metrics import StageTimer

_LOG = logging.getLogger(__name__)
# Weights are read from safetensors only: a pickled pytorch_model.bin can run code when loaded.
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "spiece.model")
MODELSCOPE = "modelscope:"
_CACHE = os.environ.get("QDEDUP_MODEL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "qdedup", "models"))
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


def token_budget(settings: ModelSettings) -> int:
    return settings.token_budget or AUTO_TOKEN_BUDGET[resolve_device(settings.device)]


def missing_files(names: Iterable[str]) -> list[str]:
    """What a model directory with these file names lacks to be loaded."""
    names = {os.path.basename(n) for n in names}
    missing = [] if "config.json" in names else ["config.json"]
    if not names & set(_WEIGHT_FILES):
        missing.append("model.safetensors (weights are read from safetensors only)")
    if not names & set(_TOKENIZER_FILES):
        missing.append(" or ".join(_TOKENIZER_FILES[:2]))
    return missing


def remote_files(directory: str) -> list[tuple[str, object]]:
    """(name relative to the directory, FileMetadata) of a remote model directory's objects.

    A name that would land outside the directory once copied (`..`, an absolute path) is refused:
    a bucket's object names are not to be trusted with the local filesystem.
    """
    from apache_beam.io.filesystems import FileSystems
    prefix = directory.rstrip("/") + "/"
    files = []
    for metadata in FileSystems.match([prefix + "**"])[0].metadata_list:
        if metadata.path.endswith("/"):
            continue
        relative = metadata.path[len(prefix):] if metadata.path.startswith(prefix) else metadata.path
        parts = relative.split("/")
        if (not metadata.path.startswith(prefix) or relative.startswith("/") or ".." in parts
                or posixpath.normpath(relative) != relative):
            raise QdedupError(f"model directory {directory!r} holds an object named {metadata.path!r}, which "
                              "would be copied outside the model's folder; remove it from the bucket")
        files.append((relative, metadata))
    return sorted(files, key=lambda item: item[0])


def _cache_key(directory: str, files: list[tuple[str, object]]) -> str:
    """Names, sizes and update times of the remote files: a model changed in the bucket is fetched again."""
    digest = hashlib.sha256(directory.rstrip("/").encode())
    for relative, metadata in files:
        digest.update(f"\0{relative}\0{metadata.size_in_bytes}\0{metadata.last_updated_in_seconds}".encode())
    return digest.hexdigest()[:24]


def copy_remote_model(directory: str) -> str:
    """A gs:// / s3:// model directory, copied once per machine and version into the local cache.

    The cache folder is named after the remote files' names, sizes and update times, so a model
    replaced in the bucket is copied again. The copy is made in a temporary folder and renamed into
    place, so SDK processes starting together on one worker never see half a model.
    """
    import shutil
    import tempfile

    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems
    files = remote_files(directory)
    target = os.path.join(_CACHE, _cache_key(directory, files))
    if os.path.exists(os.path.join(target, ".complete")):
        return target
    os.makedirs(_CACHE, exist_ok=True)
    staging = tempfile.mkdtemp(dir=_CACHE)
    for relative, metadata in files:
        local = os.path.join(staging, *relative.split("/"))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with FileSystems.open(metadata.path, compression_type=CompressionTypes.UNCOMPRESSED) as source, \
                open(local, "wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 22)
    open(os.path.join(staging, ".complete"), "w").close()
    try:
        os.rename(staging, target)
    except OSError:  # another process got there first
        shutil.rmtree(staging, ignore_errors=True)
    _LOG.info("copied model %s to %s", directory, target)
    return target


def model_path(name: str) -> str:
    """What transformers loads: a hub id or local directory as given, a copy of a remote directory,
    or a ModelScope download for `modelscope:ID`."""
    if name.startswith(MODELSCOPE):
        try:
            from modelscope import snapshot_download
        except ImportError as exc:
            raise QdedupError(f"{name!r} needs the modelscope package: pip install modelscope") from exc
        return snapshot_download(name[len(MODELSCOPE):])
    return copy_remote_model(name) if is_remote(name) else name


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.path.exists(name)


def fingerprint(model, tokenizer) -> str:
    """A digest of what a model's outputs depend on, the same from the hub, a directory or a bucket."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(model.config.to_json_string(use_diff=False).encode())
    digest.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_model(name: str, option: str, auto_class, probe: Callable[[Any, Any], None]) -> str:
    """Fails fast, naming what is wrong, when a model cannot be loaded or cannot run; returns its `fingerprint`.

    A remote directory is listed and copied here the way workers will copy it; a local one must
    hold config.json, safetensors weights and tokenizer files. The tokenizer's vocabulary must fit
    the model's embeddings, and `probe(model, tokenizer)` (one trial input on the CPU) must pass.
    """
    import torch
    from transformers import AutoConfig, AutoTokenizer
    if is_remote(name):
        try:
            files = [relative for relative, _ in remote_files(name)]
        except QdedupError:
            raise
        except Exception as exc:
            raise QdedupError(f"{option} {name!r} cannot be listed: {exc}") from exc
        missing = missing_files(files)
        if missing:
            raise QdedupError(f"{option} {name!r} is not a complete model directory: missing {', '.join(missing)}")
    elif _looks_local(name):
        path = os.path.expanduser(name)
        if not os.path.isdir(path):
            raise QdedupError(f"{option} {name!r}: no such directory")
        missing = missing_files(os.listdir(path))
        if missing:
            raise QdedupError(
                f"{option} {name!r} is not a complete model directory: missing {', '.join(missing)}")
    try:
        local = model_path(name)
        config = AutoConfig.from_pretrained(local, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(local, trust_remote_code=False)
    except QdedupError:
        raise
    except Exception as exc:
        hint = "" if _looks_local(name) or is_remote(name) else (
            "; if the model hub is unreachable, download the model elsewhere "
            f"and pass its local directory (or a gs:// / s3:// copy) as {option}")
        reason = str(exc).strip().rstrip(".")
        raise QdedupError(f"cannot load model {name!r} ({option}): {reason}{hint}") from exc
    vocabulary = getattr(config, "vocab_size", None)
    if vocabulary is not None and len(tokenizer) > vocabulary:
        raise QdedupError(f"{option} {name!r}: its tokenizer has {len(tokenizer)} tokens but the model embeds only "
                          f"{vocabulary}: tokenizer and weights do not belong together")
    try:
        model = auto_class.from_pretrained(local, use_safetensors=True, trust_remote_code=False).eval()
        with torch.inference_mode():
            probe(model, tokenizer)
    except QdedupError:
        raise
    except Exception as exc:
        raise QdedupError(f"{option} {name!r} fails on a trial input: {failure(exc)}") from exc
    return fingerprint(model, tokenizer)


def load_tokenizer(name: str):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(model_path(name), trust_remote_code=False)


def load_model(settings: ModelSettings, auto_class):
    """(model on its device in its precision, device); sets CPU threads to the process's cores."""
    import torch
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.precision, device)
    if device == "cpu":
        torch.set_num_threads(settings.torch_threads or len(os.sched_getaffinity(0)))
    model = auto_class.from_pretrained(model_path(settings.model), attn_implementation="sdpa",
                                       use_safetensors=True, trust_remote_code=False)
    model = model.eval().to(device=device, dtype=dtype)
    _LOG.info("loaded %s on %s (%s, %d threads)", settings.model, device, dtype, torch.get_num_threads())
    return model, device


def tokenize(tokenizer, inputs: Sequence[tuple[str, ...]], max_length: int) -> list[tuple[Encoding, bool]]:
    """(encoding, truncated) per input: `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`, cut longest-first."""
    if not inputs:
        return []
    columns = list(zip(*inputs))
    first, second = list(columns[0]), (list(columns[1]) if len(columns) > 1 else None)

    def encode(indices, **options):
        return tokenizer([first[i] for i in indices], [second[i] for i in indices] if second else None,
                         return_token_type_ids=True, verbose=False, **options)

    everything = list(range(len(inputs)))
    full = encode(everything, truncation=False)
    encoded = [((ids, types), False) for ids, types in zip(full["input_ids"], full["token_type_ids"])]
    too_long = [i for i, (enc, _) in enumerate(encoded) if len(enc[0]) > max_length]
    if too_long:
        cut = encode(too_long, truncation="longest_first", max_length=max_length)
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

    def __init__(self, settings: ModelSettings, stage: str):
        self._settings = settings
        self._truncated = Metrics.counter("qdedup", f"{stage}_truncated")
        self._timer = StageTimer(f"{stage}_tokenize")

    def setup(self):
        self._tokenizer = load_tokenizer(self._settings.model)
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
    """(key, inputs in one or more orders) -> {"batches": [(key, `TokenizedItem`)], "failed": (key, detail)}.

    Inputs are dealt into shards of about `sort_window` by a hash of their key (a key must be
    unique, sortable, and have a stable repr), so that similar lengths meet in a batch whatever the
    bundles, and a batch's make-up, hence every float it produces, depends only on the set of inputs.
    """

    def __init__(self, settings: ModelSettings, stage: str):
        super().__init__()
        self._settings = settings
        self._stage = stage

    def expand(self, inputs):
        size = self._settings.sort_window
        count = beam.pvalue.AsSingleton(inputs | "CountInputs" >> beam.combiners.Count.Globally())
        return (
            inputs
            | "DealIntoShards" >> beam.Map(lambda e, n: (shard_of(e[0], n, size), e), n=count)
            | "GatherShard" >> beam.GroupByKey()
            | "PackShard" >> beam.ParDo(_PackShard(self._settings, self._stage)).with_outputs(
                "failed", main="batches")
        )


def sharing(settings: ModelSettings) -> dict:
    """ModelHandler arguments: one model per process, or `model_copies` per worker shared by its processes."""
    return {"model_copies": settings.model_copies} if settings.model_copies > 0 else {}
