"""The qdedup pipeline: read -> normalize -> embed -> block -> score -> cluster -> write."""
from __future__ import annotations

from typing import Optional

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
from transforms.state import (
    ExistingRun,
    ReadExisting,
    ReadExistingVectors,
    WriteEmbedderState,
    WriteRunState,
    update_top_sims,
)
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


def _zero(pipeline, label: str):
    return pipeline | f"Zero{label}" >> beam.Create([0])


def _write_report(_, configuration: dict, path: str, **counts) -> None:
    counts["exact_duplicates"] = counts["rows_accepted"] - counts["representatives"]
    write_json(path, build_report(counts, configuration))


def check_embedders(options: QdedupOptions) -> None:
    """Encoder models named in --embedders load, before any pipeline starts."""
    for kind, model in parse_embedders(options.embedders):
        if kind == "encoder":
            check_model(model, "--embedders encoder:")


def generate_candidates(pipeline: beam.Pipeline, options: QdedupOptions, columns: Columns,
                        existing: Optional[ExistingRun] = None) -> dict:
    """Read, normalize, embed and block: the part of a run that `qdedup recall` measures.

    Extending an `existing` run, only its new questions are embedded and queried,
    with the stored parameters, partitions and vectors.
    """
    stored = pipeline | "ReadExisting" >> ReadExisting(existing.output) if existing else None
    read = pipeline | "ReadQuestions" >> ReadQuestions(
        options.input, columns, options.max_text_chars,
        stored["members"] | "ExistingIds" >> beam.Map(lambda m: m.id) if stored else None)
    questions = read["questions"]
    collapsed = ((questions, stored["representatives"]) if stored else questions) \
        | "NormalizeAndCollapse" >> NormalizeAndCollapse(columns)
    new_reps = collapsed["new_representatives"]
    settings = blocking_settings(options)
    candidate_sets, embedders, failed = [], {}, []
    for kind, model in parse_embedders(options.embedders):
        if kind == "lexical":
            embedded = new_reps | "EmbedLexical" >> EmbedLexical(
                options.lexical_dim, existing.params[kind]["idf"] if existing else None)
        else:
            embedded = new_reps | "EmbedEncoder" >> EmbedEncoder(
                encoder_settings(options, model), options.encoder_pooling, options.encoder_whiten,
                existing.whitening(kind) if existing else None)
        vectors = embedded["vectors"]
        failed.append(embedded["failed"])
        if existing:
            items = stored["representatives"] | f"Existing{kind.title()}" >> ReadExistingVectors(
                existing.output, kind, settings)
            blocked = (vectors, items | f"{kind.title()}Items" >> beam.Map(lambda item: item[:3])) \
                | f"Block{kind.title()}" >> BlockCandidates(settings, kind, existing.centroids[kind])
            old_vectors, old_sims = update_top_sims(items, blocked["top_sims"], settings.top_k, kind.title())
            all_vectors = (vectors | f"{kind.title()}ById" >> beam.MapTuple(lambda rep, v: (rep.id, v)),
                           old_vectors) | f"{kind.title()}AllVectors" >> beam.Flatten()
            all_sims = (blocked["top_sims"], old_sims) | f"{kind.title()}AllSims" >> beam.Flatten()
        else:
            blocked = vectors | f"Block{kind.title()}" >> BlockCandidates(settings, kind)
            all_vectors = vectors | f"{kind.title()}ById" >> beam.MapTuple(lambda rep, v: (rep.id, v))
            all_sims = blocked["top_sims"]
        candidate_sets.append(blocked["pairs"])
        embedders[kind] = (all_vectors, all_sims, embedded["params"], blocked["centroids"])
    candidates = (candidate_sets[0] if len(candidate_sets) == 1
                  else tuple(candidate_sets) | "UnionCandidates" >> UnionCandidates())
    return {"read": read, "collapsed": collapsed, "candidates": candidates, "embedders": embedders,
            "stored": stored, "failed": failed}


def build_pipeline(pipeline: beam.Pipeline, options: QdedupOptions, info: InputInfo,
                   configuration: dict, existing: Optional[ExistingRun] = None) -> None:
    columns = input_columns(options)
    out = options.output

    generated = generate_candidates(pipeline, options, columns, existing)
    read, collapsed, candidates = generated["read"], generated["collapsed"], generated["candidates"]
    stored = generated["stored"]
    representatives = collapsed["representatives"]
    members = collapsed["members"]
    scoring = candidates | "ScorePairs" >> ScorePairs(scorer_settings(options))
    scored = scoring["scored"]
    if stored:
        members = (stored["members"], members) | "AllMembers" >> beam.Flatten()
        known = (stored["pairs"], scored) | "KnownPairs" >> beam.Flatten()
    else:
        known = scored
    previous_groups = output_path(existing.output, "groups") if existing else options.previous_groups
    previous = pipeline | "ReadPreviousGroups" >> ReadPreviousGroups(previous_groups)
    clustered = (representatives, members, known, previous) | "ClusterGroups" >> ClusterGroups(
        chaining_settings(options), options.component_rounds, ScorePairs(scorer_settings(options)),
        options.canonical)
    groups = clustered["groups"]
    all_scored = (known, clustered["scored"]) | "AllScoredPairs" >> beam.Flatten()
    rejected = (
        (read["rejected"], collapsed["rejected"], *generated["failed"], scoring["failed"], clustered["failed"])
        | "AllRejected" >> beam.Flatten()
    )
    rejected_rows = rejected | "RejectedRows" >> beam.Filter(lambda r: r.kind == "row")

    groups | "WriteGroups" >> WriteRecords(out, "groups", groups_schema(info.id_type))
    all_scored | "WritePairs" >> WriteRecords(out, "pairs", pairs_schema(info.id_type))
    rejected | "WriteRejected" >> WriteRecords(out, "rejected", REJECTED_SCHEMA)
    clustered["lineage"] | "WriteLineage" >> WriteRecords(out, "lineage", lineage_schema(info.id_type))
    (representatives, members) | "WriteRunState" >> WriteRunState(out, info.id_type)
    for kind, parts in generated["embedders"].items():
        parts | f"Write{kind.title()}State" >> WriteEmbedderState(out, kind, info.id_type)

    counts = {
        "rows_in": read["rows_in"],
        "rows_existing": _count(stored["members"], "Existing") if stored else _zero(pipeline, "Existing"),
        "rows_rejected": _count(rejected_rows, "Rejected"),
        "questions_failed": _count(rejected | "FailedQuestions" >> beam.Filter(lambda r: r.kind == "question"),
                                   "FailedQuestions"),
        "pairs_failed": _count(rejected | "FailedPairs" >> beam.Filter(lambda r: r.kind == "pair"), "FailedPairs"),
        "rows_out": _count(groups, "GroupRows"),
        "rows_accepted": _count(members, "Accepted"),
        "representatives": _count(representatives, "Representatives"),
        "new_representatives": _count(collapsed["new_representatives"], "NewRepresentatives"),
        "candidate_pairs": _count(candidates, "Candidates"),
        "pairs_scored": _count(scored, "Scored"),
        "resplit_pairs_scored": _count(clustered["scored"], "ResplitScored"),
        "pairs_total": _count(all_scored, "AllPairs"),
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
