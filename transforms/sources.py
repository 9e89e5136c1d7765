"""Where models come from: a Hugging Face hub id, a local directory, a gs:// / s3:// directory copied
once per worker into a local cache, or ModelScope (`modelscope:ID`).

Weights are read from safetensors only (a pickled `pytorch_model.bin` can run code when loaded) and
remote code is never trusted. A static embedder (`qdedup train-blocker`) is a directory too: a
safetensors table and a JSON config. How loaded models are fed is `transforms/inference.py`'s business.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import threading
from types import SimpleNamespace
from typing import Any, Iterable

import numpy as np

from transforms.devices import cpu_threads, model_device, resolve_dtype
from transforms.errors import QdedupError
from transforms.paths import is_remote

_LOG = logging.getLogger(__name__)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "spiece.model")
MODELSCOPE = "modelscope:"
_CACHE = os.environ.get("QDEDUP_MODEL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "qdedup", "models"))


def model_cache() -> str:
    """This machine's model cache: copies of remote models, and int8 models (`QDEDUP_MODEL_CACHE`)."""
    return _CACHE


def missing_files(names: Iterable[str]) -> list[str]:
    """What a model directory with these file names lacks to be loaded."""
    names = {os.path.basename(n) for n in names}
    missing = [] if "config.json" in names else ["config.json"]
    if not names & set(WEIGHT_FILES):
        missing.append("model.safetensors (weights are read from safetensors only)")
    if not names & set(TOKENIZER_FILES):
        missing.append(" or ".join(TOKENIZER_FILES[:2]))
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


# ---- Static embedders (`qdedup train-blocker`): a table of hashed n-grams, no model code ----

STATIC_CONFIG, STATIC_WEIGHTS = "embedder.json", "embedder.safetensors"
STATIC_FORMAT, STATIC_VERSION = "qdedup-static-embedder", 1


def save_static_embedder(directory: str, table: np.ndarray, config: dict) -> str:
    """Writes `table` (buckets x dims) as safetensors and `config` (how it was made, what it measured) as
    JSON beside it; returns the directory."""
    from safetensors.numpy import save_file
    os.makedirs(directory, exist_ok=True)
    table = np.ascontiguousarray(table, dtype=np.float32)
    config = {**config, "format": STATIC_FORMAT, "version": STATIC_VERSION, "ngrams": [1, 2], "hash": "crc32",
              "buckets": int(table.shape[0]), "dims": int(table.shape[1]), "pooling": "mean, unit length"}
    save_file({"embeddings": table}, os.path.join(directory, STATIC_WEIGHTS))
    with open(os.path.join(directory, STATIC_CONFIG), "w", encoding="utf-8") as handle:
        json.dump(config, handle, ensure_ascii=False, indent=2, sort_keys=True)
    return directory


def load_static_embedder(name: str) -> tuple[np.ndarray, dict]:
    """(table, config) of a static embedder directory, local or gs:// / s3:// (copied once per machine).

    Raises QdedupError naming what is missing or wrong.
    """
    from safetensors.numpy import load_file
    path = copy_remote_model(name) if is_remote(name) else os.path.expanduser(name)
    files = [os.path.join(path, f) for f in (STATIC_CONFIG, STATIC_WEIGHTS)]
    missing = [os.path.basename(f) for f in files if not os.path.isfile(f)]
    if missing:
        raise QdedupError(f"static embedder {name!r}: no {' or '.join(missing)} there; make one with "
                          "`qdedup train-blocker --output DIR`")
    with open(files[0], encoding="utf-8") as handle:
        config = json.load(handle)
    if config.get("format") != STATIC_FORMAT or config.get("version") != STATIC_VERSION:
        raise QdedupError(f"static embedder {name!r}: {STATIC_CONFIG} is not a {STATIC_FORMAT} version "
                          f"{STATIC_VERSION} config")
    table = load_file(files[1]).get("embeddings")
    if table is None or table.shape != (config["buckets"], config["dims"]) or not np.isfinite(table).all():
        raise QdedupError(f"static embedder {name!r}: its weights are not a finite {config['buckets']} x "
                          f"{config['dims']} table named 'embeddings'")
    return table.astype(np.float32, copy=False), config


def load_static_table(name: str) -> np.ndarray:
    return load_static_embedder(name)[0]


def static_fingerprint(table: np.ndarray, config: dict) -> str:
    """A digest of what a static embedder's vectors depend on: its spec and its table."""
    digest = hashlib.blake2b(digest_size=16)
    spec = {key: config[key] for key in ("format", "version", "ngrams", "hash", "buckets", "dims", "pooling")}
    digest.update(json.dumps(spec, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(table, dtype=np.float32).tobytes())
    return digest.hexdigest()


def looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.path.exists(name)


def load_tokenizer(name: str):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(model_path(name), trust_remote_code=False)


def model_width(name: str) -> int:
    """The model's hidden size as its config.json gives it (0 where it gives none): what the automatic
    token budget follows (`feeding.token_budget`)."""
    from transformers import AutoConfig
    return int(getattr(AutoConfig.from_pretrained(model_path(name), trust_remote_code=False), "hidden_size", 0) or 0)


def load_tokenizer_and_width(name: str) -> tuple[Any, int]:
    """(tokenizer, hidden width) of model `name`: what packing its inputs needs (`inference.TokenizeAndPack`).
    The model is found once (a remote directory listed once), then both are read from it."""
    local = model_path(name)
    return load_tokenizer(local), model_width(local)


def load_pretrained(settings, model_class: str) -> tuple[Any, str, int]:
    """(model on its device in its precision, device, pad token id) for `settings` (`ModelSettings`).

    `model_class` names the transformers Auto class (`AutoModelForSequenceClassification`,
    `AutoModel`); CPU threads are set to the process's cores (or `settings.torch_threads`). Precision
    int8 loads the OpenVINO model the launcher quantized (`settings.int8_model`, made by `transforms/int8.py`).
    """
    import torch
    import transformers
    pad_id = load_tokenizer(settings.model).pad_token_id or 0
    device = model_device(settings.device, settings.precision)
    if settings.precision == "int8":  # the launcher refuses --device cuda with it
        threads = cpu_threads(settings.torch_threads)
        model = load_int8(model_path(settings.int8_model), threads)
        _LOG.info("loaded %s on cpu (int8, OpenVINO, %d threads)", settings.model, threads)
        return model, device, pad_id
    auto_class = getattr(transformers, model_class)
    dtype = resolve_dtype(settings.precision, device)
    if device == "cpu":
        torch.set_num_threads(cpu_threads(settings.torch_threads))
    model = auto_class.from_pretrained(model_path(settings.model), attn_implementation="sdpa",
                                       use_safetensors=True, trust_remote_code=False)
    model = model.eval().to(device=device, dtype=dtype)
    _LOG.info("loaded %s on %s (%s, %d threads)", settings.model, device, dtype, torch.get_num_threads())
    return model, device, pad_id


# ---- int8 models (`--precision int8`): OpenVINO folders the launcher made with `transforms/int8.py` ----

INT8_MODEL_FILE, INT8_COMPLETE = "model.xml", ".complete"


class OpenVinoModel:
    """A compiled OpenVINO model answering like a transformers model: `model(**batch)` -> outputs by name
    (`.logits`, `.last_hidden_state`) as float32 torch tensors.

    Beam shares one model between the threads of a worker process; a PyTorch forward pass may run in
    several at once, an OpenVINO infer request may not: each thread gets its own request.
    """

    def __init__(self, compiled):
        self._compiled = compiled
        self._requests = threading.local()
        self._inputs = {port.get_any_name() for port in compiled.inputs}
        # An output may carry a tensor number beside its name ({'last_hidden_state', '316'}): keep the name.
        self._names = [next((name for name in sorted(port.get_names()) if not name.isdigit()), port.get_any_name())
                       for port in compiled.outputs]

    def __call__(self, **batch) -> SimpleNamespace:
        import torch
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self._compiled.create_infer_request()
        results = request.infer({name: tensor.numpy() for name, tensor in batch.items() if name in self._inputs})
        return SimpleNamespace(**{name: torch.from_numpy(np.array(results[i], dtype=np.float32))
                                  for i, name in enumerate(self._names)})


def load_int8(directory: str, threads: int) -> OpenVinoModel:
    """The quantized model of `directory` compiled for this CPU with `threads` threads, f32 where not int8
    (OpenVINO would otherwise pick bf16 on CPUs that have it: a second precision inside the model)."""
    import openvino as ov
    if not os.path.exists(os.path.join(directory, INT8_COMPLETE)):
        raise QdedupError(f"{directory!r} holds no complete int8 model; the launcher prepares it "
                          "(qdedup run --precision int8)")
    compiled = ov.Core().compile_model(os.path.join(directory, INT8_MODEL_FILE), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
    return OpenVinoModel(compiled)


def fingerprint(model, tokenizer) -> str:
    """A digest of what a model's outputs depend on, the same from the hub, a directory or a bucket."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(model.config.to_json_string(use_diff=False).encode())
    digest.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
