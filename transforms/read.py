"""Reading and validating the Parquet question corpus (docs/design.md, "read").

Every row read ends up either as a `Question` or as a `RejectedRow` with a
reason: nothing is dropped silently. Problems that concern the whole input (no
files, a missing column, a corrupt file) are found by `inspect_input` before
the pipeline starts, so they cost seconds, not a worker start-up.
"""
from __future__ import annotations

import logging
from typing import Iterable, NamedTuple, Optional

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.errors import RejectedRow, failure
from transforms.joins import JoinByKey
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


class Unreadable(NamedTuple):
    """Stands for the id of a row that could not be decoded from its file."""

    detail: str


def validate_row(row_id: object, text: object, max_text_chars: int) -> Optional[tuple[str, str]]:
    """(reason, detail) when a row cannot be deduplicated, None when it can."""
    if isinstance(row_id, Unreadable):
        return "unreadable_row", row_id.detail
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
    """`RowGroup` -> (id, text, timestamp, path, row) per row; a damaged page sets aside the rows of its row
    group from there on (as `Unreadable`), and the other row groups are read."""

    def __init__(self, columns: Columns):
        self._columns = columns
        self._rows = beam.metrics.Metrics.counter("qdedup", "rows_read")
        self._timer = StageTimer("read")

    def process(self, group: RowGroup) -> Iterable[tuple]:
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
                            yield Unreadable(detail), None, None, group.path, row
                        self._rows.inc(end - index)
                        _LOG.warning("%s: rows %d to %d cannot be decoded; they go to rejected/",
                                     group.path, index, end - 1)
                        return
                    if batch is None:
                        break
                    ids = batch.column(self._columns.id).to_pylist()
                    texts = text_values(batch.column(self._columns.text))
                    times = (time_values(batch.column(self._columns.timestamp)) if self._columns.timestamp
                             else [None] * len(ids))
                for row_id, text, when in zip(ids, texts, times):
                    yield row_id, text, when, group.path, index
                    index += 1
                self._rows.inc(len(ids))
        _LOG.info("read rows %d to %d of %s", group.first_row, index - 1, group.path)


class _Validate(beam.DoFn):
    def __init__(self, columns: Columns, max_text_chars: int):
        self._columns = columns
        self._max_text_chars = max_text_chars

    def process(self, raw: tuple):
        row_id, text, when, path, index = raw
        source = f"{path}#{index}"
        try:
            problem = validate_row(row_id, text, self._max_text_chars)
        except Exception as exc:  # a value no check foresaw: set the row aside, keep the run going
            problem = "validation_error", failure(exc)
        if problem is not None:
            yield beam.pvalue.TaggedOutput(
                "rejected", RejectedRow.of(
                    {} if isinstance(row_id, Unreadable) else {self._columns.id: row_id, self._columns.text: text},
                    source, *problem))
            return
        yield row_id, (path, index, text, when)


class _KeepFirstOccurrence:
    """The first occurrence of an id (by file path, then row) wins; the later ones are rejected.

    The rows of one id are walked twice, never listed or sorted: bad input may repeat an id a million times.
    """

    def __init__(self, columns: Columns):
        self._columns = columns

    def __call__(self, element):
        row_id, joined = element
        rows = joined["new"]
        earliest = min(rows, default=None)
        if earliest is None:
            return
        if any(True for _ in joined["existing"]):  # an extension: the id is taken by an earlier run's row
            first, kept = "a row of the run this one extends", None
        else:
            path, index, text, when = kept = earliest
            first = f"{path}#{index}"
            yield Question(row_id, text, first, timestamp=when)
        for path, index, text, when in rows:
            if (path, index, text, when) == kept:
                continue
            yield beam.pvalue.TaggedOutput("rejected", RejectedRow.of(
                {self._columns.id: row_id, self._columns.text: text}, f"{path}#{index}",
                "duplicate_id", f"id already used by {first}"))


class Read(NamedTuple):
    """What `ReadQuestions` gives: accepted `Question`s, `RejectedRow`s, and every row read (to count)."""

    questions: beam.PCollection
    rejected: beam.PCollection
    rows: beam.PCollection


class ReadQuestions(beam.PTransform):
    """Parquet files -> accepted `Question`s, `RejectedRow`s, and every row read.

    Each (file, row group) is a work item of its own, spread over workers by a shuffle; a row's
    provenance (`file#row`, rows counted from 0 within the file) does not depend on how it was read.

    `existing_ids` (an extended run's row ids) makes a new row reusing one a duplicate_id.
    """

    def __init__(self, pattern: str, columns: Columns, max_text_chars: int, existing_ids=None):
        super().__init__()
        self._pattern = pattern
        self._columns = columns
        self._max_text_chars = max_text_chars
        self._existing_ids = existing_ids

    def expand(self, pbegin):
        rows = (
            pbegin
            | "MatchFiles" >> fileio.MatchFiles(self._pattern)
            | "RowGroups" >> beam.FlatMap(  # a path ending in "/" is an object store's folder marker
                lambda metadata: [] if metadata.path.endswith("/") else row_groups(metadata.path))
            | "SpreadRowGroups" >> beam.Reshuffle()  # else every file is read behind the one pattern element
            | "ReadRowGroup" >> beam.ParDo(_ReadRowGroup(self._columns))
        )
        checked = rows | "ValidateRows" >> beam.ParDo(
            _Validate(self._columns, self._max_text_chars)).with_outputs("rejected", main="ok")
        existing = self._existing_ids
        if existing is None:
            existing = pbegin | "NoExistingIds" >> beam.Create([])
        unique = (
            {"new": checked.ok, "existing": existing | "ExistingId" >> beam.Map(lambda row_id: (row_id, None))}
            | "RejectDuplicateIds" >> JoinByKey(_KeepFirstOccurrence(self._columns), outputs=("rejected",),
                                                main="questions")
        )
        rejected = (checked.rejected, unique.rejected) | "MergeRejected" >> beam.Flatten()
        return Read(unique.questions, rejected, rows)
