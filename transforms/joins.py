"""Joins by key that never list a key's values (docs/design.md, "Bounded memory").

Beam Python's `CoGroupByKey` hands each key's values over as lists (`_CoGBKImpl.collect_values`), so
one hot key (a text with a million copies, a giant group, a question in a million pairs) becomes one
element as large as all its values. `JoinByKey` groups the same way, but the function it calls gets a
view per tag that walks the grouped values each time it is iterated and holds none of them; on
Dataflow the values of a large key are paged in as they are read. Functions iterate a view once or
twice (e.g. the single value of one side first, then the many of the other), never list it.
"""
from __future__ import annotations

from operator import attrgetter
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import apache_beam as beam


class TagView:
    """The values of one tag among a key's grouped (tag, value) pairs, re-iterable, never held."""

    def __init__(self, grouped: Iterable[tuple[int, Any]], tag: int):
        self._grouped = grouped
        self._tag = tag

    def __iter__(self) -> Iterator:
        tag = self._tag
        return (value for t, value in self._grouped if t == tag)


class Joined(Mapping):
    """tag -> `TagView`, like the dict `CoGroupByKey` gives but with views in place of lists."""

    def __init__(self, grouped: Iterable[tuple[int, Any]], tags: Mapping[str, int]):
        self._grouped = grouped
        self._tags = tags

    def __getitem__(self, tag: str) -> TagView:
        return TagView(self._grouped, self._tags[tag])

    def __iter__(self):
        return iter(self._tags)

    def __len__(self) -> int:
        return len(self._tags)


def only(values: Iterable, default: Any = None) -> Any:
    """The single value of a side that has at most one per key (`default` when it has none).

    Raises ValueError when it has more: a join built on a one-value side must not silently pick one.
    """
    found = iter(values)
    first = next(found, default)
    if next(found, _NOTHING) is not _NOTHING:
        raise ValueError("expected at most one value for this key")
    return first


_NOTHING = object()


class _Call(beam.DoFn):
    def __init__(self, fn: Callable, tags: Mapping[str, int], args: tuple):
        self._fn = fn
        self._tags = tags
        self._args = args

    def process(self, element, **side_inputs):
        key, grouped = element
        yield from self._fn((key, Joined(grouped, self._tags)), *self._args, **side_inputs)


def _tag(tag: int, key: Optional[Callable]) -> beam.PTransform:
    """(key, value) -> (key, (tag, value)); with `key`, an element e -> (key(e), (tag, e))."""
    if key is None:
        return beam.MapTuple(lambda k, value: (k, (tag, value)))
    return beam.Map(lambda value: (key(value), (tag, value)))


class JoinByKey(beam.PTransform):
    """{tag: PCollection of (key, value)} -> what `fn((key, joined), *args)` yields per key.

    `joined[tag]` iterates that tag's values of the key. `keys`: {tag: key function} for inputs that
    are not keyed yet: each element joins under `key(element)` as a value of its own (keyed in the
    step that tags it, not in a step of its own before: every element passes one step fewer).
    `outputs`: the tags of `TaggedOutput`s `fn` yields (the result is then a `DoOutputsTuple` with
    main output `main`). `side_inputs`: passed to `fn` by name (small values only, e.g. a run number).
    """

    def __init__(self, fn: Callable, *args, keys: Optional[Mapping[str, Callable]] = None,
                 outputs: tuple[str, ...] = (), main: Optional[str] = None, **side_inputs):
        super().__init__()
        self._fn = fn
        self._args = args
        self._keys = dict(keys or {})
        self._outputs = outputs
        self._main = main
        self._side_inputs = side_inputs

    def expand(self, pcolls):
        tags = {tag: i for i, tag in enumerate(pcolls)}
        unknown = set(self._keys) - set(tags)
        if unknown:
            raise ValueError(f"key functions for inputs that are not joined: {sorted(unknown)}")
        tagged = [pcoll | f"Tag[{tag}]" >> _tag(tags[tag], self._keys.get(tag)) for tag, pcoll in pcolls.items()]
        call = beam.ParDo(_Call(self._fn, tags, self._args), **self._side_inputs)
        if self._outputs:
            call = call.with_outputs(*self._outputs, main=self._main)
        return tagged | "Flatten" >> beam.Flatten() | "Group" >> beam.GroupByKey() | "Call" >> call


def _label_end_a(element) -> Iterable[tuple]:
    _, joined = element
    label = only(joined["label"])
    if label is not None:
        for pair in joined["pair"]:
            yield pair.id_b, (label, pair)


def _same_label(element) -> Iterable[tuple]:
    _, joined = element
    label = only(joined["label"])
    for label_a, pair in joined["pair"]:
        if label_a == label:
            yield label, pair


def pairs_within(pairs, labels, name: str):
    """(label, pair) for every scored pair whose two ends carry the same label; pairs outside are dropped."""
    by_a = {"pair": pairs, "label": labels} | f"{name}JoinA" >> JoinByKey(
        _label_end_a, keys={"pair": attrgetter("id_a")})
    return {"pair": by_a, "label": labels} | f"{name}JoinB" >> JoinByKey(_same_label)
