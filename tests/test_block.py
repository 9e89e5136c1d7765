import pickle
import tracemalloc

import apache_beam as beam
import faiss
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from tests.helpers import RUNNER_ARGS
from transforms import block
from transforms.block import (
    BlockCandidates,
    BlockingSettings,
    DistinctCandidates,
    OnePair,
    SearchEntry,
    UnionCandidates,
    _best_over_work_items,
    _found_and_record,
    best_neighbours,
    block_count,
    by_dimension,
    enters,
    exact_similarities,
    knn_lists,
    knn_pairs,
    nearest_partitions,
    pack_entry,
    partition_count,
    top_columns,
    train_centroids,
    unpack_entry,
)
from transforms.records import (
    CandidatePair,
    Embedded,
    GivenCentroids,
    Representative,
    StoredItem,
    VectorRecord,
)
from transforms.vectors import SparseVector, dense_rows, sparse_rows, to_dense


def _brute_force(ids, vectors, k, floor):
    sims = vectors @ vectors.T
    pairs = {}
    for i in range(len(ids)):
        order = [j for j in np.argsort(-sims[i], kind="stable") if j != i][:k]
        for j in order:
            if sims[i, j] >= floor:
                a, b = sorted((ids[i], ids[j]))
                pairs[(a, b)] = float(sims[i, j])
    return pairs


def _unit(rng, n, d):
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _clustered(rng, n, d, clusters, noise):
    centers = _unit(rng, clusters, d)
    v = centers[rng.integers(0, clusters, n)] + noise * rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("k, floor", [(1, -1.0), (3, 0.0), (5, 0.2), (50, -1.0)])
def test_knn_pairs_equal_brute_force(k, floor):
    rng = np.random.default_rng(k)
    vectors = _unit(rng, 60, 16)
    ids = [f"q{i:03d}" for i in rng.permutation(60)]
    got = knn_pairs(ids, vectors, k, floor)
    expected = _brute_force(ids, vectors, k, floor)
    assert got.keys() == expected.keys()
    for pair, sim in got.items():
        assert pair[0] < pair[1]
        assert sim == pytest.approx(expected[pair], abs=1e-5)


def test_degenerate_inputs():
    assert knn_pairs([1], np.ones((1, 4), dtype=np.float32), 5, 0.0) == {}
    same = np.tile(np.array([[1, 0, 0, 0]], dtype=np.float32), (3, 1))
    assert set(knn_pairs([3, 1, 2], same, 5, 0.0)) == {(1, 2), (1, 3), (2, 3)}
    assert knn_lists([], np.zeros((0, 4)), [1], same[:1], 3, 0.0) == {}


def test_best_neighbours_keeps_each_neighbours_best_and_breaks_ties_by_id():
    found = [(0.5, "b"), (0.9, "c"), (0.7, "b"), (0.7, "a"), (0.1, "d")]
    assert best_neighbours(found, 3) == [(0.9, "c"), (0.7, "a"), (0.7, "b")]
    kept = [(0.9, 4), (0.7, 2)]
    assert enters((0.7, 1), kept, 2) and not enters((0.7, 3), kept, 2) and enters((0.1, 9), kept, 3)


def test_similarities_do_not_depend_on_what_else_is_searched():
    """faiss computes inner products one way for under 20 queries and another (BLAS) above; the exact routine
    gives every pair the same float whatever the batch, so rankings and ties cannot move with it."""
    rng = np.random.default_rng(5)
    vectors = _unit(rng, 300, 256)
    ids = list(range(300))
    reference = knn_lists(ids[:1], vectors[:1], ids, vectors, 10, -1.0)[0]
    for queries in (2, 19, 20, 21, 150, 300):
        assert knn_lists(ids[:queries], vectors[:queries], ids, vectors, 10, -1.0)[0] == reference
    found = np.array([[j for _, j in reference]])
    direct = float(np.float32(np.sum(vectors[0].astype(np.float64) * vectors[reference[0][1]].astype(np.float64))))
    assert exact_similarities(vectors[:1], vectors, found)[0, 0] == reference[0][0] == direct
    assert exact_similarities(vectors[:1], vectors, np.array([[-1]]))[0, 0] == -np.inf


def _sparse_unit(rng, n, d, nonzeros):
    vectors = []
    for _ in range(n):
        indices = np.sort(rng.choice(d, nonzeros, replace=False)).astype(np.int32)
        values = rng.random(nonzeros).astype(np.float32) + 0.1
        vectors.append(SparseVector(indices, (values / np.linalg.norm(values)).astype(np.float32), d))
    return vectors


def test_a_packed_entry_gives_the_search_what_it_reads_and_is_held_in_a_fraction_of_the_memory():
    """Blocking entries travel packed: a question's id, text (str or token bytes) and vector (sparse, or dense as
    an encoder's), and a stored question's k nearest, come back equal; held as bytes, a fraction of them decoded."""
    rng = np.random.default_rng(11)
    vectors = _sparse_unit(rng, 2000, 1024, 20)
    items = [Embedded(Representative(10_000 + i, f"花呗怎么还款第{i}次了呢", "n", "k", 1), v)
             for i, v in enumerate(vectors)]
    items.append(Embedded(Representative("id-7", np.arange(9, dtype=np.uint16).tobytes(), "n", "k", 2),
                          rng.random(16).astype(np.float32)))
    items.append(StoredItem(Representative(3, "存着的问题", "n", "k", 1), vectors[0], [(0.9, 5), (0.7, 8)]))
    for item in items:
        entry = unpack_entry(pack_entry(item))
        assert isinstance(entry, SearchEntry) and (entry.id, entry.text, entry.key) == (item.rep.id, item.rep.text,
                                                                                        item.rep.key)
        assert entry.neighbours == (item.neighbours if isinstance(item, StoredItem) else None)
        assert type(entry.vector) is type(item.vector)
        if isinstance(item.vector, SparseVector):
            assert entry.vector.dim == item.vector.dim
            for got, want in ((entry.vector.indices, item.vector.indices), (entry.vector.values, item.vector.values)):
                assert got.dtype == want.dtype and np.array_equal(got, want)
        else:
            assert entry.vector.dtype == item.vector.dtype and np.array_equal(entry.vector, item.vector)

    def held(make) -> int:  # bytes allocated to hold what make() returns, as a shuffle holds its values
        tracemalloc.start()
        kept = make()
        size = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert kept
        return size

    encoded = [pack_entry(item) for item in items[:2000]]
    decoded = held(lambda: [unpack_entry(data) for data in encoded])
    compact = held(lambda: [pack_entry(item) for item in items[:2000]])
    assert compact < decoded / 2, (compact, decoded)


def test_dense_rows_lay_sparse_vectors_out_at_once_as_they_would_be_one_by_one():
    """A work item's matrices: the same float32 rows as `to_dense` vector by vector, and the sparse rows too;
    dense vectors (an encoder's) are stacked, with no sparse rows."""
    rng = np.random.default_rng(3)
    vectors = _sparse_unit(rng, 300, 64, 9) + [SparseVector(np.zeros(0, np.int32), np.zeros(0, np.float32), 64)]
    dense, sparse = dense_rows(vectors)
    expected = np.stack([to_dense(v) for v in vectors])
    assert dense.dtype == expected.dtype == np.float32 and np.array_equal(dense, expected)
    assert (sparse != sparse_rows(vectors)).nnz == 0 and not dense[-1].any()
    encoded = [rng.random(8).astype(np.float32) for _ in range(5)]
    stacked, none = dense_rows(encoded)
    assert none is None and np.array_equal(stacked, np.stack(encoded))


@pytest.mark.parametrize("k, floor", [(1, -1.0), (5, 0.0), (10, 0.3), (40, 0.1)])
def test_sparse_queries_find_the_lists_faiss_finds(k, floor):
    """Lexical vectors are searched as sparse products instead of faiss's dense search: the same lists."""
    rng = np.random.default_rng(k)
    vectors = _sparse_unit(rng, 700, 256, 12)
    dense = np.stack([to_dense(v) for v in vectors])
    ids = [int(i) for i in rng.permutation(700)]
    by_faiss = knn_lists(ids, dense, ids, dense, k, floor)
    assert len(by_faiss) > 500  # most queries have neighbours: not an empty comparison
    assert knn_lists(ids, dense, ids, dense, k, floor, sparse_queries=sparse_rows(vectors)) == by_faiss
    some = slice(0, 50)  # queries that are not the index
    assert knn_lists(ids[some], dense[some], ids, dense, k, floor, sparse_queries=sparse_rows(vectors[some])) == \
        knn_lists(ids[some], dense[some], ids, dense, k, floor)


def test_a_sparse_search_split_over_threads_gives_the_same_lists(monkeypatch):
    """--search-threads: a work item's sparse queries are split into parts of at least MIN_THREAD_QUERIES,
    searched in threads against one transposed index, their products in blocks of at most `_PROPOSE_CHUNK`;
    every query's list is the one a single search gives."""
    rng = np.random.default_rng(5)
    vectors = _sparse_unit(rng, 2500, 256, 12)
    dense = np.stack([to_dense(v) for v in vectors])
    ids = [int(i) for i in rng.permutation(2500)]
    alone = knn_lists(ids, dense, ids, dense, 10, 0.1, sparse_queries=sparse_rows(vectors))
    proposed, transposed, blocks = [], [], []
    propose, top_columns = block.propose, block.top_columns

    def counted(queries, *args):
        proposed.append(len(queries))
        transposed.append(args[-1])
        return propose(queries, *args)

    def sized(values, *args):
        blocks.append(values.size)
        return top_columns(values, *args)

    monkeypatch.setattr(block, "propose", counted)
    monkeypatch.setattr(block, "top_columns", sized)
    monkeypatch.setattr(block, "_PROPOSE_CHUNK", 300_000)
    assert knn_lists(ids, dense, ids, dense, 10, 0.1, sparse_queries=sparse_rows(vectors), threads=4) == alone
    assert sorted(proposed) == [1250, 1250]  # 4 asked, 2 parts of >= 1,000 queries
    assert transposed[0] is transposed[1] and np.array_equal(transposed[0], dense.T)
    assert len(blocks) == 2 * 11 and max(blocks) <= 300_000 and sum(blocks) == 2500 * 2500  # 120 rows a block
    transposed.clear()  # made from the index's non-zeros where the index is given sparse too: the same array
    assert knn_lists(ids, dense, ids, dense, 10, 0.1, sparse_queries=sparse_rows(vectors), threads=4,
                     sparse_index=sparse_rows(vectors)) == alone
    assert transposed[0] is transposed[1] and transposed[0].flags.c_contiguous
    assert transposed[0].dtype == np.float32 and np.array_equal(transposed[0], dense.T)
    proposed.clear()
    assert knn_lists(ids, dense, ids, dense, 10, 0.1, threads=4) == alone and proposed == [2500]  # faiss: one
    assert len(alone) > 2000


@pytest.mark.parametrize("setting", [0, 3])
def test_a_work_item_searches_on_the_threads_its_setting_gives(monkeypatch, setting):
    """--search-threads reaches the search of a work item; 0 means the cores this process may use."""
    import os
    rng = np.random.default_rng(6)
    items = [SearchEntry(i, f"t{i}", v) for i, v in enumerate(_sparse_unit(rng, 50, 64, 6))]
    asked = []
    search = block.knn_lists

    def counted(*args, **kwargs):
        asked.append(args[-2:])
        return search(*args, **kwargs)

    monkeypatch.setattr(block, "knn_lists", counted)
    lists = block._search(items, items, BlockingSettings(search_threads=setting))
    (threads, sparse_index), = asked
    assert lists and threads == (setting or len(os.sched_getaffinity(0)))
    assert (sparse_index != sparse_rows([item.vector for item in items])).nnz == 0  # the index given sparse too


def test_sparse_similarities_are_the_dense_ones_to_the_bit():
    """Summing only a sparse query's non-zero products gives the dense routine's float32, bit for bit: for
    vectors with signs too, a query without non-zeros, and candidates that are -1."""
    rng = np.random.default_rng(3)
    vectors = _sparse_unit(rng, 400, 1024, 20)
    vectors += [SparseVector(v.indices, (v.values * rng.choice([-1, 1], len(v.values))).astype(np.float32), v.dim)
                for v in _sparse_unit(rng, 100, 1024, 30)]
    vectors.append(SparseVector(np.zeros(0, np.int32), np.zeros(0, np.float32), 1024))
    dense = np.stack([to_dense(v) for v in vectors])
    index = -np.abs(dense[::-1])  # the empty query's dense products are then -0.0
    found = rng.integers(-1, len(index), size=(len(vectors), 31))
    expected = exact_similarities(dense, index, found)
    got = exact_similarities(dense, index, found, sparse_rows(vectors))
    assert np.array_equal(got.view(np.int32), expected.view(np.int32))
    assert (found == -1).any() and np.isneginf(got[found == -1]).all()


def test_knn_lists_re_ranks_sparse_queries_from_their_non_zeros(monkeypatch):
    """The search hands its sparse queries to the re-ranking: only the rare sums near a rounding boundary
    are summed over every dimension (outputs are the same either way, so only this shows the wiring)."""
    rng = np.random.default_rng(4)
    vectors = _sparse_unit(rng, 300, 1024, 20)
    dense = np.stack([to_dense(v) for v in vectors])
    summed_densely = []
    dense_similarities = block._dense_similarities

    def counted(queries, index, found):
        summed_densely.append(found.size)
        return dense_similarities(queries, index, found)

    monkeypatch.setattr(block, "_dense_similarities", counted)
    ids = list(range(300))
    assert knn_lists(ids, dense, ids, dense, 10, 0.0, sparse_queries=sparse_rows(vectors))
    assert sum(summed_densely) < 0.01 * 300 * 21
    summed_densely.clear()
    knn_lists(ids, dense, ids, dense, 10, 0.0)
    assert sum(summed_densely) >= 300 * 11  # without the sparse queries every proposed pair is summed densely


def test_sparse_similarities_recompute_a_sum_near_a_float32_rounding_boundary():
    """1 + 2^-24 + 2^-53 + 2^-53 summed in order is 1 + 2^-24, exactly between two float32s (rounded down to
    1.0); numpy's pairwise sum adds the two smallest first and rounds up. Such a sum is recomputed densely."""
    q, x = np.zeros((1, 1024), np.float32), np.zeros((1, 1024), np.float32)
    dims = [0, 128, 512, 513]
    q[0, dims] = [1.0, 2.0 ** -12, 2.0 ** -26, 2.0 ** -26]
    x[0, dims] = [1.0, 2.0 ** -12, 2.0 ** -27, 2.0 ** -27]
    in_order = np.float32(sum(float(q[0, d]) * float(x[0, d]) for d in dims))
    dense = exact_similarities(q, x, np.array([[0]]))[0, 0]
    assert in_order == np.float32(1.0) and dense > in_order, "numpy no longer sums these in another order"
    query = SparseVector(np.array(dims, np.int32), q[0, dims], 1024)
    assert exact_similarities(q, x, np.array([[0]]), sparse_rows([query]))[0, 0] == dense


@pytest.mark.parametrize("sorted_at_most", [0, 20, 256])
def test_top_columns_keeps_the_highest_at_or_above_the_floor_ties_to_the_lower_column(sorted_at_most, monkeypatch):
    """Rows with many values above the floor are partitioned first, the others sorted as they are: the same
    columns either way (0: every row partitioned; 20: some rows each way; 256: none)."""
    monkeypatch.setattr(block, "_SORTED_AT_MOST", sorted_at_most)
    values = np.array([[0.5, 0.9, 0.5, 0.5, 0.1],
                       [0.2, 0.2, 0.2, 0.2, 0.2],
                       [0.1, 0.0, 0.3, 0.0, 0.0]], dtype=np.float32)
    assert top_columns(values, 3, 0.2).tolist() == [[1, 0, 2], [0, 1, 2], [2, -1, -1]]
    assert top_columns(values, 9, -1.0).tolist() == [[1, 0, 2, 3, 4], [0, 1, 2, 3, 4], [2, 0, 1, 3, 4]]
    rng = np.random.default_rng(0)
    values = rng.integers(0, 6, size=(40, 30)).astype(np.float32)  # many ties
    found = top_columns(values, 7, 2.0)
    for row, columns in zip(values, found):
        expected = sorted((c for c in range(30) if row[c] >= 2), key=lambda c: (-row[c], c))[:7]
        assert columns.tolist() == expected + [-1] * (7 - len(expected))


def test_sparse_rows_are_the_vectors_and_only_for_sparse_vectors():
    rng = np.random.default_rng(1)
    vectors = _sparse_unit(rng, 5, 32, 4) + [SparseVector(np.zeros(0, np.int32), np.zeros(0, np.float32), 32)]
    assert np.array_equal(sparse_rows(vectors).toarray(), np.stack([to_dense(v) for v in vectors]))
    assert sparse_rows([]) is None and sparse_rows([to_dense(vectors[0])]) is None
    assert sparse_rows([vectors[0], to_dense(vectors[1])]) is None


def test_partition_and_block_counts():
    settings = BlockingSettings(partition_size=1000, probes=2)
    assert partition_count(100, settings) == 1
    assert partition_count(10_000, settings) == 20
    assert partition_count(50, BlockingSettings(partitions=8)) == 8
    assert partition_count(5, BlockingSettings(partitions=8)) == 5
    assert block_count(10, 20) == 1 and block_count(41, 20) == 3


def test_nearest_partitions():
    centroids = by_dimension(np.eye(4, dtype=np.float32))
    vector = np.array([0.1, 0.9, 0.5, 0.0], dtype=np.float32)
    assert nearest_partitions(vector, centroids, 2) == [1, 2]
    assert nearest_partitions(vector, centroids, 9) == [0, 1, 2, 3]
    assert nearest_partitions(vector, None, 2) == [0]
    assert nearest_partitions(vector, by_dimension(np.ones((1, 4), dtype=np.float32)), 2) == [0]
    tied = np.array([0.5, 0.0, 0.5, 0.5], dtype=np.float32)
    assert nearest_partitions(tied, centroids, 2) == [0, 2]  # of equal products, the lower partitions


@pytest.mark.parametrize("seed", range(3))
def test_nearest_partitions_of_sparse_and_dense_vectors_are_the_largest_products(seed):
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((200, 64)).astype(np.float32)
    for _ in range(50):
        indices = np.sort(rng.choice(64, 12, replace=False)).astype(np.int32)
        sparse = SparseVector(indices, rng.standard_normal(12).astype(np.float32), 64)
        dense = to_dense(sparse)
        expected = sorted(np.argsort(-(centroids.astype(np.float64) @ dense))[:3].tolist())
        assert nearest_partitions(sparse, by_dimension(centroids), 3) == expected
        assert nearest_partitions(dense, by_dimension(centroids), 3) == expected


def _items(vectors, ids=None):
    ids = list(range(len(vectors))) if ids is None else ids
    return [Embedded(Representative(i, f"t{i}", f"t{i}", f"k{i}", 1), v) for i, v in zip(ids, vectors)]


def _save(pairs, path):
    with open(path, "wb") as handle:
        pickle.dump(pairs, handle)


def _lists_of_records(records, items) -> dict:
    """The k nearest of blocking's vector records, {id: [(similarity, id)]}, after checking there is a record
    for each item (new and stored), with its key and its vector as it came."""
    by_id = {record.id: record for record in records}
    assert len(by_id) == len(records) == len(items)
    for item in items:
        record = by_id[item.rep.id]
        assert record.key == item.rep.key
        if isinstance(item.vector, SparseVector):
            assert (record.indices == item.vector.indices).all() and record.dim == item.vector.dim
            assert (record.values == item.vector.values).all()
        else:
            assert record.indices is None and record.dim == len(item.vector) and (record.values == item.vector).all()
    return {record.id: list(zip(record.top_sims, record.top_ids)) for record in records}


def _block(items, settings, tmp_path, centroids=None, stored=None, lists=False, sub_centroids=None):
    """Runs BlockCandidates and DistinctCandidates; returns ({(a, b): similarity}, largest work item), and the
    neighbour lists (or, with lists="metrics", the work item size distribution and the count of hash-blocked
    entries)."""
    pipeline = beam.Pipeline(options=PipelineOptions(RUNNER_ARGS))
    path = str(tmp_path / "pairs.pickle")

    def check(pairs):
        assert len(pairs) == len({(p.id_a, p.id_b) for p in pairs})
        assert all(p.id_a < p.id_b and p.source == "lexical" for p in pairs)
        assert all(p.text_a in (f"t{p.id_a}", None) and p.text_b in (f"t{p.id_b}", None) for p in pairs)
        if stored is None:
            assert all(p.text_a is not None and p.text_b is not None for p in pairs)

    new = pipeline | "New" >> beam.Create(items)
    inputs = new if stored is None else (new, pipeline | "Stored" >> beam.Create(stored))
    given_sub = None if sub_centroids is None else pipeline | "Sub" >> beam.Create(sub_centroids)
    blocked = inputs | BlockCandidates(settings, centroids=centroids, sub_centroids=given_sub)
    candidates = {"lexical": blocked.found} | DistinctCandidates()
    assert_that(candidates, check)
    most = (len(items) + len(stored or [])) * settings.top_k  # a list a question searched or stored, top_k each
    assert_that(blocked.most_found, equal_to([most]), label="MostFound")
    entries = blocked.found | "Entries" >> beam.Map(lambda element: len(element[1][1])) | beam.CombineGlobally(sum)
    assert_that(entries, lambda sums: sums[0] <= most or pytest.fail(f"{sums} entries, most {most}"),
                label="WithinMostFound")
    pairs = candidates | beam.Map(lambda p: ((p.id_a, p.id_b), p.similarity)) | "Pairs" >> beam.combiners.ToDict()
    records = blocked.records | "Records" >> beam.combiners.ToList()
    (pipeline | "Once" >> beam.Create([None])
     | beam.Map(lambda _, p, r: _save((p, r), path), p=beam.pvalue.AsSingleton(pairs),
                r=beam.pvalue.AsSingleton(records)))
    result = pipeline.run()
    result.wait_until_finish()
    sizes = result.metrics().query(MetricsFilter().with_name("blocking_work_item"))["distributions"]
    with open(path, "rb") as handle:
        found_pairs, records = pickle.load(handle)
    found_lists = _lists_of_records(records, list(items) + list(stored or []))
    largest = max(d.committed.max for d in sizes)
    if lists == "metrics":
        hashed = result.metrics().query(MetricsFilter().with_name("blocking_items_hash_blocked"))["counters"]
        return found_pairs, found_lists, sizes[0].committed, sum(c.committed for c in hashed)
    return (found_pairs, largest, found_lists) if lists else (found_pairs, largest)


def test_lexical_work_items_are_searched_as_sparse_products_not_by_faiss(tmp_path, monkeypatch):
    """Blocking sparse (lexical) vectors never hands them to faiss, and finds what faiss finds for them dense."""
    vectors = _sparse_unit(np.random.default_rng(7), 300, 64, 8)
    settings = BlockingSettings(top_k=5, min_similarity=0.1, partitions=1)
    by_faiss, _, faiss_lists = _block(_items([to_dense(v) for v in vectors]), settings, tmp_path, lists=True)

    def no_faiss(*args):
        raise AssertionError("faiss searched a work item of sparse vectors")

    monkeypatch.setattr(faiss, "IndexFlatIP", no_faiss)
    found, _, lists = _block(_items(vectors), settings, tmp_path, lists=True)
    assert len(by_faiss) > 300 and found == by_faiss and lists == faiss_lists


@pytest.mark.slow
def test_partitioned_knn_equals_exact_when_every_partition_is_probed(tmp_path):
    vectors = _clustered(np.random.default_rng(1), 400, 16, 12, 0.3)
    settings = BlockingSettings(top_k=5, min_similarity=0.1, partitions=6, probes=6, max_block=400)
    got, largest = _block(_items(vectors), settings, tmp_path)
    expected = knn_pairs(list(range(400)), vectors, 5, 0.1)
    assert got == expected  # the same pairs with the same similarities, to the last bit
    assert largest == 400


@pytest.mark.slow
def test_partitioned_recall_against_exact_with_the_defaults(tmp_path):
    """The default probes, k, floor and k-means sample; partitions of half the default size (for time)."""
    vectors = _clustered(np.random.default_rng(2), 12_000, 32, 300, 0.06)
    settings = BlockingSettings(partition_size=5_000)
    assert partition_count(len(vectors), settings) == 5
    got, _ = _block(_items(vectors), settings, tmp_path)
    expected = knn_pairs(list(range(len(vectors))), vectors, settings.top_k, settings.min_similarity)
    recall = len(got.keys() & expected.keys()) / len(expected)
    assert recall >= 0.99, recall


@pytest.mark.slow
@pytest.mark.parametrize("max_sample, n, max_block", [(65_536, 12_000, 1_000), (1_024, 12_000, 1_000)])
def test_a_hot_partition_of_12k_near_copies_is_split_with_a_linear_shuffle(tmp_path, max_sample, n, max_block):
    """One question with small edits, 12,000 times: every vector lands in one first-level partition. It is
    split by second-level centroids (with a small --max-sample, into too few sub-partitions: those are
    then searched in hash blocks): what is shuffled grows with its size (the former block x block search
    shuffled (2b - 1) x S entries, b = S / max_block), and every question keeps k neighbours within 0.01
    of its exact k-th similarity."""
    k = 5
    rng = np.random.default_rng(3)
    base = _unit(rng, 1, 24)[0]
    vectors = base + 0.04 * rng.normal(size=(n, 24)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    settings = BlockingSettings(top_k=k, partitions=1, probes=2, max_block=max_block, max_sample=max_sample)
    _, lists, sizes, hashed = _block(_items(vectors), settings, tmp_path, lists="metrics")
    assert sizes.max <= 2 * max_block * 1.3  # a work item: at most a query block and an index block
    assert sizes.sum <= (2 * settings.max_fanout - 1) * 2 * n  # linear in n: each in its 2 sub-partitions
    assert (hashed > 0) == (max_sample == 1_024)  # 4 sub-partitions of ~6,000: more than 4 blocks each
    exact = knn_lists(list(range(n)), vectors, list(range(n)), vectors, k, settings.min_similarity)
    kth = np.array([exact[i][-1][0] for i in range(n)])
    found = np.array([lists[i][k - 1][0] if len(lists.get(i, [])) >= k else -1.0 for i in range(n)])
    assert (found >= kth - 0.01).all(), (kth - found).max()
    print(f"max_sample {max_sample}: k-th similarity lost, mean {(kth - found).mean():.5f}, "
          f"max {(kth - found).max():.5f}; shuffled {sizes.sum:,} entries for {n:,} questions")


def test_one_pass_splits_the_entries_and_samples_the_hot_ones_as_a_filter_over_all_would():
    """A list of entries of a partition that is not split goes to its one work item as it came, as
    `_ToWorkItems` deals it (given sizes: a first run's partitions, whose sizes are known) or on whole as
    ((partition, 0), list) for it (an earlier run's partitions); the entries of a split (hot) partition to "hot"
    one by one; and the hot entries that fall in their partition's second-level sample to "sample" as
    (partition, (id, vector)): exactly the entries a separate pass over every entry with `_in_sub_sample` picked."""
    settings = BlockingSettings(max_block=50, sample_per_partition=8)
    rng = np.random.default_rng(5)
    vectors = _unit(rng, 400, 8)
    sizes = {0: 300, 1: 40, 2: 60}  # 0 and 2 above max_block: split
    entries = [(i % 3, ("both", item.rep.id, pack_entry(item))) for i, item in enumerate(_items(vectors))]
    by_partition = {p: [entry for q, entry in entries if q == p] for p in range(3)}
    lists = [(p, block._listed(by_partition[p][start:start + 60])) for p in range(3) for start in (0, 60, 120)]
    whole = [listed for p, listed in lists if p == 1]
    split = {0: True, 2: True}
    outputs = [out for element in lists for out in block._SplitHot(settings).process(element, split, sizes)]
    tagged = {}
    for out in outputs:
        tagged.setdefault(getattr(out, "tag", None), []).append(getattr(out, "value", out))
    to_work_items = block._ToWorkItems(settings.max_block, settings.max_fanout)
    dealt = [out for listed in whole for out in to_work_items.process(((1, 0), listed), {(1, 0): 40})]
    assert tagged[None] == dealt == [((1, 0, 0, 0), listed) for listed in whole]
    assert [entry for _, listed in dealt for entry in block._entries(listed)] == by_partition[1]
    hot = [(p, entry) for p in (0, 2) for entry in by_partition[p]]
    assert tagged["hot"] == hot
    expected = [(p, entry[1]) for p, entry in hot if block._in_sub_sample((p, entry), sizes, settings)]
    assert 0 < len(expected) < 200 and {p for p, _ in expected} == {0, 2}
    assert [(p, rep_id) for p, (rep_id, _) in tagged["sample"]] == expected
    assert all(np.array_equal(vector, vectors[rep_id]) for _, (rep_id, vector) in tagged["sample"])
    given = [out for element in lists for out in block._SplitHot(settings).process(element, split)]
    assert not [out for out in given if getattr(out, "tag", None) == "sample"]  # sizes not given: no sample
    assert [out for out in given if not hasattr(out, "tag")] == [((1, 0), listed) for listed in whole]


def test_entries_of_a_partition_cut_in_blocks_go_to_their_work_items_in_lists_of_bounded_length():
    """`_ToWorkItems` on a partition cut into b blocks: each entry reaches the 2b - 1 work items of its block
    (query block x index block), as query, index or both (a home entry home in its own block's), in lists of at
    most `LIST_ITEMS` entries, and the lists it holds over a bundle never exceed 8 x `LIST_ITEMS` entries; past
    `fanout` blocks, each block alone."""
    from transforms.joins import LIST_ITEMS
    n, max_block = 5_000, 2_000  # 3 blocks
    roles = ["home" if i % 3 else "both" for i in range(n)]
    entries = [(roles[i], i, b"x%d" % i) for i in range(n)]
    lists = [((7, 0), block._listed(entries[start:start + 700])) for start in range(0, n, 700)]
    for fanout, copies in ((4, 5), (2, 1)):  # 2b - 1 work items an entry, or its block's alone
        deal = block._ToWorkItems(max_block, fanout)
        deal.start_bundle()
        given, most_held = [], 0
        for element in lists:
            given += list(deal.process(element, {(7, 0): n}))
            most_held = max(most_held, deal._lists._held)
        given += [out.value for out in deal.finish_bundle()]
        assert most_held < 8 * LIST_ITEMS
        assert all(0 < count <= LIST_ITEMS for _, (count, _) in given)
        items = {}
        for key, listed in given:
            assert key[:2] == (7, 0)
            for role, rep_id, _ in block._entries(listed):
                items.setdefault(rep_id, []).append((key[2:], role))
        assert sorted(items) == list(range(n))
        for rep_id, places in items.items():
            mine = block.stable_hash(rep_id) % 3
            assert len(places) == copies and ((mine, mine), roles[rep_id]) in places
            if copies == 5:
                others = [o for o in range(3) if o != mine]
                assert sorted(places) == sorted([((mine, mine), roles[rep_id])] + [((mine, o), "query") for o in others]
                                                + [((o, mine), "index") for o in others])


def test_a_searched_question_is_home_in_one_partition_and_one_sub_partition_of_those_it_is_placed_in():
    """Each searched question's vector record comes from one work item: `_AssignPartitions` makes its entry "home"
    in one of its nearest partitions ("both" in the others), `_route` keeps it home in one sub-partition of a
    split one; a stored question is never home."""
    rng = np.random.default_rng(12)
    vectors = _unit(rng, 200, 8)
    items = _items(vectors)
    centroids, sub = by_dimension(train_centroids(vectors, 4, 0)), train_centroids(vectors, 3, 1)
    for role, probes in (("both", 2), ("both", 3), ("stored", 2)):
        assign = block._AssignPartitions(probes, role)
        assign.setup()
        assign.start_bundle()
        given = [out for item in items for out in assign.process(block.packed_item(item), centroids)]
        given += [out.value for out in assign.finish_bundle()]
        placed = [(partition, entry) for partition, listed in given for entry in block._entries(listed)]
        homes = [entry[1] for _, entry in placed if entry[0] == "home"]
        assert len(placed) == probes * len(items)
        if role == "stored":
            assert not homes and {entry[0] for _, entry in placed} == {"stored"}
            continue
        assert sorted(homes) == list(range(len(items))) and {entry[0] for _, entry in placed} == {"home", "both"}
        routed = [entry for partition in range(4)
                  for _, listed in block._route((partition, {"entry": [e for p, e in placed if p == partition],
                                                             "sub": [sub]}), 2)
                  for entry in block._entries(listed)]
        assert len(routed) == 2 * len(placed)
        assert sorted(entry[1] for entry in routed if entry[0] == "home") == list(range(len(items)))


def test_a_pair_found_from_both_ends_is_one_with_every_text_either_end_knew():
    """An extension's stored question knows no text for a newcomer: the newcomer's own end does."""
    combine = OnePair()
    from_a, from_b = (0.75, "a", None), (0.75, None, "b")
    for ends in ([from_a, from_b], [from_b, from_a]):
        one = combine.create_accumulator()
        for value in ends:
            one = combine.add_input(one, value)
        assert combine.extract_output(one) == (0.75, "a", "b")
        halves = [combine.add_input(combine.create_accumulator(), value) for value in ends]
        assert combine.extract_output(combine.merge_accumulators([combine.create_accumulator(), *halves])) == (
            0.75, "a", "b")
    assert combine.add_input(combine.add_input(None, (0.5, "a", "b")), (0.625, "a", "b")) == (0.625, "a", "b")


def test_union_merges_sources_and_keeps_the_best_similarity():
    lexical = [CandidatePair(1, 2, "a", "b", 0.5, "lexical"), CandidatePair(1, 3, "a", "c", 0.4, "lexical")]
    encoder = [CandidatePair(1, 2, "a", "b", 0.8, "encoder"), CandidatePair(2, 3, "b", "c", 0.9, "encoder")]

    def check(pairs):
        by_key = {(p.id_a, p.id_b): (p.similarity, p.source) for p in pairs}
        assert by_key == {(1, 2): (0.8, "encoder,lexical"), (1, 3): (0.4, "lexical"), (2, 3): (0.9, "encoder")}

    with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as pipeline:
        sets = (pipeline | "L" >> beam.Create(lexical), pipeline | "E" >> beam.Create(encoder))
        assert_that(sets | UnionCandidates(), check)


@pytest.mark.slow
def test_partitioned_blocking_is_deterministic(tmp_path):
    vectors = _clustered(np.random.default_rng(4), 600, 16, 20, 0.1)
    settings = BlockingSettings(top_k=4, partitions=6, probes=2, max_block=90)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, _ = _block(_items(vectors), settings, tmp_path / "a")
    second, _ = _block(list(reversed(_items(vectors))), settings, tmp_path / "b")
    assert first == second and len(first) > 600


@pytest.mark.slow
@pytest.mark.parametrize("second_level", [False, True])
def test_an_extension_updates_stored_neighbours_to_exactly_what_a_full_search_finds(tmp_path, second_level):
    """Stored questions keep their k nearest; newcomers searched against everything and entering stored
    lists give exactly the lists and pairs of a search over everything (ties included: some vectors repeat),
    also when the partitions are split by the second-level centroids the stored run trained."""
    rng = np.random.default_rng(6)
    vectors = _clustered(rng, 500, 16, 15, 0.15)
    vectors[450:] = vectors[rng.integers(0, 450, 50)]  # exact ties between old and new questions
    old = [i for i in range(500) if i % 5 != 2]
    new = [i for i in range(500) if i % 5 == 2]
    centroids = GivenCentroids(train_centroids(vectors[old], 4, 0))
    sub = None
    if second_level:
        first = by_dimension(centroids[0])
        sub = [(p, train_centroids(vectors[[i for i in old if p in nearest_partitions(vectors[i], first, 2)]], 5, 0))
               for p in range(4)]
    settings = BlockingSettings(top_k=6, min_similarity=0.2, partitions=4, probes=2, max_block=500)
    for name in ("full", "old", "extension"):
        (tmp_path / name).mkdir()
    full_pairs, _, full_lists = _block(_items(vectors), settings, tmp_path / "full", centroids, lists=True,
                                       sub_centroids=sub)
    _, _, old_lists = _block(_items(vectors[old], old), settings, tmp_path / "old", centroids, lists=True,
                             sub_centroids=sub)
    stored = [StoredItem(rep, vector, old_lists.get(rep.id, [])) for rep, vector in _items(vectors[old], old)]
    ext_pairs, _, ext_lists = _block(_items(vectors[new], new), settings, tmp_path / "extension", centroids,
                                     stored=stored, lists=True, sub_centroids=sub)
    assert ext_lists == full_lists
    assert ext_pairs == full_pairs
    assert any(old_lists[i] != full_lists[i] for i in old)  # newcomers did enter stored lists


@pytest.mark.parametrize("as_text", [False, True])
def test_a_questions_k_nearest_over_its_work_items_are_the_k_best_best_first(as_text):
    """Found lists from several work items (a neighbour found in more than one, its text in some), one of them
    with the question's vector (its home work item's), in any order: the k best are kept by
    (similarity, then the lower id), best first, each with a text wherever one came, and the question's text
    and vector."""
    import random
    rng = random.Random(5)
    name = (lambda n: f"q{n:03d}") if as_text else (lambda n: n)
    for _ in range(300):
        sims = {name(n): rng.choice([0.3, 0.5, 0.7, 0.9]) for n in range(12)}  # a pair's similarity is exact
        lists = [[(sims[n], n, rng.choice([None, f"t{n}"])) for n in rng.sample(sorted(sims), rng.randint(0, 12))]
                 for _ in range(rng.randint(1, 6))]  # at times more than 8 x k entries: cut on the way
        packed = pack_entry(Embedded(Representative(name(99), "text", "n", "key", 1), np.arange(3, dtype=np.float32)))
        values = [("text", found, None) for found in lists]
        home = rng.randrange(len(values))
        values[home] = ("text", lists[home], packed)
        rep_id, (text, best, got) = _best_over_work_items((name(99), values), 4)
        assert rep_id == name(99) and text == "text" and got is packed
        seen = {n for found in lists for _, n, _ in found}
        expected = sorted(seen, key=lambda n: (-sims[n], n))[:4]
        assert list(best) == expected
        for n in expected:
            texts = {t for found in lists for _, m, t in found if m == n and t is not None}
            assert best[n][0] == sims[n] and (best[n][1] in texts if texts else best[n][1] is None)


def test_a_question_found_nowhere_keeps_its_vector_record_with_no_neighbours_and_gives_no_found_list():
    """A question no work item found a neighbour for has its vector alone (from its home work item): its record
    says so, and scoring gets no list of it; a found one gets both, the record's neighbours best first."""
    vector = SparseVector(np.array([2, 5], np.int32), np.array([0.6, 0.8], np.float32), 8)
    home = pack_entry(Embedded(Representative(7, "t7", "n7", "k7", 1), vector))
    _, alone = _best_over_work_items((7, [("t7", [], home)]), 3)
    assert alone == ("t7", {}, home)
    (record,) = [out.value for out in _found_and_record((7, alone))]
    assert record._replace(indices=None, values=None) == VectorRecord(7, "k7", None, None, 8, [], [])
    assert record.indices.tolist() == [2, 5] and record.values.tolist() == vector.values.tolist()
    assert record.indices.dtype == np.int32 and record.values.dtype == np.float32
    found_list, tagged = _found_and_record(
        _best_over_work_items((7, [("t7", [(0.5, 9, "t9")], None), ("t7", [(0.75, 8, None)], home)]), 3))
    assert found_list == (7, ("t7", {8: (0.75, None), 9: (0.5, "t9")}))
    assert tagged.tag == "records" and (tagged.value.top_ids, tagged.value.top_sims) == ([8, 9], [0.75, 0.5])
    no_home = _best_over_work_items((7, [("t7", [(0.5, 9, "t9")], None)]), 3)
    with pytest.raises(RuntimeError, match="question 7 was searched but no work item was its home"):
        list(_found_and_record(no_home))
