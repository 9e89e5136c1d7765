"""Which device a model runs on, and in which precision: the same answer for the launcher and the workers."""
from __future__ import annotations


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


def resolve_dtype(precision: str, device: str):
    import torch
    if precision == "auto":
        if device != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
