"""Settings of Beam's local runner (FnApiRunner, Beam 2.77) that a local run needs, made by the launcher
before the runner starts (`prepare`) and, for the worker processes of a multi-process run, in each of them
(`pipelines/local_worker.py`). Each one is measured in benchmarks/README.md; a run on Dataflow, which makes
its workers itself, gets none of them.

- No timed flush: the runner's timed flush of a worker's input stream lost elements
  (`turn_off_timed_flush`).
- Inputs streamed: a stage's input goes to a worker process in pieces, sent while the worker runs the
  bundle, instead of as one message built whole first (`stream_local_inputs`).
- Finished stages let go a second after their stage (`release_finished_stages_here`).
- The launcher's settings reach the worker processes (`pass_settings_to_local_processes`).
- Fewer malloc arenas in a multi-process run's processes (`cap_malloc_arenas`).
- A worker process that ends during the run fails the run instead of leaving it waiting for that worker's
  answer, and is remembered, so that the run's error can say why (`watch_local_workers`,
  `ended_workers_hint`).
- What Beam reads off a DoFn, a function or the options, read once, not at every ask
  (`read_beam_introspection_once`).
- A Flatten whose only reader is a GroupByKey written straight into the grouping
  (`group_flattens_directly`).
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import signal
import tempfile
import threading
import types
import weakref
from typing import Any, Iterable, Optional

from apache_beam.coders.coder_impl import create_OutputStream
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.runners.portability import local_job_service
from apache_beam.runners.portability.fn_api_runner import execution, fn_runner, translations, worker_handlers
from apache_beam.runners.worker import bundle_processor, sdk_worker
from apache_beam.transforms import core, userstate
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils import windowed_value


def on_dataflow(pipeline_options: PipelineOptions) -> bool:
    """Whether the run goes to Dataflow, which ignores the local runner's settings (`--direct_*`, Beam's
    local worker constants) and makes its workers itself."""
    return "Dataflow" in (pipeline_options.view_as(StandardOptions).runner or "")


def local_processes(pipeline_options: PipelineOptions) -> bool:
    """Whether this run's workers are local processes (Dataflow ignores --direct_running_mode)."""
    return (pipeline_options.view_as(DirectOptions).direct_running_mode == "multi_processing"
            and not on_dataflow(pipeline_options))


def turn_off_timed_flush(pipeline_options: PipelineOptions) -> None:
    """Beam's local runner (2.77) sends a stage's input to workers it reaches over gRPC (`multi_processing`,
    `multi_threading`) through a stream that a background thread flushes every second: a flush sends what
    was written, then clears the buffer without holding the writer off, so what the runner writes while
    the flush waits on a full send queue is cleared unsent (`TimeBasedBufferingClosableOutputStream`).
    That lost 2.7-44% of a collection in 1M-row runs in two processes, and 10-20% of 8M elements in a
    pipeline of Beam's own transforms (benchmarks/README.md, "The two-process loss found"). With the
    runner's time limit 0 its streams are flushed only by their writer: every element sent.
    Set in the launcher, where the runner makes its data server; a runner that is not local ignores it."""
    if on_dataflow(pipeline_options):
        return
    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0


# Bytes of encoded groups in one piece of a grouped stage input, sent as one message (a piece never splits a
# group; Beam's workers send their outputs in messages of ~10 MB, which are the pieces of other inputs).
INPUT_PIECE_BYTES = 4 << 20

# Beam's own, which the local runner's methods below replace and fall back on.
_BEAM_PARTITION = execution.GroupingBuffer.partition
_BEAM_PROCESS_BUNDLE = fn_runner.BundleManager.process_bundle
_BEAM_DOFN_SPECS = userstate.get_dofn_specs
_BEAM_FUNCTION_ARGS = core.get_function_args_defaults
_BEAM_VIEW_AS = PipelineOptions.view_as
_BEAM_SINK_FLATTENS = translations.sink_flattens


def _partition_in_pieces(self: execution.GroupingBuffer, n: int) -> list[list[bytes]]:
    """`GroupingBuffer.partition` making each worker's part a list of pieces of about `INPUT_PIECE_BYTES`
    instead of one bytes object the size of the part: the same keys to the same parts, in the same
    order. Each key's decoded values are let go as its group is encoded, so the grouped values and their
    encoding are not both held whole. Windowed groupings (not the global window) keep Beam's code."""
    if self._grouped_output or not self._windowing.is_default():
        return _BEAM_PARTITION(self, n)
    in_window = GlobalWindows.windowed_value(
        None, timestamp=GlobalWindow().max_timestamp(),
        pane_info=windowed_value.PaneInfo(is_first=True, is_last=True, timing=windowed_value.PaneInfoTiming.ON_TIME,
                                          index=0, nonspeculative_index=0)).with_value
    coder_impl = self._post_grouped_coder.get_impl()
    key_coder_impl = self._key_coder.get_impl()
    parts: list[list[bytes]] = [[] for _ in range(n)]
    streams = [create_OutputStream() for _ in range(n)]
    for index, encoded_key in enumerate(list(self._table)):
        stream = streams[index % n]
        values = self._table.pop(encoded_key)
        coder_impl.encode_to_stream(in_window((key_coder_impl.decode(encoded_key), values)), stream, True)
        if stream.size() >= INPUT_PIECE_BYTES:
            parts[index % n].append(stream.get())
            streams[index % n] = create_OutputStream()
    for part, stream in zip(parts, streams):
        if stream.size() or not part:
            part.append(stream.get())
    self._grouped_output = parts
    return parts


def _send_input_to_worker(self: fn_runner.BundleManager, process_bundle_id: str, read_transform_id: str,
                          byte_streams: Optional[Iterable[bytes]]) -> None:
    """`BundleManager._send_input_to_worker` sending a stage's input piece by piece (a grouped input's
    pieces are `_partition_in_pieces`'s, another's are the messages its producers' workers sent) and, to a
    worker reached over gRPC, from a thread of its own, so that the runner asks the worker to run the
    bundle and collects its outputs while the input is still being sent. Beam's runner writes the whole
    input into one stream and sends it as one message on close: the worker starts only once the launcher
    has made its whole part three more times (the stream's buffer, the message, gRPC's copy;
    benchmarks/README.md, "2026-12-03 (eighteenth session)"), and a part over 2 GB cannot be sent. A piece
    waits in Beam's send queues (100 MB each) while the worker is behind, so what is in flight stays
    bounded; they must not be filled from the runner's thread, which asks the worker to run the bundle
    only after its inputs are sent. The in-process worker runs a bundle when asked, on what was sent
    before: there the pieces are sent first, as Beam does."""
    data_out = self._worker_handler.data_conn.output_stream(process_bundle_id, read_transform_id)

    def send() -> None:
        for byte_stream in byte_streams or []:
            data_out.write(byte_stream)
            data_out.flush()
        data_out.close()

    def send_in_thread() -> None:
        try:
            send()
        except BaseException as error:  # noqa: BLE001 - handed to the bundle's thread, which raises it
            self._input_errors.append(error)

    if isinstance(self._worker_handler, worker_handlers.EmbeddedWorkerHandler):
        send()
        return
    sender = threading.Thread(target=send_in_thread, name=f"send-{process_bundle_id}", daemon=True)
    self._input_senders.append(sender)
    sender.start()


def _process_bundle(self: fn_runner.BundleManager, *args: Any, **kwargs: Any):
    """Beam's `BundleManager.process_bundle`, then waits for the threads sending its inputs and raises
    what they raised. A worker ends a bundle that succeeds only after reading each input's last piece, so
    the senders are done or about to be; one that fails discards the rest of its input, so they finish
    too, and the runner raises the bundle's error after this returns (tested)."""
    self._input_senders, self._input_errors = [], []
    result = _BEAM_PROCESS_BUNDLE(self, *args, **kwargs)
    for sender in self._input_senders:
        sender.join()
    if self._input_errors:
        raise self._input_errors[0]
    return result


def stream_local_inputs(pipeline_options: PipelineOptions) -> None:
    """A local run's grouped stage inputs made in pieces (`_partition_in_pieces`) and every stage input
    sent while its bundle runs (`_send_input_to_worker`). In the launcher, where the runner runs; a runner
    that is not local ignores it."""
    if on_dataflow(pipeline_options):
        return
    execution.GroupingBuffer.partition = _partition_in_pieces
    fn_runner.BundleManager._send_input_to_worker = _send_input_to_worker
    fn_runner.BundleManager.process_bundle = _process_bundle


def _flattens_into_groupings(stages: Iterable[translations.Stage], context: translations.TransformContext
                             ) -> list[translations.Stage]:
    """Beam's `sink_flattens` phase (2.77), then each Flatten whose output only a GroupByKey reads writes its
    inputs straight into that grouping. Beam's phase makes every Flatten of several inputs a stage of its
    own: each input written to a buffer, read back by the Flatten's stage, written again to the grouping
    (every `JoinByKey` is a Flatten into a GroupByKey). Here the inputs' writes go to the grouping's buffer
    instead, and the Flatten's read and the grouping's write are dropped: an element is coded twice fewer
    and, in a multi-process run, makes no round trip through a worker. Beam's phase has made every input
    of a Flatten the Flatten's coder (`fix_flatten_coders`), and a grouping's buffer takes writes of
    several stages as a Flatten's does; a Flatten of inputs in other windowings than its output's, or
    read by another transform too, or as a side input, keeps Beam's stages."""
    stages = list(_BEAM_SINK_FLATTENS(stages, context))
    pcollections = context.components.pcollections
    writers: dict = {}  # buffer id -> the stages writing it
    readers: dict = {}  # PCollection id -> the stages reading it, as a main or a side input
    for stage in stages:
        for transform in stage.transforms:
            if transform.spec.urn == bundle_processor.DATA_OUTPUT_URN:
                writers.setdefault(transform.spec.payload, []).append(stage)
            for pcoll in transform.inputs.values():
                readers.setdefault(pcoll, []).append(stage)
    dropped: dict = {}  # a dropped stage -> the stages that take its place in what must follow it
    for stage in stages:
        if len(stage.transforms) != 1 or stage.transforms[0].spec.urn != bundle_processor.DATA_INPUT_URN:
            continue
        read = stage.transforms[0]
        if translations.split_buffer_id(read.spec.payload)[0] != "materialize" or len(read.outputs) != 1:
            continue
        flattened = next(iter(read.outputs.values()))
        grouping = readers.get(flattened, [])
        inputs = writers.get(read.spec.payload, [])
        if len(grouping) != 1 or not inputs or len(grouping[0].transforms) != 1:
            continue
        write = grouping[0].transforms[0]
        if write.spec.urn != bundle_processor.DATA_OUTPUT_URN or \
                translations.split_buffer_id(write.spec.payload)[0] != "group":
            continue
        windowing = pcollections[flattened].windowing_strategy_id
        if any(pcollections[pcoll].windowing_strategy_id != windowing
               for writer in inputs for pcoll in writer.transforms[0].inputs.values()):
            continue
        context.add_data_channel_coder(flattened)  # the grouping decodes by its input's coder, as the write did
        for writer in inputs:
            writer.transforms[0].spec.payload = write.spec.payload
            writer.must_follow = writer.must_follow | grouping[0].must_follow
        dropped[stage] = dropped[grouping[0]] = frozenset(inputs)
    for stage in stages:
        if stage.must_follow & dropped.keys():
            stage.must_follow = frozenset().union(
                *(dropped.get(before, {before}) for before in stage.must_follow))
    return [stage for stage in stages if stage not in dropped]


def group_flattens_directly(pipeline_options: PipelineOptions) -> None:
    """`_flattens_into_groupings` in place of Beam's `sink_flattens` phase, in the launcher, where the runner
    plans its stages; a runner that is not local plans its own."""
    if on_dataflow(pipeline_options):
        return
    translations.sink_flattens = _flattens_into_groupings


# Seconds a local run's workers keep a finished stage's bundle processor before shutting it down.
LOCAL_STAGE_IDLE_S = 1.0

# Each worker process of a local multi-process run: started in place of Beam's harness module, and imported by
# Beam as a plugin before the process makes its worker.
LOCAL_WORKER_PLUGIN = "pipelines.local_worker"
_BEAM_WORKER_MAIN = "-m apache_beam.runners.worker.sdk_worker_main"


def worker_command(command: str) -> str:
    """Beam's command for a local worker process with `LOCAL_WORKER_PLUGIN` in place of Beam's harness module,
    which it runs once it has quieted the process's start-up lines (`pipelines/local_worker.py`)."""
    return command.replace(_BEAM_WORKER_MAIN, f"-m {LOCAL_WORKER_PLUGIN}")


def release_finished_stages_here() -> None:
    """Beam's worker (2.77) keeps each stage's bundle processor after its bundle, to reuse it, and shuts down
    those idle for `DEFAULT_BUNDLE_PROCESSOR_CACHE_SHUTDOWN_THRESHOLD_S` (60 s), checked as often. A kept
    processor holds its DoFns and the buffers its outputs were written through (up to ~16 MB each, kept
    when cleared), and the local runner runs each stage once: in one process, a run held the processors of
    the last one to two minutes' stages, 0.7 GiB at 100k rows (benchmarks/README.md, "2026-12-03
    (seventeenth session)"). At `LOCAL_STAGE_IDLE_S` they are shut down a second after their stage.
    Takes effect for a worker made after it in this process: Beam reads the setting, and the interval of
    its check, when it makes one."""
    sdk_worker.DEFAULT_BUNDLE_PROCESSOR_CACHE_SHUTDOWN_THRESHOLD_S = LOCAL_STAGE_IDLE_S


def _introspect_each_dofn_once() -> None:
    """Beam reads the signature of every method of a DoFn each time it asks whether the DoFn keeps state
    (`userstate.get_dofn_specs`, about 8 times a ParDo while a pipeline is built and run). Nothing it reads
    changes for a DoFn object, so it is read once an object."""
    introspect, known = _BEAM_DOFN_SPECS, weakref.WeakKeyDictionary()

    def once(dofn):
        try:
            return known[dofn]
        except KeyError:
            found = known[dofn] = introspect(dofn)
            return found
        except TypeError:  # an object a weak dictionary cannot hold
            return introspect(dofn)

    userstate.get_dofn_specs = once


def _read_each_signature_once() -> None:
    """Beam reads a function's arguments with `inspect.signature` each time it wraps a DoFn's method
    (`core.get_function_args_defaults`, ~26,000 times a small run: every method of every DoFn of every
    bundle, as each bundle unpickles its DoFns anew). A function's arguments do not change, so they are read
    once a function (a bound method's once its function, as binding drops the same first argument whatever
    the object)."""
    read, known = _BEAM_FUNCTION_ARGS, weakref.WeakKeyDictionary()

    def once(f):
        key, bound = (f.__func__, True) if isinstance(f, types.MethodType) else (f, False)
        try:
            found = known.setdefault(key, {})
        except TypeError:  # an object a weak dictionary cannot hold (a method descriptor such as str.strip)
            return read(f)
        if bound not in found:
            found[bound] = read(f)
        args, defaults = found[bound]
        return list(args), list(defaults)

    core.get_function_args_defaults = once


def _one_view_per_options_class() -> None:
    """Beam asks a pipeline's options for a view of one of their classes (`PipelineOptions.view_as`) some
    2,000 times a run, and each view builds an argument parser of its class and parses the flags again. A
    view holds no value of its own (every view of an options object shares its values), so one view is made
    an options object, class and flag list."""
    view_as, views = _BEAM_VIEW_AS, weakref.WeakKeyDictionary()

    def once(options, cls):
        known = views.setdefault(options, {})
        view = known.get(cls)
        if view is None or view._flags is not options._flags or view._all_options is not options._all_options:
            view = known[cls] = view_as(options, cls)
        return view

    PipelineOptions.view_as = once


_INTROSPECTION_READ_ONCE = []


def read_beam_introspection_once() -> None:
    """What Beam (2.77) reads again and again while it builds a pipeline and at every bundle, read once: a
    DoFn's state specs, a function's arguments, a view of the options (a small run: ~8.5 s -> ~5.5 s, most of
    it the same work asked again; benchmarks/README.md, "2026-12-02 (tenth session)" and "(thirty-sixth
    session)"). What each returns is what Beam's own returns. In the launcher of a local run
    (`prepare`), in its worker processes (`pipelines/local_worker.py`) and in the tests; once a process."""
    if not _INTROSPECTION_READ_ONCE:
        _introspect_each_dofn_once()
        _read_each_signature_once()
        _one_view_per_options_class()
        _INTROSPECTION_READ_ONCE.append(True)


def release_finished_local_stages(pipeline_options: PipelineOptions) -> None:
    """`release_finished_stages_here` in the launcher, before the runner makes its in-process worker, for a
    local run (the worker processes of a multi-process run get it from `pass_settings_to_local_processes`);
    a runner that is not local keeps Beam's default."""
    if not on_dataflow(pipeline_options):
        release_finished_stages_here()


_WORKER_OPTIONS = "qdedup-worker-options-"


def pass_settings_to_local_processes(pipeline_options: PipelineOptions) -> None:
    """Beam's local multi-process runner starts its SDK workers with empty pipeline options, so the log
    levels the launcher gives workers (`--sdk_harness_log_level_overrides`, `pipelines.cli.worker_log_levels`)
    would not reach them and every library's INFO lines would fill the terminal, and a setting the launcher
    makes in its own process (`release_finished_local_stages`) would not hold there. A worker reads its
    options from the file `PIPELINE_OPTIONS_FILE` names, an environment the worker processes inherit: the
    levels go there (the harness's own lines are Beam's: it runs under its module's name, `worker_command`),
    with `LOCAL_WORKER_PLUGIN` as a Beam plugin, which the worker imports before it makes its worker, in a
    file removed when the launcher exits. Only
    for the FnApiRunner, where this was seen and tested: a runner that does pass options must not have them
    replaced by the file."""
    if os.path.basename(os.environ.get("PIPELINE_OPTIONS_FILE", "")).startswith(_WORKER_OPTIONS):
        del os.environ["PIPELINE_OPTIONS_FILE"]  # an earlier run's in this process: not this run's to inherit
    runner = pipeline_options.view_as(StandardOptions).runner or ""
    if not local_processes(pipeline_options) or runner.split(".")[-1] != "FnApiRunner":
        return
    overrides = pipeline_options.get_all_options().get("sdk_harness_log_level_overrides") or {}
    handle, path = tempfile.mkstemp(prefix=_WORKER_OPTIONS, suffix=".json")
    with os.fdopen(handle, "w") as options_file:
        json.dump({"options": {"sdk_harness_log_level_overrides": overrides, "beam_plugins": [LOCAL_WORKER_PLUGIN]}},
                  options_file)
    atexit.register(_remove_quietly, path)
    os.environ["PIPELINE_OPTIONS_FILE"] = path


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


# glibc's malloc arenas in each process of a local multi-process run, and mallopt's code for that limit.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8


def cap_malloc_arenas(pipeline_options: PipelineOptions) -> None:
    """glibc gives each thread that allocates an arena of its own, up to 8 a core, and keeps what is freed in
    an arena for that arena: the launcher of a multi-process run, whose gRPC and sender threads pass every
    stage's input and output, kept well above what it held live (memray at 300k rows). At `MALLOC_ARENAS`
    its peak at 100k rows fell from 1.25 to 0.96 GiB, wall time not shown different (benchmarks/README.md,
    "2026-12-03 (twentieth session)"). Set here through mallopt, since glibc reads `MALLOC_ARENA_MAX` only when a
    process starts, and in that variable for the worker processes, which inherit it; a variable the user
    set is kept. A no-op for one process and on Dataflow, and where the C library has no mallopt."""
    if not local_processes(pipeline_options) or "MALLOC_ARENA_MAX" in os.environ:
        return
    os.environ["MALLOC_ARENA_MAX"] = str(MALLOC_ARENAS)
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


# Beam's own, which `watch_local_workers` wraps.
_BEAM_RUN_WORKER = local_job_service.SubprocessSdkWorker.run
_ended: list[str] = []  # what Beam said of each worker process that ended during this process's latest local run


def _run_worker(self: local_job_service.SubprocessSdkWorker) -> None:
    """Beam's `SubprocessSdkWorker.run`, which waits for its worker process and raises, in a thread no one
    joins, if that process ends with an exit code other than 0: what it raised is remembered. The process
    runs `worker_command`."""
    self._worker_command_line = worker_command(self._worker_command_line)
    try:
        _BEAM_RUN_WORKER(self)
    except Exception as error:
        _ended.append(str(error))
        # A worker that dies before it connects never answers on its connection, which is never read: every
        # request of the run fails instead of waiting (the run fails anyway), those pushed so far and, to
        # any connection, those pushed later (`_push_request`: a connection first pushed to after the end).
        lost = RuntimeError(f"a worker process of this run ended: {error}")
        _run_lost.append(lost)  # before the pushed are failed: a request pushed meanwhile is caught
        for connection in list(_connections):
            _fail_requests(connection, lost)
        raise


# Beam's own, which `watch_local_workers` wraps; what a connection whose worker is lost holds, under this name.
_BEAM_READ_ANSWERS = worker_handlers.ControlConnection._read
_BEAM_PUSH_REQUEST = worker_handlers.ControlConnection.push
_BEAM_CLOSE_CONNECTION = worker_handlers.ControlConnection.close
_LOST = "_qdedup_lost"
_connections: weakref.WeakSet = weakref.WeakSet()  # the control connections requests were pushed to
_run_lost: list[Exception] = []  # why every request of this process's latest local run fails, once one does


def _read_answers(self: worker_handlers.ControlConnection) -> None:
    """Beam's `ControlConnection._read`, which reads a worker's answers until its connection ends; then each
    request still unanswered fails, and each later one (`_push_request`). Beam leaves such a request waiting
    forever, and the run with it, when the worker died after sending a bundle's outputs or before it was
    given the bundle (a killed worker hung one run in four, tried). A connection the runner closes has
    none: it closes it after the last answer."""
    try:
        _BEAM_READ_ANSWERS(self)
        ended = "ended"
    except Exception as error:  # noqa: BLE001 - what broke the connection is said in the failure
        ended = f"broke ({error!r})"
    _fail_requests(self, RuntimeError(f"the connection to a worker process {ended} before it answered"))


def _fail_requests(connection: worker_handlers.ControlConnection, lost: Exception) -> None:
    """Every request of `connection` still unanswered fails with `lost`, and every later one (`_push_request`)."""
    setattr(connection, _LOST, lost)  # before the unanswered are failed: a request pushed meanwhile is caught
    for future in list(connection._futures_by_id.values()):
        _abort(future, lost)


def _abort(future: worker_handlers.ControlFuture, lost: Exception) -> None:
    """`future.get()` raises `lost`, and the future is done, with `lost` as its answer's error: Beam's runner
    waits for a bundle's outputs until the worker's data connection closes or the bundle's future is done
    with an error (`abort_callback` in `BundleManager.process_bundle`); an aborted future is not done, and
    the data connection of a worker that died before it connected never closes (a killed worker hung a
    run so)."""
    future.abort(lost)
    future.set(beam_fn_api_pb2.InstructionResponse(instruction_id=future.instruction_id, error=str(lost)))


def _push_request(self: worker_handlers.ControlConnection, request: Any) -> Any:
    """Beam's `ControlConnection.push`; a request to a worker whose connection ended, or in a run one of
    whose worker processes ended, fails at once."""
    _connections.add(self)
    future = _BEAM_PUSH_REQUEST(self, request)
    lost = getattr(self, _LOST, None) or next(iter(_run_lost), None)
    if future is not None and lost is not None:
        _abort(future, lost)
    return future


def _close_connection(self: worker_handlers.ControlConnection) -> None:
    """Beam's `ControlConnection.close`, which tells the worker to end only if it has connected: a run that
    fails before one of its workers connects (another worker died; the run then fails at once) closed that
    connection unstarted, and the worker, connecting later, waited for requests while the runner waited
    for its process to end (tried: 2 runs in 3 hung when a worker was killed as it started). Here the
    worker is told to end when it connects."""
    if self._state == worker_handlers.BeamFnControlServicer.UNSTARTED_STATE:
        self._push_queue.put(worker_handlers.BeamFnControlServicer._DONE_MARKER)  # a second, if it connects now
    _BEAM_CLOSE_CONNECTION(self)


def watch_local_workers(pipeline_options: PipelineOptions) -> None:
    """A local multi-process run fails when one of its worker processes ends during the run
    (`_read_answers`), and remembers why it ended, for `ended_workers_hint`. Beam's runner fails the run
    with its lost connection's words alone ("Channel closed prematurely."), and says why the process ended
    only in a thread's traceback in the log; a worker killed for memory, the likely end of an over-large
    local run, looks like any other failure. The runner joins its worker threads before it raises
    (`close_all` in `run_stages`' finally), so what they raised is here by then; a run that fails in a
    stage ends its workers with exit code 0 (none remembered, tried). A worker that connects after the
    run closed its connection is told to end (`_close_connection`)."""
    _ended.clear()
    _connections.clear()
    _run_lost.clear()
    if local_processes(pipeline_options):
        local_job_service.SubprocessSdkWorker.run = _run_worker
        worker_handlers.ControlConnection._read = _read_answers
        worker_handlers.ControlConnection.push = _push_request
        worker_handlers.ControlConnection.close = _close_connection


def ended_workers_hint() -> Optional[str]:
    """What to tell a user whose local run failed after a worker process ended (None if none ended).

    Beam starts each worker through a shell, which gives 128 + N for a process that signal N ended;
    SIGKILL (137) is, on Linux, most often the kernel's out-of-memory killer.
    """
    if not _ended:
        return None
    said = _ended[0]
    code = said.rsplit(" ", 1)[-1]
    reason = ""
    if code.isdigit() and int(code) > 128:
        number = int(code) - 128
        name = signal.Signals(number).name if number in signal.valid_signals() else "unknown"
        reason = f" (signal {number}, {name}"
        reason += ": most often the kernel's out-of-memory killer)" if number == signal.SIGKILL else ")"
    return (f"a worker process of this local run ended: {said}{reason}; give the run more memory, or fewer "
            f"worker processes (--direct_num_workers, or configs/local-one-process.yaml, which holds the "
            f"least)")


def prepare(pipeline_options: PipelineOptions) -> None:
    """Every setting above the launcher makes, before the runner starts."""
    if not on_dataflow(pipeline_options):
        read_beam_introspection_once()
    turn_off_timed_flush(pipeline_options)
    watch_local_workers(pipeline_options)
    cap_malloc_arenas(pipeline_options)
    stream_local_inputs(pipeline_options)
    group_flattens_directly(pipeline_options)
    release_finished_local_stages(pipeline_options)
    pass_settings_to_local_processes(pipeline_options)
