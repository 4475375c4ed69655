"""Costs a strategy can constrain besides the run's budget: measured latency on another backend,
device or batch (PyTorch or ONNX Runtime), and a user's Python function of the pruned model.

Each is a function ``counts -> fraction of the original cost``, memoised per structure and model
version (a strategy that trains the weights, joint, changes the version).
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Any, Callable, Sequence

import torch

from ..errors import PrunerError
from ..userfile import import_function
from .base import SearchContext


def load_python_function(spec: str, what: str = "cost") -> Callable:
    """``python:path/file.py:function`` -> the function (imported the way ``file:`` models are)."""
    body = spec[len("python:"):] if spec.startswith("python:") else spec
    path_str, sep, func = body.rpartition(":")
    if not sep or not path_str or not func:
        raise PrunerError(f"{what} {spec!r} must look like python:path/to/file.py:function")
    return import_function(path_str, func, what=f"{what} file", syntax="python:PATH.py:FUNCTION")


def memoised(ctx: SearchContext, measure: Callable[[list[int]], float]) -> Callable[[list[int]], float]:
    memo: dict[tuple, float] = {}

    def fn(counts: Sequence[int]) -> float:
        key = (ctx.evaluator.model_version, tuple(int(c) for c in counts))
        if key not in memo:
            memo[key] = float(measure(list(key[1])))
        return memo[key]

    return fn


def _check_value(value: Any, spec: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PrunerError(f"cost function {spec} returned {value!r}, not a number") from None
    if not math.isfinite(v) or v < 0:
        raise PrunerError(f"cost function {spec} returned {v}, which is not a finite non-negative number")
    return v


def python_cost(ctx: SearchContext, spec: str, scale: str) -> Callable[[list[int]], float]:
    user_fn = load_python_function(spec)
    ev = ctx.evaluator
    base: list[float] = []

    def call(model) -> float:
        model.eval()
        try:
            with torch.no_grad():
                value = user_fn(model)
        except PrunerError:
            raise
        except Exception as exc:
            raise PrunerError(f"cost function {spec} raised {type(exc).__name__}: {exc}; fix the function") from None
        return _check_value(value, spec)

    def measure(counts: list[int]) -> float:
        value = call(ev.build(counts, recalibrate=False))
        if scale == "relative":
            return value
        if not base:
            import copy
            b = call(copy.deepcopy(ev.model).to(ev.device))
            if b <= 0:
                raise PrunerError(f"cost function {spec} returned {b} for the unpruned model; with "
                                  "cost_scale=absolute it must be positive")
            base.append(b)
        return value / base[0]

    return memoised(ctx, measure)


def latency_cost(ctx: SearchContext, backend: str, device: str, batch: int) -> tuple[Callable[[list[int]], float], bool]:
    """Relative measured latency; the flag says whether it is the evaluator's own (the run's) measurement."""
    ev = ctx.evaluator
    dev = ev.device if device == "auto" else torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PrunerError("latency_device=cuda was requested but no CUDA GPU is available; use cpu or auto")
    batch = batch or ev.settings.latency_batch
    if backend == "torch" and dev == ev.device and batch == ev.settings.latency_batch:
        return ev.relative_latency, True  # shared, memoised
    repeats = max(1, ev.settings.latency_repeats)
    reference: dict = {}  # ORT: the unpruned model's ONNX file, exported once per model version

    def measure(counts: list[int]) -> float:
        pruned = ev.build(counts, recalibrate=False)
        if backend == "torch":  # relative_latency runs private copies of both on ``dev``
            from ..measure import relative_latency
            return relative_latency(pruned, ev.model, ctx.space.input_size, batch_size=batch, device=dev,
                                    repeats=repeats, warmup=3)["ratio"]
        import copy

        from ..measure import ort_relative_latency
        if reference.get("version") != ev.model_version:  # first call, or the unpruned model changed
            reference["dir"] = tempfile.TemporaryDirectory()  # removed when replaced or no longer referenced
            reference["onnx"] = _export_for_latency(copy.deepcopy(ev.model), ctx, reference["dir"].name, "base")
            reference["version"] = ev.model_version
        with tempfile.TemporaryDirectory() as tmp:
            path = _export_for_latency(pruned, ctx, tmp, "candidate")
            return ort_relative_latency(path, reference["onnx"], ctx.space.input_size, batch_size=batch,
                                        device=str(dev), warmup=3, repeats=repeats)["ratio"]

    return memoised(ctx, measure), False


def _export_for_latency(model, ctx: SearchContext, folder: str, name: str) -> str:
    """Export ``model`` to ``folder/name.onnx`` the way the job exports (``pruner.export``)."""
    from ..export import export_onnx

    data = ctx.evaluator.data
    size = ctx.space.input_size
    gen = torch.Generator().manual_seed(0)
    path = os.path.join(folder, f"{name}.onnx")
    export_onnx(model.cpu(), path, input_size=size, mean=data.mean, std=data.std,
                class_names=list(getattr(data, "classes", [])), sample=torch.randn(2, *size, generator=gen))
    return path
