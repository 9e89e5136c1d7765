"""Text normalization and exact-duplicate collapsing (docs/design.md, "normalize").

Two questions are exact duplicates when their normalized texts are equal: the
normalization removes what carries no meaning for a question (width, case,
punctuation, spacing between CJK characters) so that no model time is spent on
them.
"""
from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from operator import attrgetter, itemgetter
from typing import Iterator, NamedTuple, Optional

import apache_beam as beam

from transforms.errors import RejectedRow, failure
from transforms.joins import SHARD_KEYS, dealt, dealt_shards, total_keys
from transforms.logs import Progress
from transforms.metrics import StageTimer, largest
from transforms.records import (
    Columns,
    Membership,
    Question,
    Representative,
    earliest_key,
)

_CJK = r"\u2e80-\u2fdf\u3040-\u30ff\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_SPACES = re.compile(r"\s+")
# A space next to a CJK character separates nothing: "你好 世界" == "你好世界".
_SPACE_NEAR_CJK = re.compile(rf"(?<=[{_CJK}]) | (?=[{_CJK}])")

_LOG = logging.getLogger(__name__)


def _is_dropped(ch: str) -> bool:
    # P*: punctuation, including the CJK marks NFKC keeps (。、“”《》【】...);
    # Cc/Cf: control and format characters (zero-width spaces, BOMs, ...).
    cat = unicodedata.category(ch)
    return cat[0] == "P" or (cat in ("Cc", "Cf") and not ch.isspace())


def normalize_text(text: str) -> str:
    """NFKC, lower case, punctuation and control characters removed, spaces collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if ch.isspace() else ch for ch in text if not _is_dropped(ch))
    text = _SPACES.sub(" ", text).strip()
    return _SPACE_NEAR_CJK.sub("", text)


def text_key(normalized: str) -> str:
    """Stable key of a normalized text (the same in every process and run)."""
    return hashlib.blake2b(normalized.encode("utf-8"), digest_size=16).hexdigest()


class TextTally:
    """What one pass over the rows of a normalized text keeps of them: their count, and the rows that choose its
    `Representative` (the lowest id, the `preferred` id, the earliest row). Never the rows themselves: a text
    may have millions of copies.

    `earlier`: the representative an extended run holds for the text, which keeps standing for it; the rows
    then only add to its count and may be earlier.
    """

    __slots__ = ("key", "preferred", "earlier", "count", "lowest", "chosen", "first")

    def __init__(self, key: str, preferred: object = None, earlier: Optional[Representative] = None):
        self.key, self.preferred, self.earlier = key, preferred, earlier
        self.count = earlier.count if earlier is not None else 0
        self.lowest = self.chosen = None
        self.first = (earliest_key(earlier.first_time, earlier.first_id), earlier.first_time, earlier.first_id) \
            if earlier is not None else None

    def add(self, q: Question) -> None:
        self.count += 1
        if self.lowest is None or q.id < self.lowest.id:
            self.lowest = q
        if self.preferred is not None and q.id == self.preferred:
            self.chosen = q
        first = earliest_key(q.timestamp, q.id)
        if self.first is None or first < self.first[0]:
            self.first = (first, q.timestamp, q.id)

    def representative(self) -> Representative:
        """The representative: the earlier one, else the preferred row when it came, else the lowest id."""
        _, first_time, first_id = self.first
        if self.earlier is not None:
            return self.earlier._replace(count=self.count, first_time=first_time, first_id=first_id)
        rep = self.chosen or self.lowest
        return Representative(rep.id, rep.text, rep.normalized, self.key, self.count, first_time, first_id)


def collapse_shard(element, extend: bool) -> Iterator:
    """One shard of texts (`DealIntoShards`: tag 0 the rows as (text key, `Question`), tag 1 an earlier run's
    `Representative`s) -> a `Representative` per text, to "members" a `Membership` per row, to "new" the
    representatives of texts the earlier run did not hold.

    `extend`: the earlier run's representatives are this run's too, and new rows with their text join them
    (`TextTally`'s `earlier`). Otherwise they only say which row stood for a text before (`preferred`).
    The shard's rows are walked twice, never listed: it holds a `TextTally` per text (about
    `--join-shard-keys`), however many copies a text has.
    """
    _, grouped = element
    earlier = {rep.key: rep for rep in dealt(grouped, 1)}
    tallies: dict = {}
    for key, q in dealt(grouped, 0):
        tally = tallies.get(key)
        if tally is None:
            before = earlier.get(key)
            tally = tallies[key] = TextTally(key, before.id if before else None, before if extend else None)
        tally.add(q)
    reps = {key: tally.representative() for key, tally in tallies.items()}
    for key, q in dealt(grouped, 0):
        yield beam.pvalue.TaggedOutput("members", Membership(q.id, reps[key].id, key))
    rows_per_text = largest("rows_per_text")
    for key, rep in reps.items():
        rows_per_text.update(rep.count)
        if key not in earlier:
            yield beam.pvalue.TaggedOutput("new", rep)
        yield rep
    if extend:
        for key, rep in earlier.items():
            if key not in reps:
                yield rep


class _Normalize(beam.DoFn):
    """A list of questions -> the list of those with a normalized text as (its key, the question), and to
    "rejected" the others."""

    def __init__(self, columns: Columns):
        self._columns = columns
        self._timer = StageTimer("normalize", helpers=False)

    def setup(self):
        self._progress = Progress(_LOG, "normalizing", "rows")

    def process(self, questions: list):
        self._progress.add(0)  # its clock starts with the first list, and a list's rows are counted once done
        keyed, rejected = [], []
        with self._timer:
            for question in questions:
                try:
                    normalized = normalize_text(question.text)
                except Exception as exc:
                    rejected.append(self._rejected(question, "normalize_error", failure(exc)))
                    continue
                if not normalized:
                    rejected.append(self._rejected(
                        question, "empty_after_normalization",
                        "the text has no characters left after removing punctuation and spaces"))
                    continue
                keyed.append((text_key(normalized), question._replace(normalized=normalized)))
        self._progress.add(len(questions))
        yield from rejected
        if keyed:
            yield keyed

    def _rejected(self, question: Question, reason: str, detail: str) -> beam.pvalue.TaggedOutput:
        return beam.pvalue.TaggedOutput("rejected", RejectedRow.of(
            question.row(self._columns), question.source, reason, detail, "normalize"))


class _CollapseTexts(beam.DoFn):
    def __init__(self, extend: bool):
        self._extend = extend

    def process(self, element):
        return collapse_shard(element, self._extend)


class Collapsed(NamedTuple):
    """What `NormalizeAndCollapse` gives: one `Representative` per distinct normalized text; those an
    extended run did not hold before; a `Membership` per accepted row; and rows rejected here."""

    representatives: beam.PCollection
    new_representatives: beam.PCollection
    members: beam.PCollection
    rejected: beam.PCollection


class NormalizeAndCollapse(beam.PTransform):
    """Accepted questions, in lists (`read.Read.questions`) -> representatives (one per normalized text),
    memberships, rejected rows.

    Applied to (questions, an earlier run's representatives): extending that run (`extend`), new
    rows with a known text join its representative and its representatives are all kept; otherwise
    a known text keeps the row that stood for it, if that row is here (first seen, not lowest id).
    "new_representatives" are texts the earlier run did not hold. Memberships are this input's rows'.
    Rows and earlier representatives are dealt by text into shards of about `shard_keys` texts, in lists
    (`collapse_shard`).
    """

    def __init__(self, columns: Columns, extend: bool = False, shard_keys: int = SHARD_KEYS):
        super().__init__()
        self._columns = columns
        self._extend = extend
        self._shard_keys = shard_keys

    def expand(self, inputs):
        questions, earlier = inputs if isinstance(inputs, tuple) else (inputs, None)
        if earlier is None:
            earlier = questions.pipeline | "NoEarlier" >> beam.Create([])
        normalized = questions | "Normalize" >> beam.ParDo(_Normalize(self._columns)).with_outputs(
            "rejected", main="keyed")
        keys = total_keys((normalized.keyed | "RowsInList" >> beam.Map(len),
                           earlier | "CountEarlier" >> beam.combiners.Count.Globally()))
        collapsed = (
            dealt_shards((("DealRowsByText", normalized.keyed, itemgetter(0), iter),
                          ("DealEarlier", earlier, attrgetter("key"), None)), keys, self._shard_keys)
            | "CollapseTexts" >> beam.ParDo(_CollapseTexts(self._extend)).with_outputs(
                "members", "new", main="representatives")
        )
        return Collapsed(collapsed.representatives, collapsed.new, collapsed.members, normalized.rejected)
