"""Joins by key that never list a key's values (docs/design.md, "Bounded memory").

Beam Python's `CoGroupByKey` hands each key's values over as lists (`_CoGBKImpl.collect_values`), so
one hot key (a text with a million copies, a giant group, a question in a million pairs) becomes one
element as large as all its values. `JoinByKey` groups the same way, but the function it calls gets a
view per tag that walks the grouped values each time it is iterated and holds none of them; on
Dataflow the values of a large key are paged in as they are read. Functions iterate a view once or
twice (e.g. the single value of one side first, then the many of the other), never list it. Only
where the runner already gave a key's values as a short list are they sorted by tag, once (`Joined`).
"""
from __future__ import annotations

import itertools
import math
import zlib
from operator import itemgetter
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindows

from transforms.coders import Records, pickled_list, unpickled_list

# An element a grouping takes: (key, value). A function feeding one says so in its hint, for Beam's checks of a
# grouping's input type (2.78 refuses a plain `tuple`).
KeyValue = tuple[Any, Any]


class TagView:
    """The values of one tag among a key's grouped (tag, value) pairs, re-iterable, never held."""

    def __init__(self, grouped: Iterable[tuple[int, Any]], tag: int):
        self._grouped = grouped
        self._tag = tag

    def __iter__(self) -> Iterator:
        tag = self._tag
        return (value for t, value in self._grouped if t == tag)


# Most values of one key sorted by tag in one pass where the runner gave them as a list (`Joined`).
SORTED_VALUES = 10_000


class Joined(Mapping):
    """tag -> its values, like the dict `CoGroupByKey` gives but never a list the key did not already make: where
    the runner handed the key's values over as a list of at most `SORTED_VALUES` (a key held whole, as the
    local runner decodes every group), each tag's are sorted out of it once, so that a function reading
    several tags walks the values once, not once a tag and a read; otherwise (a large key's values paged in
    as they are read, on Dataflow) a `TagView` a tag, holding none of them."""

    def __init__(self, grouped: Iterable[tuple[int, Any]], tags: Mapping[str, int]):
        self._grouped = grouped
        self._tags = tags
        self._by_tag: Optional[dict] = None
        if type(grouped) is list and len(grouped) <= SORTED_VALUES:
            by_tag: dict = {}
            for tag, value in grouped:
                held = by_tag.get(tag)
                if held is None:
                    by_tag[tag] = [value]
                else:
                    held.append(value)
            self._by_tag = by_tag

    def __getitem__(self, tag: str) -> Iterable:
        if self._by_tag is not None:
            return self._by_tag.get(self._tags[tag], ())
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


def at_bundle_end(outputs: Iterable) -> Iterator:
    """What a DoFn held and gives in `finish_bundle`, each output in the global window (a batch pipeline's only
    one; `finish_bundle` must name it), tagged outputs kept tagged."""
    for output in outputs:
        if isinstance(output, TaggedOutput):
            yield TaggedOutput(output.tag, GlobalWindows.windowed_value(output.value))
        else:
            yield GlobalWindows.windowed_value(output)


class HeldInBatches(beam.DoFn):
    """A DoFn that holds up to `batch` of a bundle's elements and gives what `outputs_of` makes of them together
    (what is held at the bundle's end, then): for work that costs less a batch at once than an element at a
    time (a tokenizer's call, a vector model's). A subclass's `process` returns `self.hold(element)`."""

    def __init__(self, batch: int):
        self._batch = batch

    def start_bundle(self):
        self._held = []

    def hold(self, element) -> Iterator:
        """Holds `element`; once `batch` are held, the outputs of them all."""
        self._held.append(element)
        if len(self._held) >= self._batch:
            yield from self._release()

    def finish_bundle(self):
        return at_bundle_end(self._release())

    def outputs_of(self, held: list) -> Iterable:
        """What the held elements (never none) make: outputs as `process` would yield them."""
        raise NotImplementedError

    def _release(self) -> Iterator:
        held, self._held = self._held, []
        if held:
            yield from self.outputs_of(held)


# Keys one shard of a sharded join holds by default (`--join-shard-keys`), and the most elements of a list dealt
# into a shard or given out of one: a step a list passes costs what a step an element passes would.
SHARD_KEYS = 50_000
LIST_ITEMS = 1000


def shard_count(count: int, shard_size: int) -> int:
    """How many shards `count` keys take at about `shard_size` a shard."""
    return max(1, math.ceil(count / shard_size))


def shard_of(key: object, count: int, shard_size: int) -> int:
    """Which of `shard_count(count, shard_size)` shards a key goes to: by a hash stable across processes and runs."""
    return zlib.crc32(repr(key).encode("utf-8")) % shard_count(count, shard_size)


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


class ListsByKey:
    """A bundle's items held in lists by key, so that a shuffle moves a list where it would move each item: a list
    is given once it holds `batch` items, and every list once `8 x batch` are held in all (what is held at the
    bundle's end is given then, by `give`)."""

    def __init__(self, batch: int):
        self._batch = batch
        self._lists: dict = {}
        self._held = 0

    def add(self, key, item) -> Optional[list[tuple]]:
        """Holds `item` under `key`; the (key, list)s this gives, or None (most calls: no generator an item)."""
        held = self._lists.get(key)
        if held is None:
            held = self._lists[key] = []
        held.append(item)
        self._held += 1
        if len(held) >= self._batch:
            del self._lists[key]
            self._held -= len(held)
            return [(key, held)]
        if self._held >= 8 * self._batch:
            return self.give()
        return None

    def give(self) -> list[tuple]:
        """(key, list) for every list held, which are then let go."""
        lists, self._lists, self._held = self._lists, {}, 0
        return list(lists.items())


class DealIntoShards(beam.DoFn):
    """Elements -> (shard, (tag, pickled list)): lists of up to `batch` elements of one shard, so that a
    shuffle moves a list where it would move each element, pickled once (`pickled_list`; the runner then copies
    bytes where it would encode and decode each record three times: 0.9 µs a `ScoredPair` pickled and
    unpickled this way, 2.0 µs a record each time `RecordCoder` codes it on its own). A bundle holds at
    most 8 x `batch` elements before it gives them all (`ListsByKey`); what it holds at its end is given then.
    `items`: element -> the items to deal (the element itself when None), so that what one element makes never
    travels item by item. The side input `keys` is the count that sizes the shards (`shard_of`). Read a
    shard back with `dealt`."""

    def __init__(self, tag: int, key: Callable, shard_keys: int, batch: int,
                 items: Optional[Callable[[Any], Iterable]] = None):
        self._tag = tag
        self._key = key
        self._shard_keys = shard_keys
        self._batch = batch
        self._items = items

    def start_bundle(self):
        self._lists = ListsByKey(self._batch)

    def process(self, element, keys: int):
        shards = shard_count(keys, self._shard_keys)
        items = (element,) if self._items is None else list(self._items(element))
        # `shard_of` each item, its count worked out once and the hashes by C calls alone (a step every pair takes)
        hashes = map(zlib.crc32, map(str.encode, map(repr, map(self._key, items))))
        tag, add = self._tag, self._lists.add
        for item, crc in zip(items, hashes):
            given = add(crc % shards, item)
            if given:
                for shard, held in given:
                    yield shard, (tag, pickled_list(held))

    def finish_bundle(self):
        return at_bundle_end((shard, (self._tag, pickled_list(held))) for shard, held in self._lists.give())


def total_keys(counts: Iterable) -> beam.pvalue.AsSingleton:
    """The side input that sizes shards (`shard_count`): the sum of PCollections of counts (counts of a side's keys,
    or of what holds them), with labels relative to the calling transform."""
    return beam.pvalue.AsSingleton(tuple(counts) | "AllCounts" >> beam.Flatten() | "Keys" >> beam.CombineGlobally(sum))


def dealt_shards(sides: Iterable[tuple], keys, shard_keys: int, batch: int = LIST_ITEMS) -> beam.PCollection:
    """(label, PCollection, key, items) for each side, in tag order -> (shard, its grouped values): every side's
    elements dealt under its tag by `DealIntoShards` (`keys`: the side input that sizes the shards), then grouped
    by shard. Read a side of a shard back with `dealt`; labels are relative to the calling transform."""
    dealt_lists = [pcoll | label >> beam.ParDo(DealIntoShards(tag, key, shard_keys, batch, items), keys=keys)
                   for tag, (label, pcoll, key, items) in enumerate(sides)]
    return dealt_lists | "Flatten" >> beam.Flatten() | "Group" >> beam.GroupByKey()


def dealt(grouped: Iterable[tuple[int, bytes]], tag: int) -> Iterator:
    """The elements `DealIntoShards` dealt under `tag` into one shard's grouped values, list by list."""
    for t, elements in grouped:
        if t == tag:
            yield from unpickled_list(elements)


class _LookUpShard(beam.DoFn):
    def __init__(self, fn: Callable, key: Callable, args: tuple, lists: frozenset = frozenset(),
                 batch: int = LIST_ITEMS):
        self._fn = fn
        self._key = key
        self._args = args
        self._lists = lists
        self._batch = batch

    def process(self, element):
        _, grouped = element
        values = {}
        for key, value in dealt(grouped, 0):  # first the shard's (key, value)s: at most about `shard_keys` of them
            if key in values:
                raise ValueError(f"more than one value to look up for the key {key!r}")
            values[key] = value
        found = (self._fn(element, values.get(self._key(element)), *self._args)
                 for element in dealt(grouped, 1))  # then its elements, list by list, never gathered
        if self._lists:
            yield from self._listed(itertools.chain.from_iterable(found))
        else:
            for outputs in found:
                yield from outputs

    def _listed(self, outputs: Iterable) -> Iterator:
        """The outputs of the tags in `lists` in lists of up to `batch` (a shard's last ones shorter); the
        others as they come. A shard holds at most `batch` outputs of each listed tag."""
        held: dict = {}
        for output in outputs:
            tag = output.tag if isinstance(output, TaggedOutput) else None
            if tag not in self._lists:
                yield output
                continue
            items = held.setdefault(tag, Records())
            items.append(output if tag is None else output.value)
            if len(items) >= self._batch:
                del held[tag]
                yield items if tag is None else TaggedOutput(tag, items)
        for tag, items in held.items():
            yield items if tag is None else TaggedOutput(tag, items)


class LookUp(beam.PTransform):
    """(elements, (key, value) with one value a key) -> what `fn(element, value of key(element) or None,
    *args)` yields per element.

    The join `JoinByKey` makes when one side has one value a key (a node's label, a question's text), at a
    cost a list of elements rather than an element: both sides are dealt into shards of about `shard_keys`
    keys by a hash of the key, in lists of up to `batch` (`DealIntoShards`), and each shard's values are
    held while its elements are walked. A shard holds about `shard_keys` values, whatever the number of
    elements or how many share a key. `outputs` / `main`: as `JoinByKey`'s.
    `items`: element -> the elements to look up (as `DealIntoShards`'), where they come in lists.
    `lists`: the outputs (by tag; the main one by `main`'s name, or "main") given in lists of up to `batch`, for
    steps that take a list as one element (a step a list passes costs what a step an element passes would).
    """

    def __init__(self, fn: Callable, key: Callable, *args, shard_keys: int, batch: int = LIST_ITEMS,
                 outputs: tuple[str, ...] = (), main: Optional[str] = None,
                 items: Optional[Callable[[Any], Iterable]] = None, lists: tuple[str, ...] = ()):
        super().__init__()
        main_name = main or "main"
        unknown = set(lists) - set(outputs) - {main_name}
        if unknown:
            raise ValueError(f"outputs to give in lists that the look-up does not have: {sorted(unknown)}")
        self._lists = frozenset(None if tag == main_name else tag for tag in lists)
        self._items = items
        self._fn = fn
        self._key = key
        self._args = args
        self._shard_keys = shard_keys
        self._batch = batch
        self._outputs = outputs
        self._main = main

    def expand(self, inputs):
        elements, lookup = inputs
        keys = beam.pvalue.AsSingleton(lookup | "CountKeys" >> beam.combiners.Count.Globally())
        shards = dealt_shards((("DealValues", lookup, itemgetter(0), None),
                               ("DealElements", elements, self._key, self._items)), keys, self._shard_keys, self._batch)
        call = beam.ParDo(_LookUpShard(self._fn, self._key, self._args, self._lists, self._batch))
        if self._outputs:
            call = call.with_outputs(*self._outputs, main=self._main)
        return shards | "LookUp" >> call
