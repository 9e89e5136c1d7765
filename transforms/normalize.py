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
from typing import Iterable, Iterator, NamedTuple

import apache_beam as beam

from transforms.errors import RejectedRow, failure
from transforms.joins import JoinByKey, only
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


def choose_representative(key: str, questions: Iterable[Question], preferred: object = None) -> Representative:
    """The first seen stands for the cluster: `preferred` (the representative an earlier run chose
    for this text, `--params-from`) when it is among the rows, else the lowest id.

    One pass over `questions`, holding none of them: a text may have millions of copies.
    """
    lowest = chosen = first = None
    count = 0
    for q in questions:
        count += 1
        if lowest is None or q.id < lowest.id:
            lowest = q
        if preferred is not None and q.id == preferred:
            chosen = q
        if first is None or earliest_key(q.timestamp, q.id) < earliest_key(first.timestamp, first.id):
            first = q
    rep = chosen or lowest
    return Representative(rep.id, rep.text, rep.normalized, key, count, first.timestamp, first.id)


def memberships(rep: Representative, questions: Iterable[Question]) -> Iterator[Membership]:
    """Each row's tie to the representative of its text (the representative's own row included)."""
    return (Membership(q.id, rep.id, rep.key) for q in questions)


class _Normalize(beam.DoFn):
    def __init__(self, columns: Columns):
        self._columns = columns
        self._timer = StageTimer("normalize", helpers=False)

    def setup(self):
        self._progress = Progress(_LOG, "normalizing", "rows")

    def process(self, question: Question):
        self._progress.add()
        try:
            with self._timer:
                normalized = normalize_text(question.text)
        except Exception as exc:
            yield beam.pvalue.TaggedOutput("rejected", RejectedRow.of(
                question.row(self._columns), question.source, "normalize_error", failure(exc), "normalize"))
            return
        if not normalized:
            yield beam.pvalue.TaggedOutput(
                "rejected",
                RejectedRow.of(question.row(self._columns), question.source, "empty_after_normalization",
                               "the text has no characters left after removing punctuation and spaces", "normalize"),
            )
            return
        yield question._replace(normalized=normalized)


def join_representative(rep: Representative, questions: Iterable[Question]) -> Representative:
    """New rows whose text an existing representative already stands for: it keeps standing for them,
    its count and earliest row updated (one pass, holding none of the rows)."""
    first = (earliest_key(rep.first_time, rep.first_id), rep.first_time, rep.first_id)
    count = rep.count
    for q in questions:
        count += 1
        first = min(first, (earliest_key(q.timestamp, q.id), q.timestamp, q.id))
    return rep._replace(count=count, first_time=first[1], first_id=first[2])


class _Collapse:
    """One representative per normalized text; "new" ones are those an earlier run did not hold.

    `extend`: the earlier run's representatives are this run's too, and new rows with their text
    join them. Otherwise they only say which row was seen first (`--params-from`).
    """

    def __init__(self, extend: bool):
        self._extend = extend
        self._largest = largest("rows_per_text")

    def __call__(self, element):
        key, joined = element
        questions, earlier = joined["new"], only(joined["earlier"])
        if earlier is not None and self._extend:
            rep = join_representative(earlier, questions)
        elif next(iter(questions), None) is not None:
            rep = choose_representative(key, questions, earlier.id if earlier is not None else None)
            if earlier is None:
                yield beam.pvalue.TaggedOutput("new", rep)
        else:
            return
        self._largest.update(rep.count)
        yield rep
        for member in memberships(rep, questions):
            yield beam.pvalue.TaggedOutput("members", member)


class Collapsed(NamedTuple):
    """What `NormalizeAndCollapse` gives: one `Representative` per distinct normalized text; those an
    extended run did not hold before; a `Membership` per accepted row; and rows rejected here."""

    representatives: beam.PCollection
    new_representatives: beam.PCollection
    members: beam.PCollection
    rejected: beam.PCollection


class NormalizeAndCollapse(beam.PTransform):
    """Accepted questions -> representatives (one per normalized text), memberships, rejected rows.

    Applied to (questions, an earlier run's representatives): extending that run (`extend`), new
    rows with a known text join its representative and its representatives are all kept; otherwise
    a known text keeps the row that stood for it, if that row is here (first seen, not lowest id).
    "new_representatives" are texts the earlier run did not hold. Memberships are this input's rows'.
    """

    def __init__(self, columns: Columns, extend: bool = False):
        super().__init__()
        self._columns = columns
        self._extend = extend

    def expand(self, inputs):
        questions, earlier = inputs if isinstance(inputs, tuple) else (inputs, None)
        normalized = questions | "Normalize" >> beam.ParDo(_Normalize(self._columns)).with_outputs(
            "rejected", main="ok")
        keyed = {"new": normalized.ok | "KeyByNormalizedText" >> beam.Map(lambda q: (text_key(q.normalized), q))}
        if earlier is not None:
            keyed["earlier"] = earlier | "KeyEarlier" >> beam.Map(lambda rep: (rep.key, rep))
        else:
            keyed["earlier"] = questions.pipeline | "NoEarlier" >> beam.Create([])
        collapsed = (
            keyed
            | "GroupExactDuplicates" >> JoinByKey(_Collapse(self._extend), outputs=("members", "new"),
                                                  main="representatives")
        )
        return Collapsed(collapsed.representatives, collapsed.new, collapsed.members, normalized.rejected)
