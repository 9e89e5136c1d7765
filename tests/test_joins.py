"""`JoinByKey`: what CoGroupByKey followed by a function gives, without listing a key's values."""
import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from tests.helpers import RUNNER_ARGS
from transforms.joins import JoinByKey, Joined, only, pairs_within
from transforms.records import ScoredPair


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


def test_pairs_within_keeps_the_pairs_whose_ends_share_a_label():
    pairs = [ScoredPair(1, 2, 0.9, 0.5, "lexical"), ScoredPair(2, 3, 0.2, 0.5, "lexical"),
             ScoredPair(3, 4, 0.1, 0.5, "lexical"), ScoredPair(4, 9, 0.1, 0.5, "lexical")]
    labels = [(1, 1), (2, 1), (3, 1), (4, 4)]  # 9 has no label: its pair is dropped
    expected = [(1, pairs[0]), (1, pairs[1])]
    with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as pipeline:
        scored = pipeline | "Pairs" >> beam.Create(pairs)
        labelled = pipeline | "Labels" >> beam.Create(labels)
        assert_that(pairs_within(scored, labelled, "Plain"), equal_to(expected), label="CheckPlain")
