"""RecordCoder: records travel as their fields and come back as the same records; the rest is pickled."""
import pickle
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.coders import FastPrimitivesCoder, VarIntCoder, typecoders
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.typehints import typehints

from tests.helpers import RUNNER_ARGS
from transforms.cluster import GroupRow
from transforms.coders import RecordCoder, Records, pickled_list, unpickled_list, use_record_coder
from transforms.errors import RejectedRow
from transforms.records import CandidatePair, Representative, ScoredPair, StoredItem
from transforms.vectors import SparseVector


class _Local(NamedTuple):
    a: int


def _round_trip(value):
    coder = RecordCoder()
    return coder.decode(coder.encode(value))


def test_records_come_back_equal_and_of_their_own_class():
    values = [
        ScoredPair(1, 2, 0.75, None, "lexical"),
        CandidatePair("a", "b", "问题一", None, 0.5, "resplit"),
        Representative(2**70, "問題", "问题", "k1", 3, 1_700_000_000_000_000, 2**70),  # ids past int64
        StoredItem(Representative(1, "t", "t", "k", 1), np.arange(4, dtype=np.float32), [(0.5, 7)]),
        GroupRow(1, 1, 1, 2, "model", 0.5, 0.75, 3),
        RejectedRow.of({"id": 5}, "f.parquet#3", "empty_text", "", "read", "row"),
        _Local(1),
        (7, (0, ScoredPair(3, 4, 1.0, 0.9, "encoder"))), {"k": [1, 2.5, None]}, np.float32(0.25),
    ]
    for value in values:
        back = _round_trip(value)
        if isinstance(value, StoredItem):
            assert back.rep == value.rep and (back.vector == value.vector).all() and back.neighbours == value.neighbours
        else:
            assert back == value
        assert type(back) is type(value)
    assert type(_round_trip((7, (0, values[0])))[1][1]) is ScoredPair


def test_records_lists_come_back_equal_as_records_lists_of_their_own_classes():
    scored = Records(ScoredPair(i, i + 1, 0.5, None if i % 2 else 0.25, "lexical") for i in range(50))
    nested = Records([StoredItem(Representative(1, "t", "t", "k", 1), None, [(0.5, 7)])] * 2)
    for value in (scored, nested, Records(), Records([1, "a", (2, 3), None]), Records([_Local(1), _Local(2)]),
                  Records([scored[0], GroupRow(1, 1, 1, 2, "model", 0.5, 0.75, 3)]), (3, scored), [scored, scored]):
        back = _round_trip(value)
        assert back == value and type(back) is type(value)
        inner, given = (back, value) if isinstance(value, Records) else (back[1], value[1])
        assert type(inner) is Records and [type(item) for item in inner] == [type(item) for item in given]
    assert type(_round_trip(nested)[0].rep) is Representative
    assert _round_trip(scored) == list(scored) and _round_trip(list(scored)) == scored  # equal to the plain list


def test_records_of_one_class_are_written_as_its_class_once_and_their_fields():
    scored = [ScoredPair(i, i + 1, 0.5, None, "lexical") for i in range(100)]
    as_records, as_list = RecordCoder().encode(Records(scored)), RecordCoder().encode(scored)
    assert as_records.count(b"ScoredPair") == 1 and as_list.count(b"ScoredPair") == 100
    assert len(as_records) < len(as_list) / 2


class _Point(NamedTuple):
    x: int
    y: object = None


class _OtherPoint(NamedTuple):
    x: int
    y: object = None


class _Empty(NamedTuple):
    pass


@pytest.mark.parametrize("items", [
    [ScoredPair(i, i + 1, 0.5, None, "lexical") for i in range(5)],   # one NamedTuple class: in columns
    [_Point(1, _Point(2)), _Point(3, [4])],                            # nested records and lists kept
    [_Point(1), _OtherPoint(1), (1, None)],                            # mixed classes: pickled as they are
    [_Empty(), _Empty()],                                              # no fields: no columns to count them
    [(1, "a"), (2, "b")], [5, "x", None], [],
])
def test_a_pickled_list_reads_back_equal_and_of_the_same_classes(items):
    back = unpickled_list(pickled_list(items))
    assert back == items and [type(item) for item in back] == [type(item) for item in items]
    assert [type(item.y) for item in back if isinstance(item, _Point)] == \
        [type(item.y) for item in items if isinstance(item, _Point)]


def test_a_list_of_one_record_class_is_pickled_as_its_class_and_its_fields_in_columns():
    """What makes it cheaper: each record is not pickled as a record, nor as a tuple, of its own."""
    items = [ScoredPair(i, i + 1, 0.5, None, "lexical") for i in range(100)]
    cls, columns = pickle.loads(pickled_list(items))
    assert cls is ScoredPair and columns[0] == tuple(range(100)) and columns[4] == ("lexical",) * 100
    assert len(pickled_list(items)) < len(pickle.dumps(items, pickle.HIGHEST_PROTOCOL))


def test_numpy_arrays_come_back_equal_writeable_and_smaller_than_pickled():
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.asfortranarray(np.arange(6.0).reshape(2, 3)),
              np.arange(10, dtype=">i8")[::3], np.array(2.5), np.zeros((0, 4), dtype=np.int32),
              np.array([True, False]), np.array([1 + 2j]), np.array(["2026-12-01"], dtype="datetime64[D]")]
    for value in arrays:
        back = _round_trip(value)
        assert back.dtype == value.dtype and back.shape == value.shape and np.array_equal(back, value)
        back[...] = 0  # writeable, as an unpickled array is
    writer, reader = RecordCoder().get_impl(), RecordCoder().get_impl()  # one coder's dtypes looked up once each
    for value in arrays * 2:
        back = reader.decode(writer.encode(value))
        assert back.dtype == value.dtype and back.shape == value.shape and np.array_equal(back, value)
    vector = np.random.default_rng(0).random(1024, dtype=np.float32)
    assert len(RecordCoder().encode(vector)) < len(FastPrimitivesCoder().encode(vector))
    # Arrays of objects or of named fields are pickled, as before.
    for value in (np.array([{"a": 1}, None], dtype=object), np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")])):
        back = _round_trip(value)
        assert back.dtype == value.dtype and back.tolist() == value.tolist()


def test_sparse_vectors_come_back_equal_writeable_and_in_one_piece():
    """A lexical vector is written in one piece (its dimension, then each array's dtype and bytes), not as a
    record of two arrays; one that is not as the embedders make it goes as a record, and comes back as well."""
    plain = SparseVector(np.array([3, 17, 900], dtype=np.int32), np.array([0.5, 0.5, 0.7071], dtype=np.float32), 1024)
    odd = [SparseVector(np.array([1, 2]), np.array([[0.6], [0.8]]), 8),        # two-dimensional values
           SparseVector(np.array([1], dtype=np.int64), np.array([1.0]), np.int64(8)),  # a numpy dimension
           SparseVector([1, 2], [0.6, 0.8], 4)]                                # lists
    writer, reader = RecordCoder().get_impl(), RecordCoder().get_impl()
    for vector in [plain, *odd, plain]:
        back = reader.decode(writer.encode(vector))
        assert type(back) is SparseVector and type(back.dim) is type(vector.dim) and back.dim == vector.dim
        for got, given in zip(back[:2], vector[:2]):
            assert type(got) is type(given) and np.array_equal(got, given)
            if isinstance(got, np.ndarray):
                assert got.dtype == given.dtype and got.shape == given.shape
                got[...] = 0  # writeable, as an unpickled array is
    assert b"SparseVector" not in writer.encode(plain) and b"SparseVector" in writer.encode(odd[0])


def test_a_keyed_pair_is_smaller_than_pickled():
    keyed = (123456, (0, ScoredPair(123456, 234567, 0.73, 0.61, "lexical")))
    assert len(RecordCoder().encode(keyed)) < len(FastPrimitivesCoder().encode(keyed))


def test_pipelines_built_after_use_record_coder_shuffle_records_with_it():
    use_record_coder()
    use_record_coder()  # twice: still one coder, not a chain
    assert isinstance(typecoders.registry.get_coder(typehints.Any), RecordCoder)
    assert isinstance(typecoders.registry.get_coder(int), VarIntCoder)  # typed collections keep their coders
    pairs = [ScoredPair(i % 3, i, i / 10, None, "lexical") for i in range(9)]
    with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as pipeline:
        grouped = (
            pipeline
            | beam.Create(pairs)
            | beam.Map(lambda p: (p.id_a, p))
            | beam.GroupByKey()
            | beam.MapTuple(lambda key, found: (key, sorted(found), {type(p) for p in found} == {ScoredPair}))
        )
        assert_that(grouped, equal_to([(k, sorted(p for p in pairs if p.id_a == k), True) for k in range(3)]))
