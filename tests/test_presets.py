"""The YAML presets make valid options for their runners, and the package installs and imports cleanly."""
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import (
    DebugOptions,
    DirectOptions,
    GoogleCloudOptions,
    PipelineOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
)

from pipelines.cli import main
from pipelines.options import QdedupOptions, expand_argv
from pipelines.preflight import validate
from tests.helpers import ROOT

IO = ["--input", "gs://bucket/questions/*.parquet", "--output", "gs://bucket/qdedup/out"]


def _options(preset: str, *extra: str) -> PipelineOptions:
    return PipelineOptions(expand_argv(["--config", str(ROOT / "configs" / preset), *IO, *extra]))


@pytest.mark.parametrize("preset", ["dataflow_gpu.yaml", "dataflow_cpu.yaml"])
def test_dataflow_presets_hold_what_a_dataflow_job_needs(preset):
    options = _options(preset)
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    cloud = options.view_as(GoogleCloudOptions)
    assert cloud.project and cloud.region and cloud.job_name
    assert cloud.temp_location.startswith("gs://") and cloud.staging_location.startswith("gs://")
    worker = options.view_as(WorkerOptions)
    assert worker.machine_type and worker.disk_size_gb >= 50 and worker.max_num_workers >= 1
    setup_file = options.view_as(SetupOptions).setup_file
    assert (ROOT / setup_file).resolve() == ROOT / "setup.py"
    assert "use_runner_v2" in options.view_as(DebugOptions).experiments
    qdedup = options.view_as(QdedupOptions)
    validate(qdedup)
    if preset == "dataflow_gpu.yaml":
        accelerator = " ".join(cloud.dataflow_service_options)
        assert "worker_accelerator=type:nvidia-" in accelerator and "install-nvidia-driver" in accelerator
        assert worker.sdk_container_image and options.view_as(SetupOptions).sdk_location == "container"
        assert (qdedup.device, qdedup.model_copies) == ("cuda", 1)
    else:
        assert (qdedup.device, qdedup.model_copies, qdedup.torch_threads) == ("cpu", 0, 1)
    assert qdedup.search_threads == 1  # a Dataflow worker runs an SDK process a core: one thread each


def test_one_process_preset_runs_in_process():
    options = _options("local-one-process.yaml")
    assert options.view_as(StandardOptions).runner == "FnApiRunner"
    assert options.view_as(DirectOptions).direct_running_mode == "in_memory"
    assert options.view_as(QdedupOptions).device == "cpu"
    assert options.view_as(QdedupOptions).search_threads == 0  # one process: its searches use every core


def test_local_preset_runs_a_worker_process_per_core_with_its_share_of_threads(monkeypatch):
    import os

    from pipelines.preflight import THREAD_VARIABLES, divide_local_threads
    for variable in THREAD_VARIABLES:  # set first so that monkeypatch puts back what was (or was not) there
        monkeypatch.setenv(variable, "")
        monkeypatch.delenv(variable)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    options = _options("local.yaml")
    assert options.view_as(StandardOptions).runner == "FnApiRunner"
    direct = options.view_as(DirectOptions)
    assert (direct.direct_running_mode, direct.direct_num_workers) == ("multi_processing", 0)
    qdedup = options.view_as(QdedupOptions)
    divide_local_threads(qdedup, options)
    assert qdedup.torch_threads == 1 and os.environ["OMP_NUM_THREADS"] == "1"  # 4 cores // one worker per core
    assert qdedup.search_threads == 1
    options = _options("local.yaml", "--direct_num_workers=2")  # two workers on four cores: two threads each
    qdedup = options.view_as(QdedupOptions)
    divide_local_threads(qdedup, options)
    assert (qdedup.torch_threads, qdedup.search_threads) == (2, 2)


def test_unfilled_placeholders_stop_the_launch(capsys):
    assert main(["run", "--config", str(ROOT / "configs" / "dataflow_gpu.yaml"), *IO]) == 2
    err = capsys.readouterr().err
    assert "--project" in err and "YOUR_PROJECT" in err and "fill in" in err


@pytest.mark.parametrize("runner", ["BundleBasedDirectRunner",
                                    "apache_beam.runners.direct.direct_runner.BundleBasedDirectRunner"])
def test_a_runner_that_drops_metrics_is_refused_at_launch(capsys, runner):
    assert main(["run", "--config", str(ROOT / "configs" / "local.yaml"), *IO, f"--runner={runner}"]) == 2
    err = capsys.readouterr().err
    assert "drops the metrics" in err and "FnApiRunner" in err


@pytest.mark.slow
def test_the_package_installs_in_a_clean_environment_and_imports_every_module(tmp_path):
    """What Dataflow does with --setup_file: build the package, install it, import it on the worker."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # This environment's site-packages provide the heavy dependencies (beam, torch), whether it is a
    # virtual environment or not (--system-site-packages would reach only the base interpreter's). Plain
    # directory lines: the .pth files there (this checkout's editable install) are not run, so the
    # package must come from the venv's own install.
    venv_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip()
    Path(venv_site, "outer_environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-index", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(ROOT)], check=True, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("qdedup-*.whl"))
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(wheel)], check=True,
                   cwd=tmp_path)  # --no-index: nothing is downloaded
    modules = sorted({f"{p.parent.name}.{p.stem}" for d in ("pipelines", "transforms")
                      for p in (ROOT / d).glob("*.py") if p.stem != "__init__"})
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    module = importlib.import_module(name)\n"
            "    assert module.__file__.startswith(sys.prefix), (name, module.__file__)\n"
            "print(len(sys.argv))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(python), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(modules) >= 15


def test_the_worker_image_matches_the_launcher_and_copies_what_exists():
    """Dataflow needs the worker's Python and Beam to be the launcher's; the image copies real paths."""
    import re

    import apache_beam
    dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM apache/beam_python(\d+\.\d+)_sdk:(\S+)", dockerfile, re.M)
    assert base, "the image must start from an Apache Beam Python SDK image (it provides the harness boot)"
    assert base.group(1) == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert base.group(2) == apache_beam.__version__
    setup_py = (ROOT / "setup.py").read_text()  # installs pin that release: a new one cannot slip in under a launcher
    assert f'"apache-beam=={base.group(2)}"' in setup_py and f'"apache-beam[gcp]=={base.group(2)}"' in setup_py
    for line in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for source in line.split():
            assert (ROOT / source).exists(), source
    gpu = (ROOT / "configs" / "dataflow_gpu.yaml").read_text()
    assert "worker-gpu:0.1.0" in gpu and "version=\"0.1.0\"" in (ROOT / "setup.py").read_text()
