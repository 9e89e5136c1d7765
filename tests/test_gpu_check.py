"""benchmarks/gpu_check.py stays runnable: its --dry-run on the CPU, with Beam and on a machine without it."""
import json
import subprocess
import sys

import pytest

from benchmarks.gpu_check import _interleaved, main
from tests.helpers import ROOT, shared_data

# Runs the module as `python -m` would, with Beam, faiss and pyarrow made unimportable first.
WITHOUT_BEAM = """
import importlib.abc, runpy, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("apache_beam", "faiss", "pyarrow"):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, Missing())
sys.argv = ["gpu_check", *sys.argv[1:]]
runpy.run_module("benchmarks.gpu_check", run_name="__main__")
assert not any(m.split(".")[0] in ("apache_beam", "faiss", "pyarrow") for m in sys.modules)
"""


def _dry_run(tmp_path, prefix: list[str]) -> dict:
    out = tmp_path / "gpu_check.json"
    subprocess.run([*prefix, "--dry-run", "--out", str(out), "--work", str(tmp_path / "models"),
                    "--data", str(shared_data("lcqmc/dev.tsv"))], cwd=ROOT, check=True, timeout=300)
    return json.loads(out.read_text())


def _check_core_steps(results: dict) -> None:
    assert results["device"] == "cpu" and results["dry_run"]
    assert results["agreement"]["pairs"] == 32 and results["agreement"]["bf16"]["max_abs_diff"] < 0.05
    assert results["agreement"]["fp32_score_std"] > 0.05  # scores spread out: agreement means something
    for entry in results["sweep"]["by_budget"].values():
        assert entry["core_pairs_per_s"]["runs"] == 1 and entry["batches"] >= 1
    speed = results["precision"]
    assert speed["token_budget"] > 0 and {speed["fp32"]["dtype"], speed["bf16"]["dtype"]} == {"float32", "bfloat16"}
    assert speed["fp32"]["core_pairs_per_s"]["runs"] == speed["bf16"]["core_pairs_per_s"]["runs"] == 1
    oom = results["oom"]
    assert oom["out_of_memory_splits"] >= 1 and oom["unscored"] == 0
    assert oom["largest_diff_from_small_batches"] < 1e-5


@pytest.mark.slow
def test_the_gpu_check_runs_without_beam(tmp_path):
    results = _dry_run(tmp_path, [sys.executable, "-c", WITHOUT_BEAM])
    _check_core_steps(results)
    assert results["machine"]["beam"] is False and "skipped" in results["copies"] and "skipped" in results["run"]
    assert all("stage_pairs_per_s" not in entry for entry in results["sweep"]["by_budget"].values())


@pytest.mark.slow
def test_the_gpu_check_runs_the_stage_and_shared_model_with_beam(tmp_path):
    """With Beam the sweep runs the RunInference stage too, and copies and whole runs run; the other steps are as
    without. A whole run in worker processes with one shared model names what the model ran on from the process
    that holds it (`LoadedModel.hardware`, asked through Beam's proxy)."""
    results = _dry_run(tmp_path, [sys.executable, "-m", "benchmarks.gpu_check", "--steps=sweep,copies,run",
                                  "--budgets=2048"])
    assert "agreement" not in results and "oom" not in results and results["machine"]["beam"] is True
    for entry in results["sweep"]["by_budget"].values():
        assert entry["stage_pairs_per_s"]["runs"] == 1
        assert entry["stage_vs_core_largest_score_diff"] < 1e-6  # the stage scores what the core scores
        assert entry["stage_less_around_us_per_pair"] > 0  # the stage's work beyond the pipeline around it
    assert results["sweep"]["around_pairs_per_s"]["runs"] == 1
    assert results["copies"]["largest_score_diff"] < 1e-6
    assert set(results["copies"]) >= {"model_copies_1", "one_model_per_process"}
    run = results["run"]
    [shared], [own] = run["model_copies_1"], run["one_model_per_process"]
    assert run["rows"] == 600 and shared["wall_s"] > 0 and shared["groups"] == own["groups"] > 0
    for entry in (shared, own):
        [(label, rows)] = entry["forward_hardware"]["score"].items()
        assert label.startswith("cpu ") and rows == entry["candidate_pairs"] + entry["resplit_pairs_scored"]


def test_methods_are_interleaved_as_often_early_as_late():
    assert _interleaved(["a", "b", "c"], 3) == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert _interleaved(["core", "stage"], 2) == ["core", "stage", "stage", "core"]


def test_the_gpu_check_measures_a_given_model_instead_of_making_random_ones(tmp_path, tiny_model):
    """`--model DIR`: the real scorer's agreement and speed, no random model made."""
    results = main(["--dry-run", "--model", str(tiny_model), "--steps", "agreement,precision", "--work",
                    str(tmp_path / "models"), "--out", str(tmp_path / "check.json"),
                    "--data", str(shared_data("lcqmc/dev.tsv"))])
    assert results["models"] == {"measured": str(tiny_model), "agreement": str(tiny_model)}
    assert not (tmp_path / "models").exists()  # no random model written
    assert results["agreement"]["pairs"] == 32 and results["precision"]["fp32"]["core_pairs_per_s"]["runs"] == 1
