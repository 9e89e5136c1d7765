"""`qdedup run`: checks everything it can before the pipeline starts, runs it, completes the report."""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import time
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineState

from pipelines import local_runner
from pipelines.dedup import build_pipeline
from pipelines.evaluate import evaluate
from pipelines.explain import explain_command
from pipelines.options import QdedupOptions, expand_argv
from pipelines.preflight import check_placeholders, check_run, check_runner, output_run, validate
from pipelines.recall import recall
from pipelines.report import (
    build_report,
    collections_read,
    complete_report,
    gather,
    lowest_failure,
    read_problem,
    render,
    run_counts,
    written_rows,
)
from pipelines.review import review
from pipelines.train_blocker import train_blocker
from transforms import logs
from transforms.commit import OutputRun
from transforms.errors import QdedupError
from transforms.paths import join, write_json

_LOG = logging.getLogger("qdedup")
USAGE = """usage: qdedup run --input PATTERN --output DIR [--config YAML] [options] [Beam options]
       qdedup recall --pairs LABELLED_FILE [--report JSON] [--config YAML] [options]
       qdedup evaluate (--pairs LABELLED_FILE | --sheet SHEET [SHEET ...]) --run OUT_DIR [--report JSON]
       qdedup review --run OUT_DIR --output SHEET.csv [--size 200] [--seed S] [--previous-groups DIR]
       qdedup explain --run OUT_DIR ID [ID] [--json]
       qdedup train-blocker (--pairs LABELLED_FILE [--pairs ...] | --from-run OUT_DIR) --output DIR [options]

run:    finds duplicate questions in Parquet corpora.
recall: the share of labelled duplicate pairs that blocking makes candidates, with the same options.
evaluate: precision, recall and F1 of a run's groups on labelled pairs, and a threshold sweep; with
         --sheet, estimates with 95% intervals from labelled review sheets.
review: a sheet of pairs for a person to label, drawn by stratified sampling (for evaluate --sheet).
explain: why a row is in its group (the widest path of scored pairs to its canonical member), or why
         two rows are or are not grouped.
train-blocker: a static embedder for --embedders static:DIR, trained on labelled pairs
'qdedup run --help' lists the options."""


def failure_problem(report: dict, share: float) -> Optional[str]:
    """Why a run's model failures are too many to let it replace the previous output, or None."""
    checks = (("scorer", "pairs", report["pairs_failed"],
               report["pairs_scored"] + report["resplit_pairs_scored"] + report["pairs_failed"]),
              ("embedders", "questions", report["questions_failed"], report["questions_embedded"]))
    for model, what, failed, attempted in checks:
        if failed and (failed > share * attempted or failed == attempted):
            first = report.get("first_failure") or {}
            return (f"the {model} failed on {failed} of {attempted} {what} (more than --max-failed-share "
                    f"{share}); the first: {first.get('row')}: {first.get('reason')}: {first.get('detail')}")
    return None


def finish_report(result, out: OutputRun, configuration: dict, options: QdedupOptions,
                  started: float) -> tuple[dict, Optional[str]]:
    """report.json of a finished pipeline, and why it may not replace the previous output (or None).

    The counts are the run's metrics; the rows of groups/ and pairs/ are also read from the files the run
    wrote, and collections read in a later stage are counted there too (`read_count`), so a count, an
    output or a step that lost rows fails the run instead of being committed.
    """
    counts = run_counts(result)
    if counts is None:
        raise QdedupError(f"the runner ({options.view_as(StandardOptions).runner}) reported no metrics, and "
                          "report.json's counts are metrics: use FnApiRunner, DirectRunner, Prism or Dataflow")
    files = _files_by_folder(out)
    failed = counts["questions_failed"] + counts["pairs_failed"]
    report = build_report({**counts, "first_failure": lowest_failure(files) if failed else None}, configuration)
    report["collections_read"] = collections_read(result)
    report = complete_report(report, result, out.run_id, time.monotonic() - started)
    problem = failure_problem(report, options.max_failed_share) or read_problem(report)
    written = {"rows_out": written_rows(files, "groups"), "pairs_total": written_rows(files, "pairs")}
    for count, rows in written.items():
        if problem is None and report[count] != rows:
            problem = (f"the run counted {count} {report[count]}, but its files hold {rows} rows: the runner lost "
                       f"elements; please report this with report.json")
    scored = report["pairs_scored"] + report["pairs_reused"] + report["resplit_pairs"]
    if problem is None and report["pairs_total"] != scored:
        problem = (f"the run scored or reused {scored} pairs but wrote {report['pairs_total']}: the runner lost "
                   f"elements between scoring and writing; please report this with report.json")
    if problem is None and not report["accounting_ok"]:
        problem = "rows_in + rows_existing != rows_out + rows_rejected; please report this with report.json"
    return report, problem


def _pipeline_failure(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _files_by_folder(run: OutputRun) -> dict:
    folders: dict = {}
    for relative in run.written():
        folder, _, _ = relative.rpartition("/")
        folders.setdefault(folder, []).append(join(run.write_root, relative))
    return folders


def run(argv: Sequence[str]) -> int:
    started = time.monotonic()
    pipeline_options = PipelineOptions(worker_log_levels(expand_argv(argv)))
    options = pipeline_options.view_as(QdedupOptions)
    validate(options)
    check_placeholders(pipeline_options)
    check_runner(pipeline_options)
    with output_run(options) as out:
        launch = check_run(options, pipeline_options)
        info = launch.info
        _LOG.info("input: %d files, %d rows, ids of type %s", len(info.files), info.rows, info.id_type)
        pipeline = beam.Pipeline(options=pipeline_options)
        build_pipeline(pipeline, options, info.id_type, launch.configuration, out, launch.prior, launch.previous_groups)
        _LOG.info("run %s writes %s", out.run_id, out.write_root)
        try:
            result = pipeline.run()
            state = result.wait_until_finish()
            if state != PipelineState.DONE:
                raise RuntimeError(f"the pipeline ended in state {state}")
        except BaseException:
            _LOG.error("the run failed; what it wrote is in %s; %s is as it was", out.keep_failed(), out.output)
            raise

        try:
            report, problem = finish_report(result, out, launch.configuration, options, started)
        except BaseException:
            _LOG.error("the run's report failed; what it wrote is in %s; %s is as it was", out.keep_failed(),
                       options.output)
            raise
        if problem is None and report["rows_in"] != info.rows:
            problem = (f"the run counted {report['rows_in']} rows read, but the input held {info.rows} when it "
                       f"started: did its files change during the run?")
        if problem:
            write_json(out.draft_report, report)  # the failed run's report, kept with what it wrote
            where = out.keep_failed()
            print(f"qdedup: error: {problem}. Nothing replaced {options.output}; this run's rejected/ and "
                  f"report are in {where}", file=sys.stderr)
            return 1
        out.commit(report, render(report, gather(_files_by_folder(out), report)))
    print(f"qdedup: {report['rows_in']} rows in, {report['rows_rejected']} rejected, "
          + (f"{report['rows_existing']} from --existing, " if options.existing else "")
          + f"{report['groups']} groups (largest {report['largest_group']}), "
          f"{report['pairs_scored'] + report['resplit_pairs_scored']} pairs scored, "
          f"{report['pairs_reused'] + report['resplit_pairs'] - report['resplit_pairs_scored']} reused; "
          f"wrote {options.output}")
    return 0


def configure_logging(verbose: bool) -> None:
    """qdedup's progress lines at INFO on stderr; libraries quiet unless `verbose` (then every logger at INFO)."""
    if verbose:
        os.environ[logs.VERBOSE] = "1"  # inherited by the worker processes a local run starts
    logging.basicConfig(level=logging.INFO, force=True, format=logs.LINE_FORMAT)
    logs.quiet_libraries()


def worker_log_levels(argv: list[str]) -> list[str]:
    """Remote workers log qdedup's lines and only warnings of Beam and the model libraries (unless --verbose
    or the user set the levels)."""
    if logs.verbose() or any(a.startswith("--sdk_harness_log_level_overrides") for a in argv):
        return argv
    levels = {name: logging.getLevelName(level) for name, level in logs.QUIET_LOGGERS.items()}
    return [*argv, f"--sdk_harness_log_level_overrides={json.dumps(levels)}"]


def _print_help() -> None:
    parser = beam.options.pipeline_options._BeamArgumentParser(
        prog="qdedup run", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Any Beam pipeline option (--runner, --direct_num_workers, ...) is passed through.")
    QdedupOptions._add_argparse_args(parser)
    parser.print_help()


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    commands = {"run": run, "recall": recall, "evaluate": evaluate, "explain": explain_command,
                "review": review,
                "train-blocker": functools.partial(train_blocker, run_command=run)}
    if command not in commands:
        print(f"qdedup: error: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    if command not in ("evaluate", "explain", "review", "train-blocker") and ("-h" in rest or "--help" in rest):
        _print_help()
        return 0
    configure_logging("--verbose" in rest)
    try:
        return commands[command](rest)
    except QdedupError as exc:
        print(f"qdedup: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a failure inside the pipeline: one line here, the traceback in the log
        _LOG.debug("pipeline failure", exc_info=True)
        cause = local_runner.ended_workers_hint() or _pipeline_failure(exc)
        print(f"qdedup: error: the pipeline failed: {cause}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
