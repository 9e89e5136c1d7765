import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.options import (
    QdedupOptions,
    effective_configuration,
    expand_argv,
    parse_embedders,
    preset_flags,
)
from pipelines.preflight import validate
from transforms.errors import QdedupError


def _options(argv):
    return PipelineOptions(expand_argv(argv))


def test_preset_values_apply_and_flags_override_them(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("runner: FnApiRunner\nthreshold: 0.7\ntop_k: 3\noverwrite: true\nexperiments: [a, b]\n")
    options = _options(["--config", str(preset), "--input", "x", "--output", "y", "--threshold=0.9"])
    q = options.view_as(QdedupOptions)
    assert (q.threshold, q.top_k, q.overwrite) == (0.9, 3, True)
    assert options.view_as(StandardOptions).runner == "FnApiRunner"
    assert preset_flags(str(preset))[-2:] == ["--experiments=a", "--experiments=b"]


def test_dash_and_underscore_spellings_are_the_same_option():
    assert _options(["--id-column", "qid"]).view_as(QdedupOptions).id_column == "qid"
    assert _options(["--id_column", "qid"]).view_as(QdedupOptions).id_column == "qid"


def test_unknown_option_is_refused_with_a_suggestion():
    with pytest.raises(QdedupError, match="unknown option '--treshold=0.3'; did you mean --threshold"):
        expand_argv(["--treshold=0.3"])


def test_unreadable_preset_is_named(tmp_path):
    with pytest.raises(QdedupError, match="cannot be read"):
        expand_argv(["--config", str(tmp_path / "missing.yaml")])
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(QdedupError, match="must be a mapping"):
        expand_argv(["--config", str(bad)])


@pytest.mark.parametrize("argv, message", [
    ([], "--input is required"),
    (["--input", "x"], "--output is required"),
    (["--input", "x", "--output", "y", "--threshold", "1.5"], "--threshold"),
    (["--input", "x", "--output", "y", "--top-k", "0"], "--top-k"),
    (["--input", "x", "--output", "y", "--embedders", "lexical,bm25"], "none of 'lexical', 'encoder:MODEL'"),
    (["--input", "x", "--output", "y", "--embedders", "encoder"], "none of 'lexical', 'encoder:MODEL', 'static:DIR'"),
    (["--input", "x", "--output", "y", "--embedders", "static"], "none of 'lexical', 'encoder:MODEL', 'static:DIR'"),
    (["--input", "x", "--output", "y", "--embedders", "static:a,static:b"], "each once"),
    (["--input", "x", "--output", "y", "--embedders", "encoder:a,encoder:b"], "each once"),
    (["--input", "x", "--output", "y", "--id-column", "q", "--text-column", "q"], "must differ"),
    (["--input", "x", "--output", "y", "--resplit-density", "1.5"], "--resplit-density"),
    (["--input", "x", "--output", "y", "--join-shard-keys", "0"], "--join-shard-keys must be at least 1"),
    (["--input", "x", "--output", "y", "--canonical", "earliest"], "needs --timestamp-column"),
    (["--input", "x", "--output", "y", "--existing", "p", "--previous-groups", "p/groups"],
     "leave out --previous-groups"),
    (["--input", "x", "--output", "y", "--existing", "p", "--params-from", "p"], "leave out --params-from"),
    (["--input", "x", "--output", "y", "--max-failed-share", "1.5"], "--max-failed-share"),
    (["--input", "x", "--output", "y", "--positive-label", "-1"], "--positive-label"),
])
def test_invalid_values_are_refused(argv, message):
    with pytest.raises(QdedupError, match=message):
        validate(_options(argv).view_as(QdedupOptions))


def test_effective_configuration_lists_qdedup_options_and_runner():
    config = effective_configuration(_options(["--input", "x", "--output", "y", "--runner=FnApiRunner"]))
    assert config["input"] == "x" and config["runner"] == "FnApiRunner" and config["threshold"] == 0.5
    assert "direct_num_workers" not in config


def test_parse_embedders():
    assert parse_embedders("lexical") == [("lexical", None)]
    assert parse_embedders(" lexical , encoder:/models/m ") == [("lexical", None), ("encoder", "/models/m")]
    assert parse_embedders("encoder:org/name") == [("encoder", "org/name")]
    assert parse_embedders("lexical,static:gs://b/blocker,encoder:m") == [
        ("lexical", None), ("static", "gs://b/blocker"), ("encoder", "m")]


def test_remote_workers_log_only_warnings_of_the_libraries_unless_told_otherwise(monkeypatch):
    import json

    from pipelines.cli import worker_log_levels
    from transforms import logs
    monkeypatch.delenv(logs.VERBOSE, raising=False)
    levels = json.loads(worker_log_levels(["--runner=DataflowRunner"])[-1].split("=", 1)[1])
    assert levels == {"apache_beam": "WARNING", "transformers": "ERROR", "huggingface_hub": "ERROR",
                      "faiss": "WARNING", "urllib3": "WARNING"}
    own = ['--sdk_harness_log_level_overrides={"apache_beam": "INFO"}']
    assert worker_log_levels(own) == own
    monkeypatch.setenv(logs.VERBOSE, "1")
    assert worker_log_levels(["--runner=DataflowRunner"]) == ["--runner=DataflowRunner"]


def _parsed(argv):
    return _options(["--input", "x", "--output", "y", *argv]).view_as(QdedupOptions)


def test_sizes_that_follow_the_input_are_fitted_at_launch():
    from pipelines.preflight import fit_sizes_to_input
    small = _parsed([])
    fit_sizes_to_input(small, 1_000)
    assert (small.component_rounds, small.resplit_cut_steps) == (0, 0)  # nothing can outgrow a re-split
    large = _parsed([])
    fit_sizes_to_input(large, 10_000_000)
    assert (large.component_rounds, large.resplit_cut_steps) == (26, 6)
    for rounds in (0, 5):  # chosen, even none on a large input
        chosen = _parsed([f"--component-rounds={rounds}"])
        fit_sizes_to_input(chosen, 10_000_000)
        assert chosen.component_rounds == rounds


def test_the_cut_runs_on_one_worker_exactly_when_the_components_do():
    """No component rounds (the whole graph fits the finishing worker): chaining control's cut finds its pieces
    there too, within the same bound; with rounds it runs as the distributed component search."""
    from pipelines.options import chaining_settings
    from pipelines.preflight import fit_sizes_to_input
    for rows, flags, one_worker in ((1_000_000, [], 20_000_000), (10_000_000, [], 0),
                                    (1_000_000, ["--component-rounds=3"], 0),
                                    (1_000_000, ["--max-unsettled-edges=50000000"], 50_000_000)):
        options = _parsed(flags)
        fit_sizes_to_input(options, rows)
        assert chaining_settings(options).one_worker_pairs == one_worker, (rows, flags)


def test_local_worker_processes_divide_the_cores_between_their_models(monkeypatch):
    import os

    from pipelines.preflight import THREAD_VARIABLES, divide_local_threads
    cores = len(os.sched_getaffinity(0))
    share = max(1, cores // 2)
    cases = {(): (0, None), ("--direct_running_mode=in_memory",): (0, None),
             ("--direct_running_mode=multi_processing", "--direct_num_workers=2"): (share, str(share)),
             ("--direct_running_mode=multi_processing", "--direct_num_workers=2", "--torch-threads=3"):
             (3, str(share))}
    for argv, (threads, pools) in cases.items():
        for variable in THREAD_VARIABLES:  # what worker processes inherit; restored after the test
            monkeypatch.delenv(variable, raising=False)
        pipeline_options = _options(["--input", "x", "--output", "y", *argv])
        options = pipeline_options.view_as(QdedupOptions)
        divide_local_threads(options, pipeline_options)
        assert options.torch_threads == threads, argv
        assert options.search_threads == 1, argv  # its own flag (default 1), not --torch-threads
        assert [os.environ.get(variable) for variable in THREAD_VARIABLES] == [pools] * 3, argv
    pipeline_options = _options(["--input", "x", "--output", "y", "--direct_running_mode=multi_processing",
                                 "--direct_num_workers=2", "--search-threads=0"])
    divide_local_threads(pipeline_options.view_as(QdedupOptions), pipeline_options)
    assert pipeline_options.view_as(QdedupOptions).search_threads == share  # 0: the process's share of cores
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # a pool size the user chose is kept
    pipeline_options = _options(["--input", "x", "--output", "y", "--direct_running_mode=multi_processing"])
    divide_local_threads(pipeline_options.view_as(QdedupOptions), pipeline_options)
    assert os.environ["OMP_NUM_THREADS"] == "7"


def test_options_views_share_values_and_follow_new_flags_under_the_suites_view_cache():
    """conftest keeps one view an options object and class: views must still share every value, and a
    new flag list must still be parsed."""
    options = PipelineOptions(["--runner=FnApiRunner", "--input", "x"])
    view = options.view_as(QdedupOptions)
    assert options.view_as(QdedupOptions) is view  # the cache is in force here
    options.view_as(StandardOptions).runner = "DataflowRunner"
    assert view.view_as(StandardOptions).runner == options.view_as(StandardOptions).runner == "DataflowRunner"
    view.output = "y"
    assert options.view_as(QdedupOptions).output == "y"
    options._flags = ["--input", "z"]  # what the cache keys on besides the object and the class
    assert options.view_as(QdedupOptions) is not view
