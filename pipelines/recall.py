"""`qdedup recall --pairs FILE`: how many labelled duplicates blocking would hand to the scorer.

The corpus is the labelled file's unique questions; normalization, embedding
and blocking run exactly as in `qdedup run` (the same `generate_candidates`),
so the figure is the recall ceiling of a run with the same options.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tempfile
from typing import NamedTuple, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.dedup import generate_candidates
from pipelines.options import (
    QdedupOptions,
    effective_configuration,
    expand_argv,
)
from pipelines.preflight import check_embedders, check_int8, prepare_local_run, validate
from transforms.block import DistinctCandidates
from transforms.errors import QdedupError
from transforms.records import Columns
from transforms.write import WriteRecords


class _IdPair(NamedTuple):
    id_a: int
    id_b: int


_COLUMN_NAMES = (("text_a", "text_b"), ("sentence1", "sentence2"), ("question1", "question2"))


def read_labelled_pairs(path: str) -> list[tuple[str, str, int]]:
    """TSV `text_a<TAB>text_b<TAB>label` without header, or CSV / Parquet with named columns; local or on any
    Beam filesystem (gs://, s3://)."""
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            data = handle.read()
    except FileNotFoundError as exc:
        raise QdedupError(f"--pairs {path!r}: no such file") from exc
    except Exception as exc:
        raise QdedupError(f"--pairs {path!r}: cannot be read ({exc})") from exc
    if path.endswith(".parquet"):
        rows = pq.read_table(pa.BufferReader(data)).to_pylist()
    elif path.endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    else:
        rows = []
        for number, line in enumerate(data.decode("utf-8-sig").splitlines(), 1):
            fields = line.split("\t")
            if len(fields) != 3:
                raise QdedupError(f"{path} line {number}: expected text_a<TAB>text_b<TAB>label")
            rows.append({"text_a": fields[0], "text_b": fields[1], "label": fields[2]})
    if not rows:
        return []
    names = next((pair for pair in _COLUMN_NAMES if set(pair) <= set(rows[0])), None)
    if names is None or "label" not in rows[0]:
        raise QdedupError(f"{path}: needs columns label and one of "
                          + ", ".join("/".join(pair) for pair in _COLUMN_NAMES))
    pairs = []
    for number, row in enumerate(rows, 1):
        try:
            pairs.append((row[names[0]], row[names[1]], int(row["label"])))
        except (TypeError, ValueError) as exc:
            raise QdedupError(f"{path} row {number}: label {row['label']!r} is not 0 or 1") from exc
    return pairs


def recall_figures(pairs: Sequence[tuple[str, str, int]], representative: dict, candidates: set) -> dict:
    """`representative`: text -> representative id (absent if rejected); `candidates`: {(id_a, id_b)}."""
    counts = {"positives": 0, "positives_found": 0, "negatives": 0, "negatives_found": 0, "pairs_not_in_corpus": 0}
    for a, b, label in pairs:
        if a not in representative or b not in representative:
            counts["pairs_not_in_corpus"] += 1
            continue
        rep_a, rep_b = representative[a], representative[b]
        found = rep_a == rep_b or (min(rep_a, rep_b), max(rep_a, rep_b)) in candidates
        kind = "positives" if label == 1 else "negatives"
        counts[kind] += 1
        counts[f"{kind}_found"] += found
    questions = len(set(representative.values()))
    return {
        **counts,
        "positive_recall": counts["positives_found"] / counts["positives"] if counts["positives"] else None,
        "negative_candidate_share": counts["negatives_found"] / counts["negatives"] if counts["negatives"] else None,
        "questions": questions,
        "candidate_pairs": len(candidates),
        "candidates_per_question": len(candidates) / questions if questions else 0.0,
    }


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="qdedup recall", add_help=False)
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--report", help="also write the figures to this JSON file")
    try:
        return parser.parse_known_args(argv)
    except SystemExit as exc:
        raise QdedupError("qdedup recall needs --pairs FILE (TSV, CSV or Parquet of text_a, text_b, label)") from exc


def recall(argv: Sequence[str]) -> int:
    args, rest = _parse(argv)
    pairs = read_labelled_pairs(args.pairs)
    texts = sorted({t for a, b, _ in pairs for t in (a, b) if isinstance(t, str)})
    work = tempfile.mkdtemp(prefix="qdedup_recall_")
    corpus = os.path.join(work, "corpus.parquet")
    pq.write_table(pa.table({"id": pa.array(range(len(texts)), pa.int64()), "question": texts}), corpus)

    pipeline_options = PipelineOptions(expand_argv([*rest, "--input", corpus, "--output", work]))
    options = pipeline_options.view_as(QdedupOptions)
    validate(options)
    int8_models = check_int8(options, pipeline_options, check_embedders(options))
    prepare_local_run(options, pipeline_options)
    columns = Columns("id", "question")
    with beam.Pipeline(options=pipeline_options) as pipeline:
        generated = generate_candidates(pipeline, options, columns, int8_models=int8_models)
        generated.collapsed.members | "WriteMembers" >> WriteRecords(
            os.path.join(work, "members", "part"),
            pa.schema([("id", pa.int64()), ("rep_id", pa.int64()), ("key", pa.string())]))
        generated.found | "DistinctCandidates" >> DistinctCandidates() | "CandidateIds" >> beam.Map(
            lambda pair: _IdPair(pair.id_a, pair.id_b)) | "WriteCandidates" >> WriteRecords(
            os.path.join(work, "candidates", "part"), pa.schema([("id_a", pa.int64()), ("id_b", pa.int64())]))

    representative = {texts[m["id"]]: m["rep_id"] for m in pq.read_table(os.path.join(work, "members")).to_pylist()}
    candidates = {(c["id_a"], c["id_b"]) for c in pq.read_table(os.path.join(work, "candidates")).to_pylist()}
    figures = recall_figures(pairs, representative, candidates)
    configuration = effective_configuration(pipeline_options)
    for name in ("input", "output", "scorer_model", "threshold", "overwrite", "config"):
        configuration.pop(name, None)
    figures["configuration"] = configuration
    _print_table(args.pairs, figures)
    if args.report:
        with open(args.report, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, ensure_ascii=False, indent=2)
    return 0


def _print_table(path: str, figures: dict) -> None:
    config = figures["configuration"]
    recall_text = "n/a" if figures["positive_recall"] is None else f"{figures['positive_recall']:.2%}"
    negative_text = ("n/a" if figures["negative_candidate_share"] is None
                     else f"{figures['negative_candidate_share']:.2%}")
    print(f"{path}: {figures['questions']} distinct questions, embedders {config['embedders']}, "
          f"top-k {config['top_k']}, min similarity {config['min_similarity']}")
    print(f"  positive pairs that became candidates: {figures['positives_found']} / {figures['positives']}"
          f" = {recall_text}")
    print(f"  negative pairs that became candidates: {figures['negatives_found']} / {figures['negatives']}"
          f" = {negative_text}")
    print(f"  candidate pairs: {figures['candidate_pairs']} ({figures['candidates_per_question']:.2f} per question)")
    if figures["pairs_not_in_corpus"]:
        print(f"  labelled pairs with a rejected question, left out: {figures['pairs_not_in_corpus']}",
              file=sys.stderr)
