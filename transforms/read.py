"""Reading and validating the Parquet question corpus (docs/design.md, "read").

Every row read ends up either as a `Question` or as a `RejectedRow` with a
reason: nothing is dropped silently. Problems that concern the whole input (no
files, a missing column, a corrupt file) are found by `inspect_input` before
the pipeline starts, so they cost seconds, not a worker start-up.
"""
from __future__ import annotations

import logging
from operator import attrgetter, itemgetter
from typing import Iterable, Iterator, NamedTuple, Optional

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.coders import Records
from transforms.errors import RejectedRow, failure
from transforms.joins import LIST_ITEMS, SHARD_KEYS, dealt, dealt_shards, total_keys
from transforms.metrics import StageTimer
from transforms.records import Columns, Question

_LOG = logging.getLogger(__name__)
_READ_BATCH_ROWS = 8192


def time_values(column: pa.Array) -> list:
    """Timestamps and dates as microseconds since the epoch, integers as they are: one comparable scale."""
    if pa.types.is_date(column.type):
        column = column.cast(pa.timestamp("us"))
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.timestamp("us", tz=column.type.tz)).cast(pa.int64())
    return column.to_pylist()


class Undecodable(NamedTuple):
    """Stands for a text whose bytes are not valid UTF-8 (a writer that did not check)."""

    raw: str  # the bytes, escaped


def text_values(column: pa.Array) -> list:
    """Python strings, with `Undecodable` where a string column holds invalid UTF-8 (instead of failing
    the whole batch)."""
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        values = []
        for raw in column.cast(pa.binary()).to_pylist():
            try:
                values.append(None if raw is None else raw.decode("utf-8"))
            except UnicodeDecodeError:
                values.append(Undecodable(repr(raw)))
        return values


def validate_row(row_id: object, text: object, max_text_chars: int) -> Optional[tuple[str, str]]:
    """(reason, detail) when a row cannot be deduplicated, None when it can."""
    if row_id is None:
        return "null_id", "the id is null"
    if isinstance(row_id, str) and not row_id.strip():
        return "empty_id", "the id is an empty string"
    if text is None:
        return "null_text", "the text is null"
    if isinstance(text, Undecodable):
        return "invalid_unicode", f"the text is not valid UTF-8: {text.raw[:200]}"
    if not isinstance(text, str):
        return "text_not_string", f"the text is {type(text).__name__}, not a string"
    if not text.strip():
        return "empty_text", "the text is empty or only whitespace"
    if len(text) > max_text_chars:
        return "text_too_long", f"{len(text)} characters, more than max_text_chars={max_text_chars}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return "invalid_unicode", f"the text is not valid Unicode ({exc.reason} at {exc.start})"
    return None


class RowGroup(NamedTuple):
    """A work item of reading: one row group of one file, with the file's row number of its first row."""

    path: str
    index: int       # the row group's number in the file
    first_row: int   # rows are numbered from 0 within the file, across its row groups
    rows: int


def row_groups(path: str) -> list[RowGroup]:
    """The row groups of a Parquet file, from its footer alone."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        metadata = pq.ParquetFile(handle).metadata
    groups, first = [], 0
    for index in range(metadata.num_row_groups):
        rows = metadata.row_group(index).num_rows
        groups.append(RowGroup(path, index, first, rows))
        first += rows
    return groups


class _ReadRowGroup(beam.DoFn):
    """`RowGroup` -> per batch of rows read, a list of the rows that pass `validate_row` as (id, text, timestamp,
    path, row), to "rejected" a `RejectedRow` for each one that does not, and to "rows" how many were read.
    A damaged page sets aside the rows of its row group from there on, and the other row groups are read.

    Rows travel on in lists, not one by one: a step an element passes costs what it costs whatever the
    element holds (benchmarks/README.md, "fortieth session")."""

    def __init__(self, columns: Columns, max_text_chars: int):
        self._columns = columns
        self._max_text_chars = max_text_chars
        self._rows = beam.metrics.Metrics.counter("qdedup", "rows_read")
        self._timer = StageTimer("read")

    def process(self, group: RowGroup) -> Iterable:
        index, end = group.first_row, group.first_row + group.rows
        with FileSystems.open(group.path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            names = [name for name in self._columns if name]
            batches = pq.ParquetFile(handle).iter_batches(
                batch_size=_READ_BATCH_ROWS, row_groups=[group.index], columns=names)
            while True:
                with self._timer:
                    try:
                        batch = next(batches, None)
                    except Exception as exc:  # a damaged page: the rest of its row group is set aside
                        detail = f"the file could not be decoded from this row on ({failure(exc)})"
                        for row in range(index, end):
                            yield beam.pvalue.TaggedOutput("rejected", RejectedRow.of(
                                {}, f"{group.path}#{row}", "unreadable_row", detail))
                        yield from self._read(end - index)
                        _LOG.warning("%s: rows %d to %d cannot be decoded; they go to rejected/",
                                     group.path, index, end - 1)
                        return
                    if batch is None:
                        break
                    ids = batch.column(self._columns.id).to_pylist()
                    texts = text_values(batch.column(self._columns.text))
                    times = (time_values(batch.column(self._columns.timestamp)) if self._columns.timestamp
                             else [None] * len(ids))
                accepted = []
                for row_id, text, when in zip(ids, texts, times):
                    problem = self._problem(row_id, text)
                    if problem is None:
                        accepted.append((row_id, text, when, group.path, index))
                    else:
                        yield beam.pvalue.TaggedOutput("rejected", RejectedRow.of(
                            {self._columns.id: row_id, self._columns.text: text}, f"{group.path}#{index}", *problem))
                    index += 1
                if accepted:
                    yield accepted
                yield from self._read(len(ids))
        _LOG.info("read rows %d to %d of %s", group.first_row, index - 1, group.path)

    def _problem(self, row_id, text) -> Optional[tuple[str, str]]:
        try:
            return validate_row(row_id, text, self._max_text_chars)
        except Exception as exc:  # a value no check foresaw: set the row aside, keep the run going
            return "validation_error", failure(exc)

    def _read(self, rows: int):
        self._rows.inc(rows)
        yield beam.pvalue.TaggedOutput("rows", rows)


def first_occurrences(element, columns: Columns, batch: int) -> Iterator:
    """One shard of rows dealt by id (`DealIntoShards`: tag 0 the rows as (id, text, timestamp, path, row), tag 1
    the ids an extended run holds) -> `Question`s in `Records` of up to `batch`, and to "rejected" the rows whose
    id is taken: the first occurrence of an id (by file path, then row) wins; with an extended run's id, none.

    The shard's rows are walked twice, never listed: it holds each of its ids' first place (about
    `--join-shard-keys` of them), however often bad input repeats one id.
    """
    _, grouped = element
    existing = set(dealt(grouped, 1))
    first: dict = {}
    for row_id, _, _, path, index in dealt(grouped, 0):
        place = first.get(row_id)
        if place is None or (path, index) < place:
            first[row_id] = (path, index)
    questions = Records()
    for row_id, text, when, path, index in dealt(grouped, 0):
        if row_id in existing:
            taken = "a row of the run this one extends"
        elif (path, index) != first[row_id]:
            taken = "{}#{}".format(*first[row_id])
        else:
            questions.append(Question(row_id, text, f"{path}#{index}", timestamp=when))
            if len(questions) >= batch:
                yield questions
                questions = Records()
            continue
        yield beam.pvalue.TaggedOutput("rejected", RejectedRow.of(
            {columns.id: row_id, columns.text: text}, f"{path}#{index}", "duplicate_id", f"id already used by {taken}"))
    if questions:
        yield questions


class Read(NamedTuple):
    """What `ReadQuestions` gives: accepted `Question`s in `Records` lists, `RejectedRow`s, and how many rows each
    batch read held (to count)."""

    questions: beam.PCollection
    rejected: beam.PCollection
    rows: beam.PCollection


class ReadQuestions(beam.PTransform):
    """Parquet files -> accepted `Question`s (in lists), `RejectedRow`s, and the rows read.

    Each (file, row group) is a work item of its own, spread over workers by a shuffle; a row's
    provenance (`file#row`, rows counted from 0 within the file) does not depend on how it was read.
    Rows that pass validation are dealt by id into shards of about `shard_keys` ids (their count from the
    files' footers), in lists, where each id's first occurrence is kept (`first_occurrences`).

    `existing_ids` (an extended run's row ids) makes a new row reusing one a duplicate_id.
    """

    def __init__(self, pattern: str, columns: Columns, max_text_chars: int, existing_ids=None,
                 shard_keys: int = SHARD_KEYS):
        super().__init__()
        self._pattern = pattern
        self._columns = columns
        self._max_text_chars = max_text_chars
        self._existing_ids = existing_ids
        self._shard_keys = shard_keys

    def expand(self, pbegin):
        groups = (
            pbegin
            | "MatchFiles" >> fileio.MatchFiles(self._pattern)
            | "RowGroups" >> beam.FlatMap(  # a path ending in "/" is an object store's folder marker
                lambda metadata: [] if metadata.path.endswith("/") else row_groups(metadata.path))
        )
        read = (
            groups
            | "SpreadRowGroups" >> beam.Reshuffle()  # else every file is read behind the one pattern element
            | "ReadRowGroup" >> beam.ParDo(_ReadRowGroup(self._columns, self._max_text_chars)).with_outputs(
                "rejected", "rows", main="accepted")
        )
        existing = self._existing_ids
        if existing is None:
            existing = pbegin | "NoExistingIds" >> beam.Create([])
        keys = total_keys((groups | "RowsInGroup" >> beam.Map(attrgetter("rows")),
                           existing | "CountExisting" >> beam.combiners.Count.Globally()))
        unique = (
            dealt_shards((("DealRowsById", read.accepted, itemgetter(0), iter),
                          ("DealExistingIds", existing, _itself, None)), keys, self._shard_keys)
            | "FirstOccurrences" >> beam.FlatMap(first_occurrences, self._columns, LIST_ITEMS).with_outputs(
                "rejected", main="questions")
        )
        rejected = (read.rejected, unique.rejected) | "MergeRejected" >> beam.Flatten()
        return Read(unique.questions, rejected, read.rows)


def _itself(value):
    return value
