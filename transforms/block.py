"""Candidate generation by partitioned FAISS nearest neighbours (docs/design.md, "block").

Only pairs that blocking proposes are ever scored, so this stage bounds both the
recall and the cost of a run. No worker holds the whole corpus:

1. coarse centroids are trained (spherical k-means, fixed seed) on a
   deterministic sample of the vectors and passed as a side input;
2. each vector goes to its `probes` nearest partitions;
3. a partition larger than `max_block` is cut into b blocks by a stable hash of
   the id, and searched as b x b (query block, index block) work items, so a
   work item never holds more than two blocks while the search stays exact
   within the partition;
4. exact inner-product kNN runs inside each work item; each question keeps its
   best k neighbours over all its partitions above the similarity floor;
5. pairs are keyed (min id, max id) and made distinct.

Similarities never depend on the search: faiss proposes `top_k + margin`
neighbours, and the similarity of each is then computed by one fixed routine
(`exact_similarities`: float64 sums of the float32 products, rounded to float32),
so a pair has the same similarity whichever work item, batch of queries or run
finds it, and neighbours are ranked by (similarity, then the lower id) exactly.
That is what lets an extended run (`--existing`) keep each stored question's k
nearest as (similarity, id) lists and update them with newcomers to exactly the
lists a full run would find.
"""
from __future__ import annotations

import logging
import math
import time
import zlib
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Optional, Sequence

import apache_beam as beam
import faiss
import numpy as np
from apache_beam.metrics import Metrics

from transforms.metrics import StageTimer
from transforms.records import CandidatePair, GivenCentroids, Neighbours
from transforms.vectors import dot_rows, to_dense

_LOG = logging.getLogger(__name__)
_SAMPLE_BUCKETS = 1_000_003


@dataclass(frozen=True)
class BlockingSettings:
    """The defaults are the command line's."""

    top_k: int = 10                  # neighbours kept per question
    min_similarity: float = 0.3      # inner product below which no candidate is made
    partitions: int = 0              # 0: probes x corpus / partition_size, at least 1
    partition_size: int = 10_000     # mean questions per partition when `partitions` is 0
    probes: int = 2                  # partitions each question is placed in
    max_block: int = 20_000          # larger partitions are searched block by block
    sample_per_partition: int = 256  # k-means training points per centroid
    margin: int = 10                 # extra neighbours faiss proposes, re-ranked by exact similarity
    seed: int = 0


def rank(entry: tuple) -> tuple:
    """Sort key of a (similarity, id, ...) entry: best first, ties to the lower id."""
    return -entry[0], entry[1]


def stable_hash(value: object) -> int:
    """The same in every process and run, unlike hash()."""
    return zlib.crc32(repr(value).encode("utf-8"))


def partition_count(n: int, settings: BlockingSettings) -> int:
    if settings.partitions:
        return max(1, min(settings.partitions, n))
    return max(1, min(n, math.ceil(settings.probes * n / settings.partition_size)))


def in_sample(item_id: object, n: int, n_partitions: int, settings: BlockingSettings) -> bool:
    """Deterministic sample of about sample_per_partition x partitions ids."""
    rate = settings.sample_per_partition * n_partitions / max(n, 1)
    return stable_hash(item_id) % _SAMPLE_BUCKETS < rate * _SAMPLE_BUCKETS


def train_centroids(sample: np.ndarray, n_partitions: int, seed: int) -> np.ndarray:
    """Unit-length k-means centroids of the sample (rows sorted by the caller for determinism)."""
    n_partitions = min(n_partitions, len(sample))
    kmeans = faiss.Kmeans(sample.shape[1], n_partitions, niter=20, seed=seed, spherical=True,
                          min_points_per_centroid=1, max_points_per_centroid=1 << 30)
    kmeans.train(np.ascontiguousarray(sample, dtype=np.float32))
    return kmeans.centroids


def nearest_partitions(vector, centroids: Optional[np.ndarray], probes: int) -> list[int]:
    if centroids is None or len(centroids) == 1:
        return [0]
    sims = dot_rows(centroids, vector)
    probes = min(probes, len(centroids))
    best = np.argpartition(-sims, probes - 1)[:probes]
    return sorted(int(p) for p in best)


def block_count(size: int, max_block: int) -> int:
    return max(1, math.ceil(size / max_block))


_EXACT_CHUNK = 1 << 22  # float64 products held at once while recomputing similarities


def exact_similarities(queries: np.ndarray, index: np.ndarray, found: np.ndarray) -> np.ndarray:
    """sims[i, j] = queries[i] . index[found[i, j]], by one fixed routine (-inf where found is -1).

    Each product of two float32 values is exact in float64 and each row is summed the same way
    whatever else is computed with it; rounding the sum to float32 makes the result the same in
    every work item, process and run (a float64 sum would have to fall within 1e-16 of a float32
    rounding boundary to tell two orders of summation apart).
    """
    sims = np.full(found.shape, -np.inf, dtype=np.float32)
    if not found.size:
        return sims
    rows = max(1, _EXACT_CHUNK // max(found.shape[1] * queries.shape[1], 1))
    for start in range(0, len(found), rows):
        block = found[start:start + rows]
        valid = block >= 0
        q = queries[start:start + rows].astype(np.float64)[:, None, :]
        x = index[np.where(valid, block, 0)].astype(np.float64)
        sums = (q * x).sum(axis=-1).astype(np.float32)
        sims[start:start + rows] = np.where(valid, sums, -np.inf)
    return sims


def knn_lists(query_ids: Sequence, queries: np.ndarray, index_ids: Sequence, index: np.ndarray, k: int,
              min_similarity: float, margin: int = 10) -> dict[object, Neighbours]:
    """{query id: up to k (similarity, neighbour id), best first}, never the query itself.

    faiss proposes k + 1 + margin neighbours; they are ranked by their exact similarity.
    """
    if not len(query_ids) or not len(index_ids) or k < 1:
        return {}
    index = np.ascontiguousarray(index, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    search = faiss.IndexFlatIP(index.shape[1])
    search.add(index)
    _, found = search.search(queries, min(k + 1 + margin, len(index_ids)))
    sims = exact_similarities(queries, index, found)
    lists: dict[object, Neighbours] = {}
    for query_id, row_sims, row_found in zip(query_ids, sims, found):
        neighbours = sorted(((float(s), index_ids[j]) for s, j in zip(row_sims, row_found)
                             if j >= 0 and s >= min_similarity and index_ids[j] != query_id), key=rank)
        if neighbours:
            lists[query_id] = neighbours[:k]
    return lists


def best_neighbours(candidates: Iterable[tuple[float, object]], k: int) -> Neighbours:
    """The k most similar distinct neighbours; ties go to the lower id, so results are deterministic."""
    best: dict = {}
    for sim, neighbour in candidates:
        if sim > best.get(neighbour, -math.inf):
            best[neighbour] = sim
    return sorted(((s, n) for n, s in best.items()), key=rank)[:k]


def enters(entry: tuple, neighbours: Neighbours, k: int) -> bool:
    """Whether (similarity, id) would be among the k best of a question whose k best are `neighbours`."""
    return len(neighbours) < k or rank(entry) < rank(neighbours[k - 1])


def knn_pairs(ids: Sequence, vectors: np.ndarray, k: int, min_similarity: float) -> dict[tuple, float]:
    """Exact kNN over one set of vectors, as {(min id, max id): similarity}: the single-partition result."""
    pairs: dict[tuple, float] = {}
    for query, neighbours in knn_lists(ids, vectors, ids, vectors, k, min_similarity).items():
        for sim, neighbour in neighbours:
            key = (query, neighbour) if query < neighbour else (neighbour, query)
            pairs[key] = max(sim, pairs.get(key, -math.inf))
    return pairs


# ---- Beam glue ----

class Blocked(NamedTuple):
    """What blocking gives: the candidate pairs; every question's k nearest as (id, `Neighbours`),
    which an extension keeps; and the centroids the partitions came from (None: one partition)."""

    pairs: beam.PCollection
    neighbours: beam.PCollection
    centroids: beam.PCollection


def _train(sample: list, n: int, settings: BlockingSettings) -> Optional[np.ndarray]:
    n_partitions = partition_count(n, settings)
    if n_partitions == 1 or not sample:
        return None
    sample = sorted(sample, key=lambda pair: pair[0])
    return train_centroids(np.stack([to_dense(vector) for _, vector in sample]), n_partitions, settings.seed)


class _AssignPartitions(beam.DoFn):
    """item -> (partition, item) for its nearest partitions; with `only`, for those among them."""

    def __init__(self, probes: int):
        self._probes = probes

    def process(self, item, centroids, only=None):
        for partition in nearest_partitions(item.vector, centroids, self._probes):
            if only is None or partition in only:
                yield partition, item


class _ToWorkItems(beam.DoFn):
    """(partition, item) -> ((partition, query block, index block), (role, item)).

    A question being searched is a query and searchable ("both", "query", "index"); a stored
    question of an extended run ("stored") only searchable, and searched against the queries for
    the newcomers that enter its k nearest.
    """

    def __init__(self, max_block: int, stored: bool = False):
        self._max_block = max_block
        self._stored = stored

    def process(self, element, sizes: dict):
        partition, item = element
        blocks = block_count(sizes[partition], self._max_block)
        mine = stable_hash(item.rep.id) % blocks
        for other in range(blocks):
            if self._stored:
                yield (partition, other, mine), ("stored", item)
            elif other == mine:
                yield (partition, mine, mine), ("both", item)
            else:
                yield (partition, mine, other), ("query", item)
                yield (partition, other, mine), ("index", item)


class _SearchWorkItem(beam.DoFn):
    """Main output: (query id, (text, [(sim, id, text)])); "entering": (stored id, [(sim, id, text)])."""

    def __init__(self, settings: BlockingSettings):
        self._settings = settings
        self._timer = StageTimer("block")
        self._sizes = Metrics.distribution("qdedup", "blocking_work_item_size")

    def process(self, element):
        _, members = element
        queries, index, stored, size = [], [], [], 0
        for role, item in members:
            size += 1
            if role in ("both", "query"):
                queries.append(item)
            if role != "query":
                index.append(item)
            if role == "stored":
                stored.append(item)
        self._sizes.update(size)
        if not queries or not index:
            return
        settings = self._settings
        texts = {item.rep.id: item.rep.text for item in index}
        started = time.perf_counter()
        with self._timer:
            lists = _search(queries, index, settings)
            # The searches a full run would make from the stored side: newcomers that enter a stored
            # question's k nearest.
            reverse = _search(stored, queries, settings) if stored else {}
        partition, query_block, index_block = element[0]
        _LOG.info("blocking: partition %s, blocks %d x %d: %d questions searched against %d in %.1f s",
                  partition, query_block, index_block, len(queries), len(index), time.perf_counter() - started)
        query_text = {item.rep.id: item.rep.text for item in queries}
        for query_id, neighbours in lists.items():
            yield query_id, (query_text[query_id], [(sim, nid, texts[nid]) for sim, nid in neighbours])
        k = settings.top_k
        for rep, _, kept in stored:
            entering = [(sim, nid, query_text[nid]) for sim, nid in reverse.get(rep.id, [])
                        if enters((sim, nid), kept, k)]
            if entering:
                yield beam.pvalue.TaggedOutput("entering", (rep.id, entering))


def _search(queries: list, index: list, settings: BlockingSettings) -> dict:
    # In id order: which rows faiss sees first does not depend on the order items arrived in.
    queries = sorted(queries, key=lambda item: item.rep.id)
    index = sorted(index, key=lambda item: item.rep.id)
    return knn_lists([item.rep.id for item in queries], np.stack([to_dense(item.vector) for item in queries]),
                     [item.rep.id for item in index], np.stack([to_dense(item.vector) for item in index]),
                     settings.top_k, settings.min_similarity, settings.margin)


def _keep_best(best: dict, found: Iterable[tuple], k: int) -> dict:
    """{neighbour id: (sim, text)} with `found` (sim, id, text) entries added, cut to the k best."""
    for sim, nid, ntext in found:
        if nid not in best or sim > best[nid][0] or (ntext is not None and best[nid][1] is None):
            best[nid] = (sim, ntext if ntext is not None else best.get(nid, (None, None))[1])
    keep = sorted(((sim, nid) for nid, (sim, _) in best.items()), key=rank)[:k]
    return {nid: best[nid] for _, nid in keep}


class _TopNeighbours(beam.CombineFn):
    """Per question: its text and its best k neighbours over all work items."""

    def __init__(self, k: int):
        self._k = k

    def create_accumulator(self):
        return None, {}

    def add_input(self, accumulator, found):
        _, best = accumulator
        query_text, neighbours = found
        return query_text, _keep_best(best, neighbours, self._k)

    def merge_accumulators(self, accumulators):
        text, best = None, {}
        for other_text, other in accumulators:
            text = text or other_text
            best = _keep_best(best, ((sim, nid, ntext) for nid, (sim, ntext) in other.items()), self._k)
        return text, best

    def extract_output(self, accumulator):
        return accumulator


def _update_stored(element, k: int) -> Iterable[tuple]:
    """A stored question's k nearest with the newcomers that entered them: (id, (text, best))."""
    rep_id, joined = element
    for rep, _, kept in joined["item"]:
        best = _keep_best({nid: (sim, None) for sim, nid in kept},
                          (entry for found in joined["entering"] for entry in found), k)
        yield rep_id, (rep.text, best)


def _pairs_of(element, source: str) -> Iterable[tuple[tuple, CandidatePair]]:
    query_id, (query_text, best) = element
    for nid, (sim, ntext) in best.items():
        if query_id < nid:
            pair = CandidatePair(query_id, nid, query_text, ntext, sim, source)
        else:
            pair = CandidatePair(nid, query_id, ntext, query_text, sim, source)
        yield (pair.id_a, pair.id_b), pair


def _one_pair(pairs: Iterable[CandidatePair]) -> CandidatePair:
    """The same pair found from both ends (same similarity): one of them, with every text that is known."""
    pairs = list(pairs)
    first = max(pairs, key=lambda pair: (pair.similarity, pair.text_a is not None, pair.text_b is not None))
    text_a = next((p.text_a for p in pairs if p.text_a is not None), None)
    text_b = next((p.text_b for p in pairs if p.text_b is not None), None)
    return first._replace(text_a=text_a, text_b=text_b)


def _merge_sources(pairs: Iterable[CandidatePair]) -> CandidatePair:
    pairs = list(pairs)
    sources = sorted({source for pair in pairs for source in pair.source.split(",")})
    return _one_pair(pairs)._replace(source=",".join(sources))


class UnionCandidates(beam.PTransform):
    """Candidates of several embedders -> one pair each, its `source` naming every embedder that found it."""

    def expand(self, candidate_sets):
        return (
            candidate_sets
            | "FlattenSources" >> beam.Flatten()
            | "KeyByPair" >> beam.Map(lambda pair: ((pair.id_a, pair.id_b), pair))
            | "MergeSources" >> beam.CombinePerKey(_merge_sources)
            | "DropKey" >> beam.Values()
        )


def _neighbour_list(element) -> tuple:
    query_id, (_, best) = element
    return query_id, sorted(((sim, nid) for nid, (sim, _) in best.items()), key=rank)


class BlockCandidates(beam.PTransform):
    """`Embedded` items (unit vectors, dense or sparse) -> `Blocked`: distinct `CandidatePair`s, id_a < id_b.

    `centroids`: None to train them on these vectors, or a previous run's (`--existing`,
    `--params-from`; an array, or None for one partition) as `GivenCentroids(centroids)`.
    Extending a run, apply it to (new items, `StoredItem`s):
    only partitions holding new questions are searched, only new questions are queried, and
    each stored question's k nearest are updated with the newcomers that enter them.
    """

    def __init__(self, settings: BlockingSettings, source: str = "lexical", centroids: Optional[GivenCentroids] = None):
        super().__init__()
        self._settings = settings
        self._source = source
        self._centroids = centroids

    def expand(self, inputs):
        settings, source = self._settings, self._source
        embedded, stored = inputs if isinstance(inputs, tuple) else (inputs, None)
        if self._centroids is None:
            count = beam.pvalue.AsSingleton(embedded | "CountVectors" >> beam.combiners.Count.Globally())
            centroids = (
                embedded
                | "SampleForCentroids" >> beam.Filter(
                    lambda item, n: in_sample(item.rep.id, n, partition_count(n, settings), settings), n=count)
                | "IdAndVector" >> beam.Map(lambda item: (item.rep.id, item.vector))
                | "CollectSample" >> beam.combiners.ToList()
                | "TrainCentroids" >> beam.Map(_train, n=count, settings=settings)
            )
        else:
            centroids = embedded.pipeline | "PreviousCentroids" >> beam.Create([self._centroids.centroids])
        assigned = embedded | "AssignPartitions" >> beam.ParDo(
            _AssignPartitions(settings.probes), centroids=beam.pvalue.AsSingleton(centroids))
        if stored is not None:
            searched = beam.pvalue.AsDict(assigned | "NewPartitions" >> beam.Map(lambda e: (e[0], True))
                                          | "DistinctPartitions" >> beam.Distinct())
            stored_assigned = stored | "AssignStored" >> beam.ParDo(
                _AssignPartitions(settings.probes), centroids=beam.pvalue.AsSingleton(centroids), only=searched)
            everything = (assigned, stored_assigned) | "AllAssigned" >> beam.Flatten()
        else:
            everything = assigned
        sizes = beam.pvalue.AsDict(
            everything
            | "PartitionOnes" >> beam.Map(lambda element: (element[0], 1))
            | "PartitionSizes" >> beam.CombinePerKey(sum)
        )
        work = assigned | "ToWorkItems" >> beam.ParDo(_ToWorkItems(settings.max_block), sizes=sizes)
        if stored is not None:
            work = (work, stored_assigned | "StoredWorkItems" >> beam.ParDo(
                _ToWorkItems(settings.max_block, stored=True), sizes=sizes)) | "AllWorkItems" >> beam.Flatten()
        found = (
            work
            | "GroupWorkItem" >> beam.GroupByKey()
            | "SearchWorkItem" >> beam.ParDo(_SearchWorkItem(settings)).with_outputs("entering", main="found")
        )
        best = found.found | "BestNeighbours" >> beam.CombinePerKey(_TopNeighbours(settings.top_k))
        if stored is not None:
            updated = (
                {"item": stored | "StoredById" >> beam.Map(lambda item: (item.rep.id, item)),
                 "entering": found.entering}
                | "JoinEntering" >> beam.CoGroupByKey()
                | "UpdateStored" >> beam.FlatMap(_update_stored, settings.top_k)
            )
            best = (best, updated) | "AllNeighbours" >> beam.Flatten()
        pairs = (
            best
            | "ToPairs" >> beam.FlatMap(_pairs_of, source)
            | "DistinctPairs" >> beam.CombinePerKey(_one_pair)
            | "DropKey" >> beam.Values()
        )
        return Blocked(pairs, best | "NeighbourLists" >> beam.Map(_neighbour_list), centroids)
