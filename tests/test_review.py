"""The review sheet and the estimates from it: strata, inclusion probabilities, interval coverage, sheet files."""
import csv
import io
import json
import random
from collections import Counter, defaultdict

import pytest

from pipelines.cli import main
from pipelines.estimates import Unit, estimates, proportion_interval, ratio, threshold_interval
from pipelines.review import (
    STRATA,
    allocate,
    draw_sheet,
    parse_label,
    read_sheets,
    scored_stratum,
    sheet_id,
)
from transforms.errors import QdedupError
from transforms.graphs import UnionFind

LABEL_SPELLINGS = {"1": 1, "0": 0, "yes": 1, "no": 0, "Y": 1, "n": 0, "是": 1, "否": 0, "": None, "?": None,
                   "unsure": None}


def covers(figure: dict, truth: float) -> bool:
    """Whether a figure's 95% interval holds `truth`."""
    low, high = figure["ci95"]
    return low is not None and low - 1e-12 <= truth <= high + 1e-12


class SyntheticRun:
    """A run made without the pipeline, with known truth: true clusters of texts, candidate pairs (mostly
    within a cluster), a scorer with known error rates (a true pair scores >= 0.5 with probability
    `p_true`, a false one with `p_false`), groups = components of the edges >= 0.5. It answers what
    `draw_sheet` asks of a run (`members`, `group_of`, `rows_of`, `pairs()`)."""

    def __init__(self, seed: int = 1, clusters: int = 300, k: int = 5, p_true: float = 0.85, p_false: float = 0.03):
        rng = random.Random(seed)
        self.truth, text = {}, 0
        for cluster in range(clusters):
            for _ in range(rng.choice([1, 1, 2, 2, 3, 4, 6, 9])):
                self.truth[text], text = cluster, text + 1
        by_cluster = defaultdict(list)
        for t, cluster in self.truth.items():
            by_cluster[cluster].append(t)
        texts = list(self.truth)
        self.scores, self.source = {}, {}
        for t in texts:
            mates = [m for m in by_cluster[self.truth[t]] if m != t]
            for _ in range(k):
                other = rng.choice(mates) if mates and rng.random() < 0.6 else rng.choice(texts)
                key = (min(t, other), max(t, other))
                if other == t or key in self.scores:
                    continue
                hit = rng.random() < (p_true if self.truth[t] == self.truth[other] else p_false)
                self.scores[key] = rng.uniform(0.5, 1) if hit else rng.uniform(0, 0.5)
                self.source[key] = "resplit" if rng.random() < 0.05 else "lexical"
        found = UnionFind()
        for t in texts:
            found.parent.setdefault(t, t)
        for (a, b), score in self.scores.items():
            if score >= 0.5:
                found.union(a, b)
        self.group_of = {t: found.find(t) for t in texts}
        self.members = defaultdict(list)
        for t in texts:
            self.members[self.group_of[t]].append(t)
        self.rows_of = {t: rng.choice([1, 1, 1, 2, 3]) for t in texts}
        # what blocking with more neighbours would add: unscored pairs of different groups, a few of them
        # duplicates that blocking missed (the beyond_top_k stratum)
        self.extra = set()
        for t in texts:
            for _ in range(3):
                other = rng.choice(by_cluster[self.truth[t]]) if rng.random() < 0.2 else rng.choice(texts)
                key = (min(t, other), max(t, other))
                if other != t and key not in self.scores and self.group_of[t] != self.group_of[other]:
                    self.extra.add(key)

    def pairs(self):
        for (a, b), score in self.scores.items():
            yield {"id_a": a, "id_b": b, "score": score, "source": self.source[(a, b)]}

    def beyond(self):
        return [{"id_a": a, "id_b": b} for a, b in sorted(self.extra)]

    def universe(self):
        found = {key: True for key in self.scores}
        found.update((key, False) for key in self.extra)
        for reps in self.members.values():
            for i, a in enumerate(reps):
                for b in reps[i + 1:]:
                    found.setdefault((a, b), False)
        return found

    def exact_row_pairs(self) -> int:
        return sum(c * (c - 1) // 2 for c in self.rows_of.values())

    def true_figures(self) -> dict:
        tp = same = dup = found = tp_rows = same_rows = dup_rows = 0
        for (a, b), scored in self.universe().items():
            y, s = self.truth[a] == self.truth[b], self.group_of[a] == self.group_of[b]
            w = self.rows_of[a] * self.rows_of[b]
            tp, same, dup = tp + (y and s), same + s, dup + y
            found += y and scored and self.source.get((a, b)) != "resplit"
            tp_rows, same_rows, dup_rows = tp_rows + (y and s) * w, same_rows + s * w, dup_rows + y * w
        e = self.exact_row_pairs()
        return {"precision_texts": tp / same, "recall_texts": tp / dup, "blocking_recall_texts": found / dup,
                "precision_rows": (e + tp_rows) / (e + same_rows), "recall_rows": (e + tp_rows) / (e + dup_rows),
                "duplicate_pairs_of_texts": dup}

    def label(self, pairs) -> list:
        units = []
        for p in pairs:
            score = self.scores.get((p.id_a, p.id_b))
            units.append(Unit(p.stratum, int(self.truth[p.id_a] == self.truth[p.id_b]),
                              self.group_of[p.id_a] == self.group_of[p.id_b],
                              score is not None and self.source[(p.id_a, p.id_b)] != "resplit", score,
                              self.rows_of[p.id_a] * self.rows_of[p.id_b]))
        return units


def test_allocate_fills_the_sheet_within_each_stratum():
    sizes = {"near_threshold": 10, "transitive": 1000, "above_threshold": 3, "below_threshold": 500}
    counts = allocate(sizes, 200)
    assert sum(counts.values()) == 200 and all(counts[s] <= sizes[s] for s in sizes)
    assert counts["near_threshold"] == 10 and counts["above_threshold"] == 3  # small strata taken whole
    assert allocate(sizes, 5000) == sizes  # more asked than there is: everything
    assert sum(allocate({"transitive": 7, "weakest_link": 1}, 3).values()) == 3


@pytest.mark.e2e
def test_a_sheet_too_small_for_every_stratum_says_which_it_missed(reference_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["review", "--run", str(reference_run[0]), "--output", str(tmp_path / "s.csv"), "--size", "2",
                 "--beyond-k", "0"]) == 0
    assert "no pair drawn from" in capsys.readouterr().err


def test_a_pair_in_several_strata_takes_the_first():
    assert scored_stratum(0.52, 0.5, 0.1, changed=True, weakest=True) == "changed"
    assert scored_stratum(0.52, 0.5, 0.1, changed=False, weakest=True) == "weakest_link"
    assert scored_stratum(0.52, 0.5, 0.1, changed=False, weakest=False) == "near_threshold"
    assert scored_stratum(0.7, 0.5, 0.1, changed=False, weakest=False) == "above_threshold"
    assert scored_stratum(0.3, 0.5, 0.1, changed=False, weakest=False) == "below_threshold"


def test_pairs_grouped_otherwise_by_the_previous_run_are_their_own_stratum():
    run = SyntheticRun(seed=5, clusters=60)
    previous = dict(run.group_of)
    moved = sorted(run.group_of)[::7]  # a seventh of the texts were alone in the previous run
    previous.update({t: ("alone", t) for t in moved})
    changed = {key for key in run.scores
               if (previous[key[0]] == previous[key[1]]) != (run.group_of[key[0]] == run.group_of[key[1]])}
    pairs, sizes = draw_sheet(run, 0.5, 10_000, 0, previous=previous)
    assert changed and sizes["changed"] == len(changed)
    assert {(p.id_a, p.id_b) for p in pairs if p.stratum == "changed"} == changed  # all taken: the sheet is big
    _, unchanged = draw_sheet(run, 0.5, 10_000, 0, previous=dict(run.group_of))
    assert "changed" not in unchanged


def test_inclusion_probabilities_are_the_sheets_weights():
    """Over 600 draws, each pair of the universe is drawn about n_h / N_h of the times, in every stratum
    (transitive pairs, drawn by rejection, too), and the sheet's weight is N_h / n_h."""
    run = SyntheticRun(seed=3, clusters=40, k=3)
    universe = run.universe()
    times, expected = Counter(), {}
    draws = 600
    for seed in range(draws):
        pairs, sizes = draw_sheet(run, 0.5, 40, seed, largest=5, beyond=run.beyond())
        per_stratum = Counter(p.stratum for p in pairs)
        assert len({(p.id_a, p.id_b) for p in pairs}) == len(pairs)  # one stratum, one draw per pair
        for p in pairs:
            times[(p.id_a, p.id_b)] += 1
            expected[(p.id_a, p.id_b)] = per_stratum[p.stratum] / sizes[p.stratum]
    assert set(times) <= set(universe)
    assert len(times) > 0.9 * len(universe)  # nearly every pair was drawn some time
    worst = max(abs(times[key] / draws - pi) / (pi * (1 - pi) / draws) ** 0.5 for key, pi in expected.items()
                if pi < 1)
    assert worst < 5.0  # no pair's frequency strays more than 5 standard errors from its probability


@pytest.mark.parametrize("p_false", [0.03, 0.08])
def test_intervals_cover_true_precision_and_recall(p_false):
    """Sheets of 200 pairs, 100 seeds, a scorer with known error rates (p_false 0.08 chains most texts into
    one giant group of rare duplicates): every figure's interval covers the truth in >= 90 of 100; with
    p_false 0.03 blocking recall's too, and the weighted estimate of a known total (the true duplicate
    pairs) covers it as often."""
    run = SyntheticRun(p_false=p_false)
    truth = run.true_figures()
    names = ["precision_texts", "recall_texts", "precision_rows", "recall_rows"]
    if p_false == 0.03:
        names += ["blocking_recall_texts", "duplicate_pairs_of_texts"]
    hits, widths = Counter(), Counter()
    for seed in range(100):
        pairs, sizes = draw_sheet(run, 0.5, 200, seed, beyond=run.beyond())
        figures = estimates(run.label(pairs), sizes, run.exact_row_pairs(), 0.5, replicates=0)
        for name in names:
            hits[name] += covers(figures[name], truth[name])
            widths[name] += (figures[name]["ci95"][1] - figures[name]["ci95"][0]) / 100
    print(f"p_false {p_false}: truth {({n: round(truth[n], 3) for n in hits})}, coverage of 100 draws "
          f"{dict(hits)}, mean interval width {({n: round(w, 3) for n, w in widths.items()})}")
    assert min(hits.values()) >= 90, hits


def test_an_interval_keeps_a_width_when_every_label_agrees():
    units = [Unit("above_threshold", 1, True, True, 0.9) for _ in range(30)]
    found = ratio(units, {"above_threshold": 5000}, lambda u: u.label * u.same_group, lambda u: u.same_group)
    assert found.value == 1.0 and 0.8 < found.low < 0.95 and found.high == 1.0
    low, high = proportion_interval(0.0, 0.0, 30)
    assert low == 0.0 and 0.05 < high < 0.2


def test_best_threshold_and_its_interval_on_a_clean_scorer():
    rng = random.Random(0)
    units = [Unit("near_threshold", y, True, True, rng.uniform(0.62, 1.0) if y else rng.uniform(0.0, 0.58))
             for y in (rng.random() < 0.5 for _ in range(150))]
    figures = estimates(units, {"near_threshold": 3000}, 0, 0.5, replicates=50)
    assert 0.6 <= figures["best_threshold"]["estimate"] <= 0.6  # the only grid point inside the gap
    low, high = figures["best_threshold"]["ci95"]
    assert low <= 0.6 <= high
    assert threshold_interval(units, {"near_threshold": 3000}, replicates=20) == threshold_interval(
        units, {"near_threshold": 3000}, replicates=20)  # seeded: the same every time


@pytest.mark.parametrize("spelling,label", LABEL_SPELLINGS.items())
def test_label_spellings(spelling, label):
    assert parse_label(spelling, "x line 2") == label


def test_other_labels_are_named_with_their_line():
    with pytest.raises(QdedupError, match="x line 7: label 'maybe'"):
        parse_label("maybe", "x line 7")
    with pytest.raises(QdedupError, match="rounded by a spreadsheet"):
        sheet_id("1.23457E+18", "x line 3")
    assert sheet_id('="12345678901234567890"', "x") == "12345678901234567890"


def _sheet(rows, run_id="R1") -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["run_id", "id_a", "id_b", "text_a", "text_b", "score", "stratum", "stratum_size", "weight",
                     "label"])
    for a, b, stratum, size, label in rows:
        writer.writerow([run_id, f'="{a}"', b, "问题甲", "问题乙", "0.5", stratum, size, "1", label])
    return buffer.getvalue()


def test_sheets_in_gb18030_pooled_and_checked(tmp_path):
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_bytes(_sheet([(1, 2, "transitive", 50, "是"), (3, 4, "near_threshold", 9, "?")]).encode("gb18030"))
    second.write_bytes(_sheet([(1, 2, "transitive", 50, "1"), (5, 6, "near_threshold", 9, "否")]).encode("utf-8-sig"))
    labelled, skipped, sizes = read_sheets([str(first), str(second)])
    assert sorted((p.id_a, p.id_b, p.label) for p in labelled) == [("1", "2", 1), ("5", "6", 0)]
    assert skipped == 1 and sizes == {"transitive": 50, "near_threshold": 9}
    second.write_text(_sheet([(1, 2, "transitive", 50, "0")]), encoding="utf-8")
    with pytest.raises(QdedupError, match=r"b.csv line 2: pair 1 / 2 is labelled 0, but 1 at .*a.csv line 2"):
        read_sheets([str(first), str(second)])
    second.write_text(_sheet([(7, 8, "transitive", 50, "1")], run_id="R2"), encoding="utf-8")
    with pytest.raises(QdedupError, match="drawn from 2 runs"):
        read_sheets([str(first), str(second)])
    second.write_text(_sheet([(7, 8, "transitive", 51, "1")]), encoding="utf-8")
    with pytest.raises(QdedupError, match="stratum 'transitive' has 50 pairs on one sheet and 51"):
        read_sheets([str(first), str(second)])
    second.write_text(_sheet([(7, 8, "transitive", 50, "maybe")]), encoding="utf-8")
    with pytest.raises(QdedupError, match="b.csv line 2: label 'maybe'"):
        read_sheets([str(second)])


@pytest.mark.e2e
def test_review_then_evaluate_a_run(reference_run, tmp_path, capsys):
    """`qdedup review` on a run writes a UTF-8-with-BOM sheet of distinct pairs with ids as text; labelled and
    saved back as GB18030, `qdedup evaluate --sheet` writes the estimates beside a copy of the run."""
    import shutil
    out = tmp_path / "run"
    shutil.copytree(reference_run[0], out)
    sheet = tmp_path / "sheet.csv"
    assert main(["review", "--run", str(out), "--output", str(sheet), "--size", "60", "--seed", "4"]) == 0
    data = sheet.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    assert 0 < len(rows) <= 60 and {r["stratum"] for r in rows} <= set(STRATA)
    assert {"beyond_top_k", "above_threshold"} <= {r["stratum"] for r in rows}  # the Beam job found more
    assert all(r["id_a"].startswith('="') and r["text_a"] and r["label"] == "" for r in rows)
    assert len({(r["id_a"], r["id_b"]) for r in rows}) == len(rows)
    again = tmp_path / "again.csv"
    assert main(["review", "--run", str(out), "--output", str(again), "--size", "60", "--seed", "4",
                 "--previous-groups", str(out)]) == 0
    assert again.read_bytes() == data  # the same seed, the same sheet (and nothing changed against itself)
    for i, row in enumerate(rows):
        row["label"] = ["是", "否", "?"][i % 3]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    sheet.write_bytes(buffer.getvalue().encode("gb18030"))
    labelled = sheet.read_bytes()
    capsys.readouterr()
    assert main(["review", "--run", str(out), "--output", str(sheet), "--size", "60", "--beyond-k", "0"]) == 2
    assert "exists (a sheet someone may be labelling)" in capsys.readouterr().err
    assert sheet.read_bytes() == labelled  # a labelled sheet is never drawn over by accident
    assert main(["evaluate", "--sheet", str(sheet), "--run", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "precision of the groups, pairs of distinct texts" in printed and "95% CI" in printed
    figures = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    assert figures["skipped_rows"] == len(rows) // 3 + (len(rows) % 3 > 2)
    assert figures["labelled_pairs"] == len(rows) - figures["skipped_rows"]
    assert sum(s["pairs"] for s in figures["strata"].values()) >= len(rows)
    low, high = figures["precision_texts"]["ci95"]
    assert 0 <= low <= figures["precision_texts"]["estimate"] <= high <= 1
    assert "Quality estimates from review sheets" in (out / "report.html").read_text(encoding="utf-8")
    assert {"evaluation.json", "report.html"} <= set(json.loads((out / "_SUCCESS").read_text())["files"])
    other = tmp_path / "other.csv"
    other.write_text(_sheet([(1, 2, "transitive", 50, "1")], run_id="20000101T000000-abcdef"), encoding="utf-8")
    assert main(["evaluate", "--sheet", str(other), "--run", str(out)]) == 2
    assert "estimates are only valid on the run a sheet was drawn from" in capsys.readouterr().err
