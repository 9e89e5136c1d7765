"""Candidate generation by partitioned FAISS nearest neighbours (docs/design.md, "block").

Only pairs that blocking proposes are ever scored, so this stage bounds both the
recall and the cost of a run. No worker holds the whole corpus:

1. coarse centroids are trained (spherical k-means, fixed seed) on a
   deterministic sample of the vectors, at most `max_sample` of them, and passed
   as a side input (at most `max_sample / sample_per_partition` centroids);
2. each vector goes to its `probes` nearest partitions;
3. a partition larger than `max_block` (a hot topic, a template, or simply a
   large corpus, since the first level is capped) is split by a second level:
   centroids trained on at most `max_sample` of its own members, each member
   placed in its `probes` nearest sub-partitions; the shuffle grows with
   partition size x probes, never with its square;
4. a (sub-)partition still larger than `max_block` is cut into b blocks by a
   stable hash of the id: with b <= `max_fanout` searched as b x b (query
   block, index block) work items, exactly; with more (near-identical questions
   that k-means cannot tell apart) each block is searched on its own, the only
   approximate search, counted in the report (near-identical questions are
   each other's neighbours anyway; the loss is measured by a test);
5. exact inner-product kNN runs inside each work item (faiss for dense vectors;
   lexical vectors, sparse, as sparse products: `propose`); each question keeps
   its best k neighbours over all its partitions above the similarity floor;
6. pairs are keyed (min id, max id) and made distinct.

Similarities never depend on the search: the search proposes `top_k + margin`
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
import os
import pickle
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from operator import attrgetter
from typing import Iterable, Iterator, NamedTuple, Optional, Sequence

import apache_beam as beam
import faiss
import numpy as np
import scipy.sparse
from apache_beam.metrics import Metrics

from transforms.coders import pickled_list, unpickled_list
from transforms.joins import LIST_ITEMS, JoinByKey, ListsByKey, at_bundle_end, only
from transforms.logs import Progress
from transforms.metrics import BundleCount, StageTimer, count_elements, largest, read_count
from transforms.records import (
    GivenCentroids,
    Neighbours,
    StoredItem,
    candidate_pair,
    merge_sources,
    one_pair,
    pairs_of,
    vector_record,
)
from transforms.vectors import SparseVector, dense_rows

_LOG = logging.getLogger(__name__)
_SAMPLE_BUCKETS = 1_000_003
BLOCKING_QUESTIONS = "blocking_questions"  # report.json: the questions each embedder's blocking took in, summed


@dataclass(frozen=True)
class BlockingSettings:
    """The defaults are the command line's."""

    top_k: int = 10                  # neighbours kept per question
    min_similarity: float = 0.3      # inner product below which no candidate is made
    partitions: int = 0              # 0: probes x corpus / partition_size, at least 1
    partition_size: int = 10_000     # mean questions per partition when `partitions` is 0
    probes: int = 2                  # partitions each question is placed in
    max_block: int = 20_000          # larger partitions are split again, then searched block by block
    max_fanout: int = 4              # most blocks an exact block-by-block search may cut a partition into
    sample_per_partition: int = 256  # k-means training points per centroid
    max_sample: int = 65_536         # most vectors one k-means trains on (each level, each partition)
    margin: int = 10                 # extra neighbours faiss proposes, re-ranked by exact similarity
    seed: int = 0
    search_threads: int = 1          # threads a work item's sparse (lexical) search is split over; 0 = the cores


def rank(entry: tuple) -> tuple:
    """Sort key of a (similarity, id, ...) entry: best first, ties to the lower id."""
    return -entry[0], entry[1]


def stable_hash(value: object) -> int:
    """The same in every process and run, unlike hash()."""
    return zlib.crc32(repr(value).encode("utf-8"))


def max_centroids(settings: BlockingSettings) -> int:
    """Most centroids one k-means level trains: its sample is capped, and each centroid needs its points."""
    return max(1, settings.max_sample // settings.sample_per_partition)


def partition_count(n: int, settings: BlockingSettings) -> int:
    """First-level partitions for n vectors; a larger corpus gets larger partitions, split again by
    `sub_partition_count`."""
    if settings.partitions:
        return max(1, min(settings.partitions, n))
    wanted = math.ceil(settings.probes * n / settings.partition_size)
    return max(1, min(n, wanted, max_centroids(settings)))


def sub_partition_count(size: int, settings: BlockingSettings) -> int:
    """Second-level partitions of a first-level partition of `size` members (0: it is not split): enough
    for sub-partitions of `partition_size`, or of half `max_block` if that is smaller."""
    if size <= settings.max_block:
        return 0
    target = max(1, min(settings.partition_size, settings.max_block // 2))
    wanted = math.ceil(settings.probes * size / target)
    return max(settings.probes + 1, min(wanted, max_centroids(settings)))


def in_sample(item_id: object, n: int, n_partitions: int, settings: BlockingSettings) -> bool:
    """Deterministic sample of about sample_per_partition x partitions ids (capped by `max_sample` later)."""
    rate = settings.sample_per_partition * n_partitions / max(n, 1)
    return sample_rank(item_id) < rate * _SAMPLE_BUCKETS


def sample_rank(item_id: object) -> int:
    """Where an id falls in the deterministic sample order: the `max_sample` lowest are kept."""
    return stable_hash(item_id) % _SAMPLE_BUCKETS


def train_centroids(sample: np.ndarray, n_partitions: int, seed: int) -> np.ndarray:
    """Unit-length k-means centroids of the sample (rows sorted by the caller for determinism)."""
    n_partitions = min(n_partitions, len(sample))
    kmeans = faiss.Kmeans(sample.shape[1], n_partitions, niter=20, seed=seed, spherical=True,
                          min_points_per_centroid=1, max_points_per_centroid=1 << 30)
    kmeans.train(np.ascontiguousarray(sample, dtype=np.float32))
    return kmeans.centroids


def by_dimension(centroids: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """Centroids as `nearest_partitions` takes them: (dimension x partition), each row contiguous, so that a
    sparse vector's dimensions pick whole rows (picking columns of the (partition x dimension) array took
    32 µs a question at 200 partitions, a 1M-row run's, against 5; benchmarks/README.md, "twenty-fifth
    session")."""
    return None if centroids is None else np.ascontiguousarray(np.asarray(centroids).T)


def nearest_partitions(vector, centroids: Optional[np.ndarray], probes: int) -> list[int]:
    """The `probes` partitions whose centroids have the largest dot products with `vector`, ascending; of
    equal products the lower partition first. `centroids`: as `by_dimension` gives them (None: one)."""
    if centroids is None or centroids.shape[1] == 1:
        return [0]
    sims = vector.values @ centroids[vector.indices] if isinstance(vector, SparseVector) else vector @ centroids
    chosen = []
    for _ in range(min(probes, len(sims))):  # a few argmax calls: a third of one argpartition's time
        best = int(sims.argmax())
        chosen.append(best)
        sims[best] = -np.inf
    return sorted(chosen)


def block_count(size: int, max_block: int) -> int:
    return max(1, math.ceil(size / max_block))


_EXACT_CHUNK = 1 << 21  # float64 products held at once while recomputing similarities (16 MiB: see `_PROPOSE_CHUNK`)
_UNIT_ROUNDOFF = 2.0 ** -53  # of a float64 addition, relative


def exact_similarities(queries: np.ndarray, index: np.ndarray, found: np.ndarray,
                       sparse_queries: Optional[scipy.sparse.csr_matrix] = None) -> np.ndarray:
    """sims[i, j] = queries[i] . index[found[i, j]], by one fixed routine (-inf where found is -1).

    Each product of two float32 values is exact in float64 and each row is summed the same way
    whatever else is computed with it; rounding the sum to float32 makes the result the same in
    every work item, process and run (a float64 sum would have to fall within 1e-16 of a float32
    rounding boundary to tell two orders of summation apart).

    With `sparse_queries` (the same queries, sparse) only their non-zero products are summed, a
    fortieth of the work for lexical vectors, and the result is the same float32 to the bit: where
    a float32 rounding boundary lies within what the two orders of summation can differ by (a
    bound on float64 rounding, rarely met: about 1 in 10^5 similarities), that similarity is
    recomputed the dense way.
    """
    if sparse_queries is None:
        return _dense_similarities(queries, index, found)
    sims = np.full(found.shape, -np.inf, dtype=np.float32)
    if not found.size:
        return sims
    indptr, columns = sparse_queries.indptr, sparse_queries.indices
    values = sparse_queries.data.astype(np.float64)
    rows = max(1, _EXACT_CHUNK // max(found.shape[1] * max(sparse_queries.nnz // len(found), 1), 1))
    for start in range(0, len(found), rows):
        stop = min(start + rows, len(found))
        block = found[start:stop]
        valid = block >= 0
        first, last = indptr[start], indptr[stop]
        terms = np.diff(indptr[start:stop + 1])
        row_of = np.repeat(np.arange(stop - start), terms)
        # products[e, j]: the query's e-th non-zero times that dimension of its j-th candidate
        products = index[np.where(valid, block, 0)[row_of], columns[first:last, None]].astype(np.float64)
        products *= values[first:last, None]
        sums, magnitudes = (np.zeros((stop - start, found.shape[1])) for _ in range(2))
        some = terms > 0
        starts = indptr[start:stop][some] - first
        sums[some] = np.add.reduceat(products, starts, axis=0)
        magnitudes[some] = np.add.reduceat(np.abs(products, out=products), starts, axis=0)
        # Either sum is within (terms - 1) x roundoff x sum of magnitudes of the exact one; 4x margin.
        slack = 4 * (index.shape[1] + terms[:, None]) * _UNIT_ROUNDOFF * magnitudes
        rounded = sums.astype(np.float32)
        # (and a sum of 0, whose sign the order of summation decides)
        unsure = valid & (((sums - slack).astype(np.float32) != (sums + slack).astype(np.float32)) | (sums == 0))
        if unsure.any():
            i, j = np.nonzero(unsure)
            rounded[i, j] = _dense_similarities(queries[start + i], index, block[i, j][:, None])[:, 0]
        sims[start:stop] = np.where(valid, rounded, -np.inf)
    return sims


def _dense_similarities(queries: np.ndarray, index: np.ndarray, found: np.ndarray) -> np.ndarray:
    """`exact_similarities` summing all the products of each pair, zeros included."""
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


# float32 products of sparse queries with the index held at once (16 MiB): under glibc's largest mmap
# threshold (32 MiB), so each block of products reuses memory the process keeps instead of new pages, which the
# kernel clears (benchmarks/README.md, "forty-seventh session")
_PROPOSE_CHUNK = 1 << 22
_PRODUCT_SLACK = 1e-4     # more than a float32 product of unit vectors strays from their exact similarity
_SORTED_AT_MOST = 256     # values at or above the floor a row of products may have to be sorted without partitioning


def propose(queries: np.ndarray, index: np.ndarray, count: int, floor: float = -np.inf,
            sparse_queries: Optional[scipy.sparse.csr_matrix] = None,
            by_dimension: Optional[np.ndarray] = None) -> np.ndarray:
    """Per query, the index rows of its `count` highest inner products, in no order, -1 where fewer
    reach `floor`: `exact_similarities` ranks them.

    Dense queries go through faiss's exact search (which ignores `floor`). Where the queries are also
    given sparse (lexical vectors: about 23 non-zeros in 1,024 dimensions on LCQMC and BQ), they are
    multiplied as they are by the dense index, a fortieth of the multiplications (12,000 questions
    searched against 12,000 with the re-ranking, when it was still dense: 5.7 s on one core against
    9.8 s with faiss on two, `benchmarks/bench_search.py`), and `top_columns` picks the highest, ties
    to the lower row of the index. A block of products and its partitioned copy are held at once: 2 x 16 MiB.
    `by_dimension`, given with `sparse_queries`: the index transposed and made contiguous (`knn_lists` makes
    it once for all the parts of its queries it searches).
    """
    if sparse_queries is None:
        search = faiss.IndexFlatIP(index.shape[1])
        search.add(index)
        return search.search(queries, count)[1]
    rows = max(1, _PROPOSE_CHUNK // len(index))
    found = np.empty((sparse_queries.shape[0], count), dtype=np.int64)
    for start in range(0, sparse_queries.shape[0], rows):
        products = sparse_queries[start:start + rows] @ by_dimension
        found[start:start + rows] = top_columns(products, count, floor - _PRODUCT_SLACK)
    return found


def top_columns(values: np.ndarray, count: int, floor: float) -> np.ndarray:
    """Per row, the columns of its `count` highest values at or above `floor`, highest first, ties to the
    lower column; -1 where fewer reach it.

    A row with few values at or above `floor` (at most `_SORTED_AT_MOST`: most lexical queries have tens)
    has them sorted as they are; only the others are partitioned first, to their `count` highest.
    """
    size = values.shape[1]
    count = min(count, size)
    kept = values >= np.float32(floor)
    many = np.flatnonzero(kept.sum(axis=1) > _SORTED_AT_MOST)
    if len(many):
        some = values[many]
        kth = np.partition(some, size - count, axis=1)[:, size - count]
        kept[many] &= some >= kth[:, None]
    rows, columns = np.nonzero(kept)
    order = np.lexsort((columns, -values[rows, columns], rows))  # by row, then highest value, then column
    rows, columns = rows[order], columns[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows)  # place within its row
    first = rank < count
    found = np.full((len(values), count), -1, dtype=np.int64)
    found[rows[first], rank[first]] = columns[first]
    return found


# Fewest queries a search thread is given: below that, splitting costs more than it saves.
MIN_THREAD_QUERIES = 1_000


def search_threads(settings: BlockingSettings) -> int:
    """The threads a work item's sparse search uses: `search_threads`, or 0 for the cores this process may use."""
    return settings.search_threads or len(os.sched_getaffinity(0))


def knn_lists(query_ids: Sequence, queries: np.ndarray, index_ids: Sequence, index: np.ndarray, k: int,
              min_similarity: float, margin: int = 10,
              sparse_queries: Optional[scipy.sparse.csr_matrix] = None, threads: int = 1,
              sparse_index: Optional[scipy.sparse.csr_matrix] = None) -> dict[object, Neighbours]:
    """{query id: up to k (similarity, neighbour id), best first}, never the query itself.

    `propose` finds k + 1 + margin neighbours (from `sparse_queries` where given: the same queries as
    a sparse matrix); they are ranked by their exact similarity. With sparse queries the rows are split
    over up to `threads` threads (at least `MIN_THREAD_QUERIES` each): numpy and scipy release the GIL
    in the products, partitions and sums, and each query's list depends on that query and the index
    alone, so the lists are the same however they are split. faiss's dense search has threads of its own.
    The threads share the index transposed, made once: from `sparse_index` (the index as a sparse matrix)
    where given, by placing its non-zeros rather than by a strided copy of the dense index (a tenth of the
    copy's time in memory used before, 0.74 against 1.24 s in new memory for 17,500 rows; benchmarks/README.md,
    "forty-seventh session").
    """
    if not len(query_ids) or not len(index_ids) or k < 1:
        return {}
    index = np.ascontiguousarray(index, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    count = min(k + 1 + margin, len(index_ids))
    by_dimension = None
    if sparse_queries is not None:
        by_dimension = np.ascontiguousarray(index.T) if sparse_index is None else sparse_index.T.tocsr().toarray()

    def search(part: slice) -> dict:
        sparse = sparse_queries[part] if sparse_queries is not None else None
        found = propose(queries[part], index, count, min_similarity, sparse, by_dimension)
        sims = exact_similarities(queries[part], index, found, sparse)
        lists: dict[object, Neighbours] = {}
        for query_id, row_sims, row_found in zip(query_ids[part], sims, found):
            neighbours = sorted(((float(s), index_ids[j]) for s, j in zip(row_sims, row_found)
                                 if j >= 0 and s >= min_similarity and index_ids[j] != query_id), key=rank)
            if neighbours:
                lists[query_id] = neighbours[:k]
        return lists

    parts = min(threads, len(query_ids) // MIN_THREAD_QUERIES) if sparse_queries is not None else 1
    if parts <= 1:
        return search(slice(None))
    bounds = np.linspace(0, len(query_ids), parts + 1).astype(int)
    lists: dict[object, Neighbours] = {}
    with ThreadPoolExecutor(parts) as pool:
        for part_lists in pool.map(search, [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]):
            lists.update(part_lists)
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
    """What blocking gives: every question's neighbours with their texts, as (id, (text, {neighbour id:
    (similarity, text)})), from which `DistinctCandidates` makes the candidate pairs (and `ScoreNeighbours`
    scores them without making them one by one); every question's `VectorRecord` (its key, its vector and
    its k nearest: what state/<kind>/vectors/ keeps, for an extension), stored questions' included when
    extending; the centroids the partitions came from (None: one partition); the
    second-level centroids of the partitions split again, as (partition, array); and `most_found`, one
    int: the most neighbour entries `found` can hold (a list a question it searched for, at most `top_k`
    each), known before the search runs, so that a step sized by it (`ScoreNeighbours`' shards) takes the
    lists as they are made instead of after a count of them all."""

    found: beam.PCollection
    records: beam.PCollection
    centroids: beam.PCollection
    sub_centroids: beam.PCollection
    most_found: beam.PCollection


def _by_sample_rank(entry: tuple) -> tuple:
    """(rank, id): a total order, so that the sample kept does not depend on arrival order."""
    return sample_rank(entry[0]), entry[0]


def _lowest_ranks(settings: BlockingSettings) -> beam.CombineFn:
    """Keeps the `max_sample` (id, vector) entries of lowest sample rank: the sample's hard bound."""
    return beam.combiners.TopCombineFn(settings.max_sample, key=_by_sample_rank, reverse=True)


def _train(sample: list, n: int, settings: BlockingSettings) -> Optional[np.ndarray]:
    """First-level centroids from (id, vector) entries, at most `max_sample` of them."""
    largest("kmeans_sample").update(len(sample))
    n_partitions = partition_count(n, settings)
    if n_partitions == 1 or not sample:
        return None
    sample = sorted(sample, key=lambda pair: pair[0])
    return train_centroids(dense_rows([vector for _, vector in sample])[0], n_partitions, settings.seed)


def _train_sub(element, sizes: dict, settings: BlockingSettings) -> Iterator[tuple]:
    """(partition, its sampled (id, vector) entries) -> (partition, second-level centroids)."""
    partition, sample = element
    largest("kmeans_sample").update(len(sample))
    count = sub_partition_count(sizes[partition], settings)
    sample = sorted(sample, key=lambda pair: pair[0])
    if count and len(sample) > 1:
        yield partition, train_centroids(dense_rows([vector for _, vector in sample])[0], count,
                                         settings.seed + 1 + partition)


class SearchEntry(NamedTuple):
    """What a work item needs of a question: its id, its text (as scoring takes it) and its unit vector; a stored
    question of an extended run, its k nearest too (`Neighbours`); and its text key, for its vector record."""

    id: object
    text: object
    vector: object
    neighbours: Optional[Neighbours] = None
    key: Optional[str] = None


def pack_entry(item) -> bytes:
    """An `Embedded` or `StoredItem` as the bytes its blocking entry carries into the work items: a `SearchEntry`'s
    fields as plain values, pickled once (a sparse vector as its arrays' dtypes and bytes). The in-process runner
    holds each shuffled value decoded until its group is read; as bytes, at about their size. A lexical question
    packs into 249 bytes in 2.8 µs and unpacks in 3.9 µs, against 408 bytes, 8.6 and 12.9 µs for the whole record
    as `RecordCoder` writes it (`benchmarks/bench_entries.py`; benchmarks/README.md, "twenty-ninth session").
    Read with `unpack_entry`."""
    vector = item.vector
    if isinstance(vector, SparseVector):
        vector = (vector.indices.dtype.str, vector.indices.tobytes(), vector.values.dtype.str, vector.values.tobytes(),
                  vector.dim)
    neighbours = item.neighbours if isinstance(item, StoredItem) else None
    return pickle.dumps((item.rep.id, item.rep.text, vector, neighbours, item.rep.key), pickle.HIGHEST_PROTOCOL)


def packed_item(item) -> tuple:
    """An `Embedded` or `StoredItem` -> (its id, `pack_entry` of it): how blocking's questions reach the steps
    that sample, partition and search them. Packed once, where the item is made: the k-means sample and the
    partitioning run in later stages, and each decoded the whole record (4.3 µs a lexical question, 2.7 to
    encode it) to read an id, or to unpack the vector (2.1 µs) and pack it again."""
    return item.rep.id, pack_entry(item)


def unpack_entry(data: bytes) -> SearchEntry:
    """The `SearchEntry` `pack_entry` packed; a sparse vector's arrays are read-only views of its bytes."""
    rep_id, text, vector, neighbours, key = pickle.loads(data)
    if isinstance(vector, tuple):
        index_type, indices, value_type, values, dim = vector
        vector = SparseVector(np.frombuffer(indices, index_type), np.frombuffer(values, value_type), dim)
    return SearchEntry(rep_id, text, vector, neighbours, key)


# An entry: (role, id, the item packed by `pack_entry`). Entries travel from the partitions to the work items
# in lists of one key, each list as (its count, its pickled list) (`_listed`): a list passes a step and a shuffle
# where each entry did (2.2 entries a question, with the default two probes), and what sizes a partition is
# the sum of the counts.
Listed = tuple[int, bytes]


def _listed(entries: list) -> Listed:
    return len(entries), pickled_list(entries)


def _entries(listed: Listed) -> list:
    """The entries of a list `_listed` made."""
    return unpickled_list(listed[1])


def _as_listed(given: Optional[list]) -> Iterator[tuple]:
    """The (key, entries) lists a `ListsByKey` gave (None: none) as (key, `Listed`)."""
    for key, entries in given or ():
        yield key, _listed(entries)


def _listed_count(key, listed: Listed) -> tuple:
    """(key, a list of entries) -> (key, its count): summed, a partition's size."""
    return key, listed[0]


class _ListingDoFn(beam.DoFn):
    """A DoFn that gives entries in lists of one key (`ListsByKey`, `LIST_ITEMS` a list), as (key, `Listed`)."""

    def start_bundle(self):
        self._lists = ListsByKey(LIST_ITEMS)

    def _add(self, key, entry) -> Iterator[tuple]:
        return _as_listed(self._lists.add(key, entry))

    def finish_bundle(self):
        return at_bundle_end(_as_listed(self._lists.give()))


class _AssignPartitions(_ListingDoFn):
    """(id, packed item) (`packed_item`) -> (partition, `Listed` entries (role, id, packed item)) for its
    nearest partitions; with `only`, for those among them.

    role "both": searched and searchable; "home" (in the first of a searched question's partitions, "both"
    in the others): the same, and the one work item it reaches this way gives its entry, packed, with its found
    list, so that its vector record is made with its k nearest, no join; "stored": a stored question of an extended run,
    searchable only (and searched against the queries for the newcomers that enter its k nearest). `read`: counts
    the items read (`read_count`). The item stays packed: the steps that count, sample, split and
    deal the entries into work items read them (each once per probe) and need only the id, and the
    in-process runner holds a packed entry at about its encoded size.
    """

    def __init__(self, probes: int, role: str = "both", read: Optional[BundleCount] = None):
        self._probes = probes
        self._role = role
        self._read = read

    def setup(self):
        self._progress = Progress(_LOG, "partitioning", "questions")

    def start_bundle(self):
        super().start_bundle()
        if self._read:
            self._read.start()

    def finish_bundle(self):
        if self._read:
            self._read.finish()
        return super().finish_bundle()

    def process(self, element, centroids, only=None):
        self._progress.add()
        if self._read:
            self._read.add()
        rep_id, packed = element
        role = "home" if self._role == "both" else self._role
        for partition in nearest_partitions(unpack_entry(packed).vector, centroids, self._probes):
            if only is None or partition in only:
                yield from self._add(partition, (role, rep_id, packed))
                role = self._role


class _SampleForCentroids(beam.DoFn):
    """(id, packed item) -> (id, vector) where it falls in the k-means sample (`in_sample`, for `n` items),
    unpacked only then; counts what it read."""

    def __init__(self, settings: BlockingSettings):
        self._settings = settings
        self._read = read_count(BLOCKING_QUESTIONS, "SampleForCentroids")

    def start_bundle(self):
        self._read.start()

    def finish_bundle(self):
        self._read.finish()

    def process(self, element, n: int):
        self._read.add()
        settings = self._settings
        rep_id, packed = element
        if in_sample(rep_id, n, partition_count(n, settings), settings):
            yield rep_id, unpack_entry(packed).vector


class _SplitHot(beam.DoFn):
    """(partition, `Listed` entries) -> ((partition, 0), the list), or to "hot" entry by entry, as (partition,
    entry), when the partition is split. With `sizes` (every partition's size, where the second level is
    trained here), a partition not split holds at most `max_block` entries, so its one work item is known:
    its lists go there at once (`_one_work_item`), as they came, not through a count and a step of their own;
    and a hot entry that falls in the sample its partition's second level trains on (`_in_sub_sample`) goes
    to "sample" too, as (partition, (id, vector)): one pass over the entries splits and samples them (only a
    split partition is sampled)."""

    def __init__(self, settings: BlockingSettings):
        self._settings = settings

    def process(self, element, split: dict, sizes: Optional[dict] = None):
        partition, listed = element
        if partition not in split:
            yield ((partition, 0) if sizes is None else _one_work_item((partition, 0))), listed
            return
        for entry in _entries(listed):
            yield beam.pvalue.TaggedOutput("hot", (partition, entry))
            if sizes is not None and _in_sub_sample((partition, entry), sizes, self._settings):
                yield beam.pvalue.TaggedOutput("sample", (partition, (entry[1], unpack_entry(entry[2]).vector)))


def _route(element, probes: int) -> Iterator[tuple]:
    """(partition, {entry, sub}) -> ((partition, sub-partition), `Listed` entries): each entry to its nearest
    sub-partitions, in lists."""
    partition, joined = element
    sub = by_dimension(only(joined["sub"]))
    lists = ListsByKey(LIST_ITEMS)
    for entry in joined["entry"]:
        for part in nearest_partitions(unpack_entry(entry[2]).vector, sub, probes):
            yield from _as_listed(lists.add((partition, part), entry))
            if entry[0] == "home":  # home in one sub-partition: in the others, searched as "both"
                entry = ("both", *entry[1:])
    yield from _as_listed(lists.give())


def _one_work_item(key: tuple) -> tuple:
    """The key of the one work item of a (sub-)partition of at most `max_block` entries."""
    return (*key, 0, 0)


class _ToWorkItems(_ListingDoFn):
    """((partition, sub-partition), `Listed` entries) -> (work item key, `Listed` entries): the shuffle into
    work items holds every question's vector probes times over, packed (the in-process runner would hold it
    decoded otherwise).

    A (sub-)partition of at most `max_block` is one work item: its lists go there as they came. A larger
    one is cut into b blocks by a hash of the id: while b <= `fanout` it is searched exactly as b x b (query
    block, index block) work items, each question copied into 2b - 1 of them (a partition an extension has
    grown, say); past that (near-identical questions k-means could not split) each block is searched on its
    own, the one approximate search, so what is shuffled stays within (2 x fanout - 1) x the partition's size.
    A question's entry keeps its role ("home" too) in its own block's work item (query block = index block).
    """

    def __init__(self, max_block: int, fanout: int):
        self._max_block = max_block
        self._fanout = fanout
        self._approximate = Metrics.counter("qdedup", "blocking_items_hash_blocked")

    def process(self, element, sizes: dict):
        key, listed = element
        blocks = block_count(sizes[key], self._max_block)
        if blocks == 1:
            yield _one_work_item(key), listed
            return
        entries = _entries(listed)
        if blocks > self._fanout:
            self._approximate.inc(len(entries))
        for entry in entries:
            for item_key, as_role in self._work_items(key, entry, blocks):
                yield from self._add(item_key, as_role)

    def _work_items(self, key: tuple, entry: tuple, blocks: int) -> Iterator[tuple]:
        """(work item key, the entry in its role there) for each work item of a partition cut into `blocks`."""
        role, rep_id, item = entry
        mine = stable_hash(rep_id) % blocks
        if blocks > self._fanout:
            yield (*key, mine, mine), entry
            return
        if role == "stored":
            for other in range(blocks):
                yield (*key, other, mine), entry
            return
        as_query, as_index = ("query", rep_id, item), ("index", rep_id, item)
        for other in range(blocks):
            if other == mine:
                yield (*key, mine, mine), entry
            else:
                yield (*key, mine, other), as_query
                yield (*key, other, mine), as_index


class _SearchWorkItem(beam.DoFn):
    """Main output: (query id, (text, [(sim, id, text)], in its home work item its entry as it came, packed by
    `pack_entry`, else None)), for every query found a neighbour, and every home query; "entering": (stored id,
    [(sim, id, text)]). The packed entry travels as bytes: its key and vector as a record cost 4 µs more a
    question to code and decode (benchmarks/README.md, "forty-ninth session")."""

    def __init__(self, settings: BlockingSettings):
        self._settings = settings
        self._timer = StageTimer("block")
        self._sizes = largest("blocking_work_item")  # report.json: work items, and the largest

    def process(self, element):
        _, lists = element
        queries, index, stored, homes, entries = [], [], [], {}, 0
        for role, _, packed_item in (entry for listed in lists for entry in _entries(listed)):
            item = unpack_entry(packed_item)
            entries += 1
            if role == "home":
                homes[item.id] = packed_item
            if role in ("home", "both", "query"):
                queries.append(item)
            if role != "query":
                index.append(item)
            if role == "stored":
                stored.append(item)
        self._sizes.update(entries)  # what was shuffled into this work item
        if not queries or not index:
            return
        settings = self._settings
        texts = {item.id: item.text for item in index}
        started = time.perf_counter()
        with self._timer:
            lists = _search(queries, index, settings)
            # The searches a full run would make from the stored side: newcomers that enter a stored
            # question's k nearest.
            reverse = _search(stored, queries, settings) if stored else {}
        partition, sub, query_block, index_block = element[0]
        _LOG.info("blocking: partition %s, sub-partition %d, blocks %d x %d: %d questions searched against %d "
                  "in %.1f s", partition, sub, query_block, index_block, len(queries), len(index),
                  time.perf_counter() - started)
        query_text = {item.id: item.text for item in queries}
        for query_id, neighbours in lists.items():  # each (sim, id) with the id's text, by C calls alone
            sims, ids = zip(*neighbours)
            yield query_id, (query_text[query_id], list(zip(sims, ids, map(texts.__getitem__, ids))),
                             homes.pop(query_id, None))
        for home_id, home in homes.items():  # found no neighbour here: its vector still goes to its record
            yield home_id, (query_text[home_id], [], home)
        k = settings.top_k
        for item in stored:
            entering = [(sim, nid, query_text[nid]) for sim, nid in reverse.get(item.id, [])
                        if enters((sim, nid), item.neighbours, k)]
            if entering:
                yield beam.pvalue.TaggedOutput("entering", (item.id, entering))


def _search(queries: list, index: list, settings: BlockingSettings) -> dict:
    # In id order: which rows the search sees first does not depend on the order items arrived in.
    queries = sorted(queries, key=attrgetter("id"))
    index = sorted(index, key=attrgetter("id"))
    query_ids, index_ids = [item.id for item in queries], [item.id for item in index]
    dense_queries, sparse_queries = dense_rows([item.vector for item in queries])
    # Most work items search their questions against themselves: the same rows, made dense once.
    dense_index, sparse_index = ((dense_queries, sparse_queries) if index_ids == query_ids
                                 else dense_rows([item.vector for item in index]))
    return knn_lists(query_ids, dense_queries, index_ids, dense_index, settings.top_k, settings.min_similarity,
                     settings.margin, sparse_queries, search_threads(settings), sparse_index)


def _keep_best(best: dict, found: Iterable[tuple], k: int) -> dict:
    """{neighbour id: (sim, text)} with `found` (sim, id, text) entries added, cut to the k best."""
    for sim, nid, ntext in found:
        held = best.get(nid)
        if held is None or sim > held[0] or (ntext is not None and held[1] is None):
            best[nid] = (sim, ntext if ntext is not None or held is None else held[1])
    keep = sorted([(-sim, nid) for nid, (sim, _) in best.items()])[:k]  # `rank`'s order, with no call an entry
    return {nid: best[nid] for _, nid in keep}


def _best_over_work_items(element, k: int) -> tuple:
    """(question id, its values from the work items it was searched in) -> (id, (text, its k best neighbours,
    its entry packed)). Each value is (text, found list, its entry packed by `pack_entry`, or None): one of a
    question's values, from its home work item, has the entry (its key and vector). The found lists are gathered
    and cut to the k best (`_keep_best`) once, or whenever more than `8 x k` entries are held (a question searched
    in many blocks); a question has a value a work item it was searched in: at most `probes` partitions x
    `probes` sub-partitions of a split one x `max_fanout` blocks of a cut one (16 at the defaults), as the
    combiner's merge met.

    After a plain grouping, not a CombinePerKey: Beam's precombine keeps at most 100,000 keys a bundle, which a
    1M-row run's questions pass, so a question's lists seldom met before the shuffle, and the combine's three
    steps cost 6.1 µs a pair at 1M (2.8 at 100k; benchmarks/README.md, "forty-eighth session")."""
    rep_id, values = element
    text, entries, home = None, [], None
    for query_text, found, home_entry in values:
        text = query_text
        home = home_entry or home
        entries.extend(found)
        if len(entries) > 8 * k:
            entries = [(sim, nid, ntext) for nid, (sim, ntext) in _keep_best({}, entries, k).items()]
    return rep_id, (text, _keep_best({}, entries, k), home)


def _update_stored(element, k: int) -> Iterable[tuple]:
    """A stored question's k nearest with the newcomers that entered them: (id, (text, best, its entry packed)),
    as `BestNeighbours` gives a searched question's."""
    rep_id, joined = element
    for item in joined["item"]:
        best = _keep_best({nid: (sim, None) for sim, nid in item.neighbours},
                          (entry for found in joined["entering"] for entry in found), k)
        yield rep_id, (item.rep.text, best, pack_entry(item))


def _found_and_record(element) -> Iterator:
    """(id, (text, best, its entry packed by `pack_entry`)) -> its found list (id, (text, best)) where it has
    neighbours, and to "records" its `VectorRecord` (k nearest best first; none where it was found nowhere)."""
    rep_id, (text, best, home) = element
    if home is None:  # every searched question has one home work item (`_AssignPartitions`, `_route`)
        raise RuntimeError(f"blocking: question {rep_id!r} was searched but no work item was its home, so its "
                           "vector record cannot be made; this is a bug in qdedup's blocking, please report it")
    if best:
        yield rep_id, (text, best)
    neighbours = sorted(((sim, nid) for nid, (sim, _) in best.items()), key=rank)
    entry = unpack_entry(home)
    yield beam.pvalue.TaggedOutput("records", vector_record(rep_id, entry.key, entry.vector, neighbours))


class OnePair(beam.CombineFn):
    """`records.one_pair` as a combiner: the accumulator is the (similarity, text_a, text_b) value itself,
    not a list of them."""

    def create_accumulator(self):
        return None

    def add_input(self, accumulator, value):
        return one_pair(accumulator, value)

    def merge_accumulators(self, accumulators):
        merged = None
        for accumulator in accumulators:
            if accumulator is not None:
                merged = one_pair(merged, accumulator)
        return merged

    def extract_output(self, accumulator):
        return accumulator


class UnionCandidates(beam.PTransform):
    """Candidates of several embedders -> one pair each, its `source` naming every embedder that found it."""

    def expand(self, candidate_sets):
        return (
            candidate_sets
            | "FlattenSources" >> beam.Flatten()
            | "KeyByPair" >> beam.Map(lambda pair: ((pair.id_a, pair.id_b), pair))
            | "MergeSources" >> beam.CombinePerKey(merge_sources)
            | "DropKey" >> beam.Values()
        )


class DistinctCandidates(beam.PTransform):
    """{embedder kind: its `Blocked.found`} -> `CandidatePair`s, each pair once, id_a < id_b, its `source`
    naming every embedder that found it."""

    def expand(self, found):
        sets = tuple(
            lists
            | f"ToPairs[{kind}]" >> beam.FlatMap(pairs_of)
            | f"DistinctPairs[{kind}]" >> beam.CombinePerKey(OnePair())
            | f"ToCandidates[{kind}]" >> beam.Map(candidate_pair, kind)
            for kind, lists in found.items())
        return sets[0] if len(sets) == 1 else sets | "UnionCandidates" >> UnionCandidates()


class BlockCandidates(beam.PTransform):
    """`Embedded` items (unit vectors, dense or sparse) -> `Blocked`: each question's neighbours, and what
    an extension keeps.

    `centroids`: None to train them on these vectors, or a previous run's (`--existing`,
    `--params-from`) as `GivenCentroids`, with its second level, (partition, array), as `sub_centroids`.
    Extending a run, apply it to (new items, `StoredItem`s):
    only partitions holding new questions are searched, only new questions are queried, and
    each stored question's k nearest are updated with the newcomers that enter them.
    """

    def __init__(self, settings: BlockingSettings, centroids: Optional[GivenCentroids] = None,
                 sub_centroids: Optional[beam.PCollection] = None):
        super().__init__()
        self._settings = settings
        self._centroids = centroids
        self._sub_centroids = sub_centroids

    def expand(self, inputs):
        settings = self._settings
        embedded, stored = inputs if isinstance(inputs, tuple) else (inputs, None)
        pipeline = embedded.pipeline
        embedded | "CountQuestions" >> count_elements(BLOCKING_QUESTIONS)  # where made: checked where read
        counted = embedded | "CountVectors" >> beam.combiners.Count.Globally()
        listed = counted
        if stored is not None:  # a stored question's k nearest are updated: a list of its own
            listed = ((counted, stored | "CountStored" >> beam.combiners.Count.Globally())
                      | "AllListed" >> beam.Flatten() | "Listed" >> beam.CombineGlobally(sum))
        most_found = listed | "MostFound" >> beam.Map(lambda lists, k: lists * k, settings.top_k)
        packed = embedded | "PackItems" >> beam.Map(packed_item)
        if self._centroids is None:
            count = beam.pvalue.AsSingleton(counted)
            trained = (
                packed
                | "SampleForCentroids" >> beam.ParDo(_SampleForCentroids(settings), n=count)
                | "CapSample" >> beam.CombineGlobally(_lowest_ranks(settings))
                | "TrainCentroids" >> beam.Map(_train, n=count, settings=settings)
            )
        else:
            trained = pipeline | "PreviousCentroids" >> beam.Create([self._centroids.centroids])
        centroids = beam.pvalue.AsSingleton(trained | "CentroidsByDimension" >> beam.Map(by_dimension))
        assigned = packed | "AssignPartitions" >> beam.ParDo(
            _AssignPartitions(settings.probes, read=read_count(BLOCKING_QUESTIONS, "AssignPartitions")),
            centroids=centroids)
        if stored is not None:
            searched = beam.pvalue.AsDict(assigned | "NewPartitions" >> beam.Map(lambda e: (e[0], True))
                                          | "DistinctPartitions" >> beam.Distinct())
            stored_assigned = stored | "PackStored" >> beam.Map(packed_item) | "AssignStored" >> beam.ParDo(
                _AssignPartitions(settings.probes, "stored"), centroids=centroids, only=searched)
            assigned = (assigned, stored_assigned) | "AllAssigned" >> beam.Flatten()
        if self._centroids is None:
            counts = (assigned | "EntryCounts" >> beam.MapTuple(_listed_count)
                      | "PartitionSizes" >> beam.CombinePerKey(sum))
            sizes = beam.pvalue.AsDict(counts)
            hot = counts | "HotPartitions" >> beam.Filter(lambda kv: kv[1] > settings.max_block)
        else:
            # An earlier run's structure is kept: the partitions it split, and only those, are split.
            sizes, hot = None, self._sub_centroids or pipeline | "NoSubCentroids" >> beam.Create([])
        split = assigned | "SplitHot" >> beam.ParDo(_SplitHot(settings), split=beam.pvalue.AsDict(
            hot | "SplitPartitions" >> beam.Map(lambda kv: (kv[0], True))), sizes=sizes).with_outputs(
            "hot", "sample", main="whole")
        if self._centroids is None:
            sub_centroids = (
                split.sample
                | "CapHotSample" >> beam.CombinePerKey(_lowest_ranks(settings))
                | "TrainSubCentroids" >> beam.FlatMap(_train_sub, sizes=sizes, settings=settings)
            )
        else:
            sub_centroids = hot
        routed = {"entry": split.hot, "sub": sub_centroids} | "RouteHot" >> JoinByKey(_route, settings.probes)
        to_work_items = _ToWorkItems(settings.max_block, settings.max_fanout)
        if self._centroids is None:  # the partitions not split are work items already (`_SplitHot`)
            part_sizes = beam.pvalue.AsDict(routed | "SubCounts" >> beam.MapTuple(_listed_count)
                                            | "SubSizes" >> beam.CombinePerKey(sum))
            whole_items = split.whole
        else:  # an earlier run's partitions, which this run's rows may have grown past `max_block`
            part_sizes = beam.pvalue.AsDict(
                (split.whole, routed) | "AllParts" >> beam.Flatten() | "PartCounts" >> beam.MapTuple(_listed_count)
                | "PartSizes" >> beam.CombinePerKey(sum))
            whole_items = split.whole | "WholeWorkItems" >> beam.ParDo(to_work_items, sizes=part_sizes)
        work = (whole_items, routed | "SubWorkItems" >> beam.ParDo(to_work_items, sizes=part_sizes))
        found = (
            work
            | "AllWorkItems" >> beam.Flatten()
            | "GroupWorkItem" >> beam.GroupByKey()
            | "SearchWorkItem" >> beam.ParDo(_SearchWorkItem(settings)).with_outputs("entering", main="found")
        )
        best = (found.found | "GroupFound" >> beam.GroupByKey()
                | "BestNeighbours" >> beam.Map(_best_over_work_items, settings.top_k))
        if stored is not None:
            updated = (
                {"item": stored, "entering": found.entering}
                | "UpdateStored" >> JoinByKey(_update_stored, settings.top_k, keys={"item": attrgetter("rep.id")})
            )
            best = (best, updated) | "AllNeighbours" >> beam.Flatten()
        lists = best | "FoundAndRecords" >> beam.FlatMap(_found_and_record).with_outputs("records", main="found")
        return Blocked(lists.found, lists.records, trained, sub_centroids, most_found)


def _in_sub_sample(element, sizes: dict, settings: BlockingSettings) -> bool:
    """Whether an entry of a partition that is split again is in the sample its second level trains on."""
    partition, (_, rep_id, _) = element
    size = sizes[partition]
    count = sub_partition_count(size, settings)
    return bool(count) and in_sample(rep_id, size, count, settings)
