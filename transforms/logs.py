"""Quiet by default: library messages and progress bars that tell a qdedup user nothing are dropped.

qdedup's own lines (rows read, pairs scored, pairs/s, time left) stay. `--verbose` (which sets
QDEDUP_VERBOSE=1 for the launcher and the worker processes it starts) shows everything. Called by the
launcher before anything else is imported, and by each worker as it loads a model.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
import warnings
from typing import Iterator, Optional

# Warnings libraries print on import, per bundle or as a local worker process starts, whatever the run does.
NOISE = ("apitools not found", "Resource module is not available", "No semi_persistent_directory found")
# How every process of a run writes its lines on stderr (the launcher's and its local worker processes').
LINE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers whose INFO lines are the runner's and the libraries' business, not the user's.
QUIET_LOGGERS = {"apache_beam": logging.WARNING, "transformers": logging.ERROR, "huggingface_hub": logging.ERROR,
                 "faiss": logging.WARNING, "urllib3": logging.WARNING}
VERBOSE = "QDEDUP_VERBOSE"
PROGRESS_SECONDS = 30.0  # how often a worker says how far a long step has come
_ENVIRONMENT = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(NOISE)


def verbose() -> bool:
    return os.environ.get(VERBOSE) == "1"


def quiet_libraries(*noisy: str) -> None:
    """Drops `NOISE` (said to the root logger, or to one named in `noisy`), quiets `QUIET_LOGGERS` and turns
    off Hugging Face progress bars; verbose, undoes that. A filter drops a record only where it is said: a
    library logging through a logger of its own has that logger named in `noisy`."""
    said = [logging.getLogger(), *map(logging.getLogger, noisy)]
    if verbose():
        for logger in said:
            for noise in [f for f in logger.filters if isinstance(f, _DropNoise)]:
                logger.removeFilter(noise)
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
        for name, value in _ENVIRONMENT.items():
            if os.environ.get(name) == value:  # ours, inherited from a quiet parent process
                del os.environ[name]
        if "transformers" in sys.modules:
            from transformers.utils import logging as transformers_logging
            transformers_logging.enable_progress_bar()
            transformers_logging.set_verbosity_warning()
        return
    for name, value in _ENVIRONMENT.items():  # read when huggingface_hub and transformers are imported
        os.environ.setdefault(name, value)
    for logger in said:
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    if "transformers" in sys.modules:  # imported before the environment was set
        from transformers.utils import logging as transformers_logging
        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """What a library prints and warns inside the block is dropped (progress bars, tracer warnings), unless
    verbose: for calls that talk although their logger is quiet (NNCF's progress bars, torch's tracer)."""
    if verbose():
        yield
        return
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


class Progress:
    """How far one worker has come through a step, logged at most every `interval` seconds, so that a long run
    says what it is doing between its other lines (at 1M rows, minutes pass between reading and blocking,
    and after the last pair is scored): "<step>: N <things> by this worker, R <things>/s", with the share
    done and the time left where the total is known (`at_most`: the total is a bound). Make it in a DoFn's
    setup: it counts what that worker's instance does. `interval`: `PROGRESS_SECONDS` unless given."""

    def __init__(self, logger: logging.Logger, step: str, things: str, interval: Optional[float] = None):
        self._logger = logger
        self._step = step
        self._things = things
        self._interval = PROGRESS_SECONDS if interval is None else interval
        self._done = 0
        self._started = self._last = None

    def add(self, count: int = 1, total: Optional[int] = None, at_most: bool = False) -> None:
        now = time.monotonic()
        if self._started is None:
            self._started = self._last = now
        self._done += count
        if now - self._last < self._interval or now <= self._started:
            return
        self._last = now
        rate = self._done / (now - self._started)
        if total is None:
            self._logger.info("%s: %d %s by this worker, %.1f %s/s", self._step, self._done, self._things, rate,
                              self._things)
            return
        self._logger.info("%s: %d of %s%d %s (%.1f%%) by this worker, %.1f %s/s, ~%.0f s left if it did the rest "
                          "alone", self._step, self._done, "at most " if at_most else "", total, self._things,
                          100.0 * self._done / max(total, 1), rate, self._things,
                          max(total - self._done, 0) / rate)
