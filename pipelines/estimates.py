"""Quality estimates with 95% confidence intervals from labelled review sheets (`qdedup evaluate --sheet`).

A review sheet (`qdedup review`) is a stratified simple random sample, without replacement, of
the pairs of distinct texts of one run, in strata that partition that universe (see
`pipelines/review.py`); each sheet row carries its stratum's size N_h. People label some of the
rows; per stratum the n_h labelled rows stand for its N_h pairs (a skipped row is treated as
missing at random inside its stratum).

Estimator: a total Y = sum of z over the universe is estimated by sum_h N_h * mean_h(z) (the
stratified Horvitz-Thompson estimator), its variance by sum_h N_h^2 (1 - n_h/N_h) s_h^2 / n_h.
A proportion R = (E + Y1) / (E + Y2) (precision, recall; E: pairs known to be duplicates without
labels, the row pairs of exact copies) is the ratio of two such totals; its variance comes from
the linearized values (z1 - R z2) / (E + Y2) (Taylor), and its 95% interval is Korn and Graubard's:
Clopper-Pearson on the effective sample size R(1 - R) / variance, adjusted for the design's
(Satterthwaite) degrees of freedom. Unlike the normal interval it stays inside [0, 1], keeps a width
when every labelled pair agrees, and reaches far enough where an outcome is rare.
"""
from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Callable, Iterable, NamedTuple, Optional, Sequence

Z95 = 1.959963984540054
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))
FIGURES = (("precision_texts", "precision of the groups, pairs of distinct texts"),  # (key, what it is), shown
           ("recall_texts", "recall of the groups, pairs of distinct texts"),
           ("precision_rows", "precision of the groups, pairs of rows"),
           ("recall_rows", "recall of the groups, pairs of rows"),
           ("blocking_recall_texts", "blocking recall, pairs of distinct texts"),
           ("pair_f1_at_run_threshold", "pair F1 of score >= the run's threshold"))


class Unit(NamedTuple):
    """A labelled pair of distinct texts, as the estimators see it.

    Args:
        stratum: its stratum on the sheet.
        label: 1 duplicate, 0 not.
        same_group: the run put its two texts in one group.
        candidate: blocking proposed it (a scored pair not asked for by chaining control).
        score: the cross-encoder's score, None when the run never scored it.
        rows: row pairs it stands for (the product of its two texts' row counts).
    """

    stratum: str
    label: int
    same_group: bool
    candidate: bool
    score: Optional[float]
    rows: int = 1


class Estimate(NamedTuple):
    value: Optional[float]
    low: Optional[float]
    high: Optional[float]
    labelled: int  # labelled pairs the figure rests on (those with a non-zero denominator value)

    def as_dict(self) -> dict:
        return {"estimate": self.value, "ci95": [self.low, self.high], "labelled_pairs": self.labelled}


def _spread(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def stratified_total(units: Sequence[Unit], sizes: dict, value: Callable[[Unit], float]
                     ) -> tuple[float, float, Optional[float]]:
    """(estimate, variance, Satterthwaite degrees of freedom) of the universe's total of `value`, from the
    labelled `units` of each stratum of `sizes` ({stratum: N_h}).

    Where a stratum's labelled pairs all carry one label, its sample variance (often 0) understates
    what the labels could have been (a stratum of rare duplicates often shows none): it is taken as at
    least half the variance with one label flipped (Jeffreys' half a pair of the label not seen). A
    stratum with one labelled pair of several borrows the largest variance of the others."""
    by_stratum: dict = defaultdict(list)
    for unit in units:
        by_stratum[unit.stratum].append(unit)
    total = variance = 0.0
    spreads, singles, parts = [], [], []
    for stratum, members in by_stratum.items():
        size, n = sizes[stratum], len(members)
        values = [value(u) for u in members]
        total += size * sum(values) / n
        if n >= 2 and n < size:
            spread = _spread(values)
            if len({u.label for u in members}) == 1:  # the other label may still be in the stratum
                flipped = members[0]._replace(label=1 - members[0].label)
                spread = max(spread, 0.5 * _spread([value(flipped), *values[1:]]))
            spreads.append(spread)
            part = size * size * (1 - n / size) * spread / n
            variance += part
            parts.append((part, n - 1))
        elif n == 1 and size > 1:
            singles.append(size)
    fallback = max([0.25 * max((abs(value(u)) for u in units), default=1.0) ** 2, *spreads])
    variance += sum(size * size * (1 - 1 / size) * fallback for size in singles)
    squares = sum(part * part / df for part, df in parts)
    return total, variance, (sum(p for p, _ in parts) ** 2 / squares if squares > 0 else None)


def proportion_interval(value: float, variance: float, fallback_n: int, df: Optional[float] = None
                        ) -> tuple[float, float]:
    """95% interval of a proportion from a complex sample (Korn & Graubard 1998): the Clopper-Pearson
    interval on the effective sample size value(1 - value) / variance (`fallback_n` when the variance
    is 0, i.e. every labelled pair agreed), shrunk by (z / t_df)^2 for the design's degrees of freedom.
    Unlike the normal interval it stays inside [0, 1] and is not too short where an outcome is rare."""
    from scipy.stats import beta, t  # only where estimates are made (evaluate), never on workers

    value = min(max(value, 0.0), 1.0)
    n = value * (1 - value) / variance if variance > 0 and 0 < value < 1 else float(fallback_n)
    if df is not None and df >= 1:
        n *= (Z95 / float(t.ppf(0.975, df))) ** 2
    n = max(n, 1e-9)
    x = value * n
    low = float(beta.ppf(0.025, x, n - x + 1)) if x > 0 else 0.0
    high = float(beta.ppf(0.975, x + 1, n - x)) if n - x > 0 else 1.0
    return low, high


def ratio(units: Sequence[Unit], sizes: dict, top: Callable[[Unit], float], bottom: Callable[[Unit], float],
          known: float = 0.0) -> Estimate:
    """(known + total of `top`) / (known + total of `bottom`), with its 95% interval (linearized variance,
    `proportion_interval`). `top` must be part of `bottom` (a proportion)."""
    relevant = sum(1 for u in units if bottom(u))
    y_top, _, _ = stratified_total(units, sizes, top)
    y_bottom, _, _ = stratified_total(units, sizes, bottom)
    if known + y_bottom <= 0:
        return Estimate(None, None, None, relevant)
    value = (known + y_top) / (known + y_bottom)
    scale = known + y_bottom
    _, variance, df = stratified_total(units, sizes, lambda u: (top(u) - value * bottom(u)) / scale)
    low, high = proportion_interval(value, variance, relevant, df)
    return Estimate(value, low, high, relevant)


def total_interval(units: Sequence[Unit], sizes: dict, value: Callable[[Unit], float]) -> tuple[float, float, float]:
    """(estimate, low, high): a total with its 95% interval (Student's t on the design's degrees of freedom)."""
    from scipy.stats import t

    total, variance, df = stratified_total(units, sizes, value)
    half = (float(t.ppf(0.975, df)) if df and df >= 1 else Z95) * math.sqrt(variance)
    return total, total - half, total + half


def _f1_parts(threshold: float):
    def predicted(u: Unit) -> bool:
        return u.score is not None and u.score >= threshold
    return (lambda u: 2.0 * (u.label == 1 and predicted(u)),
            lambda u: 2.0 * (u.label == 1 and predicted(u)) + (u.label == 0 and predicted(u))
            + (u.label == 1 and not predicted(u)))


def pair_f1(units: Sequence[Unit], sizes: dict, threshold: float) -> Estimate:
    """F1 of the pair decision `score >= threshold` over the sheet's universe (never scored: below)."""
    top, bottom = _f1_parts(threshold)
    return ratio(units, sizes, top, bottom)


def best_threshold(units: Sequence[Unit], sizes: dict, thresholds: Sequence[float] = THRESHOLDS) -> Optional[float]:
    """The threshold of highest estimated pair F1 (ties: the lower one)."""
    scored = [(pair_f1(units, sizes, t).value, t) for t in thresholds]
    scored = [(f1, t) for f1, t in scored if f1 is not None]
    return max(scored, key=lambda item: (item[0], -item[1]))[1] if scored else None


def threshold_interval(units: Sequence[Unit], sizes: dict, replicates: int = 200, seed: int = 0,
                       thresholds: Sequence[float] = THRESHOLDS) -> tuple[Optional[float], Optional[float]]:
    """2.5th and 97.5th percentiles of the best threshold over stratified bootstrap replicates (each
    stratum's labelled pairs resampled with replacement)."""
    by_stratum: dict = defaultdict(list)
    for unit in units:
        by_stratum[unit.stratum].append(unit)
    rng = random.Random(seed)
    found = []
    for _ in range(replicates):
        sample = [rng.choice(members) for members in by_stratum.values() for _ in members]
        best = best_threshold(sample, sizes, thresholds)
        if best is not None:
            found.append(best)
    if not found:
        return None, None
    found.sort()
    return found[int(0.025 * (len(found) - 1))], found[int(math.ceil(0.975 * (len(found) - 1)))]


def estimates(units: Sequence[Unit], sizes: dict, exact_row_pairs: int, run_threshold: float,
              replicates: int = 200) -> dict:
    """Every figure `evaluate --sheet` reports.

    Args:
        units: the labelled pairs.
        sizes: {stratum: N_h} of every stratum on the sheets.
        exact_row_pairs: row pairs sharing a normalized text (counted as duplicates, found by the run).
        run_threshold: the run's --threshold, whose pair F1 is shown beside the best one.

    Returns:
        {name: Estimate.as_dict()} for precision and recall over distinct texts and over rows, blocking
        recall, pair F1 at the run's and the best threshold, and the best threshold with its interval.
    """
    labelled_strata = {u.stratum for u in units}
    figures = {
        "precision_texts": ratio(units, sizes, lambda u: u.label * u.same_group, lambda u: u.same_group),
        "recall_texts": ratio(units, sizes, lambda u: u.label * u.same_group, lambda u: u.label),
        "precision_rows": ratio(units, sizes, lambda u: u.label * u.same_group * u.rows,
                                lambda u: u.same_group * u.rows, exact_row_pairs),
        "recall_rows": ratio(units, sizes, lambda u: u.label * u.same_group * u.rows,
                             lambda u: u.label * u.rows, exact_row_pairs),
        "blocking_recall_texts": ratio(units, sizes, lambda u: u.label * u.candidate, lambda u: u.label),
        "pair_f1_at_run_threshold": pair_f1(units, sizes, run_threshold),
    }
    best = best_threshold(units, sizes)
    low, high = threshold_interval(units, sizes, replicates) if best is not None and replicates else (None, None)
    duplicates = total_interval(units, sizes, lambda u: u.label)
    result = {name: estimate.as_dict() for name, estimate in figures.items()}
    result["best_threshold"] = {"estimate": best, "ci95": [low, high],
                                "pair_f1": pair_f1(units, sizes, best).as_dict() if best is not None else None}
    result["duplicate_pairs_of_texts"] = {"estimate": duplicates[0], "ci95": [duplicates[1], duplicates[2]]}
    result["strata"] = {stratum: {"pairs": size, "labelled": sum(1 for u in units if u.stratum == stratum)}
                        for stratum, size in sorted(sizes.items())}
    result["strata_without_labels"] = sorted(s for s, size in sizes.items() if size and s not in labelled_strata)
    return result


def pooled_sizes(rows: Iterable[tuple[str, int]]) -> dict:
    """{stratum: N_h} from (stratum, stratum size) of every sheet row; sheets of one run agree on them."""
    sizes: dict = {}
    for stratum, size in rows:
        if sizes.setdefault(stratum, size) != size:
            raise ValueError(f"stratum {stratum!r} has {sizes[stratum]} pairs on one sheet and {size} on another: "
                             "sheets of different runs or draws cannot be pooled")
    return sizes
