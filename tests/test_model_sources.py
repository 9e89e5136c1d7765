"""Where models come from: hub ids, local directories, gs:// / s3:// directories copied to each worker,
ModelScope; weights from safetensors only, never remote code."""
import json
import os
import shutil

import pytest
from apache_beam.io.filesystem import FileMetadata

import transforms.sources
from pipelines.preflight import check_scorer_model
from tests.helpers import read_part, run_qdedup
from tests.object_store import PREFIX, ObjectStoreForTests
from transforms.errors import QdedupError
from transforms.feeding import ModelSettings
from transforms.score import pair_scorer
from transforms.sources import model_path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(transforms.sources, "_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def remote_model(tiny_model, tmp_path):
    bucket = tmp_path / "bucket" / "models" / "tiny"
    shutil.copytree(tiny_model, bucket)
    return PREFIX + str(bucket)


def test_a_remote_directory_is_copied_once_and_loads(remote_model, cache):
    check_scorer_model(remote_model)
    local = model_path(remote_model)
    assert local.startswith(str(cache)) and os.path.exists(os.path.join(local, "model.safetensors"))
    marker = os.path.join(local, ".complete")
    stamp = os.stat(marker).st_mtime_ns
    assert model_path(remote_model) == local and os.stat(marker).st_mtime_ns == stamp  # not copied again
    assert pair_scorer(ModelSettings(remote_model, device="cpu")).load_model().model.config.num_labels == 2


@pytest.mark.parametrize("name", ["../../outside.txt", "sub/../../outside.txt", "/etc/cron.d/x"])
def test_object_names_that_escape_the_model_folder_are_refused(remote_model, cache, monkeypatch, name):
    listed = ObjectStoreForTests._list

    def with_hostile_object(self, prefix):
        yield from listed(self, prefix)
        yield FileMetadata(remote_model + "/" + name, 3, 0.0)
    monkeypatch.setattr(ObjectStoreForTests, "_list", with_hostile_object)
    with pytest.raises(QdedupError, match="would be copied outside the model's folder"):
        check_scorer_model(remote_model)
    with pytest.raises(QdedupError, match="would be copied outside"):
        model_path(remote_model)
    assert not any(p.name == "outside.txt" for p in cache.parent.rglob("outside.txt"))


def test_a_model_changed_in_the_bucket_is_fetched_again(remote_model, cache, tiny_model):
    first = model_path(remote_model)
    config = remote_model[len(PREFIX):] + "/config.json"
    content = json.loads(open(config).read())
    content["qdedup_test_marker"] = 1
    with open(config, "w") as handle:
        json.dump(content, handle)
    os.utime(config, (1_900_000_000, 1_900_000_000))
    second = model_path(remote_model)
    assert second != first and "qdedup_test_marker" in open(os.path.join(second, "config.json")).read()
    assert "qdedup_test_marker" not in open(os.path.join(first, "config.json")).read()
    assert model_path(remote_model) == second  # and then kept


@pytest.mark.e2e
def test_a_run_reads_its_scorer_from_a_remote_directory(remote_model, cache, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"id": [1, 2, 3], "question": ["银行卡丢了怎么办", "银行卡丢了怎么处理", "今天天气"]}),
                   tmp_path / "q.parquet")
    report = run_qdedup(tmp_path / "q.parquet", tmp_path / "out", remote_model, "--min-similarity=0.1")
    assert report["pairs_scored"] > 0 and len(read_part(tmp_path / "out", "pairs")) >= report["pairs_scored"]


def test_an_incomplete_remote_directory_is_named_before_the_run(remote_model, cache):
    os.remove(remote_model[len(PREFIX):] + "/model.safetensors")
    with pytest.raises(QdedupError, match=r"is not a complete model directory: missing model.safetensors"):
        check_scorer_model(remote_model)
    assert not cache.exists() or not os.listdir(cache)


def test_pickled_weights_are_refused(tiny_model, tmp_path):
    import torch
    legacy = tmp_path / "legacy"
    shutil.copytree(tiny_model, legacy)
    os.remove(legacy / "model.safetensors")
    torch.save({}, legacy / "pytorch_model.bin")
    with pytest.raises(QdedupError, match="weights are read from safetensors only"):
        check_scorer_model(str(legacy))


def test_modelscope_ids_need_the_modelscope_package(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_modelscope(name, *args, **kwargs):
        if name == "modelscope":
            raise ImportError("No module named 'modelscope'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_modelscope)
    with pytest.raises(QdedupError, match="needs the modelscope package: pip install modelscope"):
        model_path("modelscope:Fengshenbang/Erlangshen-RoBERTa-110M-Similarity")


def test_modelscope_ids_are_downloaded_with_snapshot_download(monkeypatch, tiny_model):
    import sys
    import types
    calls = []
    fake = types.SimpleNamespace(snapshot_download=lambda model_id: calls.append(model_id) or tiny_model)
    monkeypatch.setitem(sys.modules, "modelscope", fake)
    assert model_path("modelscope:Fengshenbang/Erlangshen-RoBERTa-110M-Similarity") == tiny_model
    assert calls == ["Fengshenbang/Erlangshen-RoBERTa-110M-Similarity"]
    check_scorer_model("modelscope:Fengshenbang/Erlangshen-RoBERTa-110M-Similarity")
