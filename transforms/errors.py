"""What went wrong: errors that stop a run before it starts, and elements set aside while it runs."""
from __future__ import annotations

import json
from typing import NamedTuple


class QdedupError(Exception):
    """A problem with the input, the configuration or the model that the user must fix."""


class RejectedRow(NamedTuple):
    """A dead letter, written to rejected/.

    `kind` "row": an input row that is not deduplicated (it counts in rows_rejected);
    "question" or "pair": a distinct question that got no vector, or a candidate pair
    that got no score, because a stage failed on it; its rows are still grouped.
    """

    row: str      # JSON: the input row (id, text), or the question's / pair's ids and texts
    reason: str   # a code: empty_text, duplicate_id, normalize_error, score_error, ...
    detail: str   # in words
    source: str   # file#row for rows; the stage's input otherwise
    stage: str = "read"
    kind: str = "row"

    @classmethod
    def of(cls, row: dict, source: str, reason: str, detail: str, stage: str = "read",
           kind: str = "row") -> "RejectedRow":
        return cls(row_as_json(row), reason, detail, source, stage, kind)


def row_as_json(row: dict) -> str:
    """JSON text of an input row, readable for CJK, and valid even with broken strings."""
    try:
        text = json.dumps(row, ensure_ascii=False, default=repr)
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # lone surrogates cannot be written as UTF-8
        return json.dumps(row, ensure_ascii=True, default=repr)


def failure(exc: BaseException) -> str:
    """One line naming an exception, for `detail`."""
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__
