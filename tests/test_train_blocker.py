"""qdedup train-blocker: a static embedder learned from labelled pairs, written whole, measured on held-out pairs."""
import numpy as np
import pytest

from pipelines.cli import main
from pipelines.train_blocker import TrainSettings, file_names, held_out_questions, in_share, train, write_atomically
from tests.helpers import RUNNER_ARGS, lcqmc_pairs, run_qdedup, shared_data, snapshot, write_questions
from transforms.embed import static_vector
from transforms.sources import load_static_embedder

SMALL = TrainSettings(buckets=4096, dims=32, epochs=2, seed=7)


@pytest.fixture(scope="module")
def lcqmc_file(tmp_path_factory):
    """The first 2,000 LCQMC dev pairs (read from ../shared/data, written to a temp file, not the project)."""
    lines = shared_data("lcqmc/dev.tsv").read_text(encoding="utf-8").splitlines()[:2000]
    path = tmp_path_factory.mktemp("pairs") / "lcqmc-2000.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def trained(lcqmc_file):
    return train([lcqmc_file], SMALL)


def test_in_share_pairs_are_chosen_by_their_texts_not_their_order():
    assert in_share("a", "b", 0.5, 1) == in_share("b", "a", 0.5, 1)
    share = sum(in_share(f"q{i}", f"p{i}", 0.1, 0) for i in range(10_000)) / 10_000
    assert 0.08 < share < 0.12
    assert not any(in_share(f"q{i}", f"p{i}", 0.0, 0) for i in range(100))


def test_held_out_questions_are_whole_components_up_to_the_share():
    """Components of the pair graph are never cut; they are taken while they hold at most the share of
    positives; the choice depends on the seed, not on the order of the edges."""
    texts = [f"q{i:03d}" for i in range(300)]
    positives = [(i, i + 1) for i in range(0, 300, 3)]            # 100 components of 3: i - i+1 ...
    negatives = [(i + 1, i + 2) for i in range(0, 300, 3)]        # ... - i+2 (a negative joins the third)
    held = held_out_questions(texts, positives + negatives, positives, 0.2, seed=1)
    assert all((i in held) == (i + 1 in held) == (i + 2 in held) for i in range(0, 300, 3))
    assert len(held) == 3 * 20  # exactly 20 of 100 positives: every component holds one
    assert held == held_out_questions(texts, (positives + negatives)[::-1], positives, 0.2, seed=1)
    assert held != held_out_questions(texts, positives + negatives, positives, 0.2, seed=2)
    giant = [(i, i + 1) for i in range(299)]                      # one component: more than the share
    assert held_out_questions(texts, giant, giant, 0.2, seed=1) == set()
    assert held_out_questions(texts, positives, positives, 0.0, seed=1) == set()


def test_training_pulls_duplicates_together_and_measures_held_out_components(trained):
    table, config = trained
    assert table.shape == (4096, 32) and np.isfinite(table).all()
    heldout = config["heldout"]
    assert heldout["pairs"] > 50
    assert 0.0 <= heldout["lexical"]["recall@5"] <= heldout["lexical"]["recall@20"] <= 1.0
    assert heldout["static"]["recall@5"] <= heldout["static"]["recall@10"] <= heldout["static"]["recall@20"]
    for k in ("recall@5", "recall@10", "recall@20"):  # united, the two find at least what each finds
        assert heldout["lexical,static"][k] >= max(heldout["lexical"][k], heldout["static"][k])
    # Learned, not drawn: a training pair is far closer than two unrelated questions.
    same = static_vector("开初婚未育证明怎么弄", table) @ static_vector("初婚未育情况证明怎么开", table)
    other = static_vector("开初婚未育证明怎么弄", table) @ static_vector("这种图片是用什么软件制作的", table)
    assert same > other + 0.3
    assert config["trained"]["positive_pairs"] > 500 and config["trained"]["epochs"] == 2


@pytest.mark.slow
def test_the_same_files_and_seed_give_the_same_table(lcqmc_file, trained):
    again, _ = train([lcqmc_file], SMALL)
    assert np.array_equal(again, trained[0])


@pytest.mark.slow
def test_the_command_writes_a_loadable_embedder_and_never_replaces_one_unasked(lcqmc_file, trained, tmp_path,
                                                                                capsys):
    out = tmp_path / "blocker"
    flags = ["train-blocker", "--pairs", lcqmc_file, "--output", str(out), "--buckets=4096", "--dims=32",
             "--epochs=1", "--seed=7"]
    assert main(flags) == 0
    table, config = load_static_embedder(str(out))
    assert table.shape == (4096, 32) and config["trained"]["files"] == ["lcqmc-2000.tsv"]
    assert '"heldout"' in capsys.readouterr().out
    before = (out / "embedder.safetensors").read_bytes()
    assert main(flags) == 2
    assert "exists; give --overwrite" in capsys.readouterr().err
    assert (out / "embedder.safetensors").read_bytes() == before
    write_atomically(str(out), *trained, overwrite=True)
    assert np.array_equal(load_static_embedder(str(out))[0], trained[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]  # nothing left beside it
    assert main(["train-blocker", "--pairs", lcqmc_file, "--output", str(out), "--heldout=1.5"]) == 2


@pytest.mark.e2e
def test_from_run_mines_the_runs_questions_and_learns_from_its_scorer(tiny_model, tmp_path):
    """The run's questions with their 10 nearest (beyond its top-k of 3) are scored by its cross-encoder in
    a mining run beside the output; the run itself is left as it was, the mining run removed."""
    texts = sorted({t for a, b, _ in lcqmc_pairs(60) for t in (a, b)})
    write_questions(list(enumerate(texts)), tmp_path / "in" / "q.parquet")
    run_qdedup(tmp_path / "in" / "q.parquet", tmp_path / "out", tiny_model, "--top-k=3", "--min-similarity=0.1")
    before = snapshot(tmp_path / "out")
    assert main(["train-blocker", "--from-run", str(tmp_path / "out"), "--output", str(tmp_path / "blocker"),
                 "--mine-top-k=10", "--max-pairs=400", "--epochs=1", "--buckets=1024", "--dims=16",
                 *RUNNER_ARGS]) == 0
    table, config = load_static_embedder(str(tmp_path / "blocker"))
    trained = config["trained"]
    assert trained["from_run"] == str((tmp_path / "out").resolve()) and trained["mined_top_k"] == 10
    assert 300 < trained["mined_pairs"] <= 400  # a seeded sample of the mined pairs, at most --max-pairs
    assert trained["positive_pairs"] > 0 and table.shape == (1024, 16)
    assert snapshot(tmp_path / "out") == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".train-blocker")]


def test_files_of_the_same_name_keep_their_figures_apart():
    assert file_names(["data/bq/dev.tsv", "data/lcqmc/dev.tsv", "x/train.tsv"]) == [
        "data/bq/dev.tsv", "data/lcqmc/dev.tsv", "train.tsv"]
