"""`qdedup review --run OUT --output sheet.csv`: pairs for a person to label, drawn with known inclusion
probabilities so that `qdedup evaluate --sheet` can estimate the run's quality from them.

The universe is every pair of two distinct texts (representatives) of the run that it scored (pairs/),
put in one group without scoring (transitive pairs), or that blocking would propose with more
neighbours (beyond_top_k); duplicates outside it cannot be estimated. Each pair belongs to exactly one
stratum, the first of `STRATA` that it fits (that is the rule for a pair that fits several):

- changed: a scored pair whose two rows were grouped otherwise by --previous-groups (together then and
  apart now, or the reverse);
- weakest_link: the weakest link (lowest-scoring bridge) of one of the --large-groups largest groups;
- near_threshold: a scored pair within --near of the run's threshold;
- transitive: two texts of one group that the run never compared;
- beyond_top_k: two texts of different groups that the run never compared but that blocking
  proposes with --beyond-k nearest neighbours (default twice the run's --top-k) down to
  --beyond-min-similarity (default half the run's --min-similarity): the duplicates blocking
  missed live here. They are found by a Beam job like `run`'s (the run's own parameters and vectors,
  `--params-from`), on the runner given (Beam flags after the review's own; the in-process runner by
  default);
- above_threshold, below_threshold: the other scored pairs.

Each stratum is sampled by simple random sampling without replacement: a scored pair's place comes
from a keyed hash of (seed, its ids), so the sample is the stratum's n_h lowest hashes (one pass,
n_h kept); transitive pairs are drawn uniformly (a group by its number of pairs, then two of its
texts), redrawn when the run scored them, until n_h distinct ones are found. So a pair of stratum h
is on the sheet with probability n_h / N_h, its `weight` is N_h / n_h, and `stratum_size` is N_h.
--size is divided among the strata by `SHARES` (what a stratum cannot fill goes to the others).

Memory: the run's distinct texts (their group and row count, a group's texts for transitive draws),
the edges of the --large-groups largest groups, and n_h pairs per stratum; pairs/ is streamed.
"""
from __future__ import annotations

import argparse
import bisect
import csv
import hashlib
import heapq
import io
import math
import random
import shutil
import sys
import tempfile
from collections import defaultdict
from typing import Hashable, Iterable, Iterator, NamedTuple, Optional, Sequence

from apache_beam.io.filesystems import FileSystems

from pipelines.estimates import pooled_sizes
from transforms.commit import Committed, committed_root, parquet_rows, read_committed
from transforms.errors import QdedupError
from transforms.explain import order_key, weakest_link
from transforms.paths import is_remote, join
from transforms.records import Edge

STRATA = ("changed", "weakest_link", "near_threshold", "transitive", "beyond_top_k", "above_threshold",
          "below_threshold")
SHARES = {"changed": 0.10, "weakest_link": 0.05, "near_threshold": 0.30, "transitive": 0.15, "beyond_top_k": 0.15,
          "above_threshold": 0.10, "below_threshold": 0.15}
SHEET_COLUMNS = ("run_id", "id_a", "id_b", "text_a", "text_b", "score", "stratum", "stratum_size", "weight",
                 "label")
DRAWS_PER_PAIR = 8  # transitive candidates drawn per pair wanted, before the run's scored ones are set aside


def pair_hash(seed: int, a: Hashable, b: Hashable) -> int:
    """A pair's place in the random order of draw `seed`: the same in every pass and on every machine."""
    digest = hashlib.blake2b(f"{seed}\x1f{a!r}\x1f{b!r}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def scored_stratum(score: float, threshold: float, near: float, changed: bool, weakest: bool) -> str:
    """The stratum of a scored pair: the first of `STRATA` it fits."""
    if changed:
        return "changed"
    if weakest:
        return "weakest_link"
    if abs(score - threshold) < near:
        return "near_threshold"
    return "above_threshold" if score >= threshold else "below_threshold"


def allocate(sizes: dict, total: int, shares: Optional[dict] = None) -> dict:
    """{stratum: pairs to draw}: `total` divided by `shares` among the non-empty strata of `sizes`
    ({stratum: N_h}), none more than its N_h; what one cannot take goes to the others by their shares.
    Largest remainders round; ties go to the stratum first in `STRATA`."""
    shares = shares or SHARES
    wanted = {s: 0 for s in sizes}
    left = min(total, sum(sizes.values()))
    while left > 0:
        open_strata = [s for s in STRATA if s in sizes and wanted[s] < sizes[s]]
        weight = sum(shares[s] for s in open_strata)
        exact = {s: left * shares[s] / weight for s in open_strata}
        given = {s: min(int(exact[s]), sizes[s] - wanted[s]) for s in open_strata}
        if sum(given.values()) == 0:  # every share rounds to 0: hand out one each by remainder
            for s in sorted(open_strata, key=lambda s: (-(exact[s] - int(exact[s])), STRATA.index(s)))[:left]:
                given[s] = 1
        for s, n in given.items():
            wanted[s] += n
        left -= sum(given.values())
    return wanted


class LowestHashes:
    """The `k` pairs of lowest hash seen (with their data) and the count of pairs seen, for one stratum."""

    def __init__(self, k: int):
        self.k, self.seen, self._heap = k, 0, []

    def offer(self, key: int, item) -> None:
        self.seen += 1
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, (-key, item))
        elif -key > self._heap[0][0]:
            heapq.heapreplace(self._heap, (-key, item))

    def lowest(self, n: int) -> list:
        """The `n` lowest-hash items, lowest first."""
        return [item for _, item in sorted(self._heap, key=lambda entry: -entry[0])][:n]


def draw_within_groups(members: dict, rng: random.Random, draws: int) -> list[tuple]:
    """`draws` pairs (a, b), a < b, of two texts of one group of 3 or more, uniform over all such pairs
    (with replacement): a group with probability proportional to its pairs, then two of its texts. (A
    group of two texts is joined by their scored pair: it has no transitive pair.)"""
    groups = sorted((g for g, reps in members.items() if len(reps) >= 3), key=order_key)
    if not groups:
        return []
    cumulative, running = [], 0
    for group in groups:
        running += math.comb(len(members[group]), 2)
        cumulative.append(running)
    found = []
    for _ in range(draws):
        reps = members[groups[bisect.bisect_right(cumulative, rng.randrange(running))]]
        i, j = rng.sample(range(len(reps)), 2)
        a, b = reps[i], reps[j]
        found.append(ordered(a, b))
    return found


def ordered(a: Hashable, b: Hashable) -> tuple:
    """A pair's ids in the order pairs/ and the sheet keep them."""
    return (a, b) if order_key(a) < order_key(b) else (b, a)


class SheetPair(NamedTuple):
    id_a: Hashable
    id_b: Hashable
    score: Optional[float]
    stratum: str


class RunTexts:
    """What drawing a sheet needs of a committed run, beside pairs/ (streamed): each distinct text's group
    and row count, and each group's texts."""

    def __init__(self, committed: Committed):
        self.committed = committed
        rep_of = {row["id"]: row["rep_id"] for row in parquet_rows(committed.paths("state/members", ".parquet"),
                                                                    ["id", "rep_id"])}
        self.group_of: dict = {}
        for row in parquet_rows(committed.paths("groups", ".parquet"), ["id", "group_id"]):
            rep = rep_of.get(row["id"])
            if rep is not None:
                self.group_of[rep] = row["group_id"]
        self.rows_of = {row["id"]: row["count"] for row in parquet_rows(
            committed.paths("state/representatives", ".parquet"), ["id", "count"]) if row["id"] in self.group_of}
        self.members: dict = defaultdict(list)
        for rep in sorted(self.group_of, key=order_key):
            self.members[self.group_of[rep]].append(rep)

    def pairs(self) -> Iterator[dict]:
        return parquet_rows(self.committed.paths("pairs", ".parquet"), ["id_a", "id_b", "score", "source"])

    def texts(self, ids: set) -> dict:
        return {row["id"]: row["text"] for row in parquet_rows(
            self.committed.paths("state/representatives", ".parquet"), ["id", "text"]) if row["id"] in ids}


def run_id_parser(run: RunTexts):
    """(sheet id text, where) -> the run's id: an int where the run's ids are integers."""
    strings = any(isinstance(key, str) for key in run.group_of)

    def parse(value: str, where: str):
        if strings:
            return value
        try:
            return int(value)
        except ValueError as exc:
            raise QdedupError(f"{where}: id {value!r}: this run's ids are integers") from exc
    return parse


def previous_grouping(path: str, rep_ids: set) -> dict:
    """{representative id: its row's group in the run at `path`}, for the representatives asked about."""
    committed = read_committed(committed_root(path), "--previous-groups")
    return {row["id"]: row["group_id"] for row in parquet_rows(committed.paths("groups", ".parquet"),
                                                                ["id", "group_id"]) if row["id"] in rep_ids}


def weakest_links(run: RunTexts, threshold: float, largest: int) -> set:
    """{(a, b)} of the weakest link of each of the `largest` groups with the most texts (3 or more)."""
    big = sorted((g for g, reps in run.members.items() if len(reps) >= 3),
                 key=lambda g: (-len(run.members[g]), order_key(g)))[:largest]
    wanted = set(big)
    edges: dict = defaultdict(list)
    for pair in run.pairs():
        group = run.group_of.get(pair["id_a"])
        if group in wanted and run.group_of.get(pair["id_b"]) == group and pair["score"] >= threshold:
            edges[group].append(Edge(pair["id_a"], pair["id_b"], pair["score"], pair["source"]))
    found = set()
    for group in big:
        link = weakest_link(edges[group], threshold)
        if link is not None:
            found.add(ordered(link.a, link.b))
    return found


def draw_sheet(run: RunTexts, threshold: float, size: int, seed: int, near: float = 0.1, largest: int = 50,
               previous: Optional[dict] = None, beyond: Iterable[dict] = ()) -> tuple[list[SheetPair], dict]:
    """The pairs of a review sheet, drawn by the rules of this module.

    Args:
        run: the run's texts, groups and pairs (`RunTexts`, or anything answering the same).
        threshold: the run's --threshold.
        size: pairs wanted in all (`allocate` divides them).
        seed: which draw; the same seed draws the same pairs.
        near, largest: the near_threshold half-width and how many of the largest groups give a weakest link.
        previous: representative id -> its group in the previous run (--previous-groups), or None.
        beyond: (id_a, id_b) rows of the pairs blocking proposes with more neighbours that the run did not
            score (`extra_neighbours`).

    Returns:
        (the drawn `SheetPair`s, {stratum: N_h} of every non-empty stratum; one the sheet has no pair of, too
        small a `size` to reach it, is outside what the sheet can estimate).
    """
    weakest = weakest_links(run, threshold, largest)
    rng = random.Random(seed)
    drawn = draw_within_groups(run.members, rng, DRAWS_PER_PAIR * size)
    scored_draws: set = set()
    wanted_draws = set(drawn)
    kept = {s: LowestHashes(size) for s in STRATA}
    same_group_scored_3 = 0
    for pair in run.pairs():
        a, b = pair["id_a"], pair["id_b"]
        group_a, group_b = run.group_of.get(a), run.group_of.get(b)
        if group_a is None or group_b is None or a == b:
            continue
        key = ordered(a, b)
        same = group_a == group_b
        same_group_scored_3 += same and len(run.members[group_a]) >= 3
        if key in wanted_draws:
            scored_draws.add(key)
        changed = previous is not None and a in previous and b in previous and \
            (previous[a] == previous[b]) != same
        stratum = scored_stratum(pair["score"], threshold, near, changed, key in weakest)
        kept[stratum].offer(pair_hash(seed, *key), SheetPair(key[0], key[1], pair["score"], stratum))
    for pair in beyond:
        a, b = pair["id_a"], pair["id_b"]
        group_a, group_b = run.group_of.get(a), run.group_of.get(b)
        if group_a is None or group_b is None or group_a == group_b:  # a pair of one group is transitive
            continue
        key = ordered(a, b)
        kept["beyond_top_k"].offer(pair_hash(seed, *key), SheetPair(key[0], key[1], None, "beyond_top_k"))
    sizes = {s: kept[s].seen for s in STRATA if s != "transitive"}
    sizes["transitive"] = sum(math.comb(len(reps), 2) for reps in run.members.values() if len(reps) >= 3) \
        - same_group_scored_3
    sizes = {s: n for s, n in sizes.items() if n > 0}
    counts = allocate(sizes, size)
    chosen = []
    for stratum, n in counts.items():
        if stratum != "transitive":
            chosen += kept[stratum].lowest(n)
    if counts.get("transitive"):
        found: dict = {}
        for key in drawn:
            if key not in scored_draws and key not in found:
                found[key] = SheetPair(key[0], key[1], None, "transitive")
                if len(found) == counts["transitive"]:
                    break
        chosen += list(found.values())  # fewer than asked only when nearly every draw was a scored pair
    return chosen, sizes


def sheet_rows(run_id: str, pairs: Sequence[SheetPair], sizes: dict, texts: dict, seed: int) -> list[dict]:
    """The sheet's rows, in random order (strata mixed, so a labeller sees no pattern by position)."""
    drawn = defaultdict(int)
    for pair in pairs:
        drawn[pair.stratum] += 1
    rows = []
    for pair in sorted(pairs, key=lambda p: pair_hash(seed + 1, p.id_a, p.id_b)):
        rows.append({"run_id": run_id, "id_a": text_id(pair.id_a), "id_b": text_id(pair.id_b),
                     "text_a": texts.get(pair.id_a, ""), "text_b": texts.get(pair.id_b, ""),
                     "score": "" if pair.score is None else f"{pair.score:.6f}", "stratum": pair.stratum,
                     "stratum_size": sizes[pair.stratum],
                     "weight": f"{sizes[pair.stratum] / drawn[pair.stratum]:.6f}", "label": ""})
    return rows


def text_id(value) -> str:
    """An id as a spreadsheet keeps it: ="…", so that long integer ids are not rounded to 15 digits."""
    return f'="{value}"'


def write_sheet(path: str, rows: Sequence[dict]) -> None:
    """CSV in UTF-8 with a byte-order mark (spreadsheet programs then read Chinese text right)."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=SHEET_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    with FileSystems.create(path) as handle:
        handle.write(buffer.getvalue().encode("utf-8-sig"))


class IdPair(NamedTuple):
    id_a: Hashable
    id_b: Hashable


def _unscored(element) -> Iterator[IdPair]:
    (a, b), joined = element
    if not any(True for _ in joined["scored"]) and any(True for _ in joined["candidate"]):
        yield IdPair(a, b)


def extra_neighbours(committed: Committed, k: int, min_similarity: float, id_type: str,
                     beam_args: Sequence[str]) -> tuple[str, list[str]]:
    """(the folder written, its Parquet files of (id_a, id_b)): the pairs blocking proposes with `k` nearest
    neighbours down to `min_similarity`, with the run's other options, parameters and vectors
    (`--params-from` the run itself), that the run did not score."""
    import apache_beam as beam
    import pyarrow as pa
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    from pipelines.dedup import generate_candidates
    from pipelines.options import QdedupOptions, input_columns, parse_embedders
    from pipelines.preflight import load_prior, prepare_local_run
    from transforms.block import DistinctCandidates
    from transforms.joins import JoinByKey
    from transforms.write import WriteRecords, arrow_id_type

    configuration = dict(committed.configuration, top_k=k, min_similarity=min_similarity,
                         params_from=committed.root, existing=None, previous_groups=None)
    probe = PipelineOptions(list(beam_args))
    runner = probe.view_as(StandardOptions).runner
    local = runner is None or runner in StandardOptions.LOCAL_RUNNERS
    temp = probe.get_all_options().get("temp_location")
    if not local and not temp:
        raise QdedupError("qdedup review on a remote runner needs --temp_location for the extra neighbours")
    work = join(temp, f"qdedup-review-{committed.run_id}") if temp and is_remote(temp) else \
        tempfile.mkdtemp(prefix="qdedup_review_")
    names = set(PipelineOptions([]).view_as(QdedupOptions).get_all_options(current_only=True))
    given = {name: value for name, value in configuration.items() if name in names}
    pipeline_options = PipelineOptions([*(["--runner=FnApiRunner"] if runner is None else []), *beam_args],
                                       **given)
    options = pipeline_options.view_as(QdedupOptions)
    kinds = [kind for kind, _ in parse_embedders(options.embedders)]
    prior = load_prior(committed.root, False, configuration, kinds)
    prepare_local_run(options, pipeline_options)
    with beam.Pipeline(options=pipeline_options) as pipeline:
        generated = generate_candidates(pipeline, options, input_columns(options), prior,
                                        configuration.get("int8_models") or None)
        (
            {"candidate": generated.found | "DistinctCandidates" >> DistinctCandidates()
             | "KeyCandidate" >> beam.Map(lambda p: ((p.id_a, p.id_b), None)),
             "scored": generated.stored.pairs | "KeyScored" >> beam.Map(lambda p: ((p.id_a, p.id_b), None))}
            | "NotScored" >> JoinByKey(_unscored)
            | "WriteExtra" >> WriteRecords(join(work, "part"), pa.schema(
                [("id_a", arrow_id_type(id_type)), ("id_b", arrow_id_type(id_type))]))
        )
    return work, [m.path for m in FileSystems.match([join(work, "part*")])[0].metadata_list]


def review(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="qdedup review", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished run's --output directory")
    parser.add_argument("--output", required=True, help="the sheet to write (CSV, UTF-8 with BOM)")
    parser.add_argument("--size", type=int, default=200, help="pairs on the sheet (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="which draw (the same seed gives the same sheet)")
    parser.add_argument("--near", type=float, default=0.1, help="half-width of the near_threshold stratum")
    parser.add_argument("--large-groups", type=int, default=50, help="largest groups whose weakest link is a stratum")
    parser.add_argument("--previous-groups", help="an earlier run: pairs it grouped otherwise are a stratum")
    parser.add_argument("--beyond-k", type=int, help="nearest neighbours searched for the beyond_top_k stratum "
                                                     "(default: twice the run's --top-k; 0: no such stratum)")
    parser.add_argument("--beyond-min-similarity", type=float,
                        help="lowest similarity of those neighbours (default: half the run's --min-similarity)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing sheet at --output")
    parser.add_argument("--verbose", action="store_true", help="show every library's log lines")
    args, beam_args = parser.parse_known_args(argv)
    if args.size < 1:
        raise QdedupError("--size must be at least 1")
    if not 0 < args.near < 1:
        raise QdedupError("--near must be between 0 and 1")
    if not args.overwrite and FileSystems.exists(args.output):
        raise QdedupError(f"--output {args.output!r} exists (a sheet someone may be labelling): choose another "
                          "name, or add --overwrite")
    committed = read_committed(args.run, "--run")
    threshold = committed.configuration["threshold"]
    top_k = committed.configuration["top_k"]
    beyond_k = 2 * top_k if args.beyond_k is None else args.beyond_k
    if beyond_k and beyond_k <= top_k:
        raise QdedupError(f"--beyond-k {beyond_k}: must be more than the run's --top-k ({top_k}), or 0")
    run = RunTexts(committed)
    previous = previous_grouping(args.previous_groups, set(run.group_of)) if args.previous_groups else None
    id_type = "string" if any(isinstance(i, str) for i in run.group_of) else "int64"
    floor = committed.configuration["min_similarity"] / 2 if args.beyond_min_similarity is None \
        else args.beyond_min_similarity
    work, files = extra_neighbours(committed, beyond_k, floor, id_type, beam_args) if beyond_k else (None, [])
    try:
        pairs, sizes = draw_sheet(run, threshold, args.size, args.seed, args.near, args.large_groups, previous,
                                  parquet_rows(files, ["id_a", "id_b"]))
    finally:
        if work and not is_remote(work):
            shutil.rmtree(work, ignore_errors=True)
    texts = run.texts({i for p in pairs for i in (p.id_a, p.id_b)})
    write_sheet(args.output, sheet_rows(committed.run_id, pairs, sizes, texts, args.seed))
    by_stratum = defaultdict(int)
    for pair in pairs:
        by_stratum[pair.stratum] += 1
    print(f"{args.output}: {len(pairs)} pairs to label from run {committed.run_id} (threshold {threshold})")
    for stratum in STRATA:
        if stratum in sizes:
            print(f"  {stratum:16} {by_stratum[stratum]:5} of {sizes[stratum]:,}")
    missed = [s for s in sizes if not by_stratum[s]]
    if missed:
        print(f"qdedup review: no pair drawn from {', '.join(missed)}: estimates will leave those pairs out; "
              "raise --size", file=sys.stderr)
    print("fill the label column (1/0, yes/no, 是/否; blank or ? to skip), then: "
          f"qdedup evaluate --sheet {args.output} --run {args.run}")
    return 0


# ---- reading labelled sheets ----

LABELS = {"1": 1, "yes": 1, "y": 1, "是": 1, "0": 0, "no": 0, "n": 0, "否": 0}
SKIPPED = ("", "?", "unsure")


class LabelledPair(NamedTuple):
    run_id: str
    id_a: str
    id_b: str
    stratum: str
    stratum_size: int
    label: Optional[int]  # None: skipped
    where: str            # "FILE line N", for messages


def decode_sheet(data: bytes, path: str) -> str:
    """A sheet's text: UTF-8 (with or without BOM), or GB18030 (GBK, GB2312) as Chinese spreadsheet
    programs save it."""
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise QdedupError(f"{path}: neither UTF-8 nor GB18030 text; save the sheet as CSV in one of them")


def sheet_id(value: str, where: str) -> str:
    """An id as written by `text_id`, or as a spreadsheet saved it back (the bare value)."""
    value = value.strip()
    if value.startswith('="') and value.endswith('"'):
        value = value[2:-1]
    if "E+" in value.upper() and value.replace(".", "").replace("E+", "").replace("e+", "").isdigit():
        raise QdedupError(f"{where}: id {value!r} was rounded by a spreadsheet program; label the sheet "
                          "without converting its id columns to numbers")
    return value


def parse_label(value: Optional[str], where: str) -> Optional[int]:
    text = (value or "").strip().lower()
    if text in LABELS:
        return LABELS[text]
    if text in SKIPPED:
        return None
    raise QdedupError(f"{where}: label {value!r} is not one of 1/0, yes/no, y/n, 是/否 (blank, ? or unsure: "
                      "skipped)")


def read_sheet(path: str) -> list[LabelledPair]:
    """The rows of one labelled sheet (local or remote), each label parsed; a bad line is a named error."""
    try:
        with FileSystems.open(path) as handle:
            text = decode_sheet(handle.read(), path)
    except QdedupError:
        raise
    except Exception as exc:
        raise QdedupError(f"--sheet {path!r}: cannot be read ({exc})") from exc
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in ("run_id", "id_a", "id_b", "stratum", "stratum_size", "label")
               if c not in (reader.fieldnames or ())]
    if missing:
        raise QdedupError(f"--sheet {path!r}: no column {', '.join(missing)}; give a sheet `qdedup review` wrote")
    rows = []
    for row in reader:
        where = f"{path} line {reader.line_num}"
        try:
            size = int(row["stratum_size"])
        except (TypeError, ValueError) as exc:
            raise QdedupError(f"{where}: stratum_size {row['stratum_size']!r} is not a whole number") from exc
        if row["stratum"] not in STRATA:
            raise QdedupError(f"{where}: unknown stratum {row['stratum']!r}")
        rows.append(LabelledPair(row["run_id"], sheet_id(row["id_a"], where), sheet_id(row["id_b"], where),
                                 row["stratum"], size, parse_label(row["label"], where), where))
    return rows


def read_sheets(paths: Sequence[str]) -> tuple[list[LabelledPair], int, dict]:
    """(the labelled pairs of all sheets, each pair once; how many rows were skipped; {stratum: N_h}).
    Sheets must come from one run; the same pair labelled twice must carry the same label."""
    seen: dict = {}
    skipped = 0
    rows = [pair for path in paths for pair in read_sheet(path)]
    try:
        sizes = pooled_sizes((pair.stratum, pair.stratum_size) for pair in rows)
    except ValueError as exc:
        raise QdedupError(f"--sheet: {exc}") from exc
    for pair in rows:
        if pair.label is None:
            skipped += 1
            continue
        key = (pair.id_a, pair.id_b)
        earlier = seen.get(key)
        if earlier is None:
            seen[key] = pair
        elif earlier.label != pair.label:
            raise QdedupError(f"{pair.where}: pair {pair.id_a} / {pair.id_b} is labelled {pair.label}, "
                              f"but {earlier.label} at {earlier.where}")
    runs = {pair.run_id for pair in rows}
    if len(runs) > 1:
        raise QdedupError(f"the sheets were drawn from {len(runs)} runs ({', '.join(sorted(runs))}): give the "
                          "sheets of one run")
    return list(seen.values()), skipped, sizes
