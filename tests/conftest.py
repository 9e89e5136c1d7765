"""Shared fixtures: the sample corpus, a tiny random cross-encoder, and one reference run of qdedup."""
from __future__ import annotations

import tests.worker_cores  # noqa: F401  (first, before numpy, torch and faiss load: this worker's cores)

# isort: split
import contextlib
import fcntl
import json
import weakref

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.random_model import make_random_model
from samples.make_sample import build_rows
from tests.helpers import run_qdedup


def _introspect_each_dofn_once() -> None:
    """Beam reads the signature of every method of a DoFn each time it asks whether the DoFn keeps state
    (`userstate.get_dofn_specs`, about 8 times a ParDo while a pipeline is built and run: ~1.5 s of a small
    test run's ~8.5). Nothing it reads changes for a DoFn object, so the suite asks once an object; a run
    outside the tests is unchanged."""
    from apache_beam.transforms import userstate

    introspect, known = userstate.get_dofn_specs, weakref.WeakKeyDictionary()

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
    (`core.get_function_args_defaults`, ~26,000 times a small test run: every method of every DoFn of every
    bundle, as each bundle unpickles its DoFns anew). A function's arguments do not change, so the suite reads
    them once a function (a bound method's once its function, as binding drops the same first argument
    whatever the object); a run outside the tests is unchanged."""
    import types

    from apache_beam.transforms import core

    read, known = core.get_function_args_defaults, weakref.WeakKeyDictionary()

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
    2,000 times a run, and each view builds an argument parser of its class and parses the flags again
    (~1.4 s of a small test run's ~8). A view holds no value of its own (every view of an options object
    shares its values), so the suite makes one view an options object, class and flag list; a run outside
    the tests is unchanged."""
    from apache_beam.options.pipeline_options import PipelineOptions

    view_as, views = PipelineOptions.view_as, weakref.WeakKeyDictionary()

    def once(options, cls):
        known = views.setdefault(options, {})
        view = known.get(cls)
        if view is None or view._flags is not options._flags or view._all_options is not options._all_options:
            view = known[cls] = view_as(options, cls)
        return view

    PipelineOptions.view_as = once


_introspect_each_dofn_once()
_read_each_signature_once()
_one_view_per_options_class()


@contextlib.contextmanager
def _made_once(tmp_path_factory, name: str):
    """(folder, whether it is still to be made) for a folder every pytest-xdist worker of this session sees
    (the per-worker base's parent); the first worker to ask makes it while the others wait."""
    root = tmp_path_factory.getbasetemp()
    if root.name.startswith("popen-gw"):
        root = root.parent
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = root / f"{name}.done"
        yield root / name, not done.exists()
        done.touch()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """The sample rows plus a second file whose text column is not a string column (one copy per session,
    so every worker's outputs name the same source files)."""
    rows = build_rows()
    with _made_once(tmp_path_factory, "corpus") as (directory, to_make):
        if to_make:
            directory.mkdir(exist_ok=True)  # a worker that failed half way may have left it
            pq.write_table(pa.table({"id": pa.array([r[0] for r in rows], pa.int64()),
                                     "question": pa.array([r[1] for r in rows], pa.string())}),
                           directory / "a.parquet")
            pq.write_table(pa.table({"id": pa.array([3001, 3002], pa.int64()), "question": [7, 8]}),
                           directory / "b.parquet")
    return directory, rows + [(3001, 7), (3002, 8)]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A random 2-layer BERT pair classifier (its vocabulary holds every CJK ideograph)."""
    with _made_once(tmp_path_factory, "tiny_model") as (directory, to_make):
        if to_make:
            make_random_model(str(directory))
    return str(directory)


@pytest.fixture(scope="session")
def reference_run(corpus, tiny_model, tmp_path_factory):
    """(output directory, report) of one default run over `corpus`, made once per test session (whichever
    worker asks first runs it; the others read it). Tests only read it."""
    directory, _ = corpus
    with _made_once(tmp_path_factory, "reference_run") as (folder, to_make):
        if to_make:
            run_qdedup(directory / "*.parquet", folder / "out", tiny_model)
    return folder / "out", json.loads((folder / "out" / "report.json").read_text())
