"""Environment-driven settings: where data and weights live, and which device to use."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import PrunerError

DATA_ROOT_ENV = "PRUNER_DATA_ROOT"
WEIGHTS_DIR_ENV = "PRUNER_WEIGHTS_DIR"
CACHE_DIR_ENV = "PRUNER_CACHE_DIR"
#: "0" (or off/false/no): no automatic bf16 on the CPU (float32 everywhere unless a setting asks for bf16), for
#: runs that must give the same numbers on every CPU and at every thread or worker count
BF16_ENV = "PRUNER_BF16"
#: device choices a user can name (``cuda:N`` also works where a GPU index matters)
DEVICES = ("auto", "cpu", "cuda")


def data_root() -> Path:
    """Root of datasets (``cifar10-jpeg/`` lives there; torchvision downloads go there)."""
    return Path(os.environ.get(DATA_ROOT_ENV, Path.home() / ".cache" / "pruner" / "data")).expanduser()


def weights_dir() -> Path:
    """Where pretrained weights are looked up before any download (torch.hub ``model_dir``)."""
    return Path(os.environ.get(WEIGHTS_DIR_ENV, Path(torch.hub.get_dir()) / "checkpoints")).expanduser()


def cache_dir() -> Path:
    """Where decoded datasets are cached between runs."""
    return Path(os.environ.get(CACHE_DIR_ENV, Path.home() / ".cache" / "pruner" / "decoded")).expanduser()


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without a GPU is a clear error."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PrunerError("device 'cuda' was requested but no CUDA GPU is available; choose 'cpu' or 'auto'")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise PrunerError(f"unknown device {name!r}; use 'auto', 'cpu' or 'cuda'")


def native_bf16(device: torch.device | str) -> bool:
    """Whether bfloat16 autocast is the fast default on ``device``: always on CUDA; on a CPU when
    oneDNN has native bf16 kernels (AVX-512 BF16 or AMX), where bench/finetune_speed.py measured a
    pruned ResNet-56's fine-tuning 2.08x faster at the same loss (README); never on other CPUs,
    where bf16 would be emulated and slower; never on a CPU when ``PRUNER_BF16=0``."""
    kind = torch.device(device).type
    if kind == "cuda":
        return True
    if kind != "cpu":
        return False
    if os.environ.get(BF16_ENV, "").strip().lower() in ("0", "off", "false", "no"):
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):   # a build without oneDNN or without the query
        return False


def check_device_name(name: str) -> str:
    """``name`` if it names a device (auto, cpu, cuda or cuda:N), else a ``PrunerError``; whether a GPU
    is present is checked by :func:`resolve_device` when the run starts."""
    text = str(name or "").lower()
    if text in DEVICES or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise PrunerError(f"unknown device {name!r}; use 'auto', 'cpu' or 'cuda'")
