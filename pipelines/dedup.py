"""The qdedup pipeline: read -> normalize -> embed -> block -> score -> cluster -> write."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.pvalue import AsSingleton

from pipelines.options import (
    QdedupOptions,
    blocking_settings,
    chaining_settings,
    encoder_settings,
    input_columns,
    parse_embedders,
    scorer_settings,
)
from transforms.block import BlockCandidates, UnionCandidates
from transforms.cluster import ClusterGroups
from transforms.embed import EmbedEncoder, EmbedLexical
from transforms.ids import ReadPreviousGroups
from transforms.model import check_model
from transforms.normalize import NormalizeAndCollapse
from transforms.read import Columns, InputInfo, ReadQuestions
from transforms.score import ScorePairs
from transforms.write import (
    REJECTED_SCHEMA,
    WriteRecords,
    build_report,
    groups_schema,
    lineage_schema,
    output_path,
    pairs_schema,
    write_json,
)


def _count(pcoll, label: str):
    return pcoll | f"Count{label}" >> beam.combiners.Count.Globally()


def _write_report(_, configuration: dict, path: str, **counts) -> None:
    counts["exact_duplicates"] = counts.pop("rows_accepted") - counts.pop("representatives")
    write_json(path, build_report(counts, configuration))


def check_embedders(options: QdedupOptions) -> None:
    """Encoder models named in --embedders load, before any pipeline starts."""
    for kind, model in parse_embedders(options.embedders):
        if kind == "encoder":
            check_model(model, "--embedders encoder:")


def generate_candidates(pipeline: beam.Pipeline, options: QdedupOptions, columns: Columns) -> dict:
    """Read, normalize, embed and block: the part of a run that `qdedup recall` measures."""
    read = pipeline | "ReadQuestions" >> ReadQuestions(options.input, columns, options.max_text_chars)
    collapsed = read["questions"] | "NormalizeAndCollapse" >> NormalizeAndCollapse(columns)
    representatives = collapsed["representatives"]
    candidate_sets = []
    for kind, model in parse_embedders(options.embedders):
        if kind == "lexical":
            vectors = representatives | "EmbedLexical" >> EmbedLexical(options.lexical_dim)
        else:
            vectors = representatives | "EmbedEncoder" >> EmbedEncoder(
                encoder_settings(options, model), options.encoder_pooling, options.encoder_whiten)
        candidate_sets.append(
            vectors | f"Block{kind.title()}" >> BlockCandidates(blocking_settings(options), kind))
    candidates = (candidate_sets[0] if len(candidate_sets) == 1
                  else tuple(candidate_sets) | "UnionCandidates" >> UnionCandidates())
    return {"read": read, "collapsed": collapsed, "candidates": candidates}


def build_pipeline(pipeline: beam.Pipeline, options: QdedupOptions, info: InputInfo,
                   configuration: dict) -> None:
    columns = input_columns(options)
    out = options.output

    generated = generate_candidates(pipeline, options, columns)
    read, collapsed, candidates = generated["read"], generated["collapsed"], generated["candidates"]
    representatives = collapsed["representatives"]
    scored = candidates | "ScorePairs" >> ScorePairs(scorer_settings(options))
    previous = pipeline | "ReadPreviousGroups" >> ReadPreviousGroups(options.previous_groups)
    clustered = (representatives, collapsed["members"], scored, previous) | "ClusterGroups" >> ClusterGroups(
        chaining_settings(options), options.component_rounds, ScorePairs(scorer_settings(options)),
        options.canonical)
    groups = clustered["groups"]
    all_scored = (scored, clustered["scored"]) | "AllScoredPairs" >> beam.Flatten()
    rejected = (read["rejected"], collapsed["rejected"]) | "AllRejected" >> beam.Flatten()

    groups | "WriteGroups" >> WriteRecords(out, "groups", groups_schema(info.id_type))
    all_scored | "WritePairs" >> WriteRecords(out, "pairs", pairs_schema(info.id_type))
    rejected | "WriteRejected" >> WriteRecords(out, "rejected", REJECTED_SCHEMA)
    clustered["lineage"] | "WriteLineage" >> WriteRecords(out, "lineage", lineage_schema(info.id_type))

    counts = {
        "rows_in": read["rows_in"],
        "rows_rejected": _count(rejected, "Rejected"),
        "rows_out": _count(groups, "GroupRows"),
        "rows_accepted": _count(collapsed["members"], "Accepted"),
        "representatives": _count(representatives, "Representatives"),
        "candidate_pairs": _count(candidates, "Candidates"),
        "pairs_scored": _count(scored, "Scored"),
        "resplit_pairs_scored": _count(clustered["scored"], "ResplitScored"),
        "groups": _count(clustered["ids"], "Groups"),
        "groups_inherited": _count(clustered["ids"] | "Inherited" >> beam.Filter(lambda kv: kv[1].inherited),
                                   "Inherited"),
        "lineage_merged": _count(clustered["lineage"] | "Merged" >> beam.Filter(lambda r: r.event == "merged"),
                                 "Merged"),
        "lineage_split": _count(clustered["lineage"] | "Split" >> beam.Filter(lambda r: r.event == "split"),
                                "Split"),
        "largest_group": groups
        | "GroupSizes" >> beam.Map(lambda row: row.group_size)
        | "LargestGroup" >> beam.CombineGlobally(lambda sizes: max(sizes, default=0)),
    }
    (
        pipeline
        | "ReportTrigger" >> beam.Create([None])
        | "WriteReport" >> beam.Map(
            _write_report, configuration, output_path(out, "report.json"),
            **{name: AsSingleton(pcoll) for name, pcoll in counts.items()})
    )
