"""`JoinByKey`: what CoGroupByKey followed by a function gives, without listing a key's values; `LookUp`: the
same where one side has one value a key, in shards."""
from operator import itemgetter

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import TaggedOutput
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.windowed_value import WindowedValue

from tests.helpers import RUNNER_ARGS
from transforms.coders import Records, pickled_list, unpickled_list
from transforms.joins import (
    DealIntoShards,
    HeldInBatches,
    JoinByKey,
    Joined,
    LookUp,
    TagView,
    _LookUpShard,
    dealt,
    only,
    shard_of,
)


def _summary(element):
    key, joined = element
    left = only(joined["left"], "none")
    rights = joined["right"]
    yield key, left, sum(1 for _ in rights), sorted(rights)  # a view may be walked more than once


def test_join_by_key_gives_each_key_its_values_per_tag():
    with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as pipeline:
        left = pipeline | "L" >> beam.Create([("a", 1), ("b", 2)])
        right = pipeline | "R" >> beam.Create([("a", "x"), ("a", "y"), ("c", "z")])
        joined = {"left": left, "right": right} | JoinByKey(_summary)
        assert_that(joined, equal_to([("a", 1, 2, ["x", "y"]), ("b", 2, 0, []), ("c", "none", 1, ["z"])]))


def test_an_input_keyed_by_a_function_joins_each_element_under_its_key():
    with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as pipeline:
        left = pipeline | "L" >> beam.Create([("a", 1), ("b", 2)])
        right = pipeline | "R" >> beam.Create(["ax", "ay", "cz"])
        joined = {"left": left, "right": right} | JoinByKey(_summary, keys={"right": lambda text: text[0]})
        assert_that(joined, equal_to([("a", 1, 2, ["ax", "ay"]), ("b", 2, 0, []), ("c", "none", 1, ["cz"])]))


def test_a_key_function_for_an_input_not_joined_is_refused():
    with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as pipeline:
        left = pipeline | "L" >> beam.Create([("a", 1)])
        with pytest.raises(ValueError, match=r"not joined: \['rigth'\]"):
            {"left": left} | JoinByKey(_summary, keys={"rigth": len})


def test_a_one_value_side_with_two_values_is_an_error_not_a_choice():
    joined = Joined([(0, 1), (0, 2), (1, "x")], {"left": 0, "right": 1})
    assert list(joined["right"]) == ["x"] and list(joined) == ["left", "right"]
    with pytest.raises(ValueError, match="at most one"):
        only(joined["left"])


class _Walked:
    """Grouped values that count how often they are walked."""

    def __init__(self, values):
        self._values = values
        self.walks = 0

    def __iter__(self):
        self.walks += 1
        return iter(self._values)


def test_a_short_list_of_values_is_sorted_by_tag_once_and_anything_else_is_walked_per_read(monkeypatch):
    values = [(1, "x"), (0, 1), (0, 2), (1, "y")]
    tags = {"left": 0, "right": 1, "none": 2}
    held = Joined(values, tags)
    assert (list(held["left"]), list(held["right"]), list(held["none"])) == ([1, 2], ["x", "y"], [])
    assert list(held["right"]) == ["x", "y"]  # read again: the same
    assert not isinstance(held["left"], TagView)  # sorted out of the list once, not a view walking it
    walked = _Walked(values)  # not a list (a large key paged in as it is read): views, walked at every read
    joined = Joined(walked, tags)
    assert (list(joined["left"]), list(joined["right"]), list(joined["none"])) == ([1, 2], ["x", "y"], [])
    assert walked.walks == 3
    monkeypatch.setattr("transforms.joins.SORTED_VALUES", 3)  # a list longer than that is not sorted out either
    long = Joined(values, tags)
    assert isinstance(long["left"], TagView) and list(long["left"]) == [1, 2]


def _routed(element, value, offset):
    """A look-up function with a tagged output: elements whose key has no value go to "missing"."""
    if value is None:
        yield beam.pvalue.TaggedOutput("missing", element)
    else:
        yield element, value + offset


@pytest.mark.parametrize("shard_keys", [1, 7, 1000])
def test_look_up_gives_each_element_its_keys_value_in_any_number_of_shards(shard_keys):
    """Against a dictionary: 3,000 elements over 200 keys (one hot key holding a third of them, some keys
    without a value), in lists of 50, so that bundles give many lists and shards meet many lists."""
    import random
    rng = random.Random(shard_keys)
    values = {key: rng.randrange(1000) for key in range(0, 200, 2)}  # odd keys have none
    elements = [(i, 0 if i % 3 == 0 else rng.randrange(200)) for i in range(3000)]
    found = [((i, key), values[key] + 5) for i, key in elements if key in values]
    missing = [(i, key) for i, key in elements if key not in values]
    with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as pipeline:
        looked_up = (
            (pipeline | "Elements" >> beam.Create(elements), pipeline | "Values" >> beam.Create(list(values.items())))
            | LookUp(_routed, itemgetter(1), 5, shard_keys=shard_keys, batch=50, outputs=("missing",), main="found")
        )
        assert_that(looked_up.found, equal_to(found), label="CheckFound")
        assert_that(looked_up.missing, equal_to(missing), label="CheckMissing")


def _lists_of(most: int):
    """A check that every element is a list of 1 to `most` items (`Records`: of records, the class once a list)."""
    def check(lists):
        assert lists and all(type(items) is Records and 1 <= len(items) <= most for items in lists), lists
    return check


def test_look_up_gives_the_outputs_asked_for_in_lists():
    """`lists`: the outputs named come in lists of at most `batch` (the main one by its name), holding what they
    would hold one by one; the others as they come."""
    elements = [(i, i % 40) for i in range(1000)]  # 40 keys; even keys have a value
    values = [(key, key * 10) for key in range(0, 40, 2)]
    found = [((i, key), key * 10 + 1) for i, key in elements if key % 2 == 0]
    missing = [(i, key) for i, key in elements if key % 2]
    with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as pipeline:
        inputs = (pipeline | "Elements" >> beam.Create([elements[i:i + 30] for i in range(0, 1000, 30)]),
                  pipeline | "Values" >> beam.Create(values))
        both = inputs | "Both" >> LookUp(_routed, itemgetter(1), 1, shard_keys=7, batch=40, outputs=("missing",),
                                         main="found", items=iter, lists=("found", "missing"))
        one = inputs | "One" >> LookUp(_routed, itemgetter(1), 1, shard_keys=7, batch=40, outputs=("missing",),
                                       main="found", items=iter, lists=("missing",))
        for name, listed in (("Found", both.found), ("Missing", both.missing), ("OneMissing", one.missing)):
            assert_that(listed, _lists_of(40), label=f"Check{name}Lists")
        assert_that(both.found | "FlatFound" >> beam.FlatMap(iter), equal_to(found), label="CheckFound")
        assert_that(both.missing | "FlatMissing" >> beam.FlatMap(iter), equal_to(missing), label="CheckMissing")
        assert_that(one.found, equal_to(found), label="CheckOneFound")  # not asked: one by one
        assert_that(one.missing | "FlatOneMissing" >> beam.FlatMap(iter), equal_to(missing), label="CheckOne")
        main_only = inputs | "MainOnly" >> LookUp(lambda element, value: [value], itemgetter(1), shard_keys=7,
                                                  items=iter, lists=("main",))
        assert_that(main_only, _lists_of(1000), label="CheckMainLists")


def test_look_up_refuses_lists_of_an_output_it_does_not_have():
    with pytest.raises(ValueError, match=r"does not have: \['cut'\]"):
        LookUp(_routed, itemgetter(1), shard_keys=7, outputs=("missing",), main="found", lists=("found", "cut"))


def test_look_up_refuses_a_key_with_two_values():
    with pytest.raises(Exception, match="more than one value to look up for the key 3"):
        with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as pipeline:
            (pipeline | "Elements" >> beam.Create([1, 3]), pipeline | "Values" >> beam.Create([(3, "a"), (3, "b")])) \
                | LookUp(lambda element, value: [value], lambda element: element, shard_keys=10)


def test_a_bundle_gives_its_lists_when_full_and_what_it_holds_at_its_end():
    """`DealIntoShards` directly: lists of at most `batch`, at most 8 x `batch` held, nothing lost."""
    deal = DealIntoShards(1, lambda element: element, shard_keys=1, batch=4)
    deal.start_bundle()
    given = [out for element in range(30) for out in deal.process(element, keys=3)]  # 3 shards
    given = [(shard, (tag, unpickled_list(held))) for shard, (tag, held) in given]
    assert all(len(held) == 4 for _, (_, held) in given)
    at_end = [(shard, (tag, unpickled_list(held))) for shard, (tag, held) in (v.value for v in deal.finish_bundle())]
    assert all(len(held) < 4 for _, (_, held) in at_end)
    dealt = sorted(element for _, (tag, held) in given + at_end for element in held)
    assert dealt == list(range(30)) and {tag for _, (tag, _) in given + at_end} == {1}
    assert {shard for shard, _ in given + at_end} == {0, 1, 2}
    assert all(shard == shard_of(element, 3, 1) for shard, (_, held) in given + at_end for element in held)


class _Doubled(HeldInBatches):
    """Each held element doubled; odd ones also to "odd"; the batches it was called with kept."""

    def __init__(self, batch: int):
        super().__init__(batch)
        self.calls = []

    def process(self, element):
        return self.hold(element)

    def outputs_of(self, held: list):
        self.calls.append(list(held))
        for element in held:
            yield 2 * element
            if element % 2:
                yield TaggedOutput("odd", element)


def test_held_in_batches_gives_each_full_batch_then_the_rest_at_the_bundles_end():
    """Outputs come when `batch` are held, in order; the rest at the bundle's end, each in the global window,
    tags kept; a bundle that holds nothing at its end makes no call."""
    fn = _Doubled(batch=4)
    fn.start_bundle()
    given = [out for element in range(10) for out in fn.process(element)]
    assert fn.calls == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [out for out in given if not isinstance(out, TaggedOutput)] == [0, 2, 4, 6, 8, 10, 12, 14]
    assert [out.value for out in given if isinstance(out, TaggedOutput)] == [1, 3, 5, 7]
    at_end = list(fn.finish_bundle())
    assert fn.calls[2:] == [[8, 9]]
    assert [out.value for out in at_end if isinstance(out, WindowedValue)] == [16, 18]
    assert [(out.tag, out.value.value) for out in at_end if isinstance(out, TaggedOutput)] == [("odd", 9)]
    fn.start_bundle()
    assert list(fn.finish_bundle()) == [] and len(fn.calls) == 3


def test_what_an_element_makes_is_dealt_item_by_item_and_read_back_whole():
    """`DealIntoShards` with `items`: each item to its own key's shard, in lists; `dealt` reads a shard back."""
    deal = DealIntoShards(0, lambda item: item[1], shard_keys=1, batch=3, items=lambda n: [(n, k) for k in range(n)])
    deal.start_bundle()
    given = [out for element in range(8) for out in deal.process(element, keys=4)]
    given += [v.value for v in deal.finish_bundle()]
    shards = {}
    for shard, value in given:
        shards.setdefault(shard, []).append(value)
    items = {shard: list(dealt(values, 0)) for shard, values in shards.items()}
    assert sorted(item for found in items.values() for item in found) == [(n, k) for n in range(8) for k in range(n)]
    shard_of_key = {k: shard for shard, found in items.items() for _, k in found}
    assert all(shard_of_key[k] == shard for shard, found in items.items() for _, k in found)  # a key in one shard
    assert len(items) > 1 and all(len(unpickled_list(held)) <= 3 for _, (_, held) in given)
    assert list(dealt([(1, pickled_list([5]))], 0)) == [] and list(dealt([(1, pickled_list([5]))], 1)) == [5]


def test_a_hot_key_shard_streams_its_lists_and_holds_only_its_values():
    """One shard where a single key has 300,000 elements in 300 lists (as Dataflow pages a grouped value in):
    each list is unpickled, walked and dropped; gathered, the elements alone would take ~30 MB."""
    import collections

    from tests.helpers import Lazy, peak_bytes
    one_list = pickled_list([(i, 7) for i in range(1000)])
    values = pickled_list([(7, "label"), (8, "other")])
    grouped = Lazy(lambda: iter([(1, one_list)] * 150 + [(0, values)] + [(1, one_list)] * 150))
    shard = _LookUpShard(lambda element, value: [(value, element[0])], itemgetter(1), ())
    counted, peak = peak_bytes(lambda: collections.Counter(value for value, _ in shard.process((0, grouped))))
    assert counted == {"label": 300_000}
    assert peak < 2_000_000, peak
    # Its outputs in lists: a list of 1,000 held at a time.
    shard = _LookUpShard(lambda element, value: [(value, element[0])], itemgetter(1), (), frozenset({None}), 1000)
    counted, peak = peak_bytes(lambda: collections.Counter(
        (len(items), value) for items in shard.process((0, grouped)) for value, _ in items[:1]))
    assert counted == {(1000, "label"): 300}
    assert peak < 2_000_000, peak
