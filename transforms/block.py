"""Candidate generation by partitioned FAISS nearest neighbours (DESIGN.md step 5).

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

from transforms.embed import dot_rows, to_dense
from transforms.metrics import StageTimer

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
    seed: int = 0


class CandidatePair(NamedTuple):
    id_a: object
    id_b: object
    text_a: str
    text_b: str
    similarity: float
    source: str = "lexical"


def radius(top_sims: Sequence[float], settings: BlockingSettings) -> float:
    """The similarity a newcomer must reach to enter a question's k nearest (its k-th best so far)."""
    return top_sims[settings.top_k - 1] if len(top_sims) >= settings.top_k else settings.min_similarity


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


def knn_lists(query_ids: Sequence, queries: np.ndarray, index_ids: Sequence, index: np.ndarray, k: int,
              min_similarity: float) -> dict[object, list[tuple[float, object]]]:
    """{query id: up to k (similarity, neighbour id), best first}, never the query itself."""
    if not len(query_ids) or not len(index_ids) or k < 1:
        return {}
    search = faiss.IndexFlatIP(index.shape[1])
    search.add(np.ascontiguousarray(index, dtype=np.float32))
    sims, found = search.search(np.ascontiguousarray(queries, dtype=np.float32), min(k + 1, len(index_ids)))
    lists: dict[object, list[tuple[float, object]]] = {}
    for query_id, row_sims, row_found in zip(query_ids, sims, found):
        neighbours = [(float(s), index_ids[j]) for s, j in zip(row_sims, row_found)
                      if j >= 0 and s >= min_similarity and index_ids[j] != query_id]
        if neighbours:
            lists[query_id] = neighbours[:k]
    return lists


def best_neighbours(candidates: Iterable[tuple[float, object]], k: int) -> list[tuple[float, object]]:
    """The k most similar distinct neighbours; ties go to the lower id, so results are deterministic."""
    best: dict = {}
    for sim, neighbour in candidates:
        if sim > best.get(neighbour, -math.inf):
            best[neighbour] = sim
    return sorted(((s, n) for n, s in best.items()), key=lambda item: (-item[0], item[1]))[:k]


def knn_pairs(ids: Sequence, vectors: np.ndarray, k: int, min_similarity: float) -> dict[tuple, float]:
    """Exact kNN over one set of vectors, as {(min id, max id): similarity}: the single-partition result."""
    pairs: dict[tuple, float] = {}
    for query, neighbours in knn_lists(ids, vectors, ids, vectors, k, min_similarity).items():
        for sim, neighbour in neighbours:
            key = (query, neighbour) if query < neighbour else (neighbour, query)
            pairs[key] = max(sim, pairs.get(key, -math.inf))
    return pairs


# ---- Beam glue ----

def _train(sample: list, n: int, settings: BlockingSettings) -> Optional[np.ndarray]:
    n_partitions = partition_count(n, settings)
    if n_partitions == 1 or not sample:
        return None
    sample = sorted(sample, key=lambda item: item[0])
    return train_centroids(np.stack([to_dense(vector) for _, vector in sample]), n_partitions, settings.seed)


class _AssignPartitions(beam.DoFn):
    """item -> (partition, item) for its nearest partitions; with `only`, for those among them."""

    def __init__(self, probes: int):
        self._probes = probes

    def process(self, item, centroids, only=None):
        for partition in nearest_partitions(item[1], centroids, self._probes):
            if only is None or partition in only:
                yield partition, item


class _ToWorkItems(beam.DoFn):
    """(partition, item) -> ((partition, query block, index block), (role, item)).

    A new question is searched and searchable ("both", "query", "index"); a
    question of an extended run ("existing") only searchable, and searched
    against the new questions for the pairs in which a newcomer enters its k nearest.
    """

    def __init__(self, max_block: int, existing: bool = False):
        self._max_block = max_block
        self._existing = existing

    def process(self, element, sizes: dict):
        partition, item = element
        blocks = block_count(sizes[partition], self._max_block)
        mine = stable_hash(item[0].id) % blocks
        for other in range(blocks):
            if self._existing:
                yield (partition, other, mine), ("existing", item)
            elif other == mine:
                yield (partition, mine, mine), ("both", item)
            else:
                yield (partition, mine, other), ("query", item)
                yield (partition, other, mine), ("index", item)


class _SearchWorkItem(beam.DoFn):
    def __init__(self, settings: BlockingSettings):
        self._settings = settings
        self._timer = StageTimer("block")
        self._sizes = Metrics.distribution("qdedup", "blocking_work_item_size")

    def process(self, element):
        _, members = element
        queries, index, existing, size = [], [], [], 0
        for role, item in members:
            size += 1
            if role in ("both", "query"):
                queries.append(item)
            if role != "query":
                index.append(item)
            if role == "existing":
                existing.append(item)
        self._sizes.update(size)
        if not queries or not index:
            return
        settings = self._settings
        texts = {item[0].id: item[0].text for item in index}
        started = time.perf_counter()
        with self._timer:
            lists = _search(queries, index, settings)
            # Pairs where a newcomer enters an existing question's k nearest: the searches the full run
            # would have made from the existing side.
            reverse = _search(existing, queries, settings) if existing else {}
        partition, query_block, index_block = element[0]
        _LOG.info("blocking: partition %s, blocks %d x %d: %d questions searched against %d in %.1f s",
                  partition, query_block, index_block, len(queries), len(index), time.perf_counter() - started)
        query_text = {item[0].id: item[0].text for item in queries}
        for query_id, neighbours in lists.items():
            yield query_id, (query_text[query_id], [(sim, nid, texts[nid]) for sim, nid in neighbours])
        for rep, _, bound in existing:
            entering = [(sim, nid, query_text[nid]) for sim, nid in reverse.get(rep.id, []) if sim >= bound]
            if entering:
                yield rep.id, (rep.text, entering)


def _search(queries: list, index: list, settings: BlockingSettings) -> dict:
    # In id order: the float sums, and so the similarities, do not depend on the order items arrived in.
    queries = sorted(queries, key=lambda item: item[0].id)
    index = sorted(index, key=lambda item: item[0].id)
    return knn_lists([item[0].id for item in queries], np.stack([to_dense(item[1]) for item in queries]),
                     [item[0].id for item in index], np.stack([to_dense(item[1]) for item in index]),
                     settings.top_k, settings.min_similarity)


class _TopNeighbours(beam.CombineFn):
    """Per question: its text and its best k neighbours over all work items."""

    def __init__(self, k: int):
        self._k = k

    def create_accumulator(self):
        return None, {}

    def add_input(self, accumulator, found):
        _, best = accumulator
        query_text, neighbours = found
        for sim, nid, ntext in neighbours:
            if sim > best.get(nid, (-math.inf,))[0]:
                best[nid] = (sim, ntext)
        return query_text, self._trim(best)

    def merge_accumulators(self, accumulators):
        text, best = None, {}
        for other_text, other in accumulators:
            text = text or other_text
            for nid, (sim, ntext) in other.items():
                if sim > best.get(nid, (-math.inf,))[0]:
                    best[nid] = (sim, ntext)
        return text, self._trim(best)

    def _trim(self, best: dict) -> dict:
        keep = best_neighbours(((sim, nid) for nid, (sim, _) in best.items()), self._k)
        return {nid: best[nid] for _, nid in keep}

    def extract_output(self, accumulator):
        return accumulator


def _pairs_of(element, source: str) -> Iterable[tuple[tuple, CandidatePair]]:
    query_id, (query_text, best) = element
    for nid, (sim, ntext) in best.items():
        if query_id < nid:
            pair = CandidatePair(query_id, nid, query_text, ntext, sim, source)
        else:
            pair = CandidatePair(nid, query_id, ntext, query_text, sim, source)
        yield (pair.id_a, pair.id_b), pair


def _closest(pairs: Iterable[CandidatePair]) -> CandidatePair:
    return max(pairs, key=lambda pair: pair.similarity)


def _merge_sources(pairs: Iterable[CandidatePair]) -> CandidatePair:
    pairs = list(pairs)
    sources = sorted({source for pair in pairs for source in pair.source.split(",")})
    return _closest(pairs)._replace(source=",".join(sources))


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


def _top_sims(element) -> tuple:
    query_id, (_, best) = element
    return query_id, sorted((sim for sim, _ in best.values()), reverse=True)


class BlockCandidates(beam.PTransform):
    """(representative, unit vector, dense or sparse) -> distinct `CandidatePair`s, id_a < id_b, with `source`.

    Returns {"pairs", "top_sims": (id, its k best similarities), "centroids"}.
    To extend a previous run, pass `centroids` (the previous run's, None for
    one partition) and apply it to (new items, existing (rep, vector, radius)):
    only partitions holding new questions are searched, and only new
    questions are queried.
    """

    def __init__(self, settings: BlockingSettings, source: str = "lexical", centroids=False):
        super().__init__()
        self._settings = settings
        self._source = source
        self._centroids = centroids  # False: train them; None or an array: the previous run's

    def expand(self, inputs):
        settings, source = self._settings, self._source
        embedded, existing = inputs if isinstance(inputs, tuple) else (inputs, None)
        if self._centroids is False:
            count = beam.pvalue.AsSingleton(embedded | "CountVectors" >> beam.combiners.Count.Globally())
            centroids = (
                embedded
                | "SampleForCentroids" >> beam.Filter(
                    lambda item, n: in_sample(item[0].id, n, partition_count(n, settings), settings), n=count)
                | "IdAndVector" >> beam.Map(lambda item: (item[0].id, item[1]))
                | "CollectSample" >> beam.combiners.ToList()
                | "TrainCentroids" >> beam.Map(_train, n=count, settings=settings)
            )
        else:
            centroids = embedded.pipeline | "PreviousCentroids" >> beam.Create([self._centroids])
        assigned = embedded | "AssignPartitions" >> beam.ParDo(
            _AssignPartitions(settings.probes), centroids=beam.pvalue.AsSingleton(centroids))
        if existing is not None:
            searched = beam.pvalue.AsDict(assigned | "NewPartitions" >> beam.Map(lambda e: (e[0], True))
                                          | "DistinctPartitions" >> beam.Distinct())
            existing = existing | "AssignExisting" >> beam.ParDo(
                _AssignPartitions(settings.probes), centroids=beam.pvalue.AsSingleton(centroids), only=searched)
            everything = (assigned, existing) | "AllAssigned" >> beam.Flatten()
        else:
            everything = assigned
        sizes = beam.pvalue.AsDict(
            everything
            | "PartitionOnes" >> beam.Map(lambda element: (element[0], 1))
            | "PartitionSizes" >> beam.CombinePerKey(sum)
        )
        work = assigned | "ToWorkItems" >> beam.ParDo(_ToWorkItems(settings.max_block), sizes=sizes)
        if existing is not None:
            work = (work, existing | "ExistingWorkItems" >> beam.ParDo(
                _ToWorkItems(settings.max_block, existing=True), sizes=sizes)) | "AllWorkItems" >> beam.Flatten()
        best = (
            work
            | "GroupWorkItem" >> beam.GroupByKey()
            | "SearchWorkItem" >> beam.ParDo(_SearchWorkItem(settings))
            | "BestNeighbours" >> beam.CombinePerKey(_TopNeighbours(settings.top_k))
        )
        pairs = (
            best
            | "ToPairs" >> beam.FlatMap(_pairs_of, source)
            | "DistinctPairs" >> beam.CombinePerKey(_closest)
            | "DropKey" >> beam.Values()
        )
        return {"pairs": pairs, "top_sims": best | "TopSims" >> beam.Map(_top_sims), "centroids": centroids}
