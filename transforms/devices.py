"""Which device a model runs on, and in which precision: the same answer for the launcher and the workers."""
from __future__ import annotations

import os


def resolve_device(device: str) -> str:
    """`auto` means CUDA when usable; `cuda` without a GPU is an error, never a silent CPU fallback."""
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device cuda asked for, but no usable GPU here (torch.cuda.is_available() is False): check the "
            "GPU driver and that torch is a CUDA build, or run on the CPU")
    return device


def model_device(device: str, precision: str) -> str:
    """Where a model of `--device`/`--precision` runs: int8 on the CPU (OpenVINO) whatever `device` says,
    the others where `resolve_device` puts them."""
    return "cpu" if precision == "int8" else resolve_device(device)


def resolve_dtype(precision: str, device: str):
    """The torch dtype a model of `--precision` runs in on `device`.

    `auto` is fp32 on the CPU and fp16 on CUDA: on an H200, fp16 scored as fast as
    bf16 and 8x closer to fp32 (mean |difference| 0.0045 against 0.036, 0.85%
    against 4.7% of decisions flipped at 0.5 on 2,000 LCQMC pairs, a random
    full-shape model with spread-out scores; benchmarks/README.md, "The GPU
    check"), and every CUDA GPU has it. An overflow shows as a failed pair
    (`feeding.NOT_FINITE`), never as a score.
    """
    import torch
    if precision == "auto":
        return torch.float16 if device == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def cpu_threads(torch_threads: int) -> int:
    """The threads a model runs on the CPU: `torch_threads` (`ModelSettings`), or the cores this process may use."""
    return torch_threads or len(os.sched_getaffinity(0))


def hardware(device: str, precision: str, threads: int) -> str:
    """What a model's forward pass ran on, as report.json's `forward_hardware` names it: the GPU's name, or
    the CPU's model, the instruction set torch's kernels use there (int8: OpenVINO on that CPU) and the
    model's threads.

    The same batch scored on another kind of CPU or GPU gives scores that differ at float rounding (about
    1e-6 with the tiny scorer), and so, on a few small batches, does another thread count (one float32 step:
    benchmarks/README.md, "Scores across CPU kinds"), enough to move a pair that close to a threshold; a run
    scored on several kinds shows each with its rows.
    """
    import torch
    if device == "cuda":
        return f"cuda {torch.cuda.get_device_name()}"
    kind = "cpu int8" if precision == "int8" else "cpu"
    plural = "" if threads == 1 else "s"
    return f"{kind} {_cpu_model()} ({torch.backends.cpu.get_cpu_capability()}, {threads} thread{plural})"


def _cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), or the machine architecture where it is not there."""
    import platform
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
