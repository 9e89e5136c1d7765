"""`qdedup run`: checks everything it can before the pipeline starts, runs it, completes the report."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineState

from pipelines.dedup import build_pipeline
from pipelines.evaluate import evaluate
from pipelines.options import (
    QdedupOptions,
    effective_configuration,
    expand_argv,
    input_columns,
    parse_embedders,
    validate,
)
from pipelines.recall import recall
from pipelines.report import gather, render
from transforms.commit import OutputRun, join, read_json
from transforms.embed import check_encoder_model
from transforms.errors import QdedupError
from transforms.ids import check_previous_groups
from transforms.metrics import STAGE_NAMESPACE
from transforms.model import resolve_device, resolve_dtype
from transforms.read import inspect_input
from transforms.score import check_scorer_model
from transforms.state import load_prior

_LOG = logging.getLogger("qdedup")
USAGE = """usage: qdedup run --input PATTERN --output DIR [--config YAML] [options] [Beam options]
       qdedup recall --pairs LABELLED_FILE [--report JSON] [--config YAML] [options]
       qdedup evaluate --pairs LABELLED_FILE --run OUT_DIR [--report JSON]

run:    finds duplicate questions in Parquet corpora.
recall: the share of labelled duplicate pairs that blocking makes candidates, with the same options.
evaluate: precision, recall and F1 of a run's groups on labelled pairs, and a threshold sweep.
'qdedup run --help' lists the options."""


def counter_totals(result, namespace: str) -> dict:
    """{counter name: value summed over steps}; empty where the runner reports no metrics."""
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]
    except Exception:
        return {}
    totals: dict = {}
    for counter in counters:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + (value or 0)
    return totals


def _work_item_sizes(result):
    try:
        found = result.metrics().query(MetricsFilter().with_name("blocking_work_item_size"))["distributions"]
    except Exception:
        return None
    values = [d.committed if d.committed is not None else d.attempted for d in found]
    return [v for v in values if v is not None and v.count]


def run_totals(report: dict, result) -> dict:
    """Per-stage seconds, blocking and scoring totals, from the run's Beam metrics."""
    seconds = {name: round(us / 1_000_000, 3) for name, us in sorted(counter_totals(result, STAGE_NAMESPACE).items())}
    counts = counter_totals(result, "qdedup")
    score_seconds = seconds.get("score", 0.0)
    sizes = _work_item_sizes(result) or []
    return {
        "stage_seconds": seconds,
        "blocking_work_items": sum(d.count for d in sizes),
        "largest_blocking_work_item": max((d.max for d in sizes), default=0),
        "truncated_pairs": counts.get("score_truncated", 0),
        "encoder_truncated_texts": counts.get("encoder_truncated", 0),
        "oom_splits": counts.get("oom_splits", 0),
        "components_unsettled_edges": counts.get("components_unsettled_edges", 0),
        "components_resplit": counts.get("components_resplit", 0),
        "scoring_pairs_per_second": round(report["pairs_scored"] / score_seconds, 2) if score_seconds else None,
    }


def check_placeholders(pipeline_options: PipelineOptions) -> None:
    """A preset's YOUR_* placeholders must be filled in before anything is launched."""
    for name, value in sorted(pipeline_options.get_all_options(drop_default=True).items()):
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and "YOUR_" in item:
                raise QdedupError(f"--{name} is {item!r}: fill in the preset's YOUR_* placeholders "
                                  "(or pass the option on the command line)")


def _is_local(pipeline_options: PipelineOptions) -> bool:
    runner = pipeline_options.view_as(StandardOptions).runner
    return runner is None or runner in StandardOptions.LOCAL_RUNNERS


def check_device_here(pipeline_options: PipelineOptions, device: str) -> None:
    """A local run with --device cuda fails now, not after reading and blocking the whole corpus."""
    if device == "cuda" and _is_local(pipeline_options):
        resolve_device(device)


def scoring_precision(options: QdedupOptions, pipeline_options: PipelineOptions) -> str:
    """The precision scores are computed in, as far as the launcher can tell (state compares it)."""
    if options.precision != "auto":
        return options.precision
    if _is_local(pipeline_options):
        device = resolve_device(options.device)
        return str(resolve_dtype("auto", device)).replace("torch.", "")
    return "float32" if options.device == "cpu" else f"auto on {options.device}"


def check_models(options: QdedupOptions) -> dict:
    """Every model of the run loads and answers a trial input; {"scorer"/kind: fingerprint}."""
    fingerprints = {"scorer": check_scorer_model(options.scorer_model, options.positive_label)}
    for kind, model in parse_embedders(options.embedders):
        if kind == "encoder":
            fingerprints[kind] = check_encoder_model(model)
    return fingerprints


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
    pipeline_options = PipelineOptions(expand_argv(argv))
    options = pipeline_options.view_as(QdedupOptions)
    validate(options)
    check_placeholders(pipeline_options)
    with OutputRun(options.output, options.overwrite) as out:
        info = inspect_input(options.input, input_columns(options))
        _LOG.info("input: %d files, %d rows, ids of type %s", len(info.files), info.rows, info.id_type)
        previous_groups = None
        if options.previous_groups:
            previous_groups = check_previous_groups(options.previous_groups, info.id_type).paths("groups", ".parquet")
        check_device_here(pipeline_options, options.device)
        configuration = effective_configuration(pipeline_options)
        configuration["fingerprints"] = check_models(options)
        configuration["scoring_precision"] = scoring_precision(options, pipeline_options)
        prior = None
        if options.existing or options.params_from:
            prior = load_prior(options.existing or options.params_from, bool(options.existing), configuration,
                               [kind for kind, _ in parse_embedders(options.embedders)])
            if options.existing:
                check_previous_groups(options.existing, info.id_type)

        pipeline = beam.Pipeline(options=pipeline_options)
        build_pipeline(pipeline, options, info, configuration, out, prior, previous_groups)
        _LOG.info("run %s writes %s", out.run_id, out.write_root)
        try:
            result = pipeline.run()
            state = result.wait_until_finish()
            if state != PipelineState.DONE:
                raise RuntimeError(f"the pipeline ended in state {state}")
        except BaseException:
            _LOG.error("the run failed; what it wrote is in %s; %s is as it was", out.keep_failed(), out.output)
            raise

        report = read_json(out.draft_report)
        report.update(run_totals(report, result))
        report["run_id"] = out.run_id
        report["seconds_total"] = round(time.monotonic() - started, 3)
        problem = failure_problem(report, options.max_failed_share)
        if problem is None and not report["accounting_ok"]:
            problem = "rows_in + rows_existing != rows_out + rows_rejected; please report this with report.json"
        if problem:
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
    commands = {"run": run, "recall": recall, "evaluate": evaluate}
    if command not in commands:
        print(f"qdedup: error: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    if command != "evaluate" and ("-h" in rest or "--help" in rest):
        _print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return commands[command](rest)
    except QdedupError as exc:
        print(f"qdedup: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a failure inside the pipeline: one line here, the traceback in the log
        _LOG.debug("pipeline failure", exc_info=True)
        print(f"qdedup: error: the pipeline failed: {_pipeline_failure(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
