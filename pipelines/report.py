"""`report.json` and `report.html`: every key and figure of a run's report is made here.

`build_report` turns the run's counts (Beam metrics, `run_counts`) into report.json
once the pipeline has finished; `complete_report` adds the other metrics (stage
seconds, truncations, out-of-memory splits, ...); `written_rows` and
`lowest_failure` read what the run wrote (file footers; rejected rows only when
a model failed). `report.html` is one
self-contained page a person can read in a minute, written after a run: it reads
the run's own outputs, streaming them file by file and batch by batch (so its
memory does not grow with the corpus): counts, time per stage, the
histogram of pair scores with the threshold marked, group sizes, the largest
groups and the pairs nearest the threshold, as text, for review.
"""
from __future__ import annotations

import heapq
import html
from collections import Counter
from typing import Any, Iterable, Iterator, Mapping, Optional

import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter

from pipelines.estimates import FIGURES
from transforms.metrics import (
    COUNT_NAMESPACE,
    HARDWARE_NAMESPACE,
    LARGEST_NAMESPACE,
    READ_NAMESPACE,
    STAGE_CPU_NAMESPACE,
    STAGE_NAMESPACE,
)
from transforms.state import STATE_FORMAT

FAILURE_FIELDS = ("kind", "row", "stage", "reason", "detail")
COUNTED = ("rows_in", "rows_existing", "rows_rejected", "questions_embedded", "questions_failed", "pairs_failed",
           "rows_out", "rows_accepted", "representatives", "new_representatives", "candidate_pairs",
           "pairs_scored", "pairs_reused", "resplit_pairs", "resplit_pairs_scored", "pairs_total", "groups",
           "groups_inherited", "lineage_merged", "lineage_split", "blocking_questions")


def build_report(counts: Mapping[str, Any], configuration: Mapping[str, Any]) -> dict:
    """report.json from the run's counts: derived counts added, the accounting invariant checked.

    Args:
        counts: `run_counts`'s figures, with "first_failure": the lowest failure as a tuple of
            `FAILURE_FIELDS`, or None.
        configuration: the settings that made the run.
    Returns:
        report.json's keys so far (`complete_report` adds the rest).
    """
    report = dict(counts)
    report["exact_duplicates"] = report["rows_accepted"] - report["representatives"]
    first = report.pop("first_failure")
    report["first_failure"] = None if first is None else dict(zip(FAILURE_FIELDS, first))
    report["accounting_ok"] = (report["rows_in"] + report.get("rows_existing", 0)
                               == report["rows_out"] + report["rows_rejected"])
    report["configuration"] = dict(configuration)
    report["state_format"] = STATE_FORMAT
    return report


def _metric_values(result, kind: str, namespace: str) -> list[tuple[str, Any]]:
    """(name, value) of every metric of a kind ("counters", "distributions") in a namespace, committed where
    the runner commits them; empty where the runner reports no metrics."""
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(namespace))[kind]
    except Exception:
        return []
    values = [(m.key.metric.name, m.committed if m.committed is not None else m.attempted) for m in found]
    return [(name, value) for name, value in values if value is not None]


def counter_totals(result, namespace: str) -> dict:
    """{counter name: value summed over steps}."""
    totals: dict = {}
    for name, value in _metric_values(result, "counters", namespace):
        totals[name] = totals.get(name, 0) + value
    return totals


def largest_distributions(result) -> dict:
    """{step: its distributions over steps} of what each bounded step held at once (`transforms.metrics.largest`)."""
    found: dict = {}
    for name, value in _metric_values(result, "distributions", LARGEST_NAMESPACE):
        if value.count:
            found.setdefault(name, []).append(value)
    return found


def forward_hardware(result) -> dict:
    """{model stage: {hardware: rows forwarded on it}} (`transforms.metrics.hardware_rows`)."""
    found: dict = {}
    for name, rows in sorted(counter_totals(result, HARDWARE_NAMESPACE).items()):
        stage, hardware = name.split(": ", 1)
        found.setdefault(stage, {})[hardware] = rows
    return found


def run_counts(result) -> dict:
    """Every name of `COUNTED` (0 where nothing was counted) and "largest_group", from the metrics of
    `transforms.metrics.count_elements`; None where the runner reported no count at all."""
    totals = counter_totals(result, COUNT_NAMESPACE)
    if not totals:
        return None
    sizes = [value.max for name, value in _metric_values(result, "distributions", COUNT_NAMESPACE)
             if name == "rows_out" and value.count]
    return {**{name: totals.get(name, 0) for name in COUNTED}, "largest_group": max(sizes, default=0)}


def collections_read(result) -> dict:
    """{"<collection>/<step>": elements that step read} from `transforms.metrics.read_count`s."""
    return dict(sorted(counter_totals(result, READ_NAMESPACE).items()))


def read_problem(report: Mapping[str, Any]) -> Optional[str]:
    """Why the run may not be committed because a step read another number of elements than were made of the
    collection it reads (report["collections_read"] against report[collection]), or None."""
    for name, read in report.get("collections_read", {}).items():
        collection, _, step = name.partition("/")
        made = report.get(collection)
        if read != made:
            return (f"{step} read {read} elements of {collection} but {made} were made: the runner lost (or "
                    f"repeated) elements between stages; please report this with report.json")
    return None


def written_rows(files: dict, part: str) -> int:
    """Rows of the run's Parquet files in folder `part`, from their footers."""
    rows = 0
    for path in (p for p in files.get(part, []) if p.endswith(".parquet")):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            rows += pq.ParquetFile(handle).metadata.num_rows
    return rows


def lowest_failure(files: dict) -> tuple | None:
    """The failure a failed run names: the lowest rejected question or pair (as `FAILURE_FIELDS`), streamed
    from rejected/."""
    lowest = None
    for batch in _batches(files, "rejected", list(FAILURE_FIELDS)):
        for failure in zip(*(batch[name] for name in FAILURE_FIELDS)):
            if failure[0] in ("question", "pair") and (lowest is None or failure < lowest):
                lowest = failure
    return lowest


def complete_report(report: dict, result, run_id: str, seconds: float) -> dict:
    """report.json as the pipeline left it, with what only the finished run knows: Beam's metrics, the run
    id and the wall seconds."""
    return {**report, **run_totals(report, result), "run_id": run_id, "seconds_total": round(seconds, 3)}


def run_totals(report: dict, result) -> dict:
    """Per-stage seconds, blocking and scoring totals, from the run's Beam metrics."""
    seconds, cpu_seconds = ({name: round(us / 1_000_000, 3) for name, us in sorted(counter_totals(result, ns).items())}
                            for ns in (STAGE_NAMESPACE, STAGE_CPU_NAMESPACE))
    counts = counter_totals(result, "qdedup")
    score_seconds = seconds.get("score", 0.0)
    largest = largest_distributions(result)
    sizes = largest.get("blocking_work_item", [])
    return {
        "stage_seconds": seconds,
        "stage_cpu_seconds": cpu_seconds,
        "blocking_work_items": sum(d.count for d in sizes),
        "largest_blocking_work_item": max((d.max for d in sizes), default=0),
        "truncated_pairs": counts.get("score_truncated", 0),
        "encoder_truncated_texts": counts.get("encoder_truncated", 0),
        "oom_splits": counts.get("oom_splits", 0),
        "components_unsettled_edges": counts.get("components_unsettled_edges", 0),
        "components_resplit": counts.get("components_resplit", 0),
        "components_cut": counts.get("components_cut", 0),
        "components_too_large": counts.get("components_too_large", 0),
        "explain_groups_too_large": counts.get("explain_groups_too_large", 0),
        "blocking_items_hash_blocked": counts.get("blocking_items_hash_blocked", 0),
        "largest_elements": {name: max(v.max for v in values) for name, values in sorted(largest.items())},
        "forward_hardware": forward_hardware(result),
        "scoring_pairs_per_second": round(report["pairs_scored"] / score_seconds, 2) if score_seconds else None,
    }


SCORE_BINS = 20
LARGEST_GROUPS = 10
MEMBERS_SHOWN = 5
BORDERLINE_PAIRS = 20
PATHS_SHOWN = 8  # explained rows shown per large group
SIZE_BUCKETS = ((1, 1), (2, 2), (3, 3), (4, 5), (6, 10), (11, 20), (21, 50), (51, 100), (101, None))


def _batches(files: dict, part: str, columns: list[str]) -> Iterator[dict]:
    """Column lists of every batch of the run's Parquet files in folder `part`."""
    for path in sorted(p for p in files.get(part, []) if p.endswith(".parquet")):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(columns=columns):
                yield {name: batch.column(name).to_pylist() for name in columns}


def gather(files: dict, report: dict) -> dict:
    """The figures of the page, from the run's files ({folder: paths}, e.g. "groups", "state/members")."""
    threshold = report["configuration"]["threshold"]
    histogram = np.zeros(SCORE_BINS, dtype=np.int64)
    near: list = []  # heap of (-distance, pair) holding the pairs nearest the threshold
    for batch in _batches(files, "pairs", ["id_a", "id_b", "score", "similarity", "source"]):
        scores = np.asarray(batch["score"], dtype=np.float64)
        histogram += np.histogram(scores, bins=SCORE_BINS, range=(0.0, 1.0))[0]
        distance = np.abs(scores - threshold)
        nearest = np.argsort(distance, kind="stable")[:BORDERLINE_PAIRS]  # only these can enter the heap
        for i in nearest:
            item = (-float(distance[i]), batch["id_a"][i], batch["id_b"][i], float(scores[i]),
                    batch["similarity"][i], batch["source"][i])
            if len(near) < BORDERLINE_PAIRS:
                heapq.heappush(near, item)
            elif item > near[0]:
                heapq.heapreplace(near, item)
    rows_by_size: Counter = Counter()
    largest: dict = {}
    for batch in _batches(files, "groups", ["group_id", "group_size", "canonical_id"]):
        rows_by_size.update(batch["group_size"])
        sizes = np.asarray(batch["group_size"])
        for i in np.flatnonzero(sizes > 1):  # singletons, most rows, never make the list
            group_id, size, canonical = batch["group_id"][i], int(sizes[i]), batch["canonical_id"][i]
            if group_id not in largest:
                largest[group_id] = (size, canonical)
                if len(largest) > 4 * LARGEST_GROUPS:
                    largest = dict(sorted(largest.items(), key=lambda kv: (-kv[1][0], str(kv[0])))[:LARGEST_GROUPS])
    top = dict(sorted(largest.items(), key=lambda kv: (-kv[1][0], str(kv[0])))[:LARGEST_GROUPS])
    members: dict = {group_id: [] for group_id in top}
    for batch in _batches(files, "groups", ["id", "group_id"]):
        for row_id, group_id in zip(batch["id"], batch["group_id"]):
            if group_id in members and len(members[group_id]) < MEMBERS_SHOWN:
                members[group_id].append(row_id)
    explained: dict = {group_id: {"paths": [], "weakest": None} for group_id in top}
    for batch in _batches(files, "explain", ["id", "group_id", "kind", "path_ids", "path_scores", "path_sources",
                                              "weakest_id_a", "weakest_id_b", "weakest_score", "weakest_source"]):
        for i, group_id in enumerate(batch["group_id"]):
            if group_id not in explained:
                continue
            found = explained[group_id]
            if batch["weakest_id_a"][i] is not None:
                found["weakest"] = (batch["weakest_id_a"][i], batch["weakest_id_b"][i], batch["weakest_score"][i],
                                    batch["weakest_source"][i])
            if batch["kind"][i] == "path" and len(found["paths"]) < PATHS_SHOWN:
                found["paths"].append((batch["id"][i], batch["path_ids"][i], batch["path_scores"][i],
                                       batch["path_sources"][i]))
    borderline = sorted((item for item in near), key=lambda item: item[3])
    wanted = {i for ids in members.values() for i in ids} | {c for _, c in top.values()}
    for found in explained.values():
        wanted |= {i for _, ids, _, _ in found["paths"] for i in ids} | set((found["weakest"] or ())[:2])
    wanted |= {item[1] for item in borderline} | {item[2] for item in borderline}
    texts = _texts(files, wanted)
    rejected = Counter()
    for batch in _batches(files, "rejected", ["reason", "kind"]):
        rejected.update(f"{kind}: {reason}" for reason, kind in zip(batch["reason"], batch["kind"]))
    return {
        "threshold": threshold,
        "histogram": histogram.tolist(),
        "groups_by_size": {size: rows // size for size, rows in sorted(rows_by_size.items())},
        "largest": [(group_id, size, texts.get(canonical, ""), [texts.get(m, "") for m in members[group_id]])
                    for group_id, (size, canonical) in top.items()],
        "explained": {group_id: {
            "paths": [(row_id, [(i, texts.get(i, "")) for i in ids], scores, sources)
                      for row_id, ids, scores, sources in found["paths"]],
            "weakest": None if found["weakest"] is None else (
                *found["weakest"], texts.get(found["weakest"][0], ""), texts.get(found["weakest"][1], ""))}
            for group_id, found in explained.items()},
        "borderline": [(a, b, score, similarity, source, texts.get(a, ""), texts.get(b, ""))
                       for _, a, b, score, similarity, source in borderline],
        "rejected": dict(rejected.most_common()),
    }


def _texts(files: dict, ids: set) -> dict:
    """Texts of these row ids, from the run's state (a row shows its representative's text)."""
    rep_of = {}
    for batch in _batches(files, "state/members", ["id", "rep_id"]):
        rep_of.update((i, r) for i, r in zip(batch["id"], batch["rep_id"]) if i in ids)
    reps = set(rep_of.values())
    rep_text = {}
    for batch in _batches(files, "state/representatives", ["id", "text"]):
        rep_text.update((i, t) for i, t in zip(batch["id"], batch["text"]) if i in reps)
    return {i: rep_text.get(r, "") for i, r in rep_of.items()}


# ---- rendering ----

def _bars(values: list[float], labels: list[str], marker: float | None = None, width: int = 640,
          height: int = 160) -> str:
    """An inline SVG bar chart; `marker` (0..1 along the x axis) draws a vertical line."""
    top = max(values, default=0) or 1
    step = width / max(len(values), 1)
    parts = [f'<svg width="{width}" height="{height + 34}" role="img">']
    for i, (value, label) in enumerate(zip(values, labels)):
        h = height * value / top
        x = i * step
        parts.append(f'<rect x="{x + 1:.1f}" y="{height - h:.1f}" width="{step - 2:.1f}" height="{h:.1f}" '
                     f'fill="#4a78b0"><title>{html.escape(label)}: {value:,}</title></rect>')
        parts.append(f'<text x="{x + step / 2:.1f}" y="{height + 14}" font-size="9" text-anchor="middle">'
                     f'{html.escape(label)}</text>')
    if marker is not None:
        x = marker * width
        parts.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height}" stroke="#c0392b" stroke-width="2"/>'
                     f'<text x="{x + 4:.1f}" y="12" font-size="11" fill="#c0392b">threshold</text>')
    parts.append("</svg>")
    return "".join(parts)


def _table(header: Iterable[str], rows: Iterable[Iterable]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _size_label(low: int, high: int | None) -> str:
    return f"{low}+" if high is None else (str(low) if low == high else f"{low}-{high}")


COUNT_KEYS = ("rows_in", "rows_existing", "rows_rejected", "rows_out", "exact_duplicates", "representatives",
              "new_representatives", "candidate_pairs", "pairs_scored", "resplit_pairs_scored", "pairs_failed",
              "questions_failed", "components_resplit", "groups", "groups_inherited", "lineage_merged",
              "lineage_split", "largest_group", "truncated_pairs", "oom_splits", "seconds_total")


def _explanation(found: Optional[dict]) -> str:
    """A large group's explanation (explain/): some rows' widest paths to the canonical member, scores on
    the way, and its weakest link."""
    if not found:
        return ""

    def step(node: tuple) -> str:
        return f"{html.escape(str(node[0]))} {html.escape(node[1])}"

    rows = []
    for row_id, nodes, scores, sources in found["paths"]:
        chain = step(nodes[0]) + "".join(f" —{score:.3f} ({html.escape(source)})→ {step(node)}"
                                         for node, score, source in zip(nodes[1:], scores, sources))
        rows.append((row_id, chain, f"{min(scores):.3f}"))
    table = _table(("row", "widest path to the canonical member (edge scores)", "lowest"), rows) if rows else ""
    link = found["weakest"]
    weakest = ("<p>No weakest link: no single pair holds the group together.</p>" if link is None else
               f"<p>Weakest link: {html.escape(str(link[0]))} {html.escape(link[4])} — {html.escape(str(link[1]))} "
               f"{html.escape(link[5])}, score {link[2]:.3f} ({html.escape(link[3])}): removing it would split "
               "the group.</p>")
    return f"{table}{weakest}"


def _evaluation_section(evaluation: Optional[dict]) -> str:
    """Estimates from labelled review sheets (with their intervals), or --pairs figures, when evaluated."""
    if not evaluation:
        return ""
    if "precision_texts" not in evaluation:  # evaluate --pairs
        groups = evaluation["groups"]
        rows = ((name, "n/a" if groups[name] is None else f"{groups[name]:.4f}")
                for name in ("precision", "recall", "f1"))
        return (f"<h2>Evaluation on labelled pairs</h2><p>{groups['pairs_judged']:,} labelled pairs judged; "
                f"best threshold for them {evaluation['best_threshold']:.2f}.</p>{_table(('figure', 'value'), rows)}")

    def cells(figure: dict) -> tuple:
        if figure["estimate"] is None:
            return ("n/a", "", "")
        low, high = figure["ci95"]
        return (f"{figure['estimate']:.4f}", f"{low:.4f} – {high:.4f}", f"{figure.get('labelled_pairs', '')}")

    table = _table(("figure", "estimate", "95% interval", "labelled pairs"),
                   ((label, *cells(evaluation[name])) for name, label in FIGURES))
    best = evaluation["best_threshold"]
    advice = ""
    if best["estimate"] is not None:
        low, high = best["ci95"]
        advice = (f"<p>Best threshold for pair F1: <b>{best['estimate']:.2f}</b> (95% interval {low:.2f} – "
                  f"{high:.2f}); the run used {evaluation['run_threshold']}.</p>")
    strata = _table(("stratum", "pairs", "labelled"), ((name, f"{s['pairs']:,}", s["labelled"])
                                                       for name, s in evaluation["strata"].items()))
    return (f"<h2>Quality estimates from review sheets</h2><p>{evaluation['labelled_pairs']:,} labelled pairs "
            f"({evaluation['skipped_rows']} skipped). {html.escape(evaluation['estimator'])}</p>{table}{advice}"
            f"{strata}")


def render(report: dict, figures: dict, evaluation: Optional[dict] = None) -> str:
    """The page. `evaluation`: `qdedup evaluate`'s figures for this run, shown when given."""
    threshold = figures["threshold"]
    counts = _table(("count", "value"), ((k, f"{report[k]:,}" if isinstance(report[k], int) else report[k])
                                          for k in COUNT_KEYS if k in report))
    stages = report.get("stage_seconds", {})
    cpu = report.get("stage_cpu_seconds", {})
    stage_rows = [(name, f"{seconds:,.3f}", f"{cpu[name]:,.3f}" if name in cpu else "")
                  for name, seconds in sorted(stages.items(), key=lambda kv: -kv[1])]
    bins = [f"{i / SCORE_BINS:.2f}" for i in range(SCORE_BINS)]
    sizes = figures["groups_by_size"]
    buckets = [sum(n for s, n in sizes.items() if s >= low and (high is None or s <= high))
               for low, high in SIZE_BUCKETS]
    largest = "".join(
        f"<details><summary>{html.escape(str(group_id))}: {size:,} rows — {html.escape(canonical)}</summary>"
        f"<ul>{''.join(f'<li>{html.escape(t)}</li>' for t in members)}</ul>"
        f"{_explanation(figures.get('explained', {}).get(group_id))}</details>"
        for group_id, size, canonical, members in figures["largest"])
    borderline = _table(("score", "similarity", "source", "id_a", "text_a", "id_b", "text_b"),
                        ((f"{score:.3f}", "" if sim is None else f"{sim:.3f}", source, a, ta, b, tb)
                         for a, b, score, sim, source, ta, tb in figures["borderline"]))
    hardware = "; ".join(f"{stage}: " + ", ".join(f"{name} ({rows:,} rows)" for name, rows in kinds.items())
                         for stage, kinds in report.get("forward_hardware", {}).items())
    accounting = "holds" if report.get("accounting_ok") else "DOES NOT HOLD"
    config = report.get("configuration", {})
    int8 = _table(("model", "key", "calibration pairs", "in-sample fidelity to fp32"),
                  ((role, made["key"], f'{made["calibration_pairs"]} ({made["calibration_file"]})',
                    ", ".join(f"{k} {v}" for k, v in made["calibration_fidelity"].items() if k != "inputs"))
                   for role, made in (config.get("int8_models") or {}).items()))
    int8_section = (f"<h2>int8 models</h2><p>Quantized once by the launcher (OpenVINO + NNCF, static); "
                    f"the figures are on the calibration pairs themselves.</p>{int8}"
                    if config.get("int8_models") else "")
    return f"""<!DOCTYPE html>
<html lang="zh"><head><meta charset="utf-8"><title>qdedup report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:13px}}h2{{margin-top:1.5em}}
.ok{{color:#27ae60}}.bad{{color:#c0392b}}</style></head><body>
<h1>qdedup run</h1>
<p>input <code>{html.escape(str(config.get("input")))}</code>,
output <code>{html.escape(str(config.get("output")))}</code>,
scorer <code>{html.escape(str(config.get("scorer_model")))}</code>
({html.escape(str(config.get("scoring_precision")))}), threshold {threshold}.
Row accounting (rows in + existing = rows out + rejected) <b class="{'ok' if report.get('accounting_ok') else 'bad'}">
{accounting}</b>.</p>
<h2>Counts</h2>{counts}
<h2>Time per stage (seconds, summed over workers)</h2>{_table(("stage", "wall seconds", "CPU seconds"), stage_rows)}
<p>Models ran on (scores differ at float rounding from one kind to another): {html.escape(hardware or "-")}.</p>
<h2>Pair scores</h2><p>{sum(figures["histogram"]):,} scored pairs; pairs right of the line are duplicates.</p>
{_bars(figures["histogram"], bins, marker=threshold)}
<h2>Group sizes (groups per size, in rows)</h2>
{_bars(buckets, [_size_label(low, high) for low, high in SIZE_BUCKETS])}
<h2>Largest groups</h2>{largest or "<p>No group has more than one row.</p>"}
<h2>Pairs nearest the threshold</h2><p>For review: are these duplicates?</p>{borderline}
<h2>Rejected</h2>{_table(("kind: reason", "count"), figures["rejected"].items())}
{int8_section}
{_evaluation_section(evaluation)}
</body></html>
"""
