"""qdedup's options: one definition, presets from YAML, flags on top.

A YAML preset is turned into flags placed before the command line's own, so a
flag given on the command line always wins and Beam options can sit in presets
too (`runner: FnApiRunner`).
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Sequence

import yaml
from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from transforms.block import BlockingSettings
from transforms.chaining import ChainingSettings
from transforms.errors import QdedupError
from transforms.feeding import AUTO_TOKEN_BUDGET, ModelSettings
from transforms.records import Columns

DEFAULT_SCORER = "IDEA-CCNL/Erlangshen-Roberta-110M-Similarity"
_SCORER = ModelSettings(DEFAULT_SCORER)
_BLOCKING = BlockingSettings()
_CHAINING = ChainingSettings()


EXPLAIN_MAX_EDGES = 10_000  # ~1 MB of edges a group; a group's widest paths cost (distinct bottlenecks x edges)


class QdedupOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        group = parser.add_argument_group("qdedup")
        add = group.add_argument
        add("--input", help="Parquet file pattern, local or gs:// (e.g. 'data/*.parquet')")
        add("--output", help="output directory: groups/, pairs/, rejected/, report.json")
        add("--config", help="YAML preset (configs/local.yaml, ...); flags override it")
        add("--id-column", "--id_column", dest="id_column", default="id", help="id column (integer or string)")
        add("--text-column", "--text_column", dest="text_column", default="question", help="question text column")
        add("--canonical", choices=("frequent", "earliest"), default="frequent",
            help="a group's canonical member: the most frequent text (then lowest id), "
                 "or the earliest row by --timestamp-column (then lowest id)")
        add("--timestamp-column", "--timestamp_column", dest="timestamp_column", default=None,
            help="timestamp, date or integer column that --canonical earliest orders rows by")
        add("--max-text-chars", "--max_text_chars", dest="max_text_chars", type=int, default=1000,
            help="longer texts are rejected (reason text_too_long)")
        add("--scorer-model", "--scorer_model", dest="scorer_model", default=_SCORER.model,
            help="cross-encoder: Hugging Face id or local directory")
        add("--positive-label", "--positive_label", dest="positive_label", type=int, default=None,
            help="the scorer's label that means 'duplicate' (needed when it has more than 2 labels; "
                 "a 2-label model uses label 1)")
        add("--threshold", type=float, default=0.5, help="pairs scoring at least this are duplicates")
        add("--component-rounds", "--component_rounds", dest="component_rounds", type=int, default=None,
            help="large-star/small-star rounds before unsettled components are finished by union-find; "
                 "default: from the input's row count at launch: none when rows x --top-k x embedders is within "
                 "--max-unsettled-edges (chaining control's cut then runs on one worker too), else ceil(log2 rows) + 2")
        add("--max-unsettled-edges", "--max_unsettled_edges", dest="max_unsettled_edges", type=int,
            default=20_000_000, help="most edges left unsettled after the rounds that one worker finishes (with "
                                    "no rounds, also the most pairs chaining control's cut takes on one worker); "
                                    "more fails the run, asking for more --component-rounds")
        add("--resplit-size", "--resplit_size", dest="resplit_size", type=int, default=_CHAINING.max_size,
            help="chaining control: a component with more distinct questions is re-split")
        add("--resplit-density", "--resplit_density", dest="resplit_density", type=float,
            default=_CHAINING.min_density,
            help="chaining control: a component (3+ questions) whose edges cover less of its pairs is re-split")
        add("--resplit-pairs", "--resplit_pairs", dest="resplit_pairs", type=int, default=_CHAINING.pair_budget,
            help="chaining control: most missing pairs scored per re-split component")
        add("--explain-max-edges", "--explain_max_edges", dest="explain_max_edges", type=int,
            default=EXPLAIN_MAX_EDGES, help="explain/: most edges of one group gathered to explain its rows; a "
                                            "larger group's rows are written with kind too_large (qdedup "
                                            "explain still answers for them)")
        add("--resplit-gather", "--resplit_gather", dest="resplit_gather", type=int, default=_CHAINING.max_gather,
            help="chaining control: most questions one re-split gathers on a worker; a larger component is "
                 "first cut by its edges at rising thresholds")
        add("--resplit-cut-steps", "--resplit_cut_steps", dest="resplit_cut_steps", type=int,
            default=_CHAINING.cut_steps, help="chaining control: rising thresholds a too-large component is cut at")
        add("--join-shard-keys", "--join_shard_keys", dest="join_shard_keys", type=int,
            default=_CHAINING.join_shard_keys,
            help="keys one shard of a sharded join holds on a worker: row ids (reading), normalized texts "
                 "(collapsing exact copies), node labels (chaining control; its pairs stream past them in lists)")
        add("--top-k", "--top_k", dest="top_k", type=int, default=_BLOCKING.top_k,
            help="candidate neighbours per question")
        add("--min-similarity", "--min_similarity", dest="min_similarity", type=float,
            default=_BLOCKING.min_similarity, help="blocking cosine below which no candidate is made")
        add("--partitions", type=int, default=_BLOCKING.partitions,
            help="kNN partitions; 0 = probes x questions / --partition-size")
        add("--partition-size", "--partition_size", dest="partition_size", type=int,
            default=_BLOCKING.partition_size, help="mean questions per partition when --partitions is 0")
        add("--probes", type=int, default=_BLOCKING.probes, help="partitions each question is placed in")
        add("--max-sample", "--max_sample", dest="max_sample", type=int, default=_BLOCKING.max_sample,
            help="most vectors one k-means trains on (first level, and each partition's second level); "
                 "first-level partitions are capped at this / 256")
        add("--max-block", "--max_block", dest="max_block", type=int, default=_BLOCKING.max_block,
            help="a larger partition is split by second-level centroids, and a sub-partition still larger "
                 "is cut into blocks of about this many (bounds a worker's memory)")
        add("--block-fanout", "--block_fanout", dest="block_fanout", type=int, default=_BLOCKING.max_fanout,
            help="a partition cut into at most this many blocks is searched block by block, exactly; one cut "
                 "into more, block by block alone (approximate, counted)")
        add("--search-threads", "--search_threads", dest="search_threads", type=int,
            default=_BLOCKING.search_threads,
            help="threads one blocking work item's lexical search is split over (the same lists); 0 = the cores "
                 "the process may use, divided by --direct_num_workers in a local multi_processing run")
        add("--embedders", default="lexical",
            help="comma-separated candidate generators, their candidates united: lexical, encoder:MODEL "
                 "(a Hugging Face encoder id or directory), static:DIR (made by qdedup train-blocker)")
        add("--encoder-pooling", "--encoder_pooling", dest="encoder_pooling", choices=("mean", "cls"),
            default="mean", help="how the encoder's token vectors become one vector")
        add("--encoder-whiten", "--encoder_whiten", dest="encoder_whiten", action="store_true", default=False,
            help="whiten encoder vectors with the corpus's mean and covariance")
        add("--lexical-dim", "--lexical_dim", dest="lexical_dim", type=int, default=1024,
            help="hashed TF-IDF dimension")
        add("--device", choices=("auto", "cpu", "cuda"), default=_SCORER.device,
            help="where the cross-encoder runs; cuda without a GPU is an error")
        add("--precision", choices=("auto", "fp32", "bf16", "fp16", "int8"), default=_SCORER.precision,
            help="auto: fp16 on CUDA, fp32 on CPU; int8: CPU only, the scorer and the "
                 "encoder quantized once by the launcher (OpenVINO + NNCF, static; needs qdedup[int8])")
        add("--calibration-pairs", "--calibration_pairs", dest="calibration_pairs", default=None,
            help="--precision int8: CSV with columns text_a, text_b whose pairs fix the int8 scales "
                 "(default: the set shipped as transforms/calibration_pairs.csv)")
        add("--token-budget", "--token_budget", dest="token_budget", type=int, default=_SCORER.token_budget,
            help=f"padded tokens per cross-encoder batch; 0 = {AUTO_TOKEN_BUDGET}")
        add("--sort-window", "--sort_window", dest="sort_window", type=int, default=_SCORER.sort_window,
            help="pairs sorted together by token length before packing batches")
        add("--max-length", "--max_length", dest="max_length", type=int, default=_SCORER.max_length,
            help="tokens per pair; longer pairs are truncated and counted")
        add("--symmetric", action="store_true", default=_SCORER.symmetric,
            help="score (a, b) and (b, a) and average them: twice the scoring cost")
        add("--model-copies", "--model_copies", dest="model_copies", type=int, default=_SCORER.model_copies,
            help="0: one model per SDK process; N: N copies shared by all processes of a worker")
        add("--torch-threads", "--torch_threads", dest="torch_threads", type=int, default=_SCORER.torch_threads,
            help="CPU threads per model; 0 = the cores the process may use")
        add("--existing", default=None,
            help="a previous run's --output to extend: only --input's new questions are embedded, searched and "
                 "scored; the output holds old and new rows; ids are kept as with --previous-groups")
        add("--params-from", "--params_from", dest="params_from", default=None,
            help="a previous run's --output whose fitted parameters (idf, whitening, partition centroids), "
                 "representatives, vectors and scores this full run reuses instead of fitting its own")
        add("--previous-groups", "--previous_groups", dest="previous_groups", default=None,
            help="a previous run's output directory (or its groups/): groups keep its ids; lineage/ records "
                 "merges and splits")
        add("--max-failed-share", "--max_failed_share", dest="max_failed_share", type=float, default=0.01,
            help="a run whose scorer or encoder fails on more than this share of its pairs or questions (or on "
                 "all of them) fails, and does not replace --output")
        add("--overwrite", action="store_true", default=False,
            help="let this run replace the run --output holds, once it has finished (nothing is deleted before)")
        add("--verbose", action="store_true", default=False,
            help="show every library's log lines and progress bars (by default only qdedup's own)")


def _config_path(argv: Sequence[str]) -> str | None:
    path = None
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
    return path


def preset_flags(path: str) -> list[str]:
    """The flags a YAML preset stands for: `key: value` -> `--key=value`; lists repeat the flag."""
    try:
        with open(path, encoding="utf-8") as handle:
            preset = yaml.safe_load(handle) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise QdedupError(f"--config {path!r} cannot be read: {exc}") from exc
    if not isinstance(preset, dict):
        raise QdedupError(f"--config {path!r} must be a mapping of option: value")
    flags: list[str] = []
    for key, value in preset.items():
        for item in value if isinstance(value, list) else [value]:
            if item is True:
                flags.append(f"--{key}")
            elif item is not False and item is not None:
                flags.append(f"--{key}={item}")
    return flags


def expand_argv(argv: Sequence[str]) -> list[str]:
    """Preset flags first, then the command line's, and every flag known to some option class."""
    argv = list(argv)
    path = _config_path(argv)
    expanded = (preset_flags(path) if path else []) + argv
    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(expanded)
    if unknown:
        known = [opt for action in parser._actions for opt in action.option_strings]
        flag = unknown[0].split("=", 1)[0]
        close = difflib.get_close_matches(flag, known, n=1)
        hint = f"; did you mean {close[0]}?" if close else "; see 'qdedup run --help'"
        raise QdedupError(f"unknown option {unknown[0]!r}{hint}")
    return expanded


def parse_embedders(value: str) -> list[tuple[str, str | None]]:
    """'lexical,encoder:MODEL,static:DIR' -> [("lexical", None), ("encoder", "MODEL"), ("static", "DIR")];
    one of each kind at most."""
    embedders: list[tuple[str, str | None]] = []
    for part in (p.strip() for p in value.split(",") if p.strip()):
        kind, _, model = part.partition(":")
        if kind == "lexical" and not model:
            embedders.append(("lexical", None))
        elif kind in ("encoder", "static") and model:
            embedders.append((kind, model))
        else:
            raise QdedupError(f"--embedders: {part!r} is none of 'lexical', 'encoder:MODEL', 'static:DIR'")
    kinds = [kind for kind, _ in embedders]
    if not embedders or len(set(kinds)) != len(kinds):
        raise QdedupError(f"--embedders {value!r}: name lexical, one encoder:MODEL and/or one static:DIR, "
                          "each once")
    return embedders


def effective_configuration(options: QdedupOptions) -> dict:
    configuration = options.view_as(QdedupOptions).get_all_options(current_only=True)
    configuration["runner"] = options.get_all_options().get("runner")
    return configuration


def input_columns(options: QdedupOptions) -> Columns:
    """The columns a run reads; the timestamp only where it decides the canonical member."""
    timestamp = options.timestamp_column if options.canonical == "earliest" else None
    return Columns(options.id_column, options.text_column, timestamp)


def scorer_settings(options: QdedupOptions, int8_models: dict | None = None) -> ModelSettings:
    """`int8_models`: {"scorer"/"encoder": what the launcher prepared for --precision int8} (`check_int8`)."""
    return ModelSettings(
        model=options.scorer_model, device=options.device, precision=options.precision,
        token_budget=options.token_budget, sort_window=options.sort_window, max_length=options.max_length,
        symmetric=options.symmetric, model_copies=options.model_copies, torch_threads=options.torch_threads,
        positive_label=1 if options.positive_label is None else options.positive_label,
        int8_model=(int8_models or {}).get("scorer", {}).get("folder", ""))


def blocking_settings(options: QdedupOptions) -> BlockingSettings:
    return BlockingSettings(
        top_k=options.top_k, min_similarity=options.min_similarity, partitions=options.partitions,
        partition_size=options.partition_size, probes=options.probes, max_block=options.max_block,
        max_sample=options.max_sample, max_fanout=options.block_fanout, search_threads=options.search_threads)


def chaining_settings(options: QdedupOptions) -> ChainingSettings:
    return ChainingSettings(threshold=options.threshold, max_size=options.resplit_size,
                            min_density=options.resplit_density, pair_budget=options.resplit_pairs,
                            max_gather=options.resplit_gather, cut_steps=options.resplit_cut_steps,
                            join_shard_keys=options.join_shard_keys,
                            # no component rounds: the whole graph fits one worker, which finds, judges and cuts
                            one_worker_pairs=options.max_unsettled_edges if options.component_rounds == 0 else 0)


def encoder_settings(options: QdedupOptions, model: str, int8_models: dict | None = None) -> ModelSettings:
    """The encoder runs on the same hardware, with the same batching knobs and precision, as the scorer."""
    return dataclasses.replace(scorer_settings(options), model=model, symmetric=False,
                               int8_model=(int8_models or {}).get("encoder", {}).get("folder", ""))
