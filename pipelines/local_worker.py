"""A local multi-process run's worker process: Beam's SDK harness (`sdk_worker_main`), quiet from its first
line, and the settings the launcher makes for its workers.

Beam starts each worker process as `python -m apache_beam.runners.worker.sdk_worker_main`, which speaks
before it reads the log levels the launcher gives it (`local_runner.pass_settings_to_local_processes`): a
library's warning on import, which also gives the process Python's bare line format ("WARNING:root:..."),
the harness's INFO start-up lines and its warning that no main session was staged (none is: a local worker
imports qdedup's steps). The launcher starts this module in its place (`local_runner.worker_command`): the
process's lines get the launcher's format and `logs.NOISE` is dropped before Beam is imported, then Beam's
harness runs as it would. Beam also imports this module as a plugin before it makes its worker, so that the
worker lets a finished stage's bundle processor go a second after its stage, as the launcher's in-process
worker does (`local_runner.release_finished_stages_here`), and reads what Beam reads off its DoFns once
(`local_runner.read_beam_introspection_once`).
"""
import logging
import sys

from transforms import logs

if __name__ == "__main__":  # the worker process's entry, before Beam is imported: Beam warns on import
    logging.basicConfig(level=logging.INFO, format=logs.LINE_FORMAT)

from pipelines.local_runner import read_beam_introspection_once, release_finished_stages_here  # noqa: E402

release_finished_stages_here()
read_beam_introspection_once()


def main() -> None:
    """Beam's SDK harness, with its own logger's noise dropped (it says it under its module's name)."""
    from apache_beam.runners.worker import sdk_worker_main
    logs.quiet_libraries(sdk_worker_main.__name__)
    sdk_worker_main.main(sys.argv)


if __name__ == "__main__":
    main()
