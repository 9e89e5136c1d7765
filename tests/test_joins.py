"""`JoinByKey`: what CoGroupByKey followed by a function gives, without listing a key's values."""
import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from tests.helpers import RUNNER_ARGS
from transforms.joins import JoinByKey, Joined, only


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


def test_a_one_value_side_with_two_values_is_an_error_not_a_choice():
    joined = Joined([(0, 1), (0, 2), (1, "x")], {"left": 0, "right": 1})
    assert list(joined["right"]) == ["x"] and list(joined) == ["left", "right"]
    with pytest.raises(ValueError, match="at most one"):
        only(joined["left"])
