from benchmarks.bench_search import main, work_item


def test_a_work_item_is_searched_both_ways_with_the_same_lists(capsys):
    ids, dense, sparse = work_item(300)
    assert len(ids) == dense.shape[0] == sparse.shape[0] == 300 and (sparse.toarray() == dense).all()
    assert sparse.nnz < dense.size / 10  # lexical vectors: few non-zeros
    main(["--sizes", "2000", "--repeat", "2"])  # two parts of 1,000 queries on the threaded way
    search, layout = capsys.readouterr().out.strip().split("\n\n")
    row = search.splitlines()[-1]
    assert row.startswith("| 2,000 |") and row.endswith("| True |") and row.count("|") == 6
    row = layout.splitlines()[-1]  # the matrices made both ways are the same
    assert row.startswith("| 2,000 |") and row.endswith("| True |") and row.count("|") == 5
