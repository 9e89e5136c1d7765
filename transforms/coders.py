"""How records travel between workers: NamedTuples as their fields, not pickled one by one.

Beam Python encodes an untyped element with `FastPrimitivesCoder`, which knows
ints, floats, strings, tuples, lists and dicts and pickles anything else, one
element at a time. Every record qdedup passes between its stages is a NamedTuple
(`transforms/records.py` and the stages' own), so each crossing of a shuffle or
a stage boundary pickled it: a keyed `ScoredPair` took 3.7 µs to encode and
decode and 103 bytes here. `RecordCoder` writes a NamedTuple as its class's name
and its fields through the same fast coder (1.7 µs, 79 bytes); anything else is
pickled as before. `use_record_coder()` makes it the coder of every untyped
PCollection of the pipelines built afterwards in this process; the coder is
pickled into each pipeline, so workers need no set-up of their own. Keys are
untouched: Beam encodes a NamedTuple key deterministically without this coder.
Numpy arrays (embedding vectors, a sparse vector's indices and values) are
written as dtype, shape and raw bytes rather than pickled: at 30k questions a
run pickled 641,040 of them, 3.7 for every candidate pair. A lexical question's
`SparseVector` is written in one piece (its dimension, then each array's dtype
and bytes), not as a record of two arrays. A `Records` list of
one record class (scored batches) is pickled as the class once and its fields
in columns (`pickled_list`; benchmarks/README.md, "2026-12-04 (twenty-sixth
session)" and "thirty-first session").
"""
from __future__ import annotations

import importlib
import pickle

import numpy as np
from apache_beam.coders import coder_impl, coders, typecoders
from apache_beam.typehints import typehints

from transforms.vectors import SparseVector

_PICKLED, _RECORD, _ARRAY, _RECORDS, _SPARSE = 0, 1, 2, 3, 4
_UNSEEN = object()


_new_tuple = tuple.__new__  # makes a NamedTuple from its fields as its own `_make` does, through a call fewer


def pickled_list(items: list) -> bytes:
    """A list pickled; a list of one NamedTuple class as that class and its fields in columns (a tuple of
    each field's values), which pickle about twice as fast as the records: pickle reduces each NamedTuple
    through Python calls of its own (a `ScoredPair` dumped and loaded in 1.92 µs, 0.93 as a plain tuple:
    benchmarks/README.md, "2026-12-04 (twenty-sixth session)"), and it remembers each tuple it writes (in
    columns there are a few: about a third less CPU to pickle, as fast to read back, "thirty-first session").
    How `Records` travel, and the lists `joins.DealIntoShards` deals. Read back with `unpickled_list`."""
    cls = type(items[0]) if items else tuple
    if not _is_record(cls) or not cls._fields or len(set(map(type, items))) != 1:
        return pickle.dumps((None, items), pickle.HIGHEST_PROTOCOL)
    return pickle.dumps((cls, tuple(zip(*items))), pickle.HIGHEST_PROTOCOL)


def unpickled_list(data: bytes) -> list:
    """The list `pickled_list` made."""
    cls, items = pickle.loads(data)
    if cls is None:
        return items
    return [_new_tuple(cls, fields) for fields in zip(*items)]


class Records(list):
    """A list of records of one class (scored pairs, a batch of them) that travels between steps as
    `pickled_list` writes it: the class once and its fields in columns. A plain list of
    records is written record by record, each with its class's name, and each made again through `_make`
    (4.7 `ScoredPair`s coded a candidate pair in a 100k-row run). A list otherwise: equal to the plain
    list of its items; one of other items is pickled whole, and comes back a `Records`."""

    __slots__ = ()


def _is_record(cls: type) -> bool:
    """Whether `cls` is a NamedTuple class (a plain tuple is not)."""
    return issubclass(cls, tuple) and hasattr(cls, "_fields") and hasattr(cls, "_make")


def _name_of(cls: type):
    """The importable name of a NamedTuple class (b"module:qualname"), or None (not a record, or one that
    cannot be found again by name: defined in a function or in __main__)."""
    if not _is_record(cls):
        return None
    if "<locals>" in cls.__qualname__ or cls.__module__ == "__main__":
        return None
    return f"{cls.__module__}:{cls.__qualname__}".encode("utf-8")


def _class_named(name: bytes) -> type:
    module, _, qualname = name.decode("utf-8").partition(":")
    found = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def _plain_sparse(vector: SparseVector) -> bool:
    """Whether a sparse vector is as the embedders make it (two one-dimensional arrays of numbers, an int
    dimension), which `RecordCoder` writes in one piece; another is written as a record."""
    indices, values = vector.indices, vector.values
    return (type(vector.dim) is int and type(indices) is np.ndarray and type(values) is np.ndarray
            and indices.ndim == 1 and values.ndim == 1 and indices.dtype.kind in "biuf" and values.dtype.kind in "biuf")


class _RecordCoderImpl(coder_impl.StreamCoderImpl):
    """A marker byte, then (class name, fields) for a record, `pickled_list`'s bytes for `Records`,
    (dtype, shape, bytes) for a numpy array of numbers, (dimension, then dtype and bytes of the indices and of
    the values) for a `SparseVector` as the embedders make it (`_plain_sparse`), or the pickle of anything
    else."""

    def __init__(self):
        self._fields = coder_impl.FastPrimitivesCoderImpl(self)  # records nested in fields come back here
        self._pickle = coders.PickleCoder().get_impl()
        self._names: dict = {}    # class -> name, or None where it is pickled
        self._classes: dict = {}  # name -> class
        self._dtype_names: dict = {}  # dtype -> its name as written
        self._dtypes: dict = {}       # name as written -> dtype

    def _dtype_name(self, array: np.ndarray) -> bytes:
        name = self._dtype_names.get(array.dtype)
        if name is None:
            name = self._dtype_names[array.dtype] = array.dtype.str.encode("ascii")
        return name

    def _dtype(self, name: bytes) -> np.dtype:
        dtype = self._dtypes.get(name)
        if dtype is None:
            dtype = self._dtypes[name] = np.dtype(name.decode("ascii"))
        return dtype

    def encode_to_stream(self, value, stream, nested):
        cls = type(value)
        if cls is SparseVector and _plain_sparse(value):  # a lexical vector: one call, not a record of two arrays
            stream.write_byte(_SPARSE)
            stream.write_var_int64(value.dim)
            for array in (value.indices, value.values):
                stream.write(self._dtype_name(array), True)
                stream.write(np.ascontiguousarray(array).tobytes(), True)
            return
        if cls is np.ndarray and value.dtype.kind in "biufcmM":  # numbers: no objects, no named fields
            stream.write_byte(_ARRAY)
            stream.write(self._dtype_name(value), True)
            stream.write_var_int64(value.ndim)
            for size in value.shape:
                stream.write_var_int64(size)
            stream.write(np.ascontiguousarray(value).tobytes(), True)
            return
        if cls is Records:
            stream.write_byte(_RECORDS)
            stream.write(pickled_list(value), True)
            return
        name = self._names.get(cls, _UNSEEN)
        if name is _UNSEEN:
            name = self._names[cls] = _name_of(cls)
        if name is None:
            stream.write_byte(_PICKLED)
            self._pickle.encode_to_stream(value, stream, nested)
            return
        stream.write_byte(_RECORD)
        stream.write(name, True)
        self._fields.encode_to_stream(tuple(value), stream, True)

    def decode_from_stream(self, stream, nested):
        marker = stream.read_byte()
        if marker == _PICKLED:
            return self._pickle.decode_from_stream(stream, nested)
        if marker == _RECORDS:
            return Records(unpickled_list(stream.read_all(True)))
        if marker == _SPARSE:
            dim = stream.read_var_int64()
            arrays = []
            for _ in range(2):  # indices, values: each its dtype's name, then its bytes
                dtype = self._dtype(stream.read_all(True))
                arrays.append(np.frombuffer(stream.read_all(True), dtype).copy())  # writeable, as unpickled
            return _new_tuple(SparseVector, (*arrays, dim))
        if marker == _ARRAY:
            dtype = self._dtype(stream.read_all(True))
            ndim = stream.read_var_int64()
            shape = tuple(stream.read_var_int64() for _ in range(ndim))
            array = np.frombuffer(stream.read_all(True), dtype)
            return (array if ndim == 1 else array.reshape(shape)).copy()  # writeable, as unpickled
        name = stream.read_all(True)
        cls = self._classes.get(name)
        if cls is None:
            cls = self._classes[name] = _class_named(name)
        return _new_tuple(cls, self._fields.decode_from_stream(stream, True))  # as `cls._make`, one call fewer


class _RecordFallbackCoder(coders.Coder):
    """What `FastPrimitivesCoder` falls back to for what it does not know itself."""

    def _create_impl(self):
        return _RecordCoderImpl()

    def is_deterministic(self) -> bool:
        return False

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))


class RecordCoder(coders.FastPrimitivesCoder):
    """`FastPrimitivesCoder` with records encoded as their fields (a type of its own, so that Beam never
    takes it for the stock coder when it compares coders)."""

    def __init__(self):
        super().__init__(_RecordFallbackCoder())

    @classmethod
    def from_type_hint(cls, typehint, registry) -> "RecordCoder":
        if typehint not in (None, object, typehints.Any) and not _name_of_hint(typehint):
            raise ValueError(f"RecordCoder encodes untyped elements and records, not {typehint}")
        return cls()


def _name_of_hint(typehint) -> bool:
    return isinstance(typehint, type) and _name_of(typehint) is not None


_registered = False


def use_record_coder() -> None:
    """Makes `RecordCoder` the coder of untyped PCollections (and of record-typed ones) in the pipelines
    built afterwards in this process. Calling it again changes nothing."""
    global _registered
    if not _registered:
        typecoders.registry.register_fallback_coder(RecordCoder)
        _registered = True
