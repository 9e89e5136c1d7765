import json
import random

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from tests.helpers import (
    RUNNER_ARGS,
    built_pipeline,
    group_members,
    read_part,
    run_qdedup,
    write_questions,
)
from transforms.ids import (
    AssignedId,
    AssignGroupIds,
    Offer,
    PreviousRow,
    assign_ids,
    award,
    choose_inherited,
    derived_ids,
    new_group_ids,
)


def test_rules_as_functions():
    assert award([(7, 2), (3, 2), (9, 1)]) == 3          # largest overlap, then the lower label
    assert award([(7, 3), (3, 2)]) == 7
    offers = [Offer(40, 2, 5), Offer(10, 1, 1), Offer(30, 1, 2)]
    assert choose_inherited(offers) == Offer(30, 1, 2)   # oldest, then larger overlap
    assert choose_inherited([]) is None
    assert new_group_ids({1: (5, [5, 6])}, set(), {5, 6}) == {1: 5}
    assert new_group_ids({1: (5, [5, 9, 6])}, {5}, {5, 6, 9}) == {1: 6}          # canonical held: next member
    assert new_group_ids({1: (5, [5])}, {5}, {5}) == {1: -6}                       # no member free: derived
    assert new_group_ids({1: (5, [5])}, {5, -6}, {5}) == {1: derived_ids(5)[1]}   # -6 was a group id
    assert new_group_ids({1: (5, [5])}, {5}, {5, -6}) == {1: derived_ids(5)[1]}   # -6 is a row id
    assert derived_ids("q5")[:3] == ["q5~", "q5~1", "q5~2"]
    assert len(set(derived_ids(5))) == len(derived_ids(5)) and all(d < 0 for d in derived_ids(5))
    # Two new groups wanting the same derived id: the lower label gets it, the other its next one.
    assert new_group_ids({"a": ("q", ["q"]), "b": ("q~", ["q~"])}, {"q", "q~"}, {"q", "q~"}) == {
        "a": "q~1", "b": "q~~"}


def _assign(previous, groups, tmp_path, name="assigned", first_run=False):
    """groups: {label: (canonical id, member ids)} -> ({label: (id, since run, inherited)}, lineage)."""
    out = tmp_path / f"{name}.json"
    rows = [(label, (member, f"k{member}", 1, member)) for label, (_, members) in groups.items() for member in members]
    with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as p:
        result = (
            p | "Rows" >> beam.Create(rows),
            p | "Canonical" >> beam.Create([(label, canonical) for label, (canonical, _) in groups.items()]),
            p | "Previous" >> beam.Create([PreviousRow(*row) for row in previous]),
        ) | AssignGroupIds(first_run)
        ids = result.ids | beam.MapTuple(lambda label, a: ["id", label, list(a)])
        lineage = result.lineage | beam.Map(lambda r: ["lineage", *r])
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
    expected, expected_lineage = assign_ids([PreviousRow(*row) for row in previous], groups)
    assert ids == {label: tuple(a) for label, a in expected.items()}
    assert lineage == sorted(tuple(r) for r in expected_lineage)


def _next_partition(rng, rows, groups):
    """Moves some rows between groups: splits, merges, new rows, rows leaving to found their own group."""
    groups = [set(g) for g in groups if g]
    for _ in range(rng.randint(1, 4)):
        kind = rng.random()
        if kind < 0.3 and len(groups) > 1:                 # merge two
            a, b = rng.sample(range(len(groups)), 2)
            groups[a] |= groups[b]
            groups[b] = set()
        elif kind < 0.6:                                   # split one
            g = rng.choice(groups)
            if len(g) > 1:
                part = set(rng.sample(sorted(g, key=repr), rng.randint(1, len(g) - 1)))
                g -= part
                groups.append(part)
        elif kind < 0.8:                                   # one row leaves to stand alone
            g = rng.choice(groups)
            if len(g) > 1:
                row = rng.choice(sorted(g, key=repr))
                g.discard(row)
                groups.append({row})
        else:                                              # new rows, alone or joining a group
            new = [r for r in rows if all(r not in g for g in groups)][:rng.randint(1, 3)]
            for row in new:
                (rng.choice(groups) if rng.random() < 0.5 else groups.append(set()) or groups[-1]).add(row)
    return [g for g in groups if g]


@pytest.mark.parametrize("kind", ["int", "str"])
def test_group_ids_stay_unique_over_many_runs_of_merges_and_splits(kind):
    """Random merges, splits and newcomers over many runs: ids unique in every run, a new group never takes
    an id a group of the previous run had, a derived id never equals a row's id; the same answer twice."""
    for seed in range(30):
        rng = random.Random(seed)
        if kind == "int":  # ids that look like derived ids (-6 for 5) are in the corpus on purpose
            rows = rng.sample(range(-12, 13), 25)
        else:
            rows = [f"q{i}" for i in range(12)] + [f"q{i}~" for i in range(6)] + ["q1~1", "q2~~"]
        groups = [{r} for r in rows[:6]]
        previous: list[PreviousRow] = []
        for run in range(12):
            groups = _next_partition(rng, rows, groups)
            labelled = {min(g, key=repr): (rng.choice(sorted(g, key=repr)), sorted(g, key=repr)) for g in groups}
            assigned, lineage = assign_ids(previous, labelled)
            assert (assigned, lineage) == assign_ids(previous, labelled)
            ids = [a.group_id for a in assigned.values()]
            assert len(ids) == len(set(ids)), (seed, run, assigned)
            previous_ids = {row.group_id for row in previous}
            all_rows = {m for _, members in labelled.values() for m in members}
            for label, a in assigned.items():
                if a.inherited:
                    assert a.group_id in previous_ids
                else:
                    this_run = max((row.group_since_run for row in previous), default=0) + 1
                    assert a.group_id not in previous_ids and a.since_run == this_run
                    assert a.group_id in labelled[label][1] or a.group_id not in all_rows
            previous = [PreviousRow(m, assigned[label].group_id, assigned[label].since_run)
                        for label, (_, members) in labelled.items() for m in members]


@pytest.mark.slow
def test_distributed_assignment_equals_the_rules_on_random_runs(tmp_path):
    rng = random.Random(7)
    rows = rng.sample(range(-8, 9), 15)
    groups = [{r} for r in rows[:5]]
    previous: list[PreviousRow] = []
    for run in range(4):
        groups = _next_partition(rng, rows, groups)
        labelled = {min(g): (rng.choice(sorted(g)), sorted(g)) for g in groups}
        expected, expected_lineage = assign_ids(previous, labelled)
        ids, lineage = _assign([tuple(p) for p in previous], labelled, tmp_path, f"run{run}")
        assert ids == {label: tuple(a) for label, a in expected.items()}
        assert lineage == sorted(tuple(r) for r in expected_lineage)
        previous = [PreviousRow(m, expected[label].group_id, expected[label].since_run)
                    for label, (_, members) in labelled.items() for m in members]


def test_a_question_that_splits_off_rejoins_and_splits_off_again_gets_an_id_no_one_holds(tmp_path):
    """Run 1: {5, 6, 8}, id 5. Run 2: 5 leaves; {6, 8} keeps 5, so 5's own group gets a derived id, -6.
    Run 3: newcomers 7 and 9 join 5 (id -6 kept). Run 4: 5 leaves again; {7, 9} keeps -6; 5 must not
    take -6 a second time (the old rule gave both groups -6)."""
    runs = [{5: (5, [5, 6, 8])},
            {6: (6, [6, 8]), 5: (5, [5])},
            {6: (6, [6, 8]), 5: (5, [5, 7, 9])},
            {6: (6, [6, 8]), 5: (5, [5]), 7: (7, [7, 9])}]
    previous: list[PreviousRow] = []
    history = []
    for groups in runs:
        before = previous
        assigned, _ = assign_ids(previous, groups)
        history.append({label: a.group_id for label, a in assigned.items()})
        assert len(set(history[-1].values())) == len(groups)
        previous = [PreviousRow(m, assigned[label].group_id, assigned[label].since_run)
                    for label, (_, members) in groups.items() for m in members]
    assert history == [{5: 5}, {6: 5, 5: -6}, {6: 5, 5: -6}, {6: 5, 7: -6, 5: derived_ids(5)[1]}]
    ids, _ = _assign([tuple(p) for p in before], runs[3], tmp_path)
    assert {label: a[0] for label, a in ids.items()} == history[3]


def test_first_run_ids_are_canonicalgroup_members(tmp_path):
    ids, lineage = _assign([], {1: (3, [1, 3]), 5: (5, [5])}, tmp_path)
    assert ids == {1: (3, 1, False), 5: (5, 1, False)} and lineage == []
    # A run known to be the first takes the canonical ids without looking for previous groups: the same ids.
    rng = random.Random(3)
    rows = rng.sample(range(-50, 50), 60)
    groups = {min(g): (rng.choice(sorted(g)), sorted(g)) for g in _next_partition(rng, rows, [{r} for r in rows])}
    general = _assign([], groups, tmp_path, "general")
    assert _assign([], groups, tmp_path, "first", first_run=True) == general
    assert general == ({label: (canonical, 1, False) for label, (canonical, _) in groups.items()}, [])
    assert assign_ids([], {1: (3, [1, 3]), 5: (5, [5])}) == ({1: AssignedId(3, 1, False),
                                                               5: AssignedId(5, 1, False)}, [])


@pytest.mark.e2e
def test_only_a_run_with_no_earlier_groups_skips_the_previous_group_joins(corpus, reference_run, tiny_model,
                                                                          tmp_path):
    """The assembly takes the first-run path exactly when no earlier groups files are given."""
    directory, _ = corpus
    earlier, _ = reference_run

    def steps(name: str, *extra: str) -> set:
        pipeline = built_pipeline(directory / "*.parquet", tmp_path / name, tiny_model, *extra)
        return {label for label in pipeline.applied_labels if label.startswith("ClusterGroups/AssignGroupIds/")}

    first = steps("first")
    later = steps("later", f"--previous-groups={earlier / 'groups'}")
    assert "ClusterGroups/AssignGroupIds/FirstRunIds" in first
    assert not any(label.startswith("ClusterGroups/AssignGroupIds/Overlaps") for label in first)
    assert "ClusterGroups/AssignGroupIds/RowLabel" not in first  # no step a row passes for nothing
    assert "ClusterGroups/AssignGroupIds/RowLabel" in later
    assert "ClusterGroups/AssignGroupIds/FirstRunIds" not in later
    assert any(label.startswith("ClusterGroups/AssignGroupIds/Overlaps") for label in later)


@pytest.mark.e2e
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
