"""`qdedup train-blocker --pairs FILE [--pairs FILE ...] --output DIR`: a static embedder for blocking.

Lexical blocking finds the duplicates that share characters; paraphrases that
share few (BQ's banking questions) are never even proposed. A static embedder
learns, from labelled pairs, which character n-grams mean the same: each hashed
character 1-2-gram (the buckets `transforms/embed.py` uses) gets a trained
vector, a question is the unit mean of its n-grams' vectors, and
`--embedders lexical,static:DIR` unites its nearest neighbours with lexical
ones at the cost of a table lookup per question.

Training: the positive pairs (label 1) of the given files, normalized as the
pipeline normalizes questions; a symmetric InfoNCE loss (each question against
its partner, the other partners of the batch, and one hard negative per pair:
a labelled negative of the question where the files have one, else its nearest
lexical neighbour that is not a known duplicate), an `EmbeddingBag` with sparse
Adam, seeded, so the same files and settings give the same table on the same
machine. Whole connected components of the pair graph (positive pairs and
known negatives) are held out, chosen by a seeded hash until they hold the
`--heldout` share of the positive pairs: no pair or negative that trains the
table touches a held-out question, so the figures are those of questions the
embedder never saw. Their recall@5, @10 and @20 (either
question among the other's k nearest, over every distinct question of the
files) are printed for the trained embedder, for lexical blocking and for the
two united, and kept in the embedder's `embedder.json`.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import shutil
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from pipelines.recall import read_labelled_pairs
from transforms.commit import parquet_rows, read_committed
from transforms.embed import fit_idf, ngram_bucket_rows, static_rows, tfidf_rows
from transforms.errors import QdedupError
from transforms.normalize import normalize_text
from transforms.paths import join
from transforms.sources import save_static_embedder
from transforms.vectors import to_dense

_LOG = logging.getLogger("qdedup")
HELDOUT_KS = (5, 10, 20)  # the k of the held-out recall figures printed and kept in embedder.json


@dataclass(frozen=True)
class TrainSettings:
    """The defaults are the command line's."""

    buckets: int = 1 << 17
    dims: int = 256
    epochs: int = 6
    batch_size: int = 256
    learning_rate: float = 3e-3
    scale: float = 20.0          # logits = scale x cosine
    heldout: float = 0.1         # share of positive pairs held out, as whole components of the pair graph
    lexical_dim: int = 1024      # for mining hard negatives and the lexical baseline
    seed: int = 0


def in_share(a: str, b: str, share: float, seed: int) -> bool:
    """Whether a pair falls in a seeded share: by a hash of its two strings (in either order), not its position
    (which pairs are held out; which mined pairs are trained on)."""
    key = "\0".join(sorted((a, b))) + f"\0{seed}"
    return zlib.crc32(key.encode("utf-8")) / 2**32 < share


def held_out_questions(texts: Sequence[str], edges: Iterable[tuple[int, int]],
                       positives: Sequence[tuple[int, int]], share: float, seed: int) -> set[int]:
    """Questions held out for the recall figures: whole connected components of the graph of `edges` (every
    labelled pair), taken in the order of a seeded hash of their first text while they hold at most `share`
    of the `positives` (a component that would overshoot is passed over), so that no held-out question
    shares a pair with a trained one.

    Args:
        texts: the questions, sorted (indices are positions).
        edges: index pairs that must not be split (positives and known negatives).
        positives: the positive index pairs the share is counted in.
        share: the share of positive pairs to hold out.
        seed: which components, for a given share.
    Returns:
        The held-out question indices.
    """
    parent = list(range(len(texts)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        parent[find(a)] = find(b)
    members: dict = {}
    for i in range(len(texts)):
        members.setdefault(find(i), []).append(i)
    positives_of: dict = {}
    for a, _ in positives:
        positives_of[find(a)] = positives_of.get(find(a), 0) + 1
    order = sorted(positives_of, key=lambda root: zlib.crc32(f"{texts[members[root][0]]}\0{seed}".encode("utf-8")))
    held, taken = set(), 0
    for root in order:
        if taken + positives_of[root] <= share * len(positives):
            held.update(members[root])
            taken += positives_of[root]
    return held


def nearest(vectors: np.ndarray, k: int) -> np.ndarray:
    """Each row's k nearest other rows by inner product (exact; -1 where there are fewer)."""
    import faiss
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    _, found = index.search(np.ascontiguousarray(vectors, dtype=np.float32), min(k + 1, len(vectors)))
    rows = []
    for i, row in enumerate(found):
        others = [int(j) for j in row if j != i and j >= 0][:k]
        rows.append(others + [-1] * (k - len(others)))
    return np.array(rows, dtype=np.int64).reshape(len(vectors), k)


def recall_at(embedders: Sequence[np.ndarray], pairs: Sequence[tuple[int, int]], ks: Sequence[int]) -> dict:
    """{"recall@k": share of pairs (i, j) with j among i's k nearest or i among j's, by any of the embedders
    (their candidates united, as a run unites them)}."""
    found = [nearest(vectors, max(ks)) for vectors in embedders]
    figures = {}
    for k in ks:
        hits = sum(any(j in near[i, :k] or i in near[j, :k] for near in found) for i, j in pairs)
        figures[f"recall@{k}"] = round(hits / max(len(pairs), 1), 4)
    return figures


def lexical_vectors(texts: Sequence[str], dim: int) -> np.ndarray:
    """TF-IDF vectors as `EmbedLexical` makes them, idf from these texts."""
    idf = fit_idf(texts, dim)
    return np.stack([to_dense(vector) for vector in tfidf_rows(texts, idf)])


def hard_negatives(anchors: Sequence[int], lexical: np.ndarray, duplicates: set, labelled: dict,
                   unseen: set) -> list[int]:
    """Per anchor: a labelled negative of it, else its nearest lexical neighbour not known as its duplicate;
    never a question of `unseen` (the held-out ones)."""
    found = nearest(lexical, 8)
    chosen = []
    for anchor in anchors:
        if labelled.get(anchor, -1) >= 0 and labelled[anchor] not in unseen:
            chosen.append(labelled[anchor])
            continue
        others = [int(j) for j in found[anchor]
                  if j >= 0 and j not in unseen and (min(anchor, j), max(anchor, j)) not in duplicates]
        chosen.append(others[0] if others else _next_seen(anchor, len(lexical), unseen))
    return chosen


def _next_seen(anchor: int, count: int, unseen: set) -> int:
    """The first question after `anchor` (cyclically) that is not held out (the anchor itself if none is)."""
    return next((j % count for j in range(anchor + 1, anchor + count) if j % count not in unseen), anchor)


def train_table(texts: Sequence[str], positives: Sequence[tuple[int, int]], negatives: Sequence[int],
                settings: TrainSettings, progress: Callable[[int, float, float], None]) -> np.ndarray:
    """The trained table (buckets x dims): texts[a] and texts[b] pulled together for each positive (a, b),
    pushed from the batch's other partners and from texts[negatives[i]]."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    bags = [torch.as_tensor(buckets) for buckets in ngram_bucket_rows(texts, settings.buckets)]
    table = torch.nn.EmbeddingBag(settings.buckets, settings.dims, mode="mean", sparse=True)
    torch.nn.init.normal_(table.weight, std=1.0 / math.sqrt(settings.dims))
    optimizer = torch.optim.SparseAdam(table.parameters(), lr=settings.learning_rate)
    first = torch.as_tensor([a for a, _ in positives])
    second = torch.as_tensor([b for _, b in positives])
    hard = torch.as_tensor(list(negatives))

    def embed(indices: torch.Tensor) -> torch.Tensor:
        chosen = [bags[i] for i in indices.tolist()]
        lengths = torch.as_tensor([max(len(bag), 1) for bag in chosen])
        flat = torch.cat([bag if len(bag) else torch.zeros(1, dtype=torch.long) for bag in chosen])
        offsets = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long), lengths[:-1]]), 0)
        return F.normalize(table(flat, offsets), dim=-1)

    for epoch in range(1, settings.epochs + 1):
        started, total, steps = time.perf_counter(), 0.0, 0
        order = torch.randperm(len(positives), generator=generator)
        for start in range(0, len(order), settings.batch_size):
            batch = order[start:start + settings.batch_size]
            a, b, h = embed(first[batch]), embed(second[batch]), embed(hard[batch])
            target = torch.arange(len(batch))
            loss = (F.cross_entropy(settings.scale * a @ torch.cat([b, h]).T, target)
                    + F.cross_entropy(settings.scale * b @ a.T, target)) / 2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
        progress(epoch, total / max(steps, 1), len(positives) / (time.perf_counter() - started))
    return table.weight.detach().numpy().astype(np.float32)


def train(files: Sequence[str], settings: TrainSettings) -> tuple[np.ndarray, dict]:
    """From labelled pairs: (table, what embedder.json records: how it was trained, its held-out figures)."""
    texts, source, negative_of = read_training_pairs(files)
    return _train(texts, source, negative_of, settings, {"files": file_names(files)})


def file_names(files: Sequence[str]) -> list[str]:
    """How figures name each file: its base name, or the path as given where two base names are the same
    (a/dev.tsv and b/dev.tsv)."""
    names = [os.path.basename(path) for path in files]
    return [name if names.count(name) == 1 else path for path, name in zip(files, names)]


def read_training_pairs(files: Sequence[str]) -> tuple[list[str], dict, dict]:
    """Labelled pair files -> (distinct normalized texts, {positive index pair: first file holding it},
    {question index: a known negative of it}).

    Raises:
        QdedupError: the files hold no positive pair.
    """
    labelled = [(normalize_text(a), normalize_text(b), label, name) for path, name in zip(files, file_names(files))
                for a, b, label in read_labelled_pairs(path) if isinstance(a, str) and isinstance(b, str)]
    texts = sorted({t for a, b, _, _ in labelled for t in (a, b) if t})
    index = {text: i for i, text in enumerate(texts)}
    source: dict = {}  # positive pair -> the first file that has it
    negative_of: dict = {}
    for a, b, label, name in labelled:
        if a and b and a != b:
            if label == 1:
                source.setdefault((min(index[a], index[b]), max(index[a], index[b])), name)
            else:
                negative_of.setdefault(index[a], index[b])
                negative_of.setdefault(index[b], index[a])
    if not source:
        raise QdedupError("train-blocker: the --pairs files hold no positive pair (label 1) of two texts")
    return texts, source, negative_of


@dataclass(frozen=True)
class TrainingSplit:
    """What `training_split` gives: positives to train on and held out, a hard negative per kept positive,
    the texts' lexical vectors."""

    kept: list[tuple[int, int]]
    heldout: list[tuple[int, int]]
    negatives: list[int]
    lexical: np.ndarray
    unseen: int  # questions held out


def _train(texts: Sequence[str], source: dict, negative_of: dict, settings: TrainSettings,
           origin: dict) -> tuple[np.ndarray, dict]:
    """The table trained on `source`'s positive pairs (index pairs -> where each came from), less a held-out
    share; `negative_of`: a known negative per question index. Returns it and its embedder.json content."""
    split = training_split(texts, source, negative_of, settings)
    kept, heldout, lexical = split.kept, split.heldout, split.lexical

    def progress(epoch: int, loss: float, rate: float) -> None:
        _LOG.info("train-blocker: epoch %d of %d, loss %.4f, %.0f pairs/s", epoch, settings.epochs, loss, rate)

    table = train_table(texts, kept, split.negatives, settings, progress)
    static = np.stack(static_rows(texts, table))

    def measured(pairs: list) -> dict:
        figures = {"pairs": len(pairs)}
        if pairs:
            for name, embedders in (("static", [static]), ("lexical", [lexical]),
                                    ("lexical,static", [lexical, static])):
                figures[name] = recall_at(embedders, pairs, HELDOUT_KS)
        return figures

    figures = measured(heldout)
    names = sorted(set(source.values()))
    if len(names) > 1:
        figures["by_file"] = {name: measured([p for p in heldout if source[p] == name]) for name in names}
    config = {"trained": {**asdict(settings), **origin, "questions": len(texts) - split.unseen,
                          "positive_pairs": len(kept), "heldout_by": "component"},
              "heldout": figures}
    return table, config


def training_split(texts: Sequence[str], source: dict, negative_of: dict, settings: TrainSettings) -> TrainingSplit:
    """Whole components held out (`held_out_questions`), a hard negative mined for each kept positive.

    Args:
        texts: the distinct questions; source, negative_of: as `read_training_pairs` gives them.
        settings: the held-out share, seed and lexical dimensions come from here.
    Returns:
        The split; the same inputs and settings give the same split.
    Raises:
        QdedupError: nothing is left to train on.
    """
    positives = sorted(source)
    unseen = held_out_questions(texts, [*positives, *negative_of.items()], positives, settings.heldout,
                                settings.seed)
    kept = [p for p in positives if p[0] not in unseen]  # a component is held out whole: p[1] goes with p[0]
    heldout = [p for p in positives if p[0] in unseen]
    _LOG.info("train-blocker: %d questions (%d held out), %d positive pairs (%d held out), %d with a known negative",
              len(texts), len(unseen), len(positives), len(heldout), len(negative_of))
    if not kept:
        raise QdedupError(f"train-blocker: --heldout {settings.heldout} leaves no positive pair to train on")
    lexical = lexical_vectors(texts, settings.lexical_dim)
    negatives = hard_negatives([a for a, _ in kept], lexical, set(positives), negative_of, unseen)
    return TrainingSplit(kept, heldout, negatives, lexical, len(unseen))


# Options of the run that the mining run takes over: what its stored parameters, vectors and scores depend on
# (they must match for --params-from), and how it scores.
_MINING_OPTIONS = ("scorer_model", "embedders", "lexical_dim", "encoder_pooling", "encoder_whiten", "max_length",
                   "symmetric", "positive_label", "precision", "device", "token_budget", "sort_window",
                   "min_similarity", "threshold")


def mine(run: str, top_k: int, output: str, run_command: Callable[[list], int], extra: Sequence[str]) -> str:
    """`qdedup run --params-from RUN` over RUN's own representatives with `--top-k top_k`: each question with
    its top_k nearest, scored by RUN's cross-encoder through the scoring stage (RUN's scores reused), so on
    Dataflow it runs on the same workers. Returns the mining run's output (never RUN itself)."""
    committed = read_committed(run, "--from-run")
    configuration = committed.configuration
    pattern = join(committed.root, "state", "representatives", f"{committed.report['run_id']}-*.parquet")
    argv = ["--input", pattern, "--text-column", "text", "--params-from", committed.root, "--top-k", str(top_k),
            "--output", output]
    for name in _MINING_OPTIONS:
        value = configuration.get(name)
        if value is not None and value is not False:
            argv.append(f"--{name.replace('_', '-')}" if value is True else f"--{name.replace('_', '-')}={value}")
    _LOG.info("train-blocker: mining %s's questions with their %d nearest into %s", committed.root, top_k, output)
    code = run_command([*argv, *extra])
    if code:
        raise QdedupError(f"train-blocker --from-run: the mining run into {output} failed ({code}); see above")
    return output


def train_from_run(run: str, settings: TrainSettings, top_k: int, max_pairs: int, work: str,
                   run_command: Callable[[list], int], extra: Sequence[str]) -> tuple[np.ndarray, dict]:
    """From a run's own cross-encoder: its questions' `top_k` nearest mined and scored (`mine`), pairs at or
    above the run's threshold as positives, those below as known negatives; at most `max_pairs` pairs
    (a seeded sample by a hash of the pair) and their questions are held."""
    mined = read_committed(mine(run, top_k, work, run_command, extra), "--from-run")
    threshold = mined.configuration["threshold"]
    share = min(1.0, max_pairs / max(mined.report.get("pairs_total", 1), 1))
    sampled = list(itertools.islice(
        (row for row in parquet_rows(mined.paths("pairs", ".parquet"), ["id_a", "id_b", "score"])
         if in_share(repr(row["id_a"]), repr(row["id_b"]), share, settings.seed + 1)), max_pairs))
    wanted = {i for row in sampled for i in (row["id_a"], row["id_b"])}
    text_of = {rep["id"]: rep["normalized"]
               for rep in parquet_rows(mined.paths("state/representatives", ".parquet"), ["id", "normalized"])
               if rep["id"] in wanted}
    texts = sorted(set(text_of.values()))
    index = {text: i for i, text in enumerate(texts)}
    source: dict = {}
    negative_of: dict = {}
    for row in sampled:
        a, b = index[text_of[row["id_a"]]], index[text_of[row["id_b"]]]
        if a == b:
            continue
        if row["score"] >= threshold:
            source[(min(a, b), max(a, b))] = "mined"
        else:
            negative_of.setdefault(a, b)
            negative_of.setdefault(b, a)
    if not source:
        raise QdedupError(f"train-blocker --from-run: no mined pair scored {threshold} or more; nothing to learn")
    return _train(texts, source, negative_of, settings,
                  {"from_run": mined.configuration["params_from"], "mined_top_k": top_k, "threshold": threshold,
                   "mined_pairs": len(sampled)})


def write_atomically(directory: str, table: np.ndarray, config: dict, overwrite: bool) -> None:
    """The embedder directory appears whole or not at all; an existing one is replaced only with overwrite."""
    directory = os.path.abspath(directory)
    if os.path.exists(directory) and not overwrite:
        raise QdedupError(f"--output {directory!r} exists; give --overwrite to replace it")
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".train-blocker-", dir=parent)
    save_static_embedder(staging, table, config)
    if os.path.exists(directory):
        retired = tempfile.mkdtemp(prefix=".train-blocker-old-", dir=parent)
        os.rename(directory, os.path.join(retired, "old"))
        os.rename(staging, directory)
        shutil.rmtree(retired)
    else:
        os.rename(staging, directory)


def train_blocker(argv: Sequence[str], run_command: Callable[[list], int]) -> int:
    """The command; `run_command(argv)` is `qdedup run`'s (given by the command line, for --from-run)."""
    defaults = TrainSettings()
    parser = argparse.ArgumentParser(prog="qdedup train-blocker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pairs", action="append",
                        help="labelled pairs (TSV text_a, text_b, label; or CSV / Parquet); repeat for more files")
    source.add_argument("--from-run", help="a finished run's --output: its cross-encoder labels mined pairs")
    parser.add_argument("--mine-top-k", type=int, default=50, help="--from-run: neighbours mined per question")
    parser.add_argument("--max-pairs", type=int, default=100_000,
                        help="--from-run: mined pairs trained on at most (the trainer holds their questions' "
                             "dense lexical vectors, 4 KiB each, and searches them exactly)")
    parser.add_argument("--mine-output", default=None,
                        help="--from-run: where the mining run writes (default: a folder beside --output, removed "
                             "once trained; gs://... on Dataflow); --config and Beam options go to that run")
    parser.add_argument("--output", required=True, help="the embedder directory to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument("--verbose", action="store_true")
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args, extra = parser.parse_known_args(argv)
    if extra and not args.from_run:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    settings = TrainSettings(**{name: getattr(args, name) for name in asdict(defaults)})
    if settings.buckets < 2 or settings.dims < 2 or settings.epochs < 1 or settings.batch_size < 2:
        raise QdedupError("train-blocker: --buckets, --dims and --batch-size must be at least 2, --epochs 1")
    if not 0.0 <= settings.heldout < 1.0:
        raise QdedupError(f"train-blocker: --heldout {settings.heldout} must be in [0, 1)")
    if args.from_run:
        if args.mine_top_k < 1 or args.max_pairs < 1:
            raise QdedupError("train-blocker: --mine-top-k and --max-pairs must be at least 1")
        scratch = None if args.mine_output else tempfile.mkdtemp(
            prefix=".train-blocker-mined-", dir=os.path.dirname(os.path.abspath(args.output)))
        table, config = train_from_run(args.from_run, settings, args.mine_top_k, args.max_pairs,
                                       args.mine_output or os.path.join(scratch, "mined"), run_command, extra)
        if scratch:  # the mining run served its purpose; one given by --mine-output is kept
            shutil.rmtree(scratch)
    else:
        table, config = train(args.pairs, settings)
    write_atomically(args.output, table, config, args.overwrite)
    print(json.dumps({"output": os.path.abspath(args.output), "heldout": config["heldout"]}, ensure_ascii=False))
    return 0
