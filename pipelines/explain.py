"""`qdedup explain --run OUT ID [ID]`: why a row is in its group, or why two rows are or are not grouped.

One id: the row's group, its weakest link (the lowest-scoring pair whose removal would split it),
and the widest path of scored edges (the one whose lowest score is highest;
ties to fewer edges, then lower ids), each at or above the run's threshold, that joins it to its
group's canonical member; `exact` where two rows share a normalized text. Two ids: the widest path
between them when they share a group; otherwise why not, for each reason that applies: a row
rejected (with its reason), their pair dead-lettered, scored below the threshold, scored above it
but cut by chaining control, or never made a candidate by blocking.

Read from the run's outputs (groups/, pairs/, rejected/, state/), a row group at a time, keeping only
the rows that concern the ids asked about and their groups.
"""
from __future__ import annotations

import argparse
import json
from typing import Sequence

import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.commit import parquet_rows, read_committed
from transforms.errors import QdedupError
from transforms.explain import order_key, weakest_link, widest_path
from transforms.records import Edge


def matching_rows(paths: Sequence[str], columns: list[str], filters: dict) -> list[dict]:
    """Rows of Parquet files (local or remote) where any column of `filters` holds one of its values,
    read a row group at a time. (Filtered in Python: pyarrow's compute kernels start a thread pool that,
    beside torch's and faiss's, aborted the interpreter at exit in 2 of 15 runs here.)"""
    return [row for row in parquet_rows(paths, columns)
            if any(row[column] in values for column, values in filters.items())]


class Run:
    """What explaining a few ids needs of a committed run: their rows, groups, edges and texts."""

    def __init__(self, path: str):
        self.committed = read_committed(path, "--run")
        configuration = self.committed.configuration
        self.threshold = configuration["threshold"]
        self.id_column = configuration.get("id_column", "id")
        files = self.committed.paths("groups", ".parquet")
        self.string_ids = False
        if files:
            with FileSystems.open(files[0], compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                self.string_ids = pq.read_schema(handle).field("id").type == "string"
        pairs = self.committed.paths("pairs", ".parquet")
        self.pair_columns = ["id_a", "id_b", "score", "source"]
        if pairs:  # runs before the `reused` column did not say which scores an earlier run made
            with FileSystems.open(pairs[0], compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                if "reused" in pq.read_schema(handle).names:
                    self.pair_columns.append("reused")

    def parse(self, value: str):
        if self.string_ids:
            return value
        try:
            return int(value)
        except ValueError as exc:
            raise QdedupError(f"id {value!r}: this run's ids are integers") from exc

    def rows(self, part: str, columns: list[str], filters: dict) -> list[dict]:
        return matching_rows(self.committed.paths(part, ".parquet"), columns, filters)

    def rejected(self, ids: set, pair: frozenset = frozenset()) -> tuple[dict, bool]:
        """(id -> its rejected/ row, for rows among `ids`; whether `pair` of ids was dead-lettered), in one
        pass over rejected/ (a row's JSON names the id column; a pair's, id_a and id_b)."""
        found, dead_lettered = {}, False
        for row in parquet_rows(self.committed.paths("rejected", ".parquet"),
                                ["row", "reason", "detail", "source", "stage", "kind"]):
            content = json.loads(row["row"])
            if row["kind"] == "row" and content.get(self.id_column) in ids:
                found[content[self.id_column]] = row
            elif row["kind"] == "pair" and frozenset((content.get("id_a"), content.get("id_b"))) == pair:
                dead_lettered = True
        return found, dead_lettered


def explain(run: Run, ids: Sequence) -> dict:
    """What `qdedup explain` prints, as data: per id its row, group or rejection; for two ids their link.

    Raises QdedupError for an id the run holds neither in groups/ nor in rejected/.
    """
    wanted = set(ids)
    groups = {row["id"]: row for row in run.rows("groups", ["id", "group_id", "canonical_id", "group_size",
                                                            "match_kind"], {"id": wanted})}
    rejected, _ = run.rejected(wanted - set(groups))
    for row_id in ids:
        if row_id not in groups and row_id not in rejected:
            raise QdedupError(f"id {row_id!r}: no such row in this run (neither grouped nor rejected)")
    group_ids = {groups[i]["group_id"] for i in ids if i in groups}
    members = run.rows("groups", ["id", "group_id", "canonical_id"], {"group_id": group_ids})
    rep_of = {row["id"]: row["rep_id"] for row in run.rows("state/members", ["id", "rep_id"],
                                                            {"id": {m["id"] for m in members}})}
    texts = {row["id"]: row["text"] for row in run.rows("state/representatives", ["id", "text"],
                                                        {"id": set(rep_of.values())})}
    reps = set(rep_of.values()) | {rep_of.get(i, i) for i in ids}
    pairs = [p for p in run.rows("pairs", run.pair_columns, {"id_a": reps, "id_b": reps})
             if p["id_a"] in reps and p["id_b"] in reps]
    edges = [Edge(p["id_a"], p["id_b"], p["score"], p["source"]) for p in pairs]
    earlier = {frozenset((p["id_a"], p["id_b"])) for p in pairs if p.get("reused")}

    def group_edges(group_id) -> list[Edge]:
        group_reps = {rep_of[m["id"]] for m in members if m["group_id"] == group_id}
        return [e for e in edges if e.a in group_reps and e.b in group_reps]

    def path_between(a, b) -> dict:
        rep_a, rep_b = rep_of.get(a, a), rep_of.get(b, b)
        path = widest_path(group_edges(groups[a]["group_id"]), rep_a, rep_b, run.threshold)
        steps = [{"kind": "exact", "from": a, "to": rep_a}] if a != rep_a else []
        for edge in path or []:
            steps.append({"kind": "scored", "from": edge.a, "to": edge.b, "score": edge.score, "source": edge.source,
                          "earlier_run": frozenset((edge.a, edge.b)) in earlier})
        if b != rep_b:
            steps.append({"kind": "exact", "from": rep_b, "to": b})
        return {"steps": steps, "joined": path is not None,
                "lowest_score": min((e.score for e in path), default=None) if path else None}

    found: dict = {"threshold": run.threshold, "rows": {}, "weakest_links": {}}
    for group_id in sorted(group_ids, key=order_key):
        link = weakest_link(group_edges(group_id), run.threshold)
        found["weakest_links"][group_id] = link._asdict() if link else None
    for row_id in ids:
        if row_id in rejected:
            row = rejected[row_id]
            found["rows"][row_id] = {"rejected": {k: row[k] for k in ("reason", "detail", "source", "stage")}}
            continue
        group = groups[row_id]
        found["rows"][row_id] = {"group": group, "text": texts.get(rep_of.get(row_id))}
        if len(ids) == 1 and row_id != group["canonical_id"]:
            found["to_canonical"] = path_between(row_id, group["canonical_id"])
    if len(ids) == 2:
        a, b = ids
        if a in groups and b in groups and groups[a]["group_id"] == groups[b]["group_id"]:
            found["between"] = path_between(a, b)
        else:
            found["not_grouped"] = _why_not(a, b, rejected, rep_of, edges, earlier, run)
    found["texts"] = texts
    return found


def _why_not(a, b, rejected: dict, rep_of: dict, edges: list[Edge], earlier: set, run: Run) -> list[str]:
    reasons = [f"row {i} was rejected: {rejected[i]['reason']} ({rejected[i]['detail']})" for i in (a, b)
               if i in rejected]
    if reasons:
        return reasons
    pair = frozenset((rep_of.get(a, a), rep_of.get(b, b)))
    scored = [e for e in edges if frozenset((e.a, e.b)) == pair]
    if run.rejected(set(), pair)[1]:
        reasons.append("their pair was dead-lettered: the scorer failed on it (rejected/, kind pair)")
    elif not scored:
        reasons.append("never a candidate: blocking did not propose this pair")
    else:
        how = f"scored {scored[0].score:.4f} ({scored[0].source}{_when(pair in earlier)})"
        if scored[0].score < run.threshold:
            reasons.append(f"{how}, below the threshold {run.threshold}")
        else:
            reasons.append(f"{how}, at or above the threshold {run.threshold}, but chaining control split their "
                           "component (too large or too sparse: re-split by average linkage)")
    return reasons


def _when(earlier_run: bool) -> str:
    return ", scored on an earlier night: the run this one builds on made the score" if earlier_run else ""


def render(found: dict) -> str:
    texts = found["texts"]

    def named(row_id) -> str:
        text = texts.get(row_id)
        return f"{row_id} {text!r}" if text is not None else str(row_id)

    def steps(link: dict) -> list[str]:
        if not link["joined"]:
            return ["  no path of scored pairs at or above the threshold joins them inside the group"]
        lines = []
        for step in link["steps"]:
            if step["kind"] == "exact":
                lines.append(f"  {step['from']} = {step['to']}: exact (the same normalized text)")
            else:
                lines.append(f"  {named(step['from'])} -> {named(step['to'])}: score {step['score']:.4f} "
                             f"({step['source']}{_when(step['earlier_run'])})")
        return lines

    lines = []
    for row_id, row in found["rows"].items():
        if "rejected" in row:
            r = row["rejected"]
            lines.append(f"row {row_id}: rejected: {r['reason']}: {r['detail']} (at {r['source']}, stage {r['stage']})")
        else:
            g = row["group"]
            lines.append(f"row {row_id} {row['text']!r}: group {g['group_id']} ({g['group_size']} rows, "
                         f"canonical {g['canonical_id']}, {g['match_kind']})")
    if len(found["rows"]) == 1 and "to_canonical" not in found and "group" in next(iter(found["rows"].values())):
        lines.append("it is its group's canonical member")
    if "to_canonical" in found:
        link = found["to_canonical"]
        lowest = f", lowest score {link['lowest_score']:.4f}" if link["lowest_score"] is not None else ""
        lines.append(f"joined to its canonical member by (threshold {found['threshold']}{lowest}):")
        lines += steps(link)
    if "between" in found:
        lines.append(f"in the same group, joined by (threshold {found['threshold']}):")
        lines += steps(found["between"])
    if "not_grouped" in found:
        lines.append("not in the same group: " + "; ".join(found["not_grouped"]))
    for group_id, link in found["weakest_links"].items():
        if link:
            lines.append(f"group {group_id}'s weakest link: {named(link['a'])} -- {named(link['b'])}: score "
                         f"{link['score']:.4f} ({link['source']}); removing it would split the group")
        else:
            lines.append(f"group {group_id} has no weakest link: no single pair holds it together")
    return "\n".join(lines)


def explain_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="qdedup explain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished run's --output directory")
    parser.add_argument("ids", nargs="+", help="one row id (its path to the canonical member) or two")
    parser.add_argument("--json", action="store_true", help="print the explanation as JSON")
    parser.add_argument("--verbose", action="store_true", help="show every library's log lines")
    args = parser.parse_args(argv)
    if len(args.ids) > 2:
        raise QdedupError("qdedup explain takes one id or two")
    run = Run(args.run)
    found = explain(run, [run.parse(value) for value in args.ids])
    print(json.dumps(found, ensure_ascii=False, indent=1, default=str) if args.json else render(found))
    return 0
