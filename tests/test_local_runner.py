"""Beam's local runner: in worker processes every element a stage is sent arrives, streamed in pieces while
the bundle runs; a finished stage's bundle processor is let go; a worker process that dies fails the run
saying so.

Beam 2.77's runner sends a stage's input to gRPC workers through a stream a background thread flushes
every `DATA_BUFFER_TIME_LIMIT_MS`; a flush sends, then clears, and what was written meanwhile is cleared
unsent. `local_runner.turn_off_timed_flush` turns the timed flush off. These tests show the loss with a
flush every millisecond and a write made to land inside one, and that the launcher's setting removes it. If
the first ever stops losing anything, Beam has fixed its stream and the setting can go.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import apache_beam as beam
import pytest
from apache_beam import coders
from apache_beam.coders.coder_impl import create_InputStream, create_OutputStream
from apache_beam.coders.coders import GlobalWindowCoder
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions
from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.runners.portability import local_job_service
from apache_beam.runners.portability.fn_api_runner import execution, fn_runner, translations, worker_handlers
from apache_beam.runners.worker import bundle_processor, data_plane, sdk_worker
from apache_beam.runners.worker.data_plane import ClosableOutputStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import core, window

from benchmarks.bench_runner_loss import RUNNER, made_and_read, main
from benchmarks.bench_scale import _tree_usage
from pipelines import local_runner
from pipelines.local_runner import (
    LOCAL_STAGE_IDLE_S,
    group_flattens_directly,
    pass_settings_to_local_processes,
    release_finished_local_stages,
    stream_local_inputs,
    turn_off_timed_flush,
)
from tests.helpers import MULTI_PROCESSING, RUNNER_ARGS, built_pipeline, snapshot

# Beam's own runner methods, which `local_runner.stream_local_inputs` replaces in a process that ran a
# pipeline through `qdedup run`; taken when pytest imports this module, before any test runs one.
_BEAMS_RUNNER = {(owner, name): getattr(owner, name) for owner, name in (
    (execution.GroupingBuffer, "partition"), (fn_runner.BundleManager, "_send_input_to_worker"),
    (fn_runner.BundleManager, "process_bundle"))}
assert all(method.__module__ == owner.__module__ for (owner, _), method in _BEAMS_RUNNER.items())


def _written_and_received(time_limit_ms: int) -> tuple[int, int]:
    """Blobs written for 0.3 s to Beam's runner-side output stream whose sends each wait 20 ms (a full
    send queue), as the runner writes a large stage input: bytes written, bytes that reached the sender."""
    received = []

    def send(data: bytes) -> None:
        time.sleep(0.02)
        received.append(len(data))

    stream = ClosableOutputStream.create(send, send, time_limit_ms)
    written, started = 0, time.monotonic()
    while time.monotonic() - started < 0.3:
        stream.write(b"x" * 1000)
        written += 1000
        time.sleep(0.0005)
    stream.close()
    return written, sum(received)


@pytest.mark.slow
def test_beams_timed_flush_loses_what_is_written_while_it_sends_and_no_timed_flush_loses_nothing():
    written, received = _written_and_received(1)
    assert received < written  # Beam's race, which the launcher's setting avoids
    written, received = _written_and_received(0)
    assert received == written


def _make_a_timed_flush_meet_a_write(monkeypatch) -> None:
    """Beam's race made to happen in every run, not by chance: a runner-side stream written more than once
    holds its second write until a timed flush is inside its send, and that send waits for the write (each
    up to 10 s). Beam's flush then clears what the write added, unsent, unless Beam has fixed its stream (a
    write that waited for the flush, or a flush that cleared only what it sent, loses nothing here)."""
    stream_class = data_plane.TimeBasedBufferingClosableOutputStream
    beams_init, beams_write = stream_class.__init__, stream_class.write

    def init(stream, close_callback=None, flush_callback=None, *args, **kwargs):
        stream.writes, stream.writer_waits = 0, False
        stream.sending, stream.wrote_again = threading.Event(), threading.Event()

        def send(data: bytes) -> None:
            if isinstance(threading.current_thread(), data_plane.PeriodicThread) and stream.writer_waits:
                stream.sending.set()
                stream.wrote_again.wait(10)
            flush_callback(data)

        beams_init(stream, close_callback, send, *args, **kwargs)

    def write(stream, data: bytes) -> None:
        if stream.writes and not stream.sending.is_set():
            stream.writer_waits = True
            stream.sending.wait(10)
        beams_write(stream, data)
        stream.writes += 1
        if stream.sending.is_set():
            stream.wrote_again.set()

    monkeypatch.setattr(stream_class, "__init__", init)
    monkeypatch.setattr(stream_class, "write", write)


@pytest.mark.e2e
def test_a_stage_in_worker_processes_reads_every_element_once_the_launcher_sets_the_runner(monkeypatch, tmp_path):
    for (owner, name), method in _BEAMS_RUNNER.items():  # Beam's send, whose timed flush lost elements
        monkeypatch.setattr(owner, name, method)
    monkeypatch.setattr(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", 1)
    _make_a_timed_flush_meet_a_write(monkeypatch)  # by chance, 1 run in 8 lost nothing (2026-12-04)
    made, read = made_and_read(200_000, str(tmp_path / "timed"))
    assert made == 200_000 and read < made  # lost with a timed flush (every millisecond here, every second by default)
    turn_off_timed_flush(PipelineOptions(RUNNER))
    assert worker_handlers.DATA_BUFFER_TIME_LIMIT_MS == 0
    assert made_and_read(200_000, str(tmp_path / "whole")) == (200_000, 200_000)


@pytest.mark.e2e
def test_the_loss_benchmark_counts_each_limit_it_is_given(capsys):
    rows = main(["--elements", "20000", "--limits", "0"])
    assert [(row["limit_ms"], row["made"], row["read"], row["lost"]) for row in rows] == [(0, 20_000, 20_000, 0)]
    assert capsys.readouterr().out.startswith("| 0 ms | 20,000 | 20,000 | 0 |")


def test_a_dataflow_run_leaves_the_local_runner_as_it_is(monkeypatch):
    monkeypatch.setattr(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", 1000)
    turn_off_timed_flush(PipelineOptions(["--runner=DataflowRunner"]))
    assert worker_handlers.DATA_BUFFER_TIME_LIMIT_MS == 1000


class _FirstStage(beam.DoFn):
    """Leaves a file in `folder` when torn down (worker processes share no memory with the test)."""

    def __init__(self, folder: str):
        self._folder = folder

    def teardown(self):
        with open(os.path.join(self._folder, f"torn-down-{os.getpid()}"), "w"):
            pass

    def process(self, element):
        yield element


class _WaitForATeardownFile(beam.DoFn):
    """Waits up to 10 s for a file of `_FirstStage`'s teardown."""

    def __init__(self, folder: str):
        self._folder = folder

    def process(self, element):
        deadline = time.monotonic() + 10
        while not os.listdir(self._folder) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield bool(os.listdir(self._folder))


def test_a_local_run_lets_a_finished_stage_go_while_later_stages_run(monkeypatch, tmp_path):
    monkeypatch.setattr(sdk_worker, "DEFAULT_BUNDLE_PROCESSOR_CACHE_SHUTDOWN_THRESHOLD_S", 60)
    release_finished_local_stages(PipelineOptions(RUNNER_ARGS))
    assert sdk_worker.DEFAULT_BUNDLE_PROCESSOR_CACHE_SHUTDOWN_THRESHOLD_S == LOCAL_STAGE_IDLE_S
    _check_a_first_stage_is_torn_down_while_a_later_one_waits(PipelineOptions(RUNNER_ARGS), str(tmp_path), True)


def _check_a_first_stage_is_torn_down_while_a_later_one_waits(options: PipelineOptions, folder: str,
                                                              expected: bool) -> None:
    """Runs a pipeline whose later stage waits up to 10 s for its first stage's DoFn to be torn down (its
    processor, DoFns and output buffers let go), and checks whether it was."""
    with beam.Pipeline(options=options) as pipeline:
        waited = (pipeline | beam.Create([1, 2, 3]) | beam.ParDo(_FirstStage(folder))
                  | beam.Map(lambda x: (0, x)) | beam.GroupByKey() | beam.ParDo(_WaitForATeardownFile(folder)))
        assert_that(waited, equal_to([expected]))


@pytest.mark.e2e
@pytest.mark.parametrize("plugin", [True, False], ids=["launcher-settings", "beam-default"])
def test_worker_processes_let_a_finished_stage_go_while_later_stages_run(monkeypatch, tmp_path, plugin):
    monkeypatch.delenv("PIPELINE_OPTIONS_FILE", raising=False)  # restored (unset) after the test
    options = PipelineOptions(RUNNER_ARGS + MULTI_PROCESSING)
    if plugin:
        pass_settings_to_local_processes(options)  # the file the workers read names the plugin
    # with Beam's 60 s, nothing is torn down in 10 s
    _check_a_first_stage_is_torn_down_while_a_later_one_waits(options, str(tmp_path), plugin)


def test_a_dataflow_run_keeps_beams_worker_cache(monkeypatch):
    monkeypatch.setattr(sdk_worker, "DEFAULT_BUNDLE_PROCESSOR_CACHE_SHUTDOWN_THRESHOLD_S", 60)
    release_finished_local_stages(PipelineOptions(["--runner=DataflowRunner"]))
    assert sdk_worker.DEFAULT_BUNDLE_PROCESSOR_CACHE_SHUTDOWN_THRESHOLD_S == 60


class _Stateful(beam.DoFn):
    COUNT = beam.transforms.userstate.CombiningValueStateSpec("count", sum)

    def process(self, element, count=beam.DoFn.StateParam(COUNT), limit: int = 3):
        yield element


def test_what_beam_reads_off_dofns_functions_and_options_is_read_once_and_is_beams_answer(monkeypatch):
    """The suite's process reads them once, as a local run's launcher and workers do (conftest.py)."""
    from apache_beam.transforms import userstate

    dofn = _Stateful()
    specs = userstate.get_dofn_specs(dofn)
    assert specs == local_runner._BEAM_DOFN_SPECS(dofn) and {s.name for s in specs[0]} == {"count"}
    assert userstate.get_dofn_specs(dofn) is specs  # Beam's own makes new sets each time

    reads = []
    monkeypatch.setattr(core, "get_signature", lambda f: reads.append(f) or beam.typehints.decorators.get_signature(f))
    for f in (_Stateful().process, _Stateful().process, _Stateful.process, str.strip, lambda a, b=2: a):
        expected = local_runner._BEAM_FUNCTION_ARGS(f)
        assert core.get_function_args_defaults(f) == expected
    assert expected == (["a", "b"], [2])
    reads.clear()
    new = lambda x: x  # noqa: E731  (a function not read before: read once, then known)
    assert core.get_function_args_defaults(new) == core.get_function_args_defaults(new) == (["x"], [])
    assert reads == [new]
    bound = _Stateful().process  # another object's method: its function's arguments are known already
    assert core.get_function_args_defaults(bound) == (["element", "count", "limit"], [bound.__defaults__[0], 3])
    assert reads == [new]

    options = PipelineOptions(["--runner=FnApiRunner", "--direct_num_workers=3"])
    view = options.view_as(DirectOptions)
    assert options.view_as(DirectOptions) is view and view.direct_num_workers == 3
    view.direct_num_workers = 2  # a view's value is the options': every later view sees it
    assert options.view_as(DirectOptions).direct_num_workers == 2
    assert local_runner._BEAM_VIEW_AS(options, DirectOptions).direct_num_workers == 2


_READ_ONCE_HERE = """
import sys
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms import core, userstate
from pipelines import local_runner
from pipelines.dedup import build_pipeline
if sys.argv[1] == "worker":
    import pipelines.local_worker  # what Beam's worker process imports as a plugin before it makes its worker
else:
    local_runner.prepare(PipelineOptions(sys.argv[2:]))
print(userstate.get_dofn_specs is not local_runner._BEAM_DOFN_SPECS,
      core.get_function_args_defaults is not local_runner._BEAM_FUNCTION_ARGS,
      PipelineOptions.view_as is not local_runner._BEAM_VIEW_AS)
"""


@pytest.mark.parametrize("process, args, read_once", [
    ("launcher", RUNNER_ARGS, True), ("launcher", RUNNER_ARGS + MULTI_PROCESSING, True),
    ("worker", [], True), ("launcher", ["--runner=DataflowRunner"], False)])
def test_a_local_runs_launcher_and_worker_processes_read_beams_introspection_once(process, args, read_once):
    done = subprocess.run([sys.executable, "-c", _READ_ONCE_HERE, process, *args], capture_output=True, text=True,
                          timeout=120, check=True, env={**os.environ, "PIPELINE_OPTIONS_FILE": ""})
    assert done.stdout.split() == [str(read_once)] * 3, done.stderr


_PRE_GROUPED = coders.WindowedValueCoder(coders.TupleCoder([coders.StrUtf8Coder(), coders.VarIntCoder()]),
                                         GlobalWindowCoder())
_POST_GROUPED = coders.WindowedValueCoder(
    coders.TupleCoder([coders.StrUtf8Coder(), coders.IterableCoder(coders.VarIntCoder())]), GlobalWindowCoder())


def _grouped(elements: int, keys: int) -> execution.GroupingBuffer:
    """A grouping buffer as the runner fills it: integers 0..elements-1 under `keys` keys, in 3 messages."""
    buffer = execution.GroupingBuffer(_PRE_GROUPED, _POST_GROUPED, core.Windowing(window.GlobalWindows()))
    for message in range(3):
        stream = create_OutputStream()
        for value in range(message, elements, 3):
            _PRE_GROUPED.get_impl().encode_to_stream(window.GlobalWindows.windowed_value((f"k{value % keys}", value)),
                                                     stream, True)
        buffer.append(stream.get())
    return buffer


def _decoded(part: list[bytes]) -> list[tuple[str, list[int]]]:
    groups = []
    for piece in part:
        stream = create_InputStream(piece)
        while stream.size() > 0:
            key, values = _POST_GROUPED.get_impl().decode_from_stream(stream, True).value
            groups.append((key, list(values)))
    return groups


def test_a_grouped_input_comes_in_pieces_with_beams_keys_parts_and_order(monkeypatch):
    monkeypatch.setattr(local_runner, "INPUT_PIECE_BYTES", 1024)
    beams = local_runner._BEAM_PARTITION(_grouped(20_000, 700), 2)
    parts = local_runner._partition_in_pieces(_grouped(20_000, 700), 2)
    assert [len(part) for part in beams] == [1, 1]  # Beam's: one blob per worker
    assert [_decoded(part) for part in parts] == [_decoded(part) for part in beams]
    assert min(len(part) for part in parts) > 20  # 29 KB a part
    assert max(len(piece) for part in parts for piece in part) < 1024 + 200  # a piece: up to 1 KiB, plus a group
    assert sorted(value for part in parts for _, values in _decoded(part) for value in values) == list(range(20_000))
    buffer = _grouped(0, 1)
    assert local_runner._partition_in_pieces(buffer, 2) == [[b""], [b""]] == local_runner._BEAM_PARTITION(
        _grouped(0, 1), 2)


def _streamed_for_this_test(monkeypatch) -> None:
    """`stream_local_inputs` in this process, undone after the test."""
    for owner, name in _BEAMS_RUNNER:
        monkeypatch.setattr(owner, name, getattr(owner, name))
    stream_local_inputs(PipelineOptions(RUNNER_ARGS))


def _fail_on_key_7(group):
    if group[0] == 7:
        raise ValueError("a stage that fails on key 7")
    return group[0], len(list(group[1]))


@pytest.mark.e2e
def test_worker_processes_run_a_bundle_while_its_input_is_still_being_sent(monkeypatch):
    """With pieces of 16 KiB and the launcher's send queues at 64 KiB, the launcher sends part of a
    bundle's grouped input after asking the worker to run it (Beam's runner sends all of it first: this
    fails with `send` run in the runner's thread); the result is exact, and a failing stage still fails
    the run, its worker discarding the rest of its input."""
    _streamed_for_this_test(monkeypatch)
    monkeypatch.setattr(local_runner, "INPUT_PIECE_BYTES", 16 << 10)
    monkeypatch.setattr(data_plane, "_DEFAULT_SEND_QUEUE_MAX_BYTES", 64 << 10)
    events = []
    enqueue, push = data_plane._GrpcDataChannel._enqueue_to_send, worker_handlers.ControlConnection.push

    def recorded_enqueue(self, element):
        if isinstance(element, beam_fn_api_pb2.Elements.Data) and element.data:
            events.append(("data", element.instruction_id))
        return enqueue(self, element)

    def recorded_push(self, request):
        if isinstance(request, beam_fn_api_pb2.InstructionRequest) and request.HasField("process_bundle"):
            events.append(("run", request.instruction_id))
        return push(self, request)

    monkeypatch.setattr(data_plane._GrpcDataChannel, "_enqueue_to_send", recorded_enqueue)
    monkeypatch.setattr(worker_handlers.ControlConnection, "push", recorded_push)
    elements, keys = 40_000, 1_000
    options = PipelineOptions(RUNNER_ARGS + MULTI_PROCESSING)
    with beam.Pipeline(options=options) as pipeline:
        counted = (pipeline | beam.Create(range(elements)) | beam.Map(lambda i: (i % keys, "x" * 200))
                   | beam.GroupByKey() | beam.MapTuple(lambda key, texts: (key, len(list(texts)))))
        assert_that(counted, equal_to([(key, elements // keys) for key in range(keys)]))
    started, sent_after_start = set(), set()
    for kind, instruction in events:
        if kind == "run":
            started.add(instruction)
        elif instruction in started:
            sent_after_start.add(instruction)
    assert sent_after_start, "no input was sent to a worker already running its bundle"
    assert sum(kind == "data" for kind, _ in events) > 100  # ~5 MB of grouped input in pieces of 16 KiB

    with pytest.raises(Exception, match="a stage that fails on key 7"):
        with beam.Pipeline(options=options) as pipeline:
            _ = (pipeline | beam.Create(range(elements)) | beam.Map(lambda i: (i % keys, "x" * 200))
                 | beam.GroupByKey() | beam.Map(_fail_on_key_7))


def test_a_dataflow_run_keeps_beams_runner_methods(monkeypatch):
    for (owner, name), method in _BEAMS_RUNNER.items():
        monkeypatch.setattr(owner, name, method)
    stream_local_inputs(PipelineOptions(["--runner=DataflowRunner"]))
    assert all(getattr(owner, name) is method for (owner, name), method in _BEAMS_RUNNER.items())
    stream_local_inputs(PipelineOptions(RUNNER_ARGS))
    assert not any(getattr(owner, name) is method for (owner, name), method in _BEAMS_RUNNER.items())


_GROUPED = [(1, ["a", "c", "d"]), (2, ["b"]), (3, ["e"])]


def _flattened_and_grouped(pipeline) -> tuple:
    """Two Flattens of the same two inputs: "Joined" read only by a GroupByKey (as `JoinByKey`'s), "Both" by a
    GroupByKey and a count too. Returns both groupings (each `_GROUPED`) and the count (5)."""
    first = pipeline | "First" >> beam.Create([(1, "a"), (2, "b"), (1, "c")])
    second = pipeline | "Second" >> beam.Create([(1, "d"), (3, "e")]) | "Keep" >> beam.Map(lambda kv: kv)
    joined = ((first, second) | "Joined" >> beam.Flatten() | "Group" >> beam.GroupByKey()
              | "Sorted" >> beam.MapTuple(lambda key, values: (key, sorted(values))))
    both = (first, second) | "Both" >> beam.Flatten()
    regrouped = (both | "GroupBoth" >> beam.GroupByKey()
                 | "SortedBoth" >> beam.MapTuple(lambda key, values: (key, sorted(values))))
    return joined, regrouped, both | "Count" >> beam.combiners.Count.Globally()


def _planned_transforms(monkeypatch, phase) -> dict:
    """{transform name: its spec's payload} of every runner read and write of `_flattened_and_grouped`'s stages,
    as the local runner plans them with `phase` in place of Beam's `sink_flattens`."""
    monkeypatch.setattr(translations, "sink_flattens", phase)
    pipeline = beam.Pipeline(options=PipelineOptions(RUNNER_ARGS))
    _flattened_and_grouped(pipeline)
    _, stages = fn_runner.FnApiRunner().create_stages(pipeline.to_runner_api())
    return {transform.unique_name: transform.spec.payload for stage in stages for transform in stage.transforms
            if transform.spec.urn in (bundle_processor.DATA_INPUT_URN, bundle_processor.DATA_OUTPUT_URN)}


def test_a_flatten_only_a_grouping_reads_is_written_into_the_grouping_and_another_keeps_its_stage(monkeypatch):
    beams = _planned_transforms(monkeypatch, local_runner._BEAM_SINK_FLATTENS)
    planned = _planned_transforms(monkeypatch, local_runner._flattens_into_groupings)
    assert {"Joined/Read", "Group/Write", "Both/Read"} <= beams.keys()
    assert "Joined/Read" not in planned and "Group/Write" not in planned  # no stage of its own
    assert planned["Joined/Write/0"] == planned["Joined/Write/1"] == beams["Group/Write"]  # into the grouping
    assert beams["Group/Write"].startswith(b"group:") and beams["Joined/Write/0"].startswith(b"materialize:")
    assert planned["Both/Read"] == beams["Both/Read"]  # read by a count too: Beam's stages
    assert {name: payload for name, payload in planned.items() if not name.startswith("Joined/Write")} == {
        name: payload for name, payload in beams.items() if name not in ("Joined/Read", "Group/Write")
        and not name.startswith("Joined/Write")}


@pytest.mark.e2e
def test_a_runs_flattens_planned_into_their_groupings_leave_an_order_to_run_in(corpus, tiny_model, tmp_path):
    """The whole run's plan: its joins' Flattens go into their groupings, and what had to follow a dropped stage
    follows stages of the plan, never itself (Beam 2.77 makes no grouping follow its Flatten's stage; one that
    did would leave each writer following itself)."""
    directory, _ = corpus
    pipeline = built_pipeline(directory / "*.parquet", tmp_path / "out", tiny_model)
    planned: dict = {}  # the phase's stages -> what each must follow, as the phase left them (fusion comes after)

    def phase(stages, context):
        made = local_runner._flattens_into_groupings(stages, context)
        planned.update((stage, stage.must_follow) for stage in made)
        return made

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(translations, "sink_flattens", phase)
        fn_runner.FnApiRunner().create_stages(pipeline.to_runner_api())
    names = {transform.unique_name for stage in planned for transform in stage.transforms}
    assert "ClusterGroups/AssignGroup/Group/Write" not in names  # a join's Flatten went into its grouping
    assert all(stage not in before and before <= planned.keys() for stage, before in planned.items())


@pytest.mark.parametrize("args", [RUNNER_ARGS, pytest.param([*RUNNER_ARGS, *MULTI_PROCESSING], marks=pytest.mark.e2e)],
                         ids=["one-process", "two-processes"])
def test_flattens_written_into_their_groupings_give_beams_results(monkeypatch, args):
    monkeypatch.setattr(translations, "sink_flattens", local_runner._BEAM_SINK_FLATTENS)  # Beam's, till the end
    group_flattens_directly(PipelineOptions(["--runner=DataflowRunner"]))
    assert translations.sink_flattens is local_runner._BEAM_SINK_FLATTENS  # Dataflow plans its own
    group_flattens_directly(PipelineOptions(args))
    assert translations.sink_flattens is local_runner._flattens_into_groupings
    with beam.Pipeline(options=PipelineOptions(args)) as pipeline:
        joined, regrouped, counted = _flattened_and_grouped(pipeline)
        assert_that(joined, equal_to(_GROUPED), label="CheckJoined")
        assert_that(regrouped, equal_to(_GROUPED), label="CheckRegrouped")
        assert_that(counted, equal_to([5]), label="CheckCount")


_ARENAS_AFTER_THREADS = """
import ctypes, os, sys, threading
from apache_beam.options.pipeline_options import PipelineOptions
from pipelines.local_runner import cap_malloc_arenas
cap_malloc_arenas(PipelineOptions(sys.argv[1:]))
print(os.environ.get("MALLOC_ARENA_MAX"), flush=True)
all_started = threading.Barrier(6)
def allocate():
    held = [bytearray(4096) for _ in range(50)]  # over pymalloc's 512 bytes: glibc's malloc
    all_started.wait()
threads = [threading.Thread(target=allocate) for _ in range(6)]
for thread in threads: thread.start()
for thread in threads: thread.join()
ctypes.CDLL(None).malloc_stats()  # an "Arena N:" block per arena, on stderr
"""


@pytest.mark.parametrize("args, capped", [(MULTI_PROCESSING, True), (RUNNER_ARGS, False),
                                          (["--runner=DataflowRunner"], False)])
def test_a_multi_process_run_caps_malloc_arenas_in_the_launcher_and_the_workers(args, capped):
    """Six threads allocating at once get an arena each, unless the cap holds; the worker processes inherit
    the variable that caps theirs."""
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "MALLOC_ARENA_MAX"}
    done = subprocess.run([sys.executable, "-c", _ARENAS_AFTER_THREADS, *args], env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    arenas = done.stderr.count("Arena ")
    assert done.stdout.split() == ([str(local_runner.MALLOC_ARENAS)] if capped else ["None"])
    assert (arenas <= local_runner.MALLOC_ARENAS) if capped else (arenas >= 7), done.stderr


def test_a_users_malloc_arena_max_is_kept(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    local_runner.cap_malloc_arenas(PipelineOptions(MULTI_PROCESSING))
    assert os.environ["MALLOC_ARENA_MAX"] == "4"


def test_a_worker_process_that_ends_is_watched_only_in_a_multi_process_run(monkeypatch):
    beams = (local_runner._BEAM_RUN_WORKER, local_runner._BEAM_READ_ANSWERS, local_runner._BEAM_PUSH_REQUEST,
             local_runner._BEAM_CLOSE_CONNECTION)
    monkeypatch.setattr(local_job_service.SubprocessSdkWorker, "run", beams[0])
    for name, beams_own in zip(("_read", "push", "close"), beams[1:]):
        monkeypatch.setattr(worker_handlers.ControlConnection, name, beams_own)

    def watching():
        return (local_job_service.SubprocessSdkWorker.run, worker_handlers.ControlConnection._read,
                worker_handlers.ControlConnection.push, worker_handlers.ControlConnection.close)

    local_runner.watch_local_workers(PipelineOptions(["--runner=DataflowRunner", *MULTI_PROCESSING]))
    local_runner.watch_local_workers(PipelineOptions(RUNNER_ARGS))
    assert watching() == beams
    local_runner.watch_local_workers(PipelineOptions([*RUNNER_ARGS, *MULTI_PROCESSING]))
    assert watching() == (local_runner._run_worker, local_runner._read_answers, local_runner._push_request,
                          local_runner._close_connection)


@pytest.mark.parametrize("said, hint", [
    ("Worker subprocess exited with return code 137", "(signal 9, SIGKILL: most often the kernel's out-of-memory"),
    ("Worker subprocess exited with return code 143", "(signal 15, SIGTERM)"),
    ("Worker subprocess exited with return code 1", "return code 1; give the run more memory"),
])
def test_the_hint_says_what_ended_a_worker_process_and_what_to_do(monkeypatch, said, hint):
    monkeypatch.setattr(local_runner, "_ended", [said])
    found = local_runner.ended_workers_hint()
    assert found.startswith(f"a worker process of this local run ended: {said}")
    assert hint in found and "--direct_num_workers" in found and "configs/local-one-process.yaml" in found
    local_runner.watch_local_workers(PipelineOptions(RUNNER_ARGS))  # a new run forgets the last one's
    assert local_runner.ended_workers_hint() is None


def _answers(*answers: beam_fn_api_pb2.InstructionResponse, broken: threading.Event | None = None):
    """A worker's answers on its control connection: these, then the end, or, once `broken` is set, what
    gRPC's request iterator raises when the worker process is gone."""
    yield from answers
    if broken is not None:
        broken.wait(10)
        raise RuntimeError("Socket closed")


def test_a_worker_connection_that_ends_fails_its_unanswered_requests_and_later_ones(monkeypatch):
    """Beam waits forever on a request that a dead worker never answers: a killed worker hung the run."""
    for name in ("_read", "push", "close"):
        monkeypatch.setattr(worker_handlers.ControlConnection, name, getattr(worker_handlers.ControlConnection, name))
    monkeypatch.setattr(local_job_service.SubprocessSdkWorker, "run", local_job_service.SubprocessSdkWorker.run)
    local_runner.watch_local_workers(PipelineOptions([*RUNNER_ARGS, *MULTI_PROCESSING]))

    for broken in (None, threading.Event()):  # the connection ends, or breaks (its process gone)
        connection = worker_handlers.ControlConnection()
        answered = connection.push(beam_fn_api_pb2.InstructionRequest(instruction_id="a"))
        unanswered = connection.push(beam_fn_api_pb2.InstructionRequest(instruction_id="b"))
        connection.set_input(_answers(beam_fn_api_pb2.InstructionResponse(instruction_id="a"), broken=broken))
        assert answered.get(timeout=10).instruction_id == "a"
        if broken is not None:
            broken.set()
        said = "broke .RuntimeError.'Socket closed'.. " if broken else "ended "
        with pytest.raises(RuntimeError, match=f"connection to a worker process {said}before it answered"):
            unanswered.get(timeout=10)
        assert unanswered.is_done() and unanswered._response.error  # what ends Beam's wait for a bundle's outputs
        connection._read_thread.join(10)
        assert answered.get(timeout=0).instruction_id == "a"  # an answer given stands
        with pytest.raises(RuntimeError, match="before it answered"):
            connection.push(beam_fn_api_pb2.InstructionRequest(instruction_id="c")).get(timeout=0.1)


def _wait_for_outputs(bundle: worker_handlers.ControlFuture) -> Exception | None:
    """What Beam's runner raises waiting for `bundle`'s outputs on a data connection its worker never opened
    (as `BundleManager.process_bundle` waits), or None if it still waits after 10 s."""
    raised: list[Exception] = []

    def wait() -> None:
        outputs = data_plane._GrpcDataChannel().input_elements(
            bundle.instruction_id, ["out"], abort_callback=lambda: bundle.is_done() and bool(bundle.get().error))
        try:
            list(outputs)
        except Exception as error:  # noqa: BLE001 - returned to the test
            raised.append(error)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    waiter.join(10)
    return raised[0] if raised else None


def test_a_worker_process_that_ends_before_it_connects_fails_every_request_of_the_run(monkeypatch):
    """A worker killed while it starts never connects: its connection is never read, so `_read_answers`
    cannot fail its requests; the process's end does."""
    for name in ("_read", "push", "close"):
        monkeypatch.setattr(worker_handlers.ControlConnection, name, getattr(worker_handlers.ControlConnection, name))
    monkeypatch.setattr(local_job_service.SubprocessSdkWorker, "run", local_job_service.SubprocessSdkWorker.run)
    local_runner.watch_local_workers(PipelineOptions([*RUNNER_ARGS, *MULTI_PROCESSING]))
    never_read = worker_handlers.ControlConnection()
    waiting = never_read.push(beam_fn_api_pb2.InstructionRequest(instruction_id="a"))

    def killed(self):
        raise RuntimeError("Worker subprocess exited with return code 137")

    monkeypatch.setattr(local_runner, "_BEAM_RUN_WORKER", killed)
    worker = local_job_service.SubprocessSdkWorker(
        f"{sys.executable} -m apache_beam.runners.worker.sdk_worker_main".encode(), "localhost:1", None)
    with pytest.raises(RuntimeError, match="137"):
        local_runner._run_worker(worker)
    assert worker._worker_command_line == f"{sys.executable} -m pipelines.local_worker"  # quiet as it starts
    with pytest.raises(RuntimeError, match="a worker process of this run ended: .* 137"):
        waiting.get(timeout=10)
    with pytest.raises(RuntimeError, match="a worker process of this run ended"):
        never_read.push(beam_fn_api_pb2.InstructionRequest(instruction_id="b")).get(timeout=0.1)
    # the worker's own connection, first pushed to after its process ended, and the runner's wait for that
    # bundle's outputs on a data connection the worker never opened, as Beam waits (a killed worker hung a
    # run so: the wait ends only when the data connection closes or the future is done with an error)
    for pushed in (waiting, worker_handlers.ControlConnection().push(beam_fn_api_pb2.InstructionRequest(
            instruction_id="c"))):
        assert re.match("a worker process of this run ended: .* 137", str(_wait_for_outputs(pushed)))
    assert local_runner.ended_workers_hint().startswith("a worker process of this local run ended")
    local_runner.watch_local_workers(PipelineOptions([*RUNNER_ARGS, *MULTI_PROCESSING]))  # the next run's wait
    next_run = worker_handlers.ControlConnection().push(beam_fn_api_pb2.InstructionRequest(instruction_id="d"))
    assert not next_run.is_done()


def _worker_processes(root: int) -> list[int]:
    """The local worker processes (Python, not the shells that start them) below `root`."""
    found = []
    for pid in _tree_usage(root):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                words = handle.read().split(b"\0")
        except OSError:
            continue
        if "python" in os.path.basename(words[0].decode()) and local_runner.LOCAL_WORKER_PLUGIN.encode() in words:
            found.append(pid)
    return found


class _Connecting:
    """The gRPC context of a worker's control connection, as Beam's control servicer reads it."""

    def invocation_metadata(self):
        return [("worker_id", "worker_7")]


def test_a_worker_that_connects_after_the_run_closed_its_connection_is_told_to_end(monkeypatch):
    """A run that failed before a worker connected closed that worker's connection unstarted; the worker,
    connecting later, waited for requests while the runner waited for it to end (a killed worker's run hung
    so)."""
    monkeypatch.setattr(worker_handlers.ControlConnection, "close", worker_handlers.ControlConnection.close)
    local_runner.watch_local_workers(PipelineOptions([*RUNNER_ARGS, *MULTI_PROCESSING]))
    servicer = worker_handlers.BeamFnControlServicer(worker_manager=None)
    servicer.get_conn_by_worker_id("worker_7").close()  # the run's end, before the worker connected
    requests: list = []
    connected = threading.Thread(target=lambda: requests.extend(servicer.Control(iter(()), _Connecting())),
                                 daemon=True)
    connected.start()
    connected.join(10)
    assert not connected.is_alive() and requests == []  # the worker's stream ended, with no request: it ends


@pytest.mark.e2e
@pytest.mark.parametrize("after_s", [0, 2], ids=["as-it-starts", "running"])
def test_a_killed_worker_process_fails_the_run_saying_why_and_replaces_nothing(corpus, reference_run, tiny_model,
                                                                               tmp_path, after_s):
    """Killed as it starts (before it connects: 2 runs in 3 hung before the fixes) or while it runs stages
    (one in four hung)."""
    directory, _ = corpus
    out = tmp_path / "out"
    shutil.copytree(reference_run[0], out)  # a previous run's output, which the failed run must leave as it was
    before = snapshot(out)
    log = tmp_path / "run.log"  # a file, not a pipe nobody reads while the run goes on
    with open(log, "w") as handle:
        run = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "run", "--input", str(directory / "*.parquet"), "--output",
             str(out), "--overwrite", "--scorer-model", tiny_model, *RUNNER_ARGS, *MULTI_PROCESSING],
            stdout=handle, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not (workers := _worker_processes(run.pid)) and run.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert workers, "no worker process started"
            time.sleep(after_s)  # 2 s: connected to the runner, and running its stages
            os.kill(workers[0], signal.SIGKILL)  # as the kernel's out-of-memory killer ends a process
            run.wait(timeout=120)  # fails; does not hang
        finally:
            if run.poll() is None:
                run.kill()
    said = log.read_text()
    assert run.returncode == 1, said
    last = said.strip().splitlines()[-1]
    assert last.startswith("qdedup: error: the pipeline failed: a worker process of this local run ended: "), last
    assert "return code 137 (signal 9, SIGKILL: most often the kernel's out-of-memory killer)" in last, last
    assert snapshot(out) == before  # the previous output, file for file, byte for byte
