"""Atomic outputs: staging and exchange on local disks, a commit marker on object stores, one writer at a time."""
import json
import os
import time

import pytest

import transforms.commit
from tests.helpers import snapshot
from tests.object_store import PREFIX
from transforms.commit import MARKER, OutputRun, add_to_output, exchange, read_committed
from transforms.errors import QdedupError
from transforms.paths import canonical


def _commit(run: OutputRun, files: dict) -> None:
    """Writes `files` ({relative folder: content}) as this run's, then commits."""
    from apache_beam.io.filesystems import FileSystems
    for folder, content in files.items():
        with FileSystems.create(run.file_prefix(folder) + "-00000-of-00001.parquet") as handle:
            handle.write(content.encode())
    with FileSystems.create(run.draft_report) as handle:
        handle.write(b"{}")
    run.commit({"rows": len(files)}, "<html></html>")


def test_paths_are_compared_after_normalization(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    spellings = [tmp_path / "real", f"{tmp_path}/real/", f"{tmp_path}/./real", f"{tmp_path}/x/../real",
                 tmp_path / "link"]
    assert {canonical(str(p)) for p in spellings} == {str(tmp_path / "real")}
    assert canonical("gs://bucket/a/./b/../c//") == canonical("gs://bucket/a/c") == "gs://bucket/a/c"


def test_exchange_swaps_two_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("b")
    if not exchange(str(tmp_path / "a"), str(tmp_path / "b")):
        pytest.skip("this filesystem cannot exchange folders (the two-rename path is tested below)")
    assert (tmp_path / "a" / "x").read_text() == "b" and (tmp_path / "b" / "x").read_text() == "a"


@pytest.mark.parametrize("can_exchange", [True, False], ids=["exchange", "two_renames"])
def test_a_local_commit_replaces_the_output_whole_and_nothing_before(tmp_path, monkeypatch, can_exchange):
    if not can_exchange:
        monkeypatch.setattr(transforms.commit, "exchange", lambda a, b: False)
    out = str(tmp_path / "out")
    with OutputRun(out) as first:
        _commit(first, {"groups": "one", "pairs": "one"})
    before = snapshot(out)
    assert read_committed(out, "--x").run_id == first.run_id
    with OutputRun(out + "/./", overwrite=True) as second:
        _commit(second, {"groups": "two"})
        assert second.write_root != canonical(out)
    assert snapshot(out) != before
    committed = read_committed(out, "--x")
    assert committed.run_id == second.run_id
    assert sorted(committed.files) == sorted(f for f in snapshot(out) if f != MARKER)
    assert [open(p).read() for p in committed.paths("groups")] == ["two"]
    assert committed.paths("pairs") == []
    assert sorted(os.listdir(tmp_path)) == [".out.qdedup-lock", "out"]  # no staging left behind


def test_a_run_that_does_not_commit_leaves_the_output_as_it_was(tmp_path):
    out = str(tmp_path / "out")
    with OutputRun(out) as first:
        _commit(first, {"groups": "one"})
    before = snapshot(out)
    with OutputRun(out, overwrite=True) as second:
        from apache_beam.io.filesystems import FileSystems
        with FileSystems.create(second.file_prefix("rejected") + "-00000-of-00001.parquet") as handle:
            handle.write(b"why")
        where = second.keep_failed()
    assert snapshot(out) == before
    assert os.listdir(os.path.join(where, "rejected")) and where == str(tmp_path / ".out.qdedup-failed")


def test_a_kill_between_the_two_renames_is_undone_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    with OutputRun(str(out)) as first:
        _commit(first, {"groups": "one"})
    before = snapshot(out)
    os.rename(out, tmp_path / ".out.qdedup-previous")              # killed here, mid-replacement
    (tmp_path / ".out.qdedup-20261130T000000-abcdef").mkdir()     # and a killed run's staging
    with pytest.raises(QdedupError, match="already holds a qdedup run"):
        with OutputRun(str(out)):
            pass
    assert snapshot(out) == before
    assert sorted(os.listdir(tmp_path)) == [".out.qdedup-lock", "out"]


def test_an_output_is_refused_without_overwrite_or_with_files_qdedup_did_not_write(tmp_path):
    out = tmp_path / "out"
    with OutputRun(str(out)) as first:
        _commit(first, {"groups": "one"})
    with pytest.raises(QdedupError, match="pass overwrite=True"):
        with OutputRun(str(out)):
            pass
    (out / "notes.txt").write_text("mine")
    with pytest.raises(QdedupError, match="holds 'notes.txt', which qdedup did not write"):
        with OutputRun(str(out), overwrite=True):
            pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(QdedupError, match="is a file"):
        with OutputRun(str(tmp_path / "file")):
            pass


def test_a_second_writer_of_one_output_is_refused_until_the_first_ends(tmp_path):
    os.makedirs(tmp_path / "real")
    os.symlink(tmp_path / "real", tmp_path / "link")
    with OutputRun(str(tmp_path / "real" / "out")):
        with pytest.raises(QdedupError, match="being written by another qdedup run .*pid"):
            with OutputRun(str(tmp_path / "link" / "out/")):
                pass
    with OutputRun(str(tmp_path / "link" / "out")):
        pass


@pytest.mark.parametrize("remote", [False, True])
def test_files_added_to_a_committed_output_are_listed_and_wait_for_no_run(tmp_path, remote):
    """`qdedup evaluate` adds evaluation.json (and a redrawn report.html): listed in the marker, each written
    whole; refused while a run holds the output; gone when the next run commits."""
    out = (PREFIX if remote else "") + str(tmp_path / "out")
    local = tmp_path / "out"
    with OutputRun(out) as first:
        _commit(first, {"groups": "one"})
    add_to_output(out, "--run", {"evaluation.json": b'{"a": 1}', "report.html": b"<html>2</html>"})
    marker = json.loads((local / MARKER).read_text())
    assert marker["run_id"] == first.run_id and {"evaluation.json", "report.html"} <= set(marker["files"])
    assert (local / "evaluation.json").read_bytes() == b'{"a": 1}'
    assert (local / "report.html").read_text() == "<html>2</html>"
    with OutputRun(out, overwrite=True) as second:
        with pytest.raises(QdedupError, match="being written by another qdedup run"):
            add_to_output(out, "--run", {"evaluation.json": b"{}"})
        _commit(second, {"groups": "two"})
    assert not (local / "evaluation.json").exists()
    assert "evaluation.json" not in json.loads((local / MARKER).read_text())["files"]


def test_readers_require_the_commit_marker(tmp_path):
    (tmp_path / "old" / "groups").mkdir(parents=True)
    (tmp_path / "old" / "groups" / "part-00000-of-00001.parquet").write_bytes(b"x")
    with pytest.raises(QdedupError, match="has no _SUCCESS: it has outputs but no commit marker"):
        read_committed(str(tmp_path / "old"), "--existing")
    with pytest.raises(QdedupError, match="no qdedup run finished there"):
        read_committed(str(tmp_path / "absent"), "--existing")
    (tmp_path / "old" / MARKER).write_text(json.dumps({"format": 1, "run_id": "x", "files": []}))
    with pytest.raises(QdedupError, match="output format 1"):
        read_committed(str(tmp_path / "old"), "--existing")


def test_on_an_object_store_the_marker_switches_runs_and_unlisted_files_go(tmp_path):
    out = PREFIX + str(tmp_path / "bucket" / "out")
    with OutputRun(out) as first:
        _commit(first, {"groups": "one", "pairs": "one"})
    with OutputRun(out, overwrite=True) as second:
        assert second.write_root == out
        from apache_beam.io.filesystems import FileSystems
        with FileSystems.create(second.file_prefix("groups") + "-00000-of-00001.parquet") as handle:
            handle.write(b"two")
        # Before the commit both runs' files are there, and the marker still lists the first run's only.
        committed = read_committed(out, "--existing")
        assert committed.run_id == first.run_id
        assert [open(p[len(PREFIX):]).read() for p in committed.paths("groups")] == ["one"]
        with FileSystems.create(second.draft_report) as handle:
            handle.write(b"{}")
        second.commit({}, "")
    committed = read_committed(out, "--existing")
    assert committed.run_id == second.run_id
    left = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "bucket" / "out")
                  for d, _, files in os.walk(tmp_path / "bucket" / "out") for f in files)
    assert left == sorted([*committed.files, MARKER])


def test_on_an_object_store_a_fresh_lease_refuses_and_a_stale_one_does_not(tmp_path):
    out = PREFIX + str(tmp_path / "bucket" / "out")
    lease = tmp_path / "bucket" / "out" / "_lease-20261130T000000-abcdef.json"
    lease.parent.mkdir(parents=True)
    lease.write_text("{}")
    with pytest.raises(QdedupError, match="being written by another qdedup run"):
        with OutputRun(out):
            pass
    assert os.listdir(lease.parent) == [lease.name]  # the refused run took its own lease back
    stale = time.time() - transforms.commit.LEASE_SECONDS - 5
    os.utime(lease, (stale, stale))
    with OutputRun(out) as run:
        assert any(name.startswith("_lease-" + run.run_id) for name in os.listdir(lease.parent))
    assert os.listdir(lease.parent) == [lease.name]


def test_on_an_object_store_a_killed_runs_files_neither_block_nor_outlive_the_next_commit(tmp_path):
    out = PREFIX + str(tmp_path / "bucket" / "out")
    killed = OutputRun(out)
    from apache_beam.io.filesystems import FileSystems
    for path in (killed.file_prefix("groups") + "-00000-of-00001.parquet", killed.draft_report):
        with FileSystems.create(path) as handle:  # written, then the launcher died: no marker, no lease left
            handle.write(b"half")
    with OutputRun(out) as run:  # nothing committed there: no --overwrite needed
        _commit(run, {"groups": "whole"})
    committed = read_committed(out, "--existing")
    left = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "bucket" / "out")
                  for d, _, files in os.walk(tmp_path / "bucket" / "out") for f in files)
    assert left == sorted([*committed.files, MARKER]) and killed.run_id not in " ".join(left)
