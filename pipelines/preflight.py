"""Launch checks: everything qdedup can check before a pipeline starts, and the only place (with the option
definitions in `pipelines/options.py`) that names the command line's flags.

A run that would fail on its input, its options, its models or the run it builds on fails here, in
seconds, with a message naming the option to fix, instead of after reading and blocking a corpus.
`check_run` makes every check of `qdedup run`, in the order a user would fix them.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, NamedTuple, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, GoogleCloudOptions, PipelineOptions, StandardOptions

from pipelines import local_runner
from pipelines.options import (
    QdedupOptions,
    effective_configuration,
    input_columns,
    parse_embedders,
)
from transforms.cluster import rounds_for
from transforms.commit import OutputNames, OutputRun, committed_root, read_committed
from transforms.devices import resolve_device, resolve_dtype
from transforms.embed import static_vector
from transforms.errors import QdedupError, failure
from transforms.ids import PREVIOUS_COLUMNS
from transforms.int8 import DEFAULT_CALIBRATION, int8_key, prepare_int8, publish_int8, read_calibration_pairs, read_info
from transforms.paths import is_remote
from transforms.records import Columns, GivenCentroids
from transforms.sources import (
    fingerprint,
    load_static_embedder,
    looks_local,
    missing_files,
    model_cache,
    model_path,
    remote_files,
    static_fingerprint,
)
from transforms.state import STATE_FORMAT, Prior, load_arrays

_LOG = logging.getLogger(__name__)

# Options whose values the reused parts of an earlier run depend on (its parameters, vectors and scores);
# `fingerprints`, `scoring_precision` and `int8_keys` (what each int8 model was quantized from) are filled
# in at launch.
REUSED_OPTIONS = ("lexical_dim", "encoder_pooling", "encoder_whiten", "max_length", "symmetric",
                  "positive_label", "scoring_precision", "fingerprints", "int8_keys")
# ... and, for an extension, the options that shaped its stored k nearest and representatives too.
EXTENSION_OPTIONS = REUSED_OPTIONS + ("top_k", "min_similarity", "probes", "id_column", "text_column",
                                      "canonical", "timestamp_column")


@dataclass(frozen=True)
class InputInfo:
    files: tuple[str, ...]
    rows: int
    id_type: str  # "int64" or "string": the type `id` keeps in every output


def _is_time(arrow_type: pa.DataType) -> bool:
    return pa.types.is_timestamp(arrow_type) or pa.types.is_date(arrow_type) or pa.types.is_integer(arrow_type)


def _id_type(arrow_type: pa.DataType) -> Optional[str]:
    if pa.types.is_integer(arrow_type):
        return "int64"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    return None


def inspect_input(pattern: str, columns: Columns) -> InputInfo:
    """Checks that the input exists, opens as Parquet and has the columns, before any work."""
    try:
        matched = FileSystems.match([pattern])[0].metadata_list
    except Exception as exc:  # a missing bucket or directory raises instead of matching nothing
        raise QdedupError(f"--input {pattern!r} cannot be listed: {exc}") from exc
    files = tuple(sorted(m.path for m in matched if not m.path.endswith("/")))  # skip GCS folder markers
    if not files:
        raise QdedupError(f"--input {pattern!r} matches no files; check the path and the glob pattern")
    rows = 0
    id_types: dict[str, str] = {}
    time_kinds: dict[str, str] = {}
    for path in files:
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                metadata = pq.ParquetFile(handle).metadata
                schema = metadata.schema.to_arrow_schema()
        except Exception as exc:
            raise QdedupError(f"{path} is not a readable Parquet file ({exc}); fix or remove it") from exc
        named = [("--id-column", columns.id), ("--text-column", columns.text)]
        if columns.timestamp:
            named.append(("--timestamp-column", columns.timestamp))
        for option, name in named:
            if name not in schema.names:
                raise QdedupError(
                    f"{path} has no column {name!r} (its columns: {', '.join(schema.names)}); "
                    f"set {option} to the right column")
        if columns.timestamp and not _is_time(schema.field(columns.timestamp).type):
            raise QdedupError(
                f"{path}: timestamp column {columns.timestamp!r} has type {schema.field(columns.timestamp).type}; "
                "it must be a timestamp, date or integer column")
        if columns.timestamp:
            time_kinds[path] = "integer" if pa.types.is_integer(schema.field(columns.timestamp).type) else "time"
        id_type = _id_type(schema.field(columns.id).type)
        if id_type is None:
            raise QdedupError(
                f"{path}: id column {columns.id!r} has type {schema.field(columns.id).type}; "
                "ids must be integers or strings")
        id_types[path] = id_type
        rows += metadata.num_rows
    _one_type(id_types, "id column types")
    _one_type(time_kinds, "timestamp columns (integers and timestamps/dates)")
    return InputInfo(files, rows, next(iter(id_types.values())))


def _one_type(types_by_path: dict[str, str], what: str) -> None:
    if len(set(types_by_path.values())) > 1:
        by_type = {t: [p for p, pt in types_by_path.items() if pt == t][0] for t in set(types_by_path.values())}
        raise QdedupError(f"{what} differ between files: "
                          + "; ".join(f"{t} in {p}" for t, p in sorted(by_type.items())) + "; make them one type")


def validate(options: QdedupOptions) -> None:
    """Option values that would make the run meaningless are refused before it starts."""
    if not options.input:
        raise QdedupError("--input is required (a Parquet file pattern)")
    if not options.output:
        raise QdedupError("--output is required (a directory)")
    checks = [
        (0.0 <= options.threshold <= 1.0, "--threshold must be between 0 and 1"),
        (-1.0 <= options.min_similarity <= 1.0, "--min-similarity must be between -1 and 1"),
        (options.top_k >= 1, "--top-k must be at least 1"),
        (options.component_rounds is None or options.component_rounds >= 0, "--component-rounds must be 0 or more"),
        (options.max_unsettled_edges >= 0, "--max-unsettled-edges must be 0 or more"),
        (options.resplit_gather >= 3, "--resplit-gather must be at least 3"),
        (options.explain_max_edges >= 1, "--explain-max-edges must be at least 1"),
        (options.resplit_cut_steps >= 0, "--resplit-cut-steps must be 0 or more"),
        (options.join_shard_keys >= 1, "--join-shard-keys must be at least 1"),
        (options.resplit_size >= 2, "--resplit-size must be at least 2"),
        (0.0 <= options.resplit_density <= 1.0, "--resplit-density must be between 0 and 1"),
        (options.resplit_pairs >= 0, "--resplit-pairs must be 0 or more"),
        (options.partitions >= 0, "--partitions must be 0 (automatic) or positive"),
        (options.partition_size >= 1, "--partition-size must be at least 1"),
        (options.probes >= 1, "--probes must be at least 1"),
        (options.max_block >= 1, "--max-block must be at least 1"),
        (options.block_fanout >= 1, "--block-fanout must be at least 1"),
        (options.max_sample >= 256, "--max-sample must be at least 256 (one centroid's sample)"),
        (options.token_budget >= 0, "--token-budget must be 0 (automatic) or positive"),
        (options.sort_window >= 1, "--sort-window must be at least 1"),
        (8 <= options.max_length <= 512, "--max-length must be between 8 and 512"),
        (options.model_copies >= 0, "--model-copies must be 0 or more"),
        (options.torch_threads >= 0, "--torch-threads must be 0 or more"),
        (options.search_threads >= 0, "--search-threads must be 0 or more"),
        (options.lexical_dim >= 16, "--lexical-dim must be at least 16"),
        (options.max_text_chars >= 1, "--max-text-chars must be at least 1"),
        (options.id_column != options.text_column, "--id-column and --text-column must differ"),
        (options.canonical != "earliest" or bool(options.timestamp_column),
         "--canonical earliest needs --timestamp-column (the column that says when a row was asked)"),
        (not (options.existing and options.previous_groups),
         "--existing already carries its run's group ids: leave out --previous-groups"),
        (not (options.existing and options.params_from),
         "--existing already reuses its run's parameters: leave out --params-from"),
        (0.0 <= options.max_failed_share <= 1.0, "--max-failed-share must be between 0 and 1"),
        (options.positive_label is None or options.positive_label >= 0, "--positive-label must be 0 or more"),
        (options.timestamp_column not in (options.id_column, options.text_column),
         "--timestamp-column must differ from --id-column and --text-column"),
    ]
    for ok, message in checks:
        if not ok:
            raise QdedupError(message)
    parse_embedders(options.embedders)


def check_runner(pipeline_options: PipelineOptions) -> None:
    """report.json's counts are Beam metrics (docs/design.md, "Output contract"): a runner known to drop some
    is refused before anything runs."""
    runner = pipeline_options.view_as(StandardOptions).runner or ""
    if runner.split(".")[-1] == "BundleBasedDirectRunner":
        raise QdedupError(
            "--runner BundleBasedDirectRunner drops the metrics of elements that reach a step through a Flatten "
            "fed by a GroupByKey (a Beam bug), and report.json's counts are metrics: use FnApiRunner "
            "(configs/local.yaml), DirectRunner, Prism or Dataflow")


def check_placeholders(pipeline_options: PipelineOptions) -> None:
    """A preset's YOUR_* placeholders must be filled in before anything is launched."""
    for name, value in sorted(pipeline_options.get_all_options(drop_default=True).items()):
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and "YOUR_" in item:
                raise QdedupError(f"--{name} is {item!r}: fill in the preset's YOUR_* placeholders "
                                  "(or pass the option on the command line)")


def _is_local(pipeline_options: PipelineOptions) -> bool:
    runner = pipeline_options.view_as(StandardOptions).runner
    return runner is None or runner in StandardOptions.LOCAL_RUNNERS


def check_device_here(pipeline_options: PipelineOptions, device: str) -> None:
    """A local run with --device cuda fails now, not after reading and blocking the whole corpus."""
    if device == "cuda" and _is_local(pipeline_options):
        import torch
        if not torch.cuda.is_available():
            raise QdedupError("--device cuda, but no usable GPU here (torch.cuda.is_available() is False): check "
                              "the GPU driver and that torch is a CUDA build, or run with --device cpu")


def scoring_precision(options: QdedupOptions, pipeline_options: PipelineOptions) -> str:
    """The precision scores are computed in, as far as the launcher can tell (state compares it)."""
    if options.precision != "auto":
        return options.precision
    device = resolve_device(options.device) if _is_local(pipeline_options) else options.device
    if device == "auto":  # a remote run's workers decide, out of the launcher's sight; named apart from the
        return "auto on auto (fp16 on a GPU)"  # "auto on auto" of runs whose GPUs ran bf16, which an extension refuses
    return str(resolve_dtype("auto", device)).replace("torch.", "")


def check_int8(options: QdedupOptions, pipeline_options: PipelineOptions, fingerprints: dict) -> dict:
    """--precision int8: {"scorer"/"encoder": how its quantized model was made, its in-sample fidelity and
    the folder workers load it from}, for the models `fingerprints` names; {} for other precisions.

    Each transformer model of the run is quantized here, once per (model, calibration set, max length,
    library versions): a later run finds it in the local model cache. A remote run's workers get a copy
    under --temp_location. Raises QdedupError for --device cuda, a missing library or calibration file.
    """
    if options.precision != "int8":
        return {}
    if options.device == "cuda" or (options.device == "auto" and _is_local(pipeline_options)
                                    and resolve_device("auto") == "cuda"):
        raise QdedupError("--precision int8 runs on CPU workers (OpenVINO); on a GPU use --precision auto "
                          "(bf16/fp16), or pass --device cpu to score in int8 on this machine's CPU")
    path = options.calibration_pairs or DEFAULT_CALIBRATION
    pairs = read_calibration_pairs(path)
    root = None
    if not _is_local(pipeline_options):
        temp = pipeline_options.view_as(GoogleCloudOptions).temp_location
        if not temp:
            raise QdedupError("--precision int8 on a remote runner needs --temp_location: the launcher puts the "
                              "quantized models there for the workers")
        root = FileSystems.join(temp, "qdedup-int8")
    models = {"scorer": (options.scorer_model, "AutoModelForSequenceClassification")}
    models.update({kind: (model, "AutoModel") for kind, model in parse_embedders(options.embedders)
                   if kind == "encoder"})
    prepared = {}
    for role, (name, model_class) in models.items():
        if role not in fingerprints:  # `qdedup recall` runs no scorer
            continue
        spec = int8_key(fingerprints[role], model_class, pairs, options.max_length)
        folder = prepare_int8(model_path(name), spec, pairs, model_cache())
        info = read_info(folder)
        _LOG.info("int8 %s: %s (calibration %s, %d inputs: %s)", role, folder, path,
                  info["calibration_fidelity"]["inputs"], info["calibration_fidelity"])
        prepared[role] = {**info, "calibration_file": path,
                          "folder": publish_int8(folder, root) if root else folder}
    return prepared


def check_models(options: QdedupOptions) -> dict:
    """Every model of the run loads and answers a trial input; {"scorer"/kind: fingerprint}."""
    fingerprints = {"scorer": check_scorer_model(options.scorer_model, options.positive_label)}
    fingerprints.update(check_embedders(options))
    return fingerprints


def check_embedders(options: QdedupOptions) -> dict:
    """Every embedder with a model loads and embeds a trial text; {kind: fingerprint}."""
    return {kind: (check_encoder_model if kind == "encoder" else check_static_embedder)(model)
            for kind, model in parse_embedders(options.embedders) if kind != "lexical"}


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
    elif looks_local(name):
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
        hint = "" if looks_local(name) or is_remote(name) else (
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


def positive_label(config, requested: Optional[int], option: str = "--scorer-model") -> int:
    """The label whose probability is a pair's score: label 1 of a 2-label model, or the one asked for."""
    labels = getattr(config, "num_labels", 0)
    names = getattr(config, "id2label", None) or {}
    if requested is None:
        if labels != 2:
            raise QdedupError(
                f"{option} is not a pair classifier with 2 labels (num_labels={labels}, id2label={dict(names)}); "
                "pass --positive-label N to say which label means 'duplicate'")
        return 1
    if not 0 <= requested < labels:
        raise QdedupError(f"--positive-label {requested} is not a label of {option} "
                          f"(num_labels={labels}, id2label={dict(names)})")
    return requested


TRIAL_PAIR = ("怎么开通网银", "网上银行怎么开通")


def check_scorer_model(name: str, requested_label: Optional[int] = None) -> str:
    """The scorer loads, has its positive label, and scores a trial pair to a probability; returns its fingerprint."""
    from transformers import AutoModelForSequenceClassification

    def probe(model, tokenizer) -> None:
        import torch
        label = positive_label(model.config, requested_label)
        logits = model(**tokenizer(*TRIAL_PAIR, return_tensors="pt")).logits
        score = float(torch.softmax(logits.float(), dim=-1)[0, label])
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"the trial pair scored {score}")

    return check_model(name, "--scorer-model", AutoModelForSequenceClassification, probe)


TRIAL_TEXT = "怎么开通网银"


def check_encoder_model(name: str, option: str = "--embedders encoder:") -> str:
    """The encoder loads and turns a trial text into a finite vector; returns its fingerprint."""
    from transformers import AutoModel

    def probe(model, tokenizer) -> None:
        hidden = model(**tokenizer(TRIAL_TEXT, return_tensors="pt")).last_hidden_state
        if not bool(hidden.float().isfinite().all()):
            raise ValueError("the trial text's vector is not finite")

    return check_model(name, option, AutoModel, probe)


def check_static_embedder(name: str) -> str:
    """A static embedder directory loads and turns a trial text into a unit vector; returns its fingerprint."""
    table, config = load_static_embedder(name)
    vector = static_vector(TRIAL_TEXT, table)
    if not abs(float(np.linalg.norm(vector)) - 1.0) < 1e-3:
        raise QdedupError(f"--embedders static:{name}: the trial text's vector is not of unit length")
    return static_fingerprint(table, config)


def check_previous_groups(path: str, id_type: str):
    """A previous run's groups are committed, readable and of this run's id type, before the pipeline starts.

    `path` is the run's output directory or its groups/ folder. Returns the committed run.
    """
    option = "--previous-groups"
    committed = read_committed(committed_root(path), option)
    files = committed.paths("groups", ".parquet")
    if not files:
        raise QdedupError(f"{option} {path!r} lists no groups/ files in its commit marker")
    with FileSystems.open(files[0], compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        schema = pq.ParquetFile(handle).schema_arrow
    missing = [c for c in PREVIOUS_COLUMNS if c not in schema.names]
    if missing:
        raise QdedupError(f"{option} {path!r} lacks the columns {', '.join(missing)}: "
                          "it is not a qdedup groups/ directory (or one from before stable ids)")
    previous_type = "string" if str(schema.field("id").type) in ("string", "large_string") else "int64"
    if previous_type != id_type:
        raise QdedupError(f"{option} {path!r} has {previous_type} ids but --input has {id_type} ids")
    return committed


def differing_option(earlier: dict, now: dict, names: Iterable[str]) -> Optional[str]:
    """The first option whose value differs between two configurations, in words; None if all agree."""
    for name in names:
        if name == "fingerprints":
            for model in sorted(set(earlier.get(name) or {}) | set(now.get(name) or {})):
                before, after = (earlier.get(name) or {}).get(model), (now.get(name) or {}).get(model)
                if before != after:
                    return (f"another {model} model (fingerprint {str(before)[:12]}, this run's "
                            f"{str(after)[:12]}: its weights, vocabulary or config differ)")
        elif name == "int8_keys" and earlier.get(name) != now.get(name) and earlier.get("scoring_precision") == \
                now.get("scoring_precision"):
            return ("another int8 quantization (its calibration pairs, max length, qdedup's quantization settings "
                    f"or OpenVINO/NNCF/torch/transformers versions differ: {earlier.get(name)}, this run's "
                    f"{now.get(name)})")
        elif earlier.get(name) != now.get(name):
            return f"--{name.replace('_', '-')}={earlier.get(name)!r}, this run has {now.get(name)!r}"
    return None


def load_prior(path: str, extend: bool, configuration: dict, kinds: Iterable[str]) -> Prior:
    """Checks that `path` is a committed run whose state this run can use with its options; loads its arrays."""
    option = "--existing" if extend else "--params-from"
    committed = read_committed(path, option)
    state_format = committed.report.get("state_format")
    if state_format != STATE_FORMAT:
        raise QdedupError(f"{option} {path!r} has state format {state_format!r}, this qdedup needs "
                          f"{STATE_FORMAT}: run once in full (it can keep ids with --previous-groups)")
    earlier = committed.configuration
    differs = differing_option(earlier, configuration, EXTENSION_OPTIONS if extend else REUSED_OPTIONS)
    if differs:
        raise QdedupError(f"{option} {path!r} was made with {differs}: its "
                          + ("state and scores are only valid with the same options; keep them, or run in full "
                             "without --existing" if extend else
                             "parameters, vectors and scores are only valid with the same options"))
    prior = Prior(committed, extend)
    for kind in kinds:
        try:
            prior.params[kind] = load_arrays(committed.path(f"state/{kind}", "-params.npz"))
            centroids = load_arrays(committed.path(f"state/{kind}", "-centroids.npz"))["centroids"]
        except Exception as exc:
            raise QdedupError(f"{option} {path!r}: state/{kind}/ is missing or unreadable ({exc}); "
                              f"it was made without the {kind} embedder") from exc
        prior.centroids[kind] = GivenCentroids(centroids if centroids.size else None)
    return prior


def output_run(options: QdedupOptions) -> OutputRun:
    """The run's output (`--output`, `--overwrite`); its refusals name those flags."""
    return OutputRun(options.output, options.overwrite, names=OutputNames("--output", "--overwrite"))


class Launch(NamedTuple):
    """What the launch checks found: the input, the groups/ files whose ids groups keep (or None), the
    run's configuration (with the models' fingerprints and the scoring precision), and the run it
    builds on (or None)."""

    info: InputInfo
    previous_groups: Optional[list]
    configuration: dict
    prior: Optional[Prior]


def fit_sizes_to_input(options: QdedupOptions, rows: int) -> None:
    """Settings that follow the corpus's size, known at launch (with --existing, its rows too): the
    component rounds (when automatic), and no cutting of components when none can outgrow one re-split."""
    existing = read_committed(options.existing, "--existing").report.get("rows_out", 0) if options.existing else 0
    rows += existing
    if options.component_rounds is None:
        # Edges are scored candidate pairs: at most k per question and embedder.
        edges_per_node = options.top_k * len(parse_embedders(options.embedders))
        options.component_rounds = rounds_for(rows, edges_per_node, options.max_unsettled_edges)
    if rows <= options.resplit_gather:
        options.resplit_cut_steps = 0  # no component can be larger than the input


# Thread pools of the libraries a worker computes with: faiss (OpenMP), numpy's BLAS.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def divide_local_threads(options: QdedupOptions, pipeline_options: PipelineOptions) -> None:
    """Local worker processes share this machine's cores: with --torch-threads 0 each model gets its
    share (2 processes x 2 threads on 2 cores made scoring 22x slower, benchmarks/README.md), with
    --search-threads 0 each blocking search, and so do faiss's and BLAS's thread pools, through the
    environment the worker processes inherit (a variable already set is kept)."""
    if not local_runner.local_processes(pipeline_options):
        return
    direct = pipeline_options.view_as(DirectOptions)
    cores = len(os.sched_getaffinity(0))
    share = max(1, cores // (direct.direct_num_workers or cores))
    options.torch_threads = options.torch_threads or share
    options.search_threads = options.search_threads or share
    for variable in THREAD_VARIABLES:
        os.environ.setdefault(variable, str(share))


def prepare_local_run(options: QdedupOptions, pipeline_options: PipelineOptions) -> None:
    """What every command that runs a pipeline does before it starts one (`run`, `recall`, `review`): the
    cores divided between local worker processes, and Beam's local runner set up (`local_runner.prepare`:
    without it, worker processes lose elements). Nothing for Dataflow."""
    divide_local_threads(options, pipeline_options)
    local_runner.prepare(pipeline_options)


def check_run(options: QdedupOptions, pipeline_options: PipelineOptions) -> Launch:
    """Every check `qdedup run` makes once its output is locked: input, previous groups, device, models,
    and the run it builds on. Raises `QdedupError` naming the option to fix."""
    info = inspect_input(options.input, input_columns(options))
    previous_groups = None
    if options.previous_groups:
        previous_groups = check_previous_groups(options.previous_groups, info.id_type).paths("groups", ".parquet")
    check_device_here(pipeline_options, options.device)
    fit_sizes_to_input(options, info.rows)
    prepare_local_run(options, pipeline_options)
    configuration = effective_configuration(pipeline_options)
    configuration["fingerprints"] = check_models(options)
    configuration["scoring_precision"] = scoring_precision(options, pipeline_options)
    configuration["int8_models"] = check_int8(options, pipeline_options, configuration["fingerprints"])
    configuration["int8_keys"] = {role: made["key"] for role, made in configuration["int8_models"].items()} or None
    prior = None
    if options.existing or options.params_from:
        prior = load_prior(options.existing or options.params_from, bool(options.existing), configuration,
                           [kind for kind, _ in parse_embedders(options.embedders)])
        if options.existing:
            check_previous_groups(options.existing, info.id_type)
    return Launch(info, previous_groups, configuration, prior)
