import json

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from tests.conftest import RUNNER_ARGS
from tests.test_pipeline import group_members, read_part, run_qdedup, write_questions
from transforms.ids import AssignGroupIds, Offer, PreviousRow, award, choose_inherited, derived_id, founding_id


def test_rules_as_functions():
    assert award([(7, 2), (3, 2), (9, 1)]) == 3          # largest overlap, then the lower label
    assert award([(7, 3), (3, 2)]) == 7
    offers = [Offer(40, 2, 5), Offer(10, 1, 1), Offer(30, 1, 2)]
    assert choose_inherited(offers) == Offer(30, 1, 2)   # oldest, then larger overlap
    assert choose_inherited([]) is None
    assert founding_id(5, [5, 6], set()) == 5
    assert founding_id(5, [5, 9, 6], {5}) == 6
    assert founding_id(5, [5], {5}) == derived_id(5) == -6
    assert derived_id("q5") == "q5~"


def _assign(previous, groups, tmp_path):
    """groups: {label: (canonical id, member ids)} -> ({label: (id, since run, inherited)}, lineage)."""
    out = tmp_path / "assigned.json"
    rows = [(member, label) for label, (_, members) in groups.items() for member in members]
    with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as p:
        result = (
            p | "Rows" >> beam.Create(rows),
            p | "Canonical" >> beam.Create([(label, canonical) for label, (canonical, _) in groups.items()]),
            p | "Previous" >> beam.Create([PreviousRow(*row) for row in previous]),
        ) | AssignGroupIds()
        ids = result["ids"] | beam.MapTuple(lambda label, a: ["id", label, list(a)])
        lineage = result["lineage"] | beam.Map(lambda r: ["lineage", *r])
        ((ids, lineage) | beam.Flatten() | beam.combiners.ToList()
         | beam.Map(lambda items: out.write_text(json.dumps(items))))
    items = json.loads(out.read_text())
    return ({label: tuple(a) for kind, label, a in (i for i in items if i[0] == "id")},
            sorted(tuple(i[1:]) for i in items if i[0] == "lineage"))


def test_merges_splits_and_new_groups_follow_the_rules(tmp_path):
    previous = [(1, 1, 1), (2, 1, 1), (3, 1, 1),      # group 1, founded in run 1
                (4, 4, 2), (5, 4, 2),                  # group 4, run 2
                (6, 6, 1), (7, 6, 1), (8, 6, 1),       # group 6, run 1
                (9, 9, 3),                             # group 9, run 3
                (12, 12, 2), (13, 12, 2), (14, 12, 2), (15, 12, 2)]
    groups = {
        1: (4, [1, 2, 3, 4, 5]),   # merge of 1 (older) and 4: keeps 1 even with 4 canonical
        7: (7, [7, 8]),            # the larger part of 6 keeps 6
        6: (6, [6]),               # the part that left: its founding member's id 6 is held, no other member
        9: (9, [9]),               # untouched
        12: (13, [12, 13]),        # 12 split 2 / 2: the lower label keeps 12
        14: (16, [14, 15, 16]),    # the other half, with a new row 16 as canonical: a new group 16
        20: (20, [20]),            # a new question
    }
    ids, lineage = _assign(previous, groups, tmp_path)
    assert ids == {1: (1, 1, True), 7: (6, 1, True), 6: (-7, 4, False), 9: (9, 3, True),
                   12: (12, 2, True), 14: (16, 4, False), 20: (20, 4, False)}
    assert lineage == [(-7, 6, "split", 1), (1, 4, "merged", 2), (16, 12, "split", 2)]


def test_first_run_ids_are_canonicalgroup_members(tmp_path):
    ids, lineage = _assign([], {1: (3, [1, 3]), 5: (5, [5])}, tmp_path)
    assert ids == {1: (3, 1, False), 5: (5, 1, False)} and lineage == []


def test_unchanged_corpus_keeps_every_id_and_added_rows_keep_untouched_ids(tiny_model, tmp_path):
    from samples.make_sample import build_rows
    rows = [r for r in build_rows() if isinstance(r[1], str) and r[1].strip()]
    first, later = rows[:150], rows[150:]
    write_questions(first, tmp_path / "old" / "q.parquet")
    write_questions(first, tmp_path / "all" / "a.parquet")
    write_questions(later, tmp_path / "all" / "b.parquet")
    run_qdedup(tmp_path / "old" / "*.parquet", tmp_path / "run1", tiny_model)
    again = run_qdedup(tmp_path / "old" / "*.parquet", tmp_path / "run2", tiny_model,
                       f"--previous-groups={tmp_path / 'run1' / 'groups'}")
    before = {r["id"]: r["group_id"] for r in read_part(tmp_path / "run1", "groups")}
    assert {r["id"]: r["group_id"] for r in read_part(tmp_path / "run2", "groups")} == before
    assert again["groups_inherited"] == again["groups"] and read_part(tmp_path / "run2", "lineage") == []
    assert {r["group_since_run"] for r in read_part(tmp_path / "run2", "groups")} == {1}

    grown = run_qdedup(tmp_path / "all" / "*.parquet", tmp_path / "run3", tiny_model,
                       f"--previous-groups={tmp_path / 'run1' / 'groups'}")
    old_groups, new_groups = group_members(tmp_path / "run1"), group_members(tmp_path / "run3")
    untouched = {gid for gid, members in old_groups.items() if members in new_groups.values()}
    assert len(untouched) > 0.8 * len(old_groups)
    for gid in untouched:
        assert new_groups[gid] == old_groups[gid]
    since = {r["group_id"]: r["group_since_run"] for r in read_part(tmp_path / "run3", "groups")}
    assert {since[gid] for gid in untouched} == {1}
    assert grown["groups"] - grown["groups_inherited"] == sum(1 for s in since.values() if s == 2) > 0
    lineage = read_part(tmp_path / "run3", "lineage")
    assert len(lineage) == grown["lineage_merged"] + grown["lineage_split"]
    for event in lineage:  # each names a previous group whose rows really moved into the group
        assert old_groups[event["previous_group_id"]] & new_groups[event["group_id"]]
        assert event["group_id"] != event["previous_group_id"]
