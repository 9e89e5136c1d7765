"""The qdedup pipeline: read -> normalize -> embed -> block -> score -> cluster -> write."""
from __future__ import annotations

from typing import NamedTuple, Optional

import apache_beam as beam

from pipelines.options import (
    QdedupOptions,
    blocking_settings,
    chaining_settings,
    encoder_settings,
    input_columns,
    parse_embedders,
    scorer_settings,
)
from pipelines.report import COUNTED
from transforms.block import BlockCandidates, DistinctCandidates
from transforms.chaining import SplitChains
from transforms.cluster import ClusterGroups, ConnectedComponents
from transforms.coders import use_record_coder
from transforms.commit import OutputRun
from transforms.embed import EmbedEncoder, EmbedLexical, EmbedStatic
from transforms.explain import Explainer
from transforms.feeding import ModelSettings
from transforms.ids import AssignGroupIds, ReadPreviousGroups, first_run_id
from transforms.metrics import count_elements
from transforms.normalize import Collapsed, NormalizeAndCollapse
from transforms.read import Read, ReadQuestions
from transforms.records import Columns, Embedded
from transforms.score import ScoreCandidates, ScoreNeighbours, TokenizeAhead
from transforms.state import (
    Prior,
    ReadPrior,
    SplitByStoredVector,
    Stored,
    WriteEmbedderState,
    WriteRunState,
)
from transforms.write import (
    REJECTED_SCHEMA,
    WriteRecords,
    explain_schema,
    groups_schema,
    lineage_schema,
    pairs_schema,
)


class EmbedderOutputs(NamedTuple):
    """What a run keeps of one embedder: each question's `VectorRecord` (its vector and k nearest, from
    blocking), the parameters and the centroids (first level, and second level as (partition, array))."""

    records: beam.PCollection
    params: beam.PCollection
    centroids: beam.PCollection
    sub_centroids: beam.PCollection


class Candidates(NamedTuple):
    """Read, normalize, embed and block, as `qdedup run` and `qdedup recall` share them. `found`: each
    embedder's neighbour lists ({kind: `Blocked.found`}): `DistinctCandidates` makes the pairs of them,
    `ScoreNeighbours` scores them without making them one by one."""

    read: Read
    collapsed: Collapsed
    found: dict
    embedders: dict            # kind -> EmbedderOutputs
    stored: Optional[Stored]   # what ReadPrior read, with a prior run
    failed: list               # RejectedRow PCollections of questions no vector was made for
    embedded: list             # PCollections of the representatives each embedder embedded
    tokenized: Optional[beam.PCollection] = None  # (id, text as the scorer takes it): `tokenized_texts`
    most_found: tuple = ()     # each embedder's `Blocked.most_found`: what sizes `ScoreNeighbours`' shards


def generate_candidates(pipeline: beam.Pipeline, options: QdedupOptions, columns: Columns,
                        prior: Optional[Prior] = None, int8_models: Optional[dict] = None,
                        scorer: Optional[ModelSettings] = None) -> Candidates:
    """Read, normalize, embed and block: the part of a run that `qdedup recall` measures.

    `int8_models`: what the launcher prepared for --precision int8 (`preflight.check_int8`).
    `scorer`: the pairs' scorer, where they are scored: the texts blocking carries into its pairs are
    then tokenized ahead for it (`TokenizeAhead`), each question once.
    With a `prior` run, questions it holds a vector for are not embedded again. Extending it
    (`prior.extend`), only the new questions are searched, against everything, and the stored k
    nearest of the others are updated; otherwise (`--params-from`) everything is searched with its
    parameters and centroids.
    """
    use_record_coder()
    kinds = [kind for kind, _ in parse_embedders(options.embedders)]
    stored = pipeline | "ReadPrior" >> ReadPrior(prior, kinds) if prior else None
    extend = bool(prior and prior.extend)
    read = pipeline | "ReadQuestions" >> ReadQuestions(
        options.input, columns, options.max_text_chars,
        stored.members | "ExistingIds" >> beam.Map(lambda m: m.id) if extend else None, options.join_shard_keys)
    collapsed = ((read.questions, stored.representatives) if prior else read.questions) \
        | "NormalizeAndCollapse" >> NormalizeAndCollapse(columns, extend, options.join_shard_keys)
    representatives = collapsed.representatives
    settings = blocking_settings(options)
    found, most_found, embedders, failed, embedded_reps, tokenized = {}, [], {}, [], [], None
    for kind, model in parse_embedders(options.embedders):
        label = kind.title()
        to_embed, known = representatives, None
        if prior:
            split = (representatives, stored.vectors[kind]) | f"{label}Stored" >> SplitByStoredVector(extend)
            to_embed, known = split.to_embed, split.stored
        if kind == "lexical":
            embedded = to_embed | "EmbedLexical" >> EmbedLexical(
                options.lexical_dim, prior.params[kind]["idf"] if prior else None)
        elif kind == "static":
            embedded = to_embed | "EmbedStatic" >> EmbedStatic(model)
        else:
            embedded = to_embed | "EmbedEncoder" >> EmbedEncoder(
                encoder_settings(options, model, int8_models), options.encoder_pooling, options.encoder_whiten,
                prior.whitening(kind) if prior else None)
        vectors = embedded.vectors
        carried = vectors if scorer is None else _tokenized_ahead(vectors, scorer, label)
        failed.append(embedded.failed)
        embedded_reps.append(to_embed)
        centroids = prior.centroids[kind] if prior else None
        sub_centroids = stored.sub_centroids[kind] if prior else None
        if extend:
            blocked = (carried, known) | f"Block{label}" >> BlockCandidates(settings, centroids, sub_centroids)
        elif prior:
            searched = (carried, known if scorer is None else _tokenized_ahead(known, scorer, f"{label}Stored")) \
                | f"{label}Searched" >> beam.Flatten()
            blocked = searched | f"Block{label}" >> BlockCandidates(settings, centroids, sub_centroids)
        else:
            blocked = carried | f"Block{label}" >> BlockCandidates(settings)
        if scorer is not None and not prior and len(kinds) == 1:
            tokenized = carried | f"{label}TokenizedTexts" >> beam.Map(lambda item: (item.rep.id, item.rep.text))
        found[kind] = blocked.found
        most_found.append(blocked.most_found)
        embedders[kind] = EmbedderOutputs(blocked.records, embedded.params, blocked.centroids, blocked.sub_centroids)
    return Candidates(read, collapsed, found, embedders, stored, failed, embedded_reps, tokenized, tuple(most_found))


def tokenized_texts(generated: Candidates, scorer: ModelSettings) -> beam.PCollection:
    """(id, text as `scorer` takes it) for every question chaining control may re-split: a node of a component
    is an end of a scored pair, so a question blocking searched. With no prior run and one embedder those
    are the texts its items carried into blocking, tokenized already (`Candidates.tokenized`); otherwise
    every representative's, tokenized here (a prior run's stored questions, several embedders' questions)."""
    if generated.tokenized is not None:
        return generated.tokenized
    return (generated.collapsed.representatives | "RepresentativeText" >> beam.Map(lambda rep: (rep.id, rep.text))
            | "TextsAhead" >> TokenizeAhead(scorer))


def _tokenized_ahead(items, scorer: ModelSettings, label: str):
    """`Embedded` items -> the same, each representative's text as `scorer` takes it (`TokenizeAhead`)."""
    return items | f"{label}TokenizeAhead" >> TokenizeAhead(scorer, _rep_text, _with_rep_text)


def _rep_text(item: Embedded) -> str:
    return item.rep.text


def _with_rep_text(item: Embedded, text) -> Embedded:
    return Embedded(item.rep._replace(text=text), item.vector)


def build_pipeline(pipeline: beam.Pipeline, options: QdedupOptions, id_type: str, configuration: dict,
                   out: OutputRun, prior: Optional[Prior] = None, previous_groups: Optional[list] = None) -> None:
    """The whole run, writing under `out`. `previous_groups`: the groups/ files whose ids groups keep."""
    columns = input_columns(options)
    int8_models = configuration.get("int8_models")
    scorer = scorer_settings(options, int8_models)
    generated = generate_candidates(pipeline, options, columns, prior, int8_models, scorer)
    read, collapsed = generated.read, generated.collapsed
    representatives, members = collapsed.representatives, collapsed.members
    known_scores = generated.stored.pairs if prior else None
    texts = tokenized_texts(generated, scorer)
    if prior:
        candidates = generated.found | "DistinctCandidates" >> DistinctCandidates()
        scoring = candidates | "ScoreCandidates" >> ScoreCandidates(scorer, known_scores, texts)
    else:  # nothing to reuse or fetch: pairs go from the neighbour lists into scoring shards (counted there)
        candidates, scoring = None, generated.found | "ScoreNeighbours" >> ScoreNeighbours(scorer, generated.most_found)
    if prior and prior.extend:
        members = (generated.stored.members, members) | "AllMembers" >> beam.Flatten()
        previous_groups = prior.committed.paths("groups", ".parquet")
    previous = pipeline | "ReadPreviousGroups" >> ReadPreviousGroups(previous_groups or [])
    chaining = chaining_settings(options)
    components = ConnectedComponents(options.component_rounds, options.max_unsettled_edges)
    clustered = (representatives, members, scoring.scored, previous) | "ClusterGroups" >> ClusterGroups(
        SplitChains(chaining, ScoreCandidates(scorer, known_scores), components, texts),
        AssignGroupIds(first_run=not previous_groups), Explainer(chaining.threshold, options.explain_max_edges),
        options.canonical, None if previous_groups else first_run_id)
    groups = clustered.groups
    all_pairs = (scoring.scored, clustered.scored) | "AllPairs" >> beam.Flatten()  # scored batches
    rejected = (
        (read.rejected, collapsed.rejected, *generated.failed, scoring.failed, clustered.failed)
        | "AllRejected" >> beam.Flatten()
    )
    rejected_rows = rejected | "RejectedRows" >> beam.Filter(lambda r: r.kind == "row")
    failures = rejected | "ModelFailures" >> beam.Filter(lambda r: r.kind in ("question", "pair"))

    groups | "WriteGroups" >> WriteRecords(out.file_prefix("groups"), groups_schema(id_type))
    all_pairs | "WritePairs" >> WriteRecords(out.file_prefix("pairs"), pairs_schema(id_type), batched=True)
    rejected | "WriteRejected" >> WriteRecords(out.file_prefix("rejected"), REJECTED_SCHEMA)
    clustered.lineage | "WriteLineage" >> WriteRecords(out.file_prefix("lineage"), lineage_schema(id_type))
    clustered.explained | "WriteExplain" >> WriteRecords(out.file_prefix("explain"), explain_schema(id_type))
    (representatives, members) | "WriteRunState" >> WriteRunState(
        out.file_prefix("state", "representatives"), out.file_prefix("state", "members"), id_type)
    for kind, parts in generated.embedders.items():
        parts | f"Write{kind.title()}State" >> WriteEmbedderState(
            out.file_prefix("state", kind), out.file_prefix("state", kind, "vectors"),
            out.file_prefix("state", kind, "subcentroids"), id_type)

    stored_members = generated.stored.members if prior and prior.extend else None
    embedded = (tuple(generated.embedded) | "AllEmbedded" >> beam.Flatten() if len(generated.embedded) > 1
                else generated.embedded[0])
    counted = {
        "rows_in": read.rows,
        "rows_rejected": rejected_rows,
        "questions_embedded": embedded,
        "questions_failed": failures | "FailedQuestions" >> beam.Filter(lambda r: r.kind == "question"),
        "pairs_failed": failures | "FailedPairs" >> beam.Filter(lambda r: r.kind == "pair"),
        "rows_out": groups,
        "rows_accepted": members,
        "representatives": representatives,
        "new_representatives": collapsed.new_representatives,
        "pairs_scored": scoring.new,
        "pairs_reused": scoring.reused,
        "resplit_pairs": clustered.scored,
        "resplit_pairs_scored": clustered.new,
        "pairs_total": all_pairs,
        "groups": clustered.ids,
        "groups_inherited": tuple(part | f"Inherited{i}" >> beam.Filter(lambda kv: kv[1].inherited)
                                  for i, part in enumerate(clustered.ids)),
        "lineage_merged": clustered.lineage | "Merged" >> beam.Filter(lambda r: r.event == "merged"),
        "lineage_split": clustered.lineage | "Split" >> beam.Filter(lambda r: r.event == "split"),
    }
    if stored_members:
        counted["rows_existing"] = stored_members
    if candidates is not None:
        counted["candidate_pairs"] = candidates
    assert set(counted) <= set(COUNTED), set(counted) - set(COUNTED)
    in_batches = {"pairs_scored", "pairs_reused", "resplit_pairs", "resplit_pairs_scored", "pairs_total"}
    for name, counted_pcolls in counted.items():
        size = (lambda row: row.group_size) if name == "rows_out" else None
        items = len if name in in_batches else (int if name == "rows_in" else None)  # read's rows: a count a batch
        step = f"Count{name.title().replace('_', '')}"
        parts = counted_pcolls if isinstance(counted_pcolls, tuple) else (counted_pcolls,)
        for i, part in enumerate(parts):  # a count in parts: each part counted under the one name
            part | (f"{step}{i}" if i else step) >> count_elements(name, size, items)
