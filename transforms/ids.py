"""Group ids that stay put from one run to the next (DESIGN.md step 7).

Downstream analytics join on group ids night after night, so a group keeps the
id it had in the previous run's `groups/` (`--previous-groups`):

- a previous group's id goes to the current group holding most of its rows
  (on a split, the largest part keeps it; ties go to the lower group);
- a current group offered several previous ids (a merge) keeps the oldest,
  the one founded in the earliest run (then the larger overlap, then the lower id);
- any other group is new and takes the id of its founding member, the
  canonical one; should that id be held by another group (a split where the
  founding member left its old group), the lowest member id that is free;
  should none be, a derived id: `-(id) - 1` for integer ids, `id + "~"` for
  strings.

`lineage/` records each previous group whose rows moved: `merged` (its id
retired into a group that kept an older one) and `split` (part of its rows
left for a group that did not take its id).
"""
from __future__ import annotations

from typing import Iterable, NamedTuple, Optional

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import ReadFromParquet

from transforms.errors import QdedupError

PREVIOUS_COLUMNS = ("id", "group_id", "group_since_run")


class PreviousRow(NamedTuple):
    id: object
    group_id: object
    group_since_run: int


class Offer(NamedTuple):
    previous_id: object
    since_run: int
    overlap: int


class LineageRow(NamedTuple):
    group_id: object
    previous_group_id: object
    event: str          # "merged" or "split"
    rows_moved: int     # rows of the previous group now in group_id


class AssignedId(NamedTuple):
    group_id: object
    since_run: int
    inherited: bool


def award(claims: Iterable[tuple[object, int]]) -> object:
    """The label that takes a previous id: the largest overlap, then the lowest label."""
    return min(claims, key=lambda claim: (-claim[1], claim[0]))[0]


def choose_inherited(offers: Iterable[Offer]) -> Optional[Offer]:
    """Of the previous ids offered to one group, the oldest survives."""
    return min(offers, key=lambda o: (o.since_run, -o.overlap, o.previous_id), default=None)


def derived_id(row_id: object) -> object:
    return f"{row_id}~" if isinstance(row_id, str) else -row_id - 1


def founding_id(canonical_id: object, member_ids: Iterable, taken: set) -> object:
    """A new group's id: its canonical member's id when free, else the lowest free member id."""
    if canonical_id not in taken:
        return canonical_id
    free = sorted(set(member_ids) - taken)
    return free[0] if free else derived_id(canonical_id)


def previous_pattern(directory: str) -> str:
    return FileSystems.join(directory, "*.parquet")


def check_previous_groups(directory: str, id_type: str) -> None:
    """A previous run's groups/ is readable and its ids have this run's type, before the pipeline starts."""
    option = "--previous-groups"
    try:
        files = [m.path for m in FileSystems.match([previous_pattern(directory)])[0].metadata_list]
    except Exception as exc:
        raise QdedupError(f"{option} {directory!r} cannot be listed: {exc}") from exc
    if not files:
        raise QdedupError(f"{option} {directory!r} holds no Parquet files; give a previous run's groups/ directory")
    with FileSystems.open(sorted(files)[0], compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        schema = pq.ParquetFile(handle).schema_arrow
    missing = [c for c in PREVIOUS_COLUMNS if c not in schema.names]
    if missing:
        raise QdedupError(f"{option} {directory!r} lacks the columns {', '.join(missing)}: "
                          "it is not a qdedup groups/ directory (or one from before stable ids)")
    previous_type = "string" if str(schema.field("id").type) in ("string", "large_string") else "int64"
    if previous_type != id_type:
        raise QdedupError(f"{option} {directory!r} has {previous_type} ids but --input has {id_type} ids")


class ReadPreviousGroups(beam.PTransform):
    """A previous run's groups/ -> `PreviousRow`s; nothing when there is none."""

    def __init__(self, directory: Optional[str]):
        super().__init__()
        self._directory = directory

    def expand(self, pbegin):
        if not self._directory:
            return pbegin | "NoPreviousGroups" >> beam.Create([]).with_output_types(PreviousRow)
        return (
            pbegin
            | "ReadGroups" >> ReadFromParquet(previous_pattern(self._directory), columns=list(PREVIOUS_COLUMNS))
            | "ToPreviousRow" >> beam.Map(lambda row: PreviousRow(row["id"], row["group_id"], row["group_since_run"]))
        )


# ---- Beam glue ----

def _overlaps(element) -> Iterable[tuple]:
    """(row id, {label, previous}) -> ((label, previous id, since run), 1)."""
    _, joined = element
    for label in joined["label"]:
        for previous in joined["previous"]:
            yield (label, previous.group_id, previous.group_since_run), 1


def _award(element) -> Iterable:
    previous_id, claims = element
    claims = list(claims)
    winner = award((label, overlap) for label, _, overlap in claims)
    for label, since_run, overlap in claims:
        if label == winner:
            yield label, Offer(previous_id, since_run, overlap)
        else:
            yield beam.pvalue.TaggedOutput("split", (label, (previous_id, overlap)))


def _inherit(element) -> Iterable:
    label, offers = element
    offers = list(offers)
    kept = choose_inherited(offers)
    yield label, kept
    for offer in offers:
        if offer is not kept:
            yield beam.pvalue.TaggedOutput("merged", (label, (offer.previous_id, offer.overlap)))


def _taken(element) -> Iterable[tuple]:
    """(row id, {label, holder}) -> (label, row id) when another group holds the row's id as its group id."""
    row_id, joined = element
    for holder in joined["holder"]:
        for label in joined["label"]:
            if label != holder:
                yield label, row_id


def _assign(element, this_run: int) -> Iterable[tuple]:
    label, joined = element
    (canonical_id,) = joined["canonical"]
    kept = next(iter(joined["kept"]), None)
    if kept is not None:
        yield label, AssignedId(kept.previous_id, kept.since_run, True)
        return
    new_id = founding_id(canonical_id, joined["member"], set(joined["taken"]))
    yield label, AssignedId(new_id, this_run, False)


def _lineage(element) -> Iterable[LineageRow]:
    _, joined = element
    (assigned,) = joined["id"]
    for event in ("merged", "split"):
        for previous_id, overlap in joined[event]:
            yield LineageRow(assigned.group_id, previous_id, event, overlap)


class AssignGroupIds(beam.PTransform):
    """(rows as (row id, label), canonical ids as (label, id), `PreviousRow`s) -> ids and lineage.

    Returns {"ids": (label, AssignedId), "lineage": LineageRow}. With no
    previous rows every group is new, its id its canonical member's, in run 1.
    """

    def expand(self, inputs):
        row_labels, canonical, previous = inputs
        this_run = beam.pvalue.AsSingleton(
            previous
            | "SinceRuns" >> beam.Map(lambda row: row.group_since_run)
            | "LastRun" >> beam.CombineGlobally(lambda runs: max(runs, default=0))
            | "ThisRun" >> beam.Map(lambda last: last + 1))
        claims = (
            {"label": row_labels, "previous": previous | "PreviousById" >> beam.Map(lambda row: (row.id, row))}
            | "JoinPrevious" >> beam.CoGroupByKey()
            | "Overlaps" >> beam.FlatMap(_overlaps)
            | "CountOverlap" >> beam.CombinePerKey(sum)
            | "ByPreviousId" >> beam.MapTuple(lambda key, overlap: (key[1], (key[0], key[2], overlap)))
            | "GroupClaims" >> beam.GroupByKey()
            | "Award" >> beam.FlatMap(_award).with_outputs("split", main="offers")
        )
        inherited = (
            claims.offers
            | "GroupOffers" >> beam.GroupByKey()
            | "Inherit" >> beam.FlatMap(_inherit).with_outputs("merged", main="kept")
        )
        held = inherited.kept | "HeldIds" >> beam.MapTuple(lambda label, offer: (offer.previous_id, label))
        taken = (
            {"label": row_labels, "holder": held}
            | "JoinHeld" >> beam.CoGroupByKey()
            | "Taken" >> beam.FlatMap(_taken)
        )
        ids = (
            {"canonical": canonical, "kept": inherited.kept, "taken": taken,
             "member": row_labels | "MemberByLabel" >> beam.KvSwap()}
            | "GatherGroup" >> beam.CoGroupByKey()
            | "AssignId" >> beam.FlatMap(_assign, this_run=this_run)
        )
        lineage = (
            {"id": ids, "merged": inherited.merged, "split": claims.split}
            | "JoinLineage" >> beam.CoGroupByKey()
            | "Lineage" >> beam.FlatMap(_lineage)
        )
        return {"ids": ids, "lineage": lineage}
