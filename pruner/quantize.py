"""INT8 after pruning: ONNX Runtime static quantization of an exported model, verified in ONNX Runtime.

:func:`quantize_int8` writes a QDQ model (``QuantizeLinear``/``DequantizeLinear`` around each
quantized op; asymmetric uint8 activations and symmetric int8 weights per output channel by default:
the U8S8 pairing ONNX Runtime's x86 kernels are fastest at — measured on this CPU for a pruned
ResNet-56, int8 activations (S8S8) made the model 1.3x slower than float32, U8S8 faster: README) calibrated on the images it is given: the caller passes *training* images (a run's ``fit``
split), never the report split, which :func:`verify_int8` then scores both models on.

The exported model takes normalised float input (``(x / 255 - mean) / std``, see
:mod:`pruner.export`), so calibration batches come from :func:`pruner.data.batches` with the
model's mean and std, exactly as the report split's batches do.

A failed quantization never replaces an existing file at ``out_path`` and never touches the
fp32 file: the caller's artifacts stay as they were.
"""

from __future__ import annotations

import io
import os
from contextlib import redirect_stdout
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .errors import PrunerError
from .export import _first_line, ort_session

#: ``RunConfig.quantize`` values: off, or INT8.
QUANTIZE_CHOICES = (None, "int8")
#: Calibration methods offered (ONNX Runtime's ``CalibrationMethod`` names, lower case).
METHODS = ("minmax", "percentile", "entropy")
DEFAULT_METHOD = "minmax"
#: Training images calibrated on by default.
DEFAULT_CALIBRATION_IMAGES = 256
#: Ops ONNX Runtime's static quantizer turns into int8 kernels; a model with none of them has nothing to quantize.
_QUANTIZABLE = {"Conv", "MatMul", "Gemm", "ConvTranspose"}
_CALIBRATION_BATCH = 32


@dataclass(frozen=True)
class QuantizeReport:
    """What :func:`quantize_int8` wrote: the file, its size and the fp32 file's, how it was calibrated."""

    path: str
    size_bytes: int
    size_fp32_bytes: int
    calibration_images: int
    method: str
    per_channel: bool
    quantized_nodes: int

    def to_dict(self) -> dict:
        return asdict(self)


def check_calibration_images(n: int, available: int, *, split: str = "fine-tune") -> None:
    """``1 <= n <= available``, else a one-line error saying what to pass."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise PrunerError(f"calibration images must be a whole number >= 1, got {n!r}; pass e.g. "
                          f"--calibration-images {DEFAULT_CALIBRATION_IMAGES}")
    if n > available:
        raise PrunerError(f"{n} calibration images asked for but the {split} split has only {available}; "
                          f"pass --calibration-images {available} or fewer")


class _Reader:
    """A ``CalibrationDataReader`` over float32 NCHW batches (built lazily: onnxruntime subclasses need it)."""

    def __init__(self, name: str, arrays: Sequence[np.ndarray]):
        self.name, self.arrays, self.i = name, list(arrays), 0

    def get_next(self):
        if self.i >= len(self.arrays):
            return None
        self.i += 1
        return {self.name: self.arrays[self.i - 1]}

    def rewind(self):
        self.i = 0


def _as_arrays(calibration: Iterable) -> list[np.ndarray]:
    out = []
    for batch in calibration:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        x = x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[0] < 1:
            raise PrunerError(f"calibration batches must be float NCHW arrays, got shape {x.shape}; pass normalised "
                              "images as the exported model takes them")
        out.append(np.ascontiguousarray(x, dtype=np.float32))
    if not out:
        raise PrunerError("no calibration images were given; pass at least one batch of training images")
    return out


def _quantizable_input(onnx_path: Path) -> str:
    """The name of the model's input, once the file reads as ONNX and has an op ONNX Runtime quantizes
    (a one-line :class:`PrunerError` otherwise)."""
    import onnx

    try:
        proto = onnx.load(str(onnx_path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own error types
        raise PrunerError(f"{onnx_path} is not a readable ONNX model ({_first_line(exc)}); export it again") from None
    ops = {n.op_type for n in proto.graph.node}
    if not ops & _QUANTIZABLE:
        raise PrunerError(f"{onnx_path.name} has no operation ONNX Runtime can quantize (no Conv, MatMul or Gemm; "
                          f"it has {', '.join(sorted(ops)) or 'none'}); use the fp32 model")
    return proto.graph.input[0].name


def quantize_int8(onnx_path: str | Path, out_path: str | Path, calibration: Iterable, *, per_channel: bool = True,
                  method: str = DEFAULT_METHOD) -> QuantizeReport:
    """Static INT8 quantization (QDQ format, int8 weights, uint8 activations) of ``onnx_path`` into ``out_path``.

    ``calibration`` yields normalised float NCHW batches (tensors or arrays, or ``(x, y)`` pairs),
    as the exported model takes them. ONNX Runtime's shape pre-processing runs first (constant
    folding and shape inference help the quantizer place Q/DQ pairs). Raises a one-line
    :class:`PrunerError` when the model has no op ONNX Runtime quantizes, or quantization fails.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in METHODS:
        raise PrunerError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not onnx_path.is_file():
        raise PrunerError(f"ONNX file {onnx_path} does not exist; export the model first (drop --no-export)")
    arrays = _as_arrays(calibration)
    name = _quantizable_input(onnx_path)

    class Reader(_Reader, CalibrationDataReader):
        pass

    out_path.parent.mkdir(parents=True, exist_ok=True)
    pre = out_path.with_name(f".{out_path.stem}.pre.onnx")
    tmp = out_path.with_name(f".{out_path.stem}.tmp.onnx")
    calib_method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                    "entropy": CalibrationMethod.Entropy}[method]
    try:
        try:
            with redirect_stdout(io.StringIO()):
                quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
            source = pre
        except Exception:  # noqa: BLE001 - pre-processing is an optimisation; quantize the file as exported
            source = onnx_path
        try:
            with redirect_stdout(io.StringIO()):
                quantize_static(str(source), str(tmp), Reader(name, arrays), quant_format=QuantFormat.QDQ,
                                per_channel=per_channel, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, calibrate_method=calib_method,
                                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        except PrunerError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises many error types
            raise PrunerError(f"ONNX Runtime could not quantize {onnx_path.name} ({_first_line(exc)}); "
                              "use the fp32 model, or try another --calibration-images count") from None
        qproto = onnx.load(str(tmp))
        quantized = sum(n.op_type == "QuantizeLinear" for n in qproto.graph.node)
        if quantized == 0:
            raise PrunerError(f"ONNX Runtime left {onnx_path.name} unquantized (no QuantizeLinear node); "
                              "use the fp32 model")
        ort_session(tmp)  # loads in ONNX Runtime, or a one-line error
        os.replace(tmp, out_path)
    finally:
        pre.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return QuantizeReport(str(out_path), out_path.stat().st_size, onnx_path.stat().st_size,
                          sum(a.shape[0] for a in arrays), method, per_channel, quantized)


def ort_top1(path: str | Path, batches: Iterable) -> tuple[float, np.ndarray]:
    """Top-1 (%) of an ONNX file in ONNX Runtime (CPU) over ``(x, y)`` batches, and its predicted classes."""
    sess = ort_session(path)
    name = sess.get_inputs()[0].name
    preds, labels = [], []
    for x, y in batches:
        logits = sess.run(None, {name: x.detach().cpu().float().numpy()})[0]
        preds.append(logits.argmax(1))
        labels.append(y.cpu().numpy())
    if not preds:
        raise PrunerError("no images to verify the INT8 model on; the report split is empty")
    p, t = np.concatenate(preds), np.concatenate(labels)
    return float((p == t).mean() * 100.0), p


def verify_int8(int8_path: str | Path, fp32_path: str | Path, report_batches: Sequence, input_size: Sequence[int], *,
                original_path: str | Path | None = None, latency_batches: Sequence[int] = (1,),
                repeats: int = 30) -> dict:
    """The INT8 model beside the fp32 one on the same images (a list of ``(x, y)`` report batches):
    ``top1``, ``top1_fp32``, ``agreement`` (share of images with the same predicted class), ``images``,
    and ``ort_latency``: per batch, int8/fp32 ONNX Runtime CPU latency timed in interleaved pairs
    (:func:`pruner.measure.ort_relative_latency`), and int8/original with ``original_path``."""
    from .measure import ort_relative_latency

    top1, p8 = ort_top1(int8_path, report_batches)
    top1_fp32, p32 = ort_top1(fp32_path, report_batches)
    out = {"top1": top1, "top1_fp32": top1_fp32, "agreement": float((p8 == p32).mean() * 100.0),
           "images": int(p8.shape[0])}
    entries = []
    for batch in latency_batches:
        m = ort_relative_latency(int8_path, fp32_path, input_size, batch_size=batch, repeats=repeats)
        entry = {"device": m["device"], "batch": batch, "ms": m["ms"], "fp32_ms": m["reference_ms"],
                 "vs_fp32": m["ratio"]}
        if original_path is not None:
            o = ort_relative_latency(int8_path, original_path, input_size, batch_size=batch, repeats=repeats)
            entry.update(original_ms=o["reference_ms"], vs_original=o["ratio"])
        entries.append(entry)
    out["ort_latency"] = entries
    return out
