"""Group ids that stay put from one run to the next, and never collide (docs/design.md, "Group ids").

Downstream analytics join on group ids night after night, so a group keeps the
id it had in the previous run's `groups/` (`--previous-groups`, `--existing`):

- a previous group's id goes to the current group holding most of its rows
  (on a split, the largest part keeps it; ties go to the lower group);
- a current group offered several previous ids (a merge) keeps the oldest,
  the one founded in the earliest run (then the larger overlap, then the lower id);
  the others are retired (`lineage/`: merged);
- any other group is new. Its id is the first of these that is free: its
  canonical member's id, its 16 lowest other member ids, then derived
  ids (`-(id) - 1`, then hashed negative ids, for integer ids; `id~`, `id~1`,
  `id~2`... for strings) of its canonical id. Free means: no group of the
  previous run had it (held now or retired now), and, for a derived id, no row
  of this run has it as its id and no other new group with a lower label whose
  canonical id was taken wants it (a group that takes its canonical id, most
  of them, wants nothing else: so the distributed step asks for the other ids
  only of the few groups whose canonical id a previous group had).

So no two groups of a run share an id, and a new group never takes an id that a
group of the previous run had. A retired id is not reused in the run that
retires it; a later run may give it again to a new group founded by the same
row (ids are row ids, or derived from them).

`lineage/` records each previous group whose rows moved: `merged` (its id
retired into a group that kept an older one) and `split` (part of its rows
left for a group that did not take its id).
"""
from __future__ import annotations

import heapq
import zlib
from operator import attrgetter
from typing import Iterable, Mapping, NamedTuple, Optional

import apache_beam as beam

from transforms.errors import QdedupError
from transforms.joins import JoinByKey, only

PREVIOUS_COLUMNS = ("id", "group_id", "group_since_run")
MEMBER_CANDIDATES = 16  # lowest member ids a new group may take besides its canonical one
DERIVED_IDS = 8         # derived candidates per new group; all of them taken is an error (see `derived_ids`)


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


def derived_ids(row_id: object, count: int = DERIVED_IDS) -> list:
    """Ids derived from a row id, in the order they are tried: readable first, then spread out."""
    if isinstance(row_id, str):
        return [f"{row_id}~"] + [f"{row_id}~{j}" for j in range(1, count)]
    spread = [-1 - zlib.crc32(f"{row_id}/{j}".encode()) * 1_000_003 % (1 << 62) for j in range(1, count)]
    return [-row_id - 1] + spread


def candidate_ids(canonical_id: object, member_ids: Iterable) -> list[tuple[tuple, object, bool]]:
    """(rank, id, derived) of every id a new group may take, best first (a bounded number, however big
    the group)."""
    members = [m for m in heapq.nsmallest(MEMBER_CANDIDATES + 1, member_ids) if m != canonical_id]
    members = members[:MEMBER_CANDIDATES]  # member ids are distinct row ids: a walk holding a few of them
    return ([((0, 0), canonical_id, False)] + [((1, i), m, False) for i, m in enumerate(members)]
            + [((2, j), d, True) for j, d in enumerate(derived_ids(canonical_id))])


def new_group_ids(groups: Mapping[object, tuple[object, Iterable]], previous_ids: set, row_ids: set) -> dict:
    """{label: id} for new groups {label: (canonical id, member ids)}: the first free candidate of each."""
    wanted: dict = {}
    for label, (canonical_id, members) in groups.items():
        if canonical_id not in previous_ids:
            continue  # it takes its canonical id: it wants no other
        for rank, candidate, derived in candidate_ids(canonical_id, members):
            if derived:
                wanted.setdefault(candidate, []).append(label)
    chosen = {}
    for label, (canonical_id, members) in sorted(groups.items()):
        for rank, candidate, derived in candidate_ids(canonical_id, members):
            if candidate in previous_ids or (derived and (candidate in row_ids or min(wanted[candidate]) != label)):
                continue
            chosen[label] = candidate
            break
        else:
            raise QdedupError(no_free_id(canonical_id))
    return chosen


def no_free_id(canonical_id: object) -> str:
    return (f"no free group id for the new group of row {canonical_id!r}: its member ids and {DERIVED_IDS} ids "
            "derived from it are all taken; please report this")


def assign_ids(previous: Iterable[PreviousRow], groups: Mapping[object, tuple[object, Iterable]],
               ) -> tuple[dict, list[LineageRow]]:
    """The whole rule on one machine: {label: AssignedId} and lineage, for groups {label: (canonical, members)}.

    `AssignGroupIds` applies the same rules distributed; this states them in one place (and tests hold
    the two together).
    """
    previous = list(previous)
    this_run = max((row.group_since_run for row in previous), default=0) + 1
    label_of = {m: label for label, (_, members) in groups.items() for m in members}
    overlap: dict = {}
    for row in previous:
        if row.id in label_of:
            key = (row.group_id, row.group_since_run, label_of[row.id])
            overlap[key] = overlap.get(key, 0) + 1
    claims: dict = {}
    for (previous_id, since, label), count in overlap.items():
        claims.setdefault(previous_id, []).append((label, since, count))
    offers: dict = {}
    lineage = []
    for previous_id, claimed in claims.items():
        winner = award((label, count) for label, _, count in claimed)
        for label, since, count in claimed:
            if label == winner:
                offers.setdefault(label, []).append(Offer(previous_id, since, count))
            else:
                lineage.append(("split", label, previous_id, count))
    assigned = {}
    for label, offered in offers.items():
        kept = choose_inherited(offered)
        assigned[label] = AssignedId(kept.previous_id, kept.since_run, True)
        lineage += [("merged", label, o.previous_id, o.overlap) for o in offered if o is not kept]
    new = {label: group for label, group in groups.items() if label not in assigned}
    for label, group_id in new_group_ids(new, {row.group_id for row in previous}, set(label_of)).items():
        assigned[label] = AssignedId(group_id, this_run, False)
    return assigned, [LineageRow(assigned[label].group_id, previous_id, event, count)
                      for event, label, previous_id, count in lineage]


class ReadPreviousGroups(beam.PTransform):
    """A previous run's groups/ files -> `PreviousRow`s; nothing when there are none."""

    def __init__(self, files: Iterable[str]):
        super().__init__()
        self._files = sorted(files)

    def expand(self, pbegin):
        from apache_beam.io.parquetio import ReadAllFromParquet
        return (
            pbegin
            | "GroupFiles" >> beam.Create(self._files)
            | "ReadGroups" >> ReadAllFromParquet(columns=list(PREVIOUS_COLUMNS))
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
    previous_id, claims = element  # walked twice, never listed
    winner = award((label, overlap) for label, _, overlap in claims)
    for label, since_run, overlap in claims:
        if label == winner:
            yield label, Offer(previous_id, since_run, overlap)
        else:
            yield beam.pvalue.TaggedOutput("split", (label, (previous_id, overlap)))


def _inherit(element) -> Iterable:
    label, offers = element  # walked twice, never listed
    kept = choose_inherited(offers)
    yield label, kept
    for offer in offers:
        if offer is not kept:
            yield beam.pvalue.TaggedOutput("merged", (label, (offer.previous_id, offer.overlap)))


def _offer_canonical(element) -> Iterable[tuple]:
    """A group that inherited no id -> (its canonical id, label)."""
    label, joined = element
    if not any(True for _ in joined["kept"]):
        yield only(joined["canonical"]), label


def _canonical_free(element, this_run: int) -> Iterable[tuple]:
    """(canonical id, {label, previous}) -> (label, its new `AssignedId`) when no previous group had that id,
    else to "taken" (label, canonical id): such a group looks further."""
    canonical_id, joined = element
    taken = any(True for _ in joined["previous"])
    for label in joined["label"]:
        if taken:
            yield beam.pvalue.TaggedOutput("taken", (label, canonical_id))
        else:
            yield label, AssignedId(canonical_id, this_run, False)


def _offer_candidates(element) -> Iterable[tuple]:
    """A group whose canonical id was taken -> (candidate id, (label, rank, derived)) for each id it may take."""
    label, joined = element
    canonical_id = only(joined["taken"])
    if canonical_id is None:
        return
    for rank, candidate, derived in candidate_ids(canonical_id, joined["member"]):
        yield candidate, (label, rank, derived)


def _free(element) -> Iterable[tuple]:
    """(candidate id, {offer, previous, row}) -> (label, (rank, id)) for each group that may take it."""
    candidate, joined = element
    if any(True for _ in joined["previous"]):
        return
    offers = joined["offer"]
    first_deriving = min((label for label, _, derived in offers if derived), default=None)
    row_taken = any(True for _ in joined["row"])
    for label, rank, derived in offers:
        if not derived or (not row_taken and label == first_deriving):
            yield label, (rank, candidate)


def _choose_new(element, this_run: int) -> Iterable[tuple]:
    label, joined = element
    if not any(True for _ in joined["new"]):
        return
    best = min(joined["free"], default=None)
    if best is None:
        raise QdedupError(no_free_id(label))
    yield label, AssignedId(best[1], this_run, False)


def _lineage(element) -> Iterable[LineageRow]:
    _, joined = element
    assigned = only(joined["id"])
    for event in ("merged", "split"):
        for previous_id, overlap in joined[event]:
            yield LineageRow(assigned.group_id, previous_id, event, overlap)


def first_run_id(canonical_id) -> AssignedId:
    """A group's id in a run with no previous groups: its canonical member's, founded in run 1."""
    return AssignedId(canonical_id, 1, False)


class AssignedIds(NamedTuple):
    """What `AssignGroupIds` gives: (group label, `AssignedId`) per group, and `LineageRow`s."""

    ids: beam.PCollection
    lineage: beam.PCollection


class AssignGroupIds(beam.PTransform):
    """(rows as (label, (row id, ...)), canonical ids as (label, id), `PreviousRow`s) -> ids and lineage.

    Returns {"ids": (label, AssignedId), "lineage": LineageRow}, by the rules of `assign_ids`.
    With no previous rows every group is new, its id its canonical member's, in run 1.

    Args:
        first_run: there are no previous rows (a run with no earlier groups files, known at launch): each group
            takes its canonical id in run 1 straight away, without the joins on every row that look for
            previous groups (~2.8 elements a candidate pair fewer; benchmarks/README.md, "twenty-third session"),
            nor a row's label taken from its row.
    """

    def __init__(self, first_run: bool = False):
        super().__init__()
        self._first_run = first_run

    def expand(self, inputs):
        rows, canonical, previous = inputs
        if self._first_run:
            ids = canonical | "FirstRunIds" >> beam.MapTuple(
                lambda label, canonical_id: (label, first_run_id(canonical_id)))
            return AssignedIds(ids, canonical.pipeline | "NoLineage" >> beam.Create([]))
        row_labels = rows | "RowLabel" >> beam.MapTuple(lambda label, row: (row[0], label))
        this_run = beam.pvalue.AsSingleton(
            previous
            | "SinceRuns" >> beam.Map(lambda row: row.group_since_run)
            | "LastRun" >> beam.CombineGlobally(lambda runs: max(runs, default=0))
            | "ThisRun" >> beam.Map(lambda last: last + 1))
        claims = (
            {"label": row_labels, "previous": previous}
            | "Overlaps" >> JoinByKey(_overlaps, keys={"previous": attrgetter("id")})
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
        kept = inherited.kept | "KeptId" >> beam.MapTuple(
            lambda label, offer: (label, AssignedId(offer.previous_id, offer.since_run, True)))
        previous_ids = (
            previous
            | "PreviousGroupIds" >> beam.Map(lambda row: row.group_id)
            | "DistinctPreviousIds" >> beam.Distinct()
            | "PreviousIdKey" >> beam.Map(lambda group_id: (group_id, None))
        )
        # A new group takes its canonical id unless a previous group had it (the best candidate, and no
        # other group can want it: it is a row of this group) ...
        by_canonical = (
            {"canonical": canonical, "kept": inherited.kept} | "OfferCanonical" >> JoinByKey(_offer_canonical))
        first = (
            {"label": by_canonical, "previous": previous_ids}
            | "CanonicalFree" >> JoinByKey(_canonical_free, outputs=("taken",), main="free", this_run=this_run)
        )
        # ... and only the others offer every id they may take.
        candidates = (
            {"taken": first.taken, "member": row_labels | "MemberByLabel" >> beam.KvSwap()}
            | "OfferCandidates" >> JoinByKey(_offer_candidates)
        )
        free = (
            {"offer": candidates, "previous": previous_ids,
             "row": row_labels | "RowIdKey" >> beam.MapTuple(lambda row_id, _: (row_id, None))}
            | "FreeCandidates" >> JoinByKey(_free)
        )
        new = (
            {"free": free, "new": first.taken}
            | "ChooseNewId" >> JoinByKey(_choose_new, this_run=this_run)
        )
        ids = (kept, first.free, new) | "AllIds" >> beam.Flatten()
        lineage = (
            {"id": ids, "merged": inherited.merged, "split": claims.split}
            | "Lineage" >> JoinByKey(_lineage)
        )
        return AssignedIds(ids, lineage)
