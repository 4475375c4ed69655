"""ONNX export verified in ONNX Runtime, ONNX Runtime latency, and code-free pruned programs.

Export uses ``torch.onnx.export(dynamo=True)`` (the supported exporter in torch 2.14) at
opset 18 with a dynamic batch axis. Every export is checked: ``onnx.checker`` on the file,
then ONNX Runtime runs a real batch and its logits are compared with PyTorch's — the file
is accepted when ``max|ort - torch| <= 1e-4 * max(1, max|torch|)``.
"""

from __future__ import annotations

import copy
import io
import json
import os
import statistics
import time
import warnings
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from .errors import PrunerError

OPSET = 18
RELATIVE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class OnnxReport:
    path: str
    max_abs_diff: float
    max_rel_diff: float
    opset: int
    ok: bool


def export_onnx(model: nn.Module, path: str | Path, *, input_size: Sequence[int], mean: Sequence[float],
                std: Sequence[float], class_names: Sequence[str], sample: torch.Tensor, opset: int = OPSET,
                metadata: dict[str, str] | None = None) -> OnnxReport:
    """Export ``model`` (a CPU copy, eval mode) to ONNX with preprocessing metadata, and verify it."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    m = copy.deepcopy(model).to("cpu").to(memory_format=torch.contiguous_format).eval()
    example = torch.zeros(2, *input_size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(m, (example,), input_names=["input"], output_names=["logits"],
                                        opset_version=opset, dynamo=True, dynamic_shapes=({0: batch},),
                                        optimize=True, verbose=False)
    except Exception as exc:
        raise PrunerError(f"ONNX export failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
    proto = program.model_proto
    props = {"mean": json.dumps([float(v) for v in mean]), "std": json.dumps([float(v) for v in std]),
             "input_size": json.dumps([int(v) for v in input_size]), "class_names": json.dumps(list(class_names)),
             "layout": "NCHW float32, RGB scaled to [0, 1] then (x - mean) / std", **(metadata or {})}
    del proto.metadata_props[:]
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(k), str(v)
    onnx.save(proto, str(tmp))
    onnx.checker.check_model(str(tmp))
    os.replace(tmp, path)
    with torch.no_grad():
        ref = m(sample.float().cpu()).numpy()
    got = ort_session(path).run(None, {"input": sample.float().cpu().numpy()})[0]
    diff = float(np.abs(got - ref).max())
    scale = max(1.0, float(np.abs(ref).max()))
    report = OnnxReport(str(path), diff, diff / scale, int(proto.opset_import[0].version), diff <= RELATIVE_TOLERANCE * scale)
    if not report.ok:
        raise PrunerError(f"the ONNX model disagrees with PyTorch: max |diff| {diff:.3g} > {RELATIVE_TOLERANCE:g} x {scale:.3g}")
    return report


def read_onnx_metadata(path: str | Path) -> dict:
    """The metadata stored by :func:`export_onnx` (JSON values decoded)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise PrunerError(f"ONNX file {path} does not exist") from None
    except Exception as exc:
        raise PrunerError(f"could not read ONNX file {path} ({type(exc).__name__}); is it an ONNX model?") from None
    out = {}
    for p in proto.metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except json.JSONDecodeError:
            out[p.key] = p.value
    return out


def ort_session(path: str | Path, device: str = "cpu"):
    """An ONNX Runtime session (CUDA provider when asked for and available), threads matched to PyTorch."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:
        raise PrunerError(f"ONNX Runtime could not load {path} ({type(exc).__name__}); is it a valid ONNX model?") from None


def ort_latency_ms(path: str | Path, input_size: Sequence[int], *, batch_size: int = 1, device: str = "cpu",
                   warmup: int = 10, repeats: int = 50) -> float:
    """Median ONNX Runtime latency in milliseconds."""
    sess = ort_session(path, device)
    x = np.random.default_rng(0).standard_normal((batch_size, *input_size)).astype(np.float32)
    name = sess.get_inputs()[0].name
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000.0)
    return float(statistics.median(times))


def save_pruned_program(model: nn.Module, path: str | Path, *, input_size: Sequence[int], sample=None) -> None:
    """Save the pruned architecture *and* weights with ``torch.export`` (no project code needed to load)."""
    m = copy.deepcopy(model).to("cpu").to(memory_format=torch.contiguous_format).eval()
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        program = torch.export.export(m, (torch.zeros(2, *input_size),), dynamic_shapes=({0: batch},))
    except Exception as exc:
        raise PrunerError(f"torch.export could not capture the pruned model ({type(exc).__name__})") from exc
    torch.export.save(program, str(path))


def load_pruned_program(path: str | Path) -> nn.Module:
    """Load :func:`save_pruned_program`'s file as a callable module."""
    try:
        return torch.export.load(str(path)).module()
    except FileNotFoundError:
        raise PrunerError(f"program file {path} does not exist") from None
