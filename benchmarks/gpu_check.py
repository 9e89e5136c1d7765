"""One command that measures qdedup's scoring on a GPU, for the sessions that are lent one.

It needs torch, transformers, safetensors and numpy alone (a GPU machine may have
no Beam, faiss or pyarrow): it calls qdedup's own feeding core
(`transforms/feeding.py`: tokenize, pack under a token budget, pad, forward,
halve on out-of-memory) directly, and runs the RunInference stage
(`transforms/score.py`'s `ScorePairs`) only where Beam is importable. The models
are random (`pipelines/random_model.py`, Erlangshen's shape): their scores mean
nothing, their cost is the real model's.

Steps, each written to the JSON of --out:

- agreement: fp32 against bf16 and fp16 scores of the first --agreement-pairs
  LCQMC dev pairs, on the full-shape model with spread-out scores (weights drawn
  with initializer_range 0.1): mean and largest |difference|, decisions at 0.5
  that flip;
- precision: pairs/s of the core alone in fp32, bf16 and fp16 (CUDA; fp32 and
  bf16 on the CPU) at the device's automatic token budget on --pairs pairs,
  interleaved (fp32, bf16, fp16, fp16, bf16, fp32, ...) --repeat times each
  after one untimed pass each: what each precision costs beside what it changes;
- sweep: pairs/s over token budgets (--budgets) on --pairs pairs (LCQMC dev,
  then seeded recombinations of its questions), in the precision `--precision
  auto` picks (fp16 on CUDA; bf16 before 2026-12-04): the core alone
  (tokenized once beforehand; packing, padding and the forward timed) and,
  with Beam, the whole RunInference stage on the in-process runner
  (tokenizing, shuffles and model loading included, and the seconds inside the
  forward pass apart), interleaved (core, stage, stage, core, ...) --repeat
  times each, after one untimed pass of the core at each budget (its batch
  shapes met once); beside the first budget's, the pipeline around the stage
  alone (the pairs created, their scores collected), so that the stage's own
  µs a pair is the difference; peak GPU memory per budget; the largest
  difference between the stage's and the core's scores;
- oom: --oom-pairs inputs of --max-length tokens in one batch, which the GPU
  cannot hold: the batch is halved until it fits and every input is scored, as
  in normal batches (on the CPU an out-of-memory error is raised above
  --oom-rows rows instead);
- copies (Beam only): the stage in two worker processes with --model-copies 1
  (one model shared through Beam's `large_model`) and with one model per
  process: GPU memory in use at its highest, and the scores of both;
- run (Beam, faiss and pyarrow): a whole `qdedup run` (`bench_scale.py`'s
  `run_size`: `configs/local.yaml`, a worker process per core) of
  `bench_scale.py`'s synthetic corpus (--run-rows rows, or the Parquet files
  of --run-corpus) with the model on the device, `--model-copies` 1 and 0
  interleaved --run-repeat times each: wall, CPU, memory, and on CUDA the
  device memory in use at its highest and the seconds the GPU was busy
  (sampled every 0.5 s): whether the CPU stages around scoring keep the GPU
  waiting, and what sharing one model costs.

    python -m benchmarks.gpu_check [--out gpu_check.json] [--data ../shared/data/lcqmc/dev.tsv]
    python -m benchmarks.gpu_check --dry-run     # tiny model, few pairs, CPU: keeps the script working in CI
    python -m benchmarks.gpu_check --steps sweep  # one step again
    python -m benchmarks.gpu_check --model DIR    # the real model's agreement and speed instead of a random one's
    python -m benchmarks.gpu_check --steps run --run-corpus DIR  # whole runs of a corpus bench_scale.py wrote
"""
from __future__ import annotations

import argparse
import functools
import glob
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from typing import Callable, Optional

import numpy as np

from pipelines.random_model import make_erlangshen_shaped_model, make_random_model
from transforms.devices import resolve_device
from transforms.feeding import (
    LoadedModel,
    ModelSettings,
    pack_batches,
    positive_probability,
    run_splitting_on_failure,
    token_budget,
    tokenize,
)
from transforms.sources import load_pretrained, load_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "lcqmc", "dev.tsv"))


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


HAS_BEAM = _importable("apache_beam")
HAS_PIPELINE = HAS_BEAM and _importable("faiss") and _importable("pyarrow")  # what a whole run needs
STEPS = ("agreement", "precision", "sweep", "oom", "copies", "run")
REPO = os.path.dirname(HERE)


def read_pairs(path: str, count: int, seed: int = 0) -> list[tuple[str, str]]:
    """The first `count` pairs of an LCQMC-style TSV (question, question, label), then seeded pairs of
    its questions: real lengths, as many as asked for."""
    with open(path, encoding="utf-8") as handle:
        labelled = [tuple(line.rstrip("\n").split("\t")[:2]) for line in handle if line.strip()]
    if count <= len(labelled):
        return labelled[:count]
    rng = random.Random(seed)
    questions = sorted({q for pair in labelled for q in pair})
    return labelled + [(rng.choice(questions), rng.choice(questions)) for _ in range(count - len(labelled))]


# The vector and matrix instruction sets that decide fp32, bf16 and int8 speed on a CPU.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "fma")


def machine() -> dict:
    """Python, library versions, the CPU (model name and `CPU_FLAGS` it has) and the GPU, if any."""
    import torch
    import transformers
    found = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
             "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "beam": HAS_BEAM}
    try:
        with open("/proc/cpuinfo") as handle:
            first = handle.read().split("\n\n", 1)[0]  # the first processor's block
    except OSError:
        first = ""
    info = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first.splitlines())}
    found["cpu"] = info.get("model name", found["cpu"])
    flags = info.get("flags", "").split()
    found["cpu_flags"] = [flag for flag in CPU_FLAGS if flag in flags]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        found.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return found


class Scorer:
    """A model loaded once the way workers load it (`sources.load_pretrained`), scoring through the core."""

    def __init__(self, model_dir: str, device: str, precision: str):
        settings = ModelSettings(model_dir, device=device, precision=precision)
        model, device, pad_id = load_pretrained(settings, "AutoModelForSequenceClassification")
        self.loaded = LoadedModel(model, device, pad_id, functools.partial(positive_probability, label=1))
        self.dtype = str(next(model.parameters()).dtype).replace("torch.", "")

    def score(self, encodings: list, budget: int) -> tuple[np.ndarray, dict]:
        """Scores in input order, and what it took: seconds (packing, padding, forward, synchronized),
        batches, padded tokens, peak GPU memory."""
        import torch
        cuda = self.loaded.device == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        batches = pack_batches([len(ids) for ids, _ in encodings], budget)
        scores = np.empty(len(encodings))
        padded = 0
        for batch in batches:
            chosen = [encodings[i] for i in batch]
            padded += len(batch) * max(len(ids) for ids, _ in chosen)
            scores[batch] = self.loaded.run(chosen).outputs
        figures = {"seconds": time.perf_counter() - started, "batches": len(batches), "padded_tokens": padded}
        if cuda:
            figures["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        return scores, figures


def encode(model_dir: str, pairs: list, max_length: int) -> tuple[list, float]:
    tokenizer = load_tokenizer(model_dir)
    started = time.perf_counter()
    encoded = tokenize(tokenizer, pairs, max_length)
    return [enc for enc, _ in encoded], time.perf_counter() - started


def agreement(model_dir: str, pairs: list, device: str, precisions: list[str]) -> dict:
    """fp32 against each lower precision on the same pairs (packed the same way)."""
    encodings, _ = encode(model_dir, pairs, 512)
    budget = 8192
    reference, _ = Scorer(model_dir, device, "fp32").score(encodings, budget)
    found = {"pairs": len(pairs), "fp32_score_range": [round(float(reference.min()), 4),
                                                        round(float(reference.max()), 4)],
             "fp32_score_std": round(float(reference.std()), 4)}
    for precision in precisions:
        scores, _ = Scorer(model_dir, device, precision).score(encodings, budget)
        delta = np.abs(scores - reference)
        found[precision] = {"mean_abs_diff": float(delta.mean()), "max_abs_diff": float(delta.max()),
                            "decisions_flipped_at_0.5": int(((scores >= 0.5) != (reference >= 0.5)).sum())}
    return found


def stage_scores(pairs: list, settings: Optional[ModelSettings], runner_args: list[str]) -> tuple[np.ndarray, dict]:
    """ScorePairs through RunInference: scores in input order, and its seconds (the whole pipeline, and
    those inside the forward pass from the stage's own timer). `settings` None: the pipeline around the
    stage alone (the pairs made, their ids collected; every score 0), whose seconds the stage's include."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.local_runner import prepare
    from transforms.metrics import STAGE_NAMESPACE
    from transforms.records import CandidatePair, pairs_in
    from transforms.score import ScorePairs

    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "scores.json")
        started = time.perf_counter()
        options = PipelineOptions(runner_args)
        prepare(options)
        pipeline = beam.Pipeline(options=options)
        made = pipeline | beam.Create([CandidatePair(i, i + len(pairs), a, b, None) for i, (a, b) in enumerate(pairs)])
        if settings is None:
            scores = made | beam.Map(lambda c: (c.id_a, 0.0))
        else:
            scored = (made | ScorePairs(settings)).scored
            scores = scored | beam.FlatMap(pairs_in) | beam.Map(lambda p: (p.id_a, p.score))
        _ = scores | beam.combiners.ToList() | beam.Map(functools.partial(_write_json, out))
        result = pipeline.run()
        result.wait_until_finish()
        wall = time.perf_counter() - started
        with open(out) as handle:
            found = dict(json.load(handle))
    counters = result.metrics().query()["counters"]
    forward = sum(c.committed for c in counters
                  if c.key.metric.namespace == STAGE_NAMESPACE and c.key.metric.name == "score") / 1e6
    return np.array([found[i] for i in range(len(pairs))]), {"seconds": wall, "forward_seconds": forward}


def _write_json(path: str, items) -> None:
    with open(path, "w") as handle:
        json.dump(items, handle)


def _summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "runs": len(values)}


def _interleaved(methods: list[str], repeat: int) -> list[str]:
    """A B C C B A A B C ...: each method as often early as late in the run."""
    rounds = [methods if turn % 2 == 0 else methods[::-1] for turn in range(repeat)]
    return [method for methods_ in rounds for method in methods_]


def precision_speed(model_dir: str, pairs: list, device: str, precisions: list[str], repeat: int) -> dict:
    """Core pairs/s of each precision at the device's automatic budget, interleaved, each after an untimed pass."""
    encodings, _ = encode(model_dir, pairs, 512)
    budget = token_budget(ModelSettings(model_dir, device=device))
    scorers = {precision: Scorer(model_dir, device, precision) for precision in precisions}
    for scorer in scorers.values():
        scorer.score(encodings, budget)
    runs = {precision: [] for precision in precisions}
    for precision in _interleaved(precisions, repeat):
        _, figures = scorers[precision].score(encodings, budget)
        runs[precision].append(len(pairs) / figures["seconds"])
    return {"pairs": len(pairs), "token_budget": budget,
            **{precision: {"dtype": scorers[precision].dtype, "core_pairs_per_s": _summary(values)}
               for precision, values in runs.items()}}


def sweep(model_dir: str, pairs: list, device: str, budgets: list[int], repeat: int) -> dict:
    """Pairs/s of the core and of the stage at each token budget, interleaved core, stage, stage, core, ..."""
    encodings, tokenize_seconds = encode(model_dir, pairs, 512)
    scorer = Scorer(model_dir, device, "auto")
    found = {"pairs": len(pairs), "dtype": scorer.dtype, "tokenize_seconds_once": round(tokenize_seconds, 2),
             "by_budget": {}}
    around = []  # seconds of the pipeline around the stage, measured beside the first budget's runs
    for budget in budgets:
        runs = {"core": [], "stage": [], "stage_forward": []}
        figures, reference, largest_diff = {}, None, 0.0
        scorer.score(encodings, budget)  # untimed: this budget's batch shapes met once
        methods = ["core", "stage", "around"] if budget == budgets[0] else ["core", "stage"]
        for method in _interleaved(methods, repeat) if HAS_BEAM else ["core"] * repeat:
            if method == "core":
                reference, figures = scorer.score(encodings, budget)
                runs["core"].append(len(pairs) / figures["seconds"])
            elif method == "around":
                around.append(stage_scores(pairs, None, ["--runner=FnApiRunner"])[1]["seconds"])
            else:
                settings = ModelSettings(model_dir, device=device, token_budget=budget)
                scores, seconds = stage_scores(pairs, settings, ["--runner=FnApiRunner"])
                runs["stage"].append(len(pairs) / seconds["seconds"])
                runs["stage_forward"].append(len(pairs) / seconds["forward_seconds"])
                if reference is not None:
                    largest_diff = max(largest_diff, float(np.abs(scores - reference).max()))
        entry = {"core_pairs_per_s": _summary(runs["core"]), "batches": figures["batches"],
                 "padded_tokens": figures["padded_tokens"], "peak_gpu_gib": figures.get("peak_gpu_gib")}
        if runs["stage"]:
            entry.update(stage_pairs_per_s=_summary(runs["stage"]),
                         stage_forward_pairs_per_s=_summary(runs["stage_forward"]),
                         stage_vs_core_largest_score_diff=largest_diff,
                         stage_less_around_us_per_pair=round(
                             1e6 * (1 / statistics.median(runs["stage"]) - statistics.median(around) / len(pairs)), 1))
        if around and "around_pairs_per_s" not in found:
            found["around_pairs_per_s"] = _summary([len(pairs) / seconds for seconds in around])
        found["by_budget"][str(budget)] = entry
        print(f"  budget {budget}: {json.dumps(entry)}", flush=True)
    return found


def oom(model_dir: str, pairs: list, device: str, max_length: int, rows: int) -> dict:
    """One batch too large for the device, halved until it fits: every input scored, as in small batches."""
    import torch
    side = (max_length - 3) // 2  # characters a side: about max_length tokens a pair, none cut
    texts = [((a * side)[:side], (b * side)[:side]) for a, b in pairs]
    encodings, _ = encode(model_dir, texts, max_length)
    scorer = Scorer(model_dir, device, "auto")
    loaded = scorer.loaded
    forward = functools.partial(loaded.forward, loaded.model)
    if loaded.device != "cuda":  # no device memory to run out of: fail the way CUDA does above `rows` rows
        def forward(batch, _inner=forward):
            if batch["input_ids"].shape[0] > rows:
                raise torch.OutOfMemoryError("CUDA out of memory (injected above %d rows)" % rows)
            return _inner(batch)
    small, _ = scorer.score(encodings, 8192)
    started = time.perf_counter()
    ran = run_splitting_on_failure(forward, encodings, loaded.pad_id, loaded.device)
    seconds = time.perf_counter() - started
    scored = np.array([np.nan if out is None else out for out in ran.outputs], dtype=float)
    return {"inputs": len(encodings), "tokens": sum(len(ids) for ids, _ in encodings),
            "out_of_memory_splits": ran.oom_splits, "unscored": int(np.isnan(scored).sum()),
            "largest_diff_from_small_batches": float(np.nanmax(np.abs(scored - small))), "seconds": round(seconds, 2)}


def _gpu_in_use(stop: threading.Event, peak: list) -> None:
    import torch
    while not stop.is_set():
        free, total = torch.cuda.mem_get_info()
        peak[0] = max(peak[0], total - free)
        time.sleep(0.1)


def copies(model_dir: str, pairs: list, device: str) -> dict:
    """The stage in two worker processes, one model shared (--model-copies 1) and one per process."""
    import gc

    import torch
    found, scores = {}, {}
    gc.collect()
    for copies_ in (1, 0):
        settings = ModelSettings(model_dir, device=device, model_copies=copies_)
        peak, stop = [0], threading.Event()
        if device == "cuda":
            torch.cuda.empty_cache()
            before = torch.cuda.mem_get_info()
            watcher = threading.Thread(target=_gpu_in_use, args=(stop, peak), daemon=True)
            watcher.start()
        scores[copies_], seconds = stage_scores(
            pairs, settings, ["--runner=FnApiRunner", "--direct_running_mode=multi_processing",
                              "--direct_num_workers=2"])
        stop.set()
        entry = {"seconds": round(seconds["seconds"], 2)}
        if device == "cuda":
            watcher.join()
            entry["gpu_gib_in_use_at_most"] = round((peak[0] - (before[1] - before[0])) / 2**30, 2)
        found["model_copies_1" if copies_ else "one_model_per_process"] = entry
    found["largest_score_diff"] = float(np.abs(scores[1] - scores[0]).max())
    return found


DEVICE_SAMPLE_S = 0.5  # how often the run step reads the GPU's memory and utilization


def _device_watch(stop: threading.Event, samples: list) -> None:
    """(device memory in use, utilization % or None where NVML is missing) every `DEVICE_SAMPLE_S` until `stop`."""
    import torch
    while not stop.is_set():
        free, total = torch.cuda.mem_get_info()
        try:
            busy = torch.cuda.utilization()
        except Exception:  # noqa: BLE001 - no NVML here: the memory alone
            busy = None
        samples.append((total - free, busy))
        time.sleep(DEVICE_SAMPLE_S)


def _placed_corpus(corpus: str, work: str) -> int:
    """A folder of Parquet files placed as `run_size` looks for an N-row corpus (`work`/corpus-N); returns N."""
    import pyarrow.parquet as pq
    rows = sum(pq.ParquetFile(path).metadata.num_rows for path in glob.glob(os.path.join(corpus, "*.parquet")))
    if not rows:
        raise SystemExit(f"--run-corpus {corpus}: no Parquet rows there")
    placed = os.path.join(work, f"corpus-{rows}")
    if not os.path.exists(placed):
        os.symlink(os.path.abspath(corpus), placed)
    return rows


def whole_run(model_dir: str, device: str, rows: int, corpus: Optional[str], repeat: int, work: str) -> dict:
    """Whole runs with the model on `device`, --model-copies 1 and 0 interleaved `repeat` times each (`run_size`
    of `bench_scale.py`, which writes its corpus of `rows` rows into `work` unless `corpus` is given)."""
    from benchmarks import bench_scale
    os.makedirs(work, exist_ok=True)
    if corpus:
        rows = _placed_corpus(corpus, work)
    runs: dict = {1: [], 0: []}
    for copies_ in _interleaved([1, 0], repeat):
        samples, stop, before = [], threading.Event(), None
        if device == "cuda":
            import torch
            torch.cuda.empty_cache()
            before = torch.cuda.mem_get_info()
            watcher = threading.Thread(target=_device_watch, args=(stop, samples), daemon=True)
            watcher.start()
        try:
            flags = ["--device", device, "--model-copies", str(copies_)]
            result = bench_scale.run_size(rows, REPO, work, model_dir, flags, bench_scale.default_max_rss_gib())
        except SystemExit as failed:  # the run failed: said, and the other runs go on
            result = {"failed": str(failed)}
        stop.set()
        kept = ("wall_s", "cpu_s", "peak_rss_gib", "candidate_pairs", "resplit_pairs_scored", "groups",
                "forward_hardware", "stopped", "failed")
        entry = {key: result[key] for key in kept if key in result}
        entry["score_stage_cpu_s"] = result.get("stage_cpu_seconds", {}).get("score")
        if before is not None:
            watcher.join()
            in_use = [used for used, _ in samples] or [before[1] - before[0]]
            entry["gpu_gib_in_use_at_most"] = round((max(in_use) - (before[1] - before[0])) / 2**30, 2)
            busy = [percent for _, percent in samples if percent is not None]
            if busy:
                entry["gpu_busy_seconds"] = round(sum(percent > 0 for percent in busy) * DEVICE_SAMPLE_S, 1)
        runs[copies_].append(entry)
        print(f"  --model-copies {copies_}: {json.dumps(entry)}", flush=True)
    found = {"rows": rows, "model_copies_1": runs[1], "one_model_per_process": runs[0]}
    for name in ("model_copies_1", "one_model_per_process"):
        walls = [entry["wall_s"] for entry in found[name] if "wall_s" in entry]
        if walls:
            found[f"{name}_wall_s"] = _summary(walls)
    return found


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny model, few pairs, CPU: checks the script")
    parser.add_argument("--data", default=DEFAULT_DATA, help="LCQMC-style TSV: question, question, label")
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--work", default=None, help="where the random models are written (default: a temp dir)")
    parser.add_argument("--pairs", type=int, default=50_000)
    parser.add_argument("--agreement-pairs", type=int, default=2_000)
    parser.add_argument("--budgets", default=None, help="token budgets to sweep (default: 8192 to 131072 by "
                                                           "doubling; 512,2048 with --dry-run)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each method per budget, interleaved")
    parser.add_argument("--oom-pairs", type=int, default=32_000)
    parser.add_argument("--oom-rows", type=int, default=4, help="CPU only: rows above which OOM is injected")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--copies-pairs", type=int, default=10_000)
    parser.add_argument("--run-rows", type=int, default=100_000, help="rows of the run step's corpus")
    parser.add_argument("--run-corpus", default=None, help="a folder of Parquet files (id, question) for the run "
                                                          "step, bench_scale.py's corpus written elsewhere, say")
    parser.add_argument("--run-repeat", type=int, default=1, help="runs of each --model-copies setting")
    parser.add_argument("--model", default=None, help="a model folder to measure (the real scorer, say) instead "
                                                        "of random models of Erlangshen's shape")
    parser.add_argument("--steps", default=",".join(STEPS), help="which steps to run (to rerun one, say)")
    args = parser.parse_args(argv)
    device = "cpu" if args.dry_run else resolve_device("auto")
    if args.dry_run:
        args.pairs, args.agreement_pairs, args.oom_pairs, args.copies_pairs, args.run_rows = 64, 32, 12, 32, 600
        args.repeat, args.max_length = 1, 64
    budgets = [int(b) for b in (args.budgets or ("512,2048" if args.dry_run else
                                                 "8192,16384,32768,65536,131072")).split(",")]
    work = args.work or tempfile.mkdtemp(prefix="gpu-check-")
    results = {"machine": machine(), "device": device, "dry_run": args.dry_run, "started": time.time()}

    def step(name: str, run: Callable[[], dict]) -> None:
        started = time.perf_counter()
        print(f"{name} ...", flush=True)
        results[name] = run()
        results[name]["step_seconds"] = round(time.perf_counter() - started, 1)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
        with open(args.out, "w") as handle:  # after every step: a run cut short keeps what it measured
            json.dump(results, handle, indent=2)

    steps = set(args.steps.split(","))
    if steps - set(STEPS):
        parser.error(f"--steps: {', '.join(sorted(steps - set(STEPS)))} not among {', '.join(STEPS)}")
    if args.model:
        full = spread = args.model
    elif args.dry_run:
        full = spread = make_random_model(os.path.join(work, "tiny"))
    else:
        full = make_erlangshen_shaped_model(os.path.join(work, "erlangshen"))
        spread = (make_erlangshen_shaped_model(os.path.join(work, "erlangshen-spread"), spread=True)
                  if "agreement" in steps else None)
    results["models"] = {"measured": full, "agreement": spread}  # the folders scored (random ones: in --work)
    lower = ["bf16", "fp16"] if device == "cuda" else ["bf16"]
    runs = {
        "agreement": lambda: agreement(spread, read_pairs(args.data, args.agreement_pairs), device, lower),
        "precision": lambda: precision_speed(full, read_pairs(args.data, args.pairs), device, ["fp32", *lower],
                                             args.repeat),
        "sweep": lambda: sweep(full, read_pairs(args.data, args.pairs), device, budgets, args.repeat),
        "oom": lambda: oom(full, read_pairs(args.data, args.oom_pairs), device, args.max_length, args.oom_rows),
        "copies": lambda: copies(full, read_pairs(args.data, args.copies_pairs), device),
        "run": lambda: whole_run(full, device, args.run_rows, args.run_corpus, args.run_repeat,
                                 os.path.join(work, "runs")),
    }
    for name in STEPS:
        if name not in steps:
            continue
        if name == "copies" and not HAS_BEAM:
            results[name] = {"skipped": "apache_beam is not installed here"}
        elif name == "run" and not HAS_PIPELINE:
            results[name] = {"skipped": "apache_beam, faiss or pyarrow is not installed here"}
        else:
            step(name, runs[name])
    results["seconds"] = round(time.time() - results.pop("started"), 1)
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=2)
    print(f"wrote {args.out} ({results['seconds']} s)")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
