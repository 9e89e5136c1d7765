"""A long step says how far it has come (`transforms.logs.Progress`), at most every interval."""
import logging
import sys

from transforms import logs
from transforms.logs import Progress


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_is_logged_once_an_interval_with_the_rate_and_what_is_left(monkeypatch, caplog):
    clock = _Clock()
    monkeypatch.setattr(logs.time, "monotonic", clock)
    progress = Progress(logging.getLogger("qdedup.test"), "scoring", "pairs", interval=30.0)
    with caplog.at_level("INFO", logger="qdedup.test"):
        progress.add(1, total=101)           # starts the clock
        clock.now += 10.0
        progress.add(49, total=101)          # 10 s in: too soon
        clock.now += 20.0
        progress.add(10, total=101)          # 30 s in: 60 pairs, 2 a second, 41 left
        clock.now += 5.0
        progress.add(1, total=101)           # too soon again
    assert [r.getMessage() for r in caplog.records] == [
        "scoring: 60 of 101 pairs (59.4%) by this worker, 2.0 pairs/s, ~20 s left if it did the rest alone"]


def test_progress_without_a_total_or_with_a_bound(monkeypatch, caplog):
    clock = _Clock()
    monkeypatch.setattr(logs.time, "monotonic", clock)
    monkeypatch.setattr(logs, "PROGRESS_SECONDS", 1.0)   # what a step that is given no interval uses
    counted, bounded = (Progress(logging.getLogger("qdedup.test"), step, "rows") for step in ("writing", "dealing"))
    with caplog.at_level("INFO", logger="qdedup.test"):
        counted.add()
        bounded.add(1, total=10, at_most=True)
        clock.now += 2.0
        counted.add(3)
        bounded.add(1, total=10, at_most=True)
    assert [r.getMessage() for r in caplog.records] == [
        "writing: 4 rows by this worker, 2.0 rows/s",
        "dealing: 2 of at most 10 rows (20.0%) by this worker, 1.0 rows/s, ~8 s left if it did the rest alone"]


def test_noise_said_through_a_named_logger_is_dropped_there_unless_verbose(monkeypatch, caplog):
    """A library's own logger (Beam's harness says "No semi_persistent_directory found" under its module's
    name) is filtered where the message is said: the root logger's filter does not see it."""
    harness = logging.getLogger("qdedup.test.harness")
    said = []

    def say():
        caplog.clear()
        harness.warning("No semi_persistent_directory found: %s", "none staged")
        harness.warning("a warning that is not noise")
        said.append([r.getMessage() for r in caplog.records])

    monkeypatch.delenv(logs.VERBOSE, raising=False)
    monkeypatch.delitem(sys.modules, "transformers", raising=False)  # its progress bars left as they are
    with caplog.at_level("WARNING", logger="qdedup.test.harness"):
        say()                                   # before: the root's filter misses it
        logs.quiet_libraries("qdedup.test.harness")
        say()
        monkeypatch.setenv(logs.VERBOSE, "1")
        logs.quiet_libraries("qdedup.test.harness")
        say()
    monkeypatch.delenv(logs.VERBOSE)
    logs.quiet_libraries()  # the suite's quiet settings back
    assert said == [["No semi_persistent_directory found: none staged", "a warning that is not noise"],
                    ["a warning that is not noise"],
                    ["No semi_persistent_directory found: none staged", "a warning that is not noise"]]
