"""ONNX export verified in ONNX Runtime, ONNX Runtime sessions, and code-free pruned programs.

ONNX Runtime *timing* lives with the other latency measurements in :mod:`pruner.measure`.

Exporter choice: the TorchScript-based exporter (``torch.onnx.export(dynamo=False)``) at opset 17.
Both exporters give correct models for the zoo in torch 2.14 (CIFAR ResNets with the
``ZeroPadShortcut`` gather/mul routing, physically pruned ones, torchvision MobileNetV2), but the
TorchScript one is 10-20x faster (0.1-0.4 s against 2-7 s per model, which matters when a
latency-constrained search exports every candidate) and honours the requested opset, while
``dynamo=True`` has no implementations below opset 18 and its down-conversion to 17 fails on
these graphs. The legacy exporter is deprecated, so when it fails (or is gone, or an opset above
20 is asked for) the dynamo exporter is used instead, at opset ``max(opset, 18)``; the report
gives the opset actually written.

Every export is verified: ``onnx.checker`` on the file, then ONNX Runtime (CPU) runs ``sample``
and its outputs are compared with PyTorch's. The file is accepted when
``max|ort - torch| <= 1e-4 * max(1, max|torch|)``: float32 kernels in the two runtimes sum in
different orders, which costs a few ulps per layer — around 1e-6 relative for these networks —
so 1e-4 leaves ample headroom while still catching any wrong op (those give errors of order 1).
A failed export never replaces an existing file at ``path``.
"""

from __future__ import annotations

import copy
import io
import json
import os
import warnings
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from .errors import PrunerError

#: Default ONNX opset (see the module docstring for why not the dynamo exporter's 18).
OPSET = 17
#: Highest opset the TorchScript exporter writes.
_LEGACY_MAX_OPSET = 20
#: Relative tolerance of the ONNX Runtime check: ``max|diff| <= RELATIVE_TOLERANCE * max(1, max|torch|)``.
RELATIVE_TOLERANCE = 1e-4
#: Metadata keys whose values are JSON.
JSON_KEYS = ("mean", "std", "input_size", "class_names")
#: Batch-size range of the exported programs.
_MAX_BATCH = 65536


@dataclass(frozen=True)
class OnnxReport:
    """Result of :func:`export_onnx`; ``max_rel_diff`` is ``max_abs_diff / max(1, max|torch output|)``."""

    path: str
    max_abs_diff: float
    max_rel_diff: float
    opset: int
    ok: bool


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _cpu_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to("cpu").to(memory_format=torch.contiguous_format).eval()


def _first_output(out: Any) -> torch.Tensor:
    """The logits of a forward pass (the first tensor of a tuple/list output)."""
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


def _check_sample(sample: torch.Tensor, input_size: Sequence[int]) -> torch.Tensor:
    if not isinstance(sample, torch.Tensor) or tuple(sample.shape[1:]) != tuple(input_size) or sample.shape[0] < 1:
        shape = tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample).__name__
        raise PrunerError(f"the verification sample must be a batch of shape (N, {', '.join(map(str, input_size))}), "
                          f"got {shape}; pass normalised images of the model's input size")
    return sample.detach().to("cpu", torch.float32).contiguous()


def _example(input_size: Sequence[int], sample: torch.Tensor | None) -> torch.Tensor:
    """An example batch of at least 2 (a batch of 1 would be specialised, not kept dynamic)."""
    if sample is not None and sample.shape[0] >= 2:
        return sample[:2]
    if sample is not None:
        return sample[:1].expand(2, *sample.shape[1:]).contiguous()
    return torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))


def _to_onnx_proto(model: nn.Module, example: torch.Tensor, opset: int):
    """Export with the TorchScript exporter, falling back to the dynamo exporter; returns (ModelProto, opset)."""
    import onnx

    errors: list[str] = []
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if opset <= _LEGACY_MAX_OPSET:
            try:
                buffer = io.BytesIO()
                torch.onnx.export(model, (example,), buffer, input_names=["input"], output_names=["logits"],
                                  opset_version=opset, dynamo=False, do_constant_folding=True,
                                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
                return onnx.load_model_from_string(buffer.getvalue()), opset
            except Exception as exc:  # noqa: BLE001 - any exporter failure: try the other exporter
                errors.append(f"TorchScript exporter: {_first_line(exc)}")
        try:
            batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
            program = torch.onnx.export(model, (example,), input_names=["input"], output_names=["logits"],
                                        opset_version=max(opset, 18), dynamo=True, dynamic_shapes=({0: batch},),
                                        optimize=True, verbose=False)
            return program.model_proto, max(opset, 18)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"dynamo exporter: {_first_line(exc)}")
    raise PrunerError(f"ONNX export failed ({'; '.join(errors)}); the model uses an operation ONNX cannot express")


def export_onnx(model: nn.Module, path: str | Path, *, input_size: Sequence[int], mean: Sequence[float],
                std: Sequence[float], class_names: Sequence[str], sample: torch.Tensor, opset: int = OPSET,
                metadata: dict[str, str] | None = None) -> OnnxReport:
    """Export ``model`` (a CPU, eval-mode copy) to ONNX with a dynamic batch axis, then verify it.

    The file's ``metadata_props`` hold ``mean``, ``std``, ``input_size`` and ``class_names`` as JSON,
    a human-readable ``layout``, and the entries of ``metadata``. Raises :class:`PrunerError` when
    export fails or ONNX Runtime's outputs on ``sample`` differ from PyTorch's beyond the tolerance.
    """
    import onnx

    sample = _check_sample(sample, input_size)
    props = {"mean": json.dumps([float(v) for v in mean]), "std": json.dumps([float(v) for v in std]),
             "input_size": json.dumps([int(v) for v in input_size]),
             "class_names": json.dumps([str(c) for c in class_names]),
             "layout": "input NCHW float32: RGB scaled to [0, 1], then (x - mean) / std per channel; output logits"}
    clash = sorted(set(props) & set(metadata or {}))
    if clash:
        raise PrunerError(f"metadata keys {clash} are reserved by the exporter; rename them")
    props.update({str(k): str(v) for k, v in (metadata or {}).items()})

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    m = _cpu_copy(model)
    proto, opset_written = _to_onnx_proto(m, _example(input_size, sample), opset)
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        try:
            onnx.save_model(proto, str(tmp))
        except Exception as exc:  # noqa: BLE001 - protobuf's EncodeError / ValueError: a model over 2 GB
            raise PrunerError(f"the ONNX model could not be written ({type(exc).__name__}: {_first_line(exc)}); a model "
                              "this large may pass protobuf's 2 GB limit for one .onnx file: use the PyTorch program "
                              "(pruned.pt2) or the checkpoint instead") from exc
        try:
            onnx.checker.check_model(str(tmp))
        except onnx.checker.ValidationError as exc:
            raise PrunerError(f"the exported ONNX model is invalid ({_first_line(exc)})") from exc
        with torch.no_grad():
            ref = _first_output(m(sample)).float().numpy()
        got = ort_session(tmp).run(None, {"input": sample.numpy()})[0]
        if got.shape != ref.shape:
            raise PrunerError(f"ONNX Runtime output shape {got.shape} differs from PyTorch's {ref.shape}")
        diff = float(np.abs(got.astype(np.float64) - ref).max())
        scale = max(1.0, float(np.abs(ref).max()))
        ok = diff <= RELATIVE_TOLERANCE * scale  # False for NaN too
        if not ok:
            raise PrunerError(f"the ONNX model disagrees with PyTorch: max |ort - torch| = {diff:.3g} > "
                              f"{RELATIVE_TOLERANCE:g} x {scale:.3g}; export it from a model without custom ops")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return OnnxReport(str(path), diff, diff / scale, opset_written, ok)


def _load_proto(path: str | Path):
    import onnx

    if not Path(path).is_file():
        raise PrunerError(f"ONNX file {path} does not exist; export the model first")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own error types
        raise PrunerError(f"{path} is not a readable ONNX model ({_first_line(exc)}); export it again") from None
    if proto.ir_version == 0 or not proto.graph.node:
        raise PrunerError(f"{path} is not an ONNX model (no graph); export it again")
    return proto


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The ``metadata_props`` of an ONNX file; ``mean``, ``std``, ``input_size``, ``class_names`` decoded from JSON."""
    out: dict[str, Any] = {}
    for prop in _load_proto(path).metadata_props:
        out[prop.key] = prop.value
        if prop.key in JSON_KEYS:
            try:
                out[prop.key] = json.loads(prop.value)
            except json.JSONDecodeError:
                raise PrunerError(f"metadata '{prop.key}' of {path} is not valid JSON; export the model again") from None
    return out


def ort_session(path: str | Path, device: str | torch.device = "cpu", *, spinning: bool = True):
    """An ONNX Runtime ``InferenceSession`` with intra-op threads = ``torch.get_num_threads()``.

    Uses ``CUDAExecutionProvider`` (then CPU) when ``device`` is CUDA and onnxruntime has it;
    otherwise CPU, with a warning when CUDA was asked for.
    """
    import onnxruntime as ort

    if not Path(path).is_file():
        raise PrunerError(f"ONNX file {path} does not exist; export the model first")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.log_severity_level = 3
    if not spinning:  # idle worker threads sleep instead of spin-waiting (two sessions timed in turn)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        else:
            warnings.warn("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu); using the CPU",
                          RuntimeWarning, stacklevel=2)
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own error types
        raise PrunerError(f"ONNX Runtime cannot load {path} ({_first_line(exc)}); export the model again") from None


def save_pruned_program(model: nn.Module, path: str | Path, *, input_size: Sequence[int],
                        sample: torch.Tensor | None = None) -> None:
    """Save architecture and weights as a ``torch.export`` program (``.pt2``, dynamic batch, eval mode).

    The file loads with ``torch.export.load(path).module()`` and needs no project code. With
    ``sample`` the loaded-back program is checked against ``model`` on it (same tolerance as ONNX).
    """
    m = _cpu_copy(model)
    checked = _check_sample(sample, input_size) if sample is not None else None
    batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(m, (_example(input_size, checked),), dynamic_shapes=({0: batch},))
    except Exception as exc:  # noqa: BLE001 - torch.export raises many error types
        raise PrunerError(f"torch.export cannot capture the model ({_first_line(exc)}); "
                          "use the ONNX file or the checkpoint instead") from exc
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # torch.export wants the .pt2 suffix
    # torch.export.save writes a file through a C++ zip writer that aborts the process when the disk
    # fills; into memory it cannot fail that way, and the bytes are written from Python (a clean OSError)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    try:
        try:
            with open(tmp, "wb") as fh:
                fh.write(buffer.getbuffer())
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise PrunerError(f"cannot write {path} ({exc.strerror or exc}): free some space on that disk, then "
                              "resume the run (python -m pruner prune --out DIR --resume)") from exc
        if checked is not None:
            with torch.no_grad():
                ref = _first_output(m(checked))
                got = _first_output(load_pruned_program(tmp)(checked))
            diff = float((got - ref).abs().max())
            scale = max(1.0, float(ref.abs().max()))
            if not diff <= RELATIVE_TOLERANCE * scale:
                raise PrunerError(f"the saved program disagrees with the model: max |diff| = {diff:.3g}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_pruned_program(path: str | Path) -> nn.Module:
    """Load :func:`save_pruned_program`'s file as an inference-only module (``eval()`` is a no-op)."""
    if not Path(path).is_file():
        raise PrunerError(f"program file {path} does not exist; save the pruned program first")
    try:
        module = torch.export.load(str(path)).module()
    except Exception as exc:  # noqa: BLE001
        raise PrunerError(f"{path} is not a readable torch.export program ({_first_line(exc)})") from None

    def train(self: nn.Module, mode: bool = True) -> nn.Module:
        if mode:
            raise PrunerError("a saved pruned program is inference-only; fine-tune from the checkpoint instead")
        return self

    def eval_(self: nn.Module) -> nn.Module:
        return self

    module.train = train.__get__(module)  # type: ignore[method-assign]
    module.eval = eval_.__get__(module)  # type: ignore[method-assign]
    module.training = False
    return module
