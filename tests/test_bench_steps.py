"""benchmarks/bench_steps.py adds Beam's per-transform figures up by the step they belong to."""
from apache_beam.metrics import monitoring_infos as mi

from benchmarks.bench_steps import step_costs, step_of


def test_step_of_names_nested_steps_two_deep():
    assert step_of("BlockLexical/SearchWorkItem/ParDo(_SearchWorkItem)") == "BlockLexical"
    assert step_of("ClusterGroups/SplitChains/PieceOf/Call") == "ClusterGroups/SplitChains"
    assert step_of("ScoreCandidates/ScorePairs/ModelInputs") == "ScoreCandidates/ScorePairs"
    assert step_of("AllPairs") == "AllPairs"


def test_step_costs_sums_timings_and_elements_by_step():
    infos = [
        mi.int64_counter(mi.PROCESS_BUNDLE_MSECS_URN, 5, ptransform="ClusterGroups/SplitChains/A"),
        mi.int64_counter(mi.START_BUNDLE_MSECS_URN, 1, ptransform="ClusterGroups/SplitChains/B"),
        mi.int64_counter(mi.FINISH_BUNDLE_MSECS_URN, 2, ptransform="WritePairs/AsDict"),
        mi.int64_counter(mi.ELEMENT_COUNT_URN, 7, pcollection="p1"),
        mi.int64_counter(mi.ELEMENT_COUNT_URN, 3, pcollection="p2"),
        mi.int64_counter(mi.ELEMENT_COUNT_URN, 4, pcollection="p3"),
        mi.int64_counter(mi.USER_COUNTER_URN, 100, ptransform="WritePairs/AsDict"),  # not a timing
    ]
    producers = {"p1": "ClusterGroups/SplitChains/A", "p2": "ClusterGroups/SplitChains/B", "p3": "WritePairs/AsDict"}
    msecs, elements = step_costs(infos, producers)
    assert msecs == {"ClusterGroups/SplitChains": 6, "WritePairs": 2}
    assert elements == {"ClusterGroups/SplitChains": 10, "WritePairs": 4}
