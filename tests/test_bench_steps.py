"""benchmarks/bench_steps.py adds Beam's per-transform figures up by the step they belong to."""
import apache_beam as beam
from apache_beam.metrics import monitoring_infos as mi
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import fn_runner

from benchmarks.bench_steps import BoundaryCoding, StageMemory, boundary_steps, memory_peaks, step_costs, step_of
from tests.helpers import RUNNER_ARGS


def test_step_of_names_nested_steps_two_deep():
    assert step_of("BlockLexical/SearchWorkItem/ParDo(_SearchWorkItem)") == "BlockLexical"
    assert step_of("ClusterGroups/SplitChains/PieceOf/Call") == "ClusterGroups/SplitChains"
    assert step_of("ScoreCandidates/ScorePairs/ModelInputs") == "ScoreCandidates/ScorePairs"
    assert step_of("AllPairs") == "AllPairs"


def test_split_steps_are_named_one_name_deeper_each_time_they_are_named():
    split = {"BlockLexical", "ClusterGroups/SplitChains", "ClusterGroups/SplitChains/CutComponents"}
    assert step_of("BlockLexical/SearchWorkItem/ParDo(_SearchWorkItem)", split) == "BlockLexical/SearchWorkItem"
    assert step_of("ClusterGroups/SplitChains/PieceOf/Call", split) == "ClusterGroups/SplitChains/PieceOf"
    assert step_of("ClusterGroups/SplitChains/CutComponents/Final/Group", split) == \
        "ClusterGroups/SplitChains/CutComponents/Final"
    assert step_of("ClusterGroups/AssignGroupIds/Lineage", split) == "ClusterGroups/AssignGroupIds"
    assert step_of("BlockLexical", split) == "BlockLexical"  # nothing deeper to name


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


def test_stage_memory_logs_each_stage_and_puts_the_runner_back(tmp_path):
    execute = fn_runner.FnApiRunner._execute_bundle
    log = tmp_path / "stages.log"
    with StageMemory(str(log), interval=0.01):
        with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as pipeline:
            _ = (pipeline | beam.Create(range(1000)) | "KeyBy" >> beam.Map(lambda x: (x % 7, x))
                 | "Together" >> beam.GroupByKey())
        lines = log.read_text().splitlines()  # written as each stage ends: a run killed for memory keeps its log
    assert fn_runner.FnApiRunner._execute_bundle is execute
    assert any("Together" in line for line in lines)
    for line in lines:
        start, seconds, before, peak, after, name = line.split("\t")
        assert float(start) >= 0 and float(seconds) >= 0 and name
        assert 0 < float(before) <= float(peak) and 0 < float(after) <= float(peak) + 0.01


def test_memory_peaks_orders_stages_by_their_peak():
    lines = ["0.0\t1.0\t1.00\t2.50\t1.20\tRead\n", "1.0\t3.0\t1.20\t4.75\t1.10\tGroupPairs/Read\n",
             "4.0\t0.5\t1.10\t1.30\t1.10\tWrite\n"]
    assert memory_peaks(lines, 2) == [(4.75, 1.2, "GroupPairs/Read"), (2.5, 1.0, "Read")]


def test_boundary_coding_counts_what_stages_pass_each_other_and_puts_beam_back():
    """1,000 elements into a grouping by 7 keys: encoded by the stage that makes them, grouped by the runner (its
    own decoding is not a stage's), and the 7 groups decoded by the stage that reads them."""
    from apache_beam.runners.worker import bundle_processor
    decode, encode = bundle_processor.DataInputOperation.process_encoded, bundle_processor.DataOutputOperation.process
    with BoundaryCoding() as coding:
        with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as pipeline:
            _ = (pipeline | beam.Create(range(1000)) | "KeyBy" >> beam.Map(lambda x: (x % 7, x))
                 | "Together" >> beam.GroupByKey() | "Sizes" >> beam.MapTuple(lambda key, values: len(values)))
    assert (bundle_processor.DataInputOperation.process_encoded, bundle_processor.DataOutputOperation.process) == \
        (decode, encode)
    assert coding.tallies["Together/Write"][0] == 1000 and coding.tallies["Together/Read"][0] == 7
    assert coding.tallies["Together/Write"][1] > 0 and coding.tallies["Together/Read"][1] > 0
    assert boundary_steps(coding.tallies, {})["Together"][0] == 1007


def test_boundary_steps_count_a_collection_read_by_the_runner_under_its_producer():
    tallies = {"ref_PCollection_PCollection_5/Read": [10, 0.5], "ref_PCollection_PCollection_5/Write": [5, 0.25],
               "ClusterGroups/GroupRows/Group/Write": [3, 0.1], "ClusterGroups/GroupRows/Flatten/Read": [3, 0.25]}
    producers = {"ref_PCollection_PCollection_5": "BlockLexical/AssignPartitions/ParDo(_AssignPartitions)"}
    assert boundary_steps(tallies, producers) == {"BlockLexical": [15, 0.75], "ClusterGroups/GroupRows": [6, 0.35]}
    assert boundary_steps(tallies, producers, {"BlockLexical"}) == {
        "BlockLexical/AssignPartitions": [15, 0.75], "ClusterGroups/GroupRows": [6, 0.35]}
