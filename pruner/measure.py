"""Cost and speed of a model: MACs and parameters, PyTorch latency on the CPU or a CUDA GPU.

* :func:`count_cost` — MACs of one image, from ``torch.utils.flop_counter`` (FLOPs / 2: every
  convolution and matrix multiply, so the figures match the usual conv + linear hand counts),
  and the number of parameters.
* :func:`latency_stats` / :func:`latency_ms` — time of repeated forward passes under
  ``torch.inference_mode`` on a private copy of the model (the caller's model is untouched).
* :func:`relative_latency` / :func:`paired_timing` — latency relative to a reference model,
  timed in interleaved pairs so that drifting machine speed cancels out.
* :func:`timer_for` — how one run is timed: ``time.perf_counter`` on the CPU; on CUDA a pair of
  ``torch.cuda.Event(enable_timing=True)`` around the launches, after the GPU is drained, read
  once the end event has completed (:func:`cuda_event_timer`).
* :func:`device_label` — the name every latency figure carries (``cpu`` or ``cuda:0 (NVIDIA H100 ...)``).
* :func:`ort_latency_ms` / :func:`ort_relative_latency` — the same for an exported ONNX file in
  ONNX Runtime (sessions from :func:`pruner.export.ort_session`), labelled with the provider's
  device (:func:`ort_device_label`).
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import PrunerError


@dataclass(frozen=True)
class Cost:
    """MACs of one image and the number of parameters."""

    macs: int
    params: int


def _device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where the model lives and which floating dtype it computes in (CPU / float32 when it has no tensors)."""
    tensors = [*model.parameters(), *model.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)
    return device, dtype


def count_cost(model: nn.Module, input_size: Sequence[int] = (3, 32, 32)) -> Cost:
    """MACs of one image (FlopCounterMode FLOPs / 2, batch of 1, eval mode, model's device) and parameters."""
    device, dtype = _device_and_dtype(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_size, device=device, dtype=dtype))
    except RuntimeError as exc:
        raise PrunerError(f"the model cannot run on input of size {tuple(input_size)} "
                          f"({str(exc).splitlines()[0][:200]}); check the input size") from exc
    finally:
        model.train(was_training)
    return Cost(macs=int(counter.get_total_flops()) // 2, params=sum(p.numel() for p in model.parameters()))


def _resolve_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PrunerError("CUDA is not available on this machine; measure latency with device='cpu'")
    return device


def check_timing_args(batch_size: int, repeats: int, warmup: int) -> None:
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise PrunerError(f"latency needs batch_size >= 1, repeats >= 1 and warmup >= 0 "
                          f"(got {batch_size}, {repeats}, {warmup})")


def device_label(device: str | torch.device) -> str:
    """``cpu`` or ``cuda:<index> (<card name>)``: the device a latency figure was timed on."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


Timer = Callable[[Callable[[], object]], float]


def wall_ms(fn: Callable[[], object]) -> float:
    """Wall time of ``fn()`` in milliseconds (``time.perf_counter``)."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


def cuda_event_timer(device: torch.device, *, event_factory: Callable[[], object] | None = None,
                     synchronize: Callable[[torch.device], None] | None = None) -> Timer:
    """A timer of GPU work: the device is drained first (so earlier work, e.g. the other half of a
    pair, is not counted), then ``start`` is recorded, ``fn`` launches its kernels, ``end`` is
    recorded and waited for, and the time between the two events is returned.

    The time includes gaps in which the GPU waited for the host to launch the next kernel, so a
    launch-bound model at batch 1 is charged for it, as a user would be. ``event_factory`` and
    ``synchronize`` exist for tests (default: ``torch.cuda.Event(enable_timing=True)`` and
    ``torch.cuda.synchronize``).
    """
    make = event_factory or (lambda: torch.cuda.Event(enable_timing=True))
    sync = synchronize or torch.cuda.synchronize
    # events record on the current stream of the current device: make that ``device``
    on_device = (lambda: torch.cuda.device(device)) if event_factory is None else contextlib.nullcontext

    def timer(fn: Callable[[], object]) -> float:
        with on_device():
            sync(device)
            start, end = make(), make()
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
    return timer


def timer_for(device: str | torch.device) -> Timer:
    """:func:`wall_ms` on the CPU, :func:`cuda_event_timer` on a CUDA device."""
    device = torch.device(device)
    return cuda_event_timer(device) if device.type == "cuda" else wall_ms


class _CudnnBenchmark:
    """``cudnn.benchmark`` on while timing on CUDA (as deployed code runs), restored afterwards."""

    def __init__(self, device: torch.device):
        self.on = device.type == "cuda"

    def __enter__(self):
        if self.on:
            self.saved = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = True
        return self

    def __exit__(self, *exc):
        if self.on:
            torch.backends.cudnn.benchmark = self.saved
        return False


def _forward_runner(model: nn.Module, input_size: Sequence[int], batch_size: int, device: torch.device,
                    channels_last: bool | None, amp: bool | None) -> Callable[[], None]:
    """A closure launching one forward pass of a private copy of ``model`` on a random batch
    (``inference_mode``); the timer (:func:`timer_for`) takes care of CUDA's asynchrony."""
    cuda = device.type == "cuda"
    channels_last = cuda if channels_last is None else channels_last
    amp = cuda if amp is None else amp
    _, dtype = _device_and_dtype(model)
    m = copy.deepcopy(model).to(device).eval()
    x = torch.randn(batch_size, *input_size, device=device, dtype=dtype)
    if channels_last and x.dim() == 4:
        m = m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    amp_dtype = torch.float16 if cuda else torch.bfloat16

    def run() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            m(x)
    return run


def latency_stats(model: nn.Module, input_size: Sequence[int] = (3, 32, 32), *, batch_size: int = 1,
                  device: str | torch.device = "cpu", warmup: int = 10, repeats: int = 50,
                  channels_last: bool | None = None, amp: bool | None = None) -> dict:
    """Forward latency in ms: ``median``, ``p10``, ``p90``, ``mean`` of ``repeats`` timed runs after ``warmup``.

    Runs a deep copy of ``model`` (eval mode) on ``device`` under ``torch.inference_mode`` with a
    random ``(batch_size, *input_size)`` batch, timed by :func:`timer_for` (CUDA events on a GPU,
    with ``cudnn.benchmark`` on). ``channels_last`` and ``amp`` (float16 autocast on CUDA,
    bfloat16 on CPU) default to on for CUDA and off for CPU. ``device`` in the result is
    :func:`device_label`'s name, ``batch`` (= ``batch_size``) the batch timed.
    """
    check_timing_args(batch_size, repeats, warmup)
    device = _resolve_device(device)
    run = _forward_runner(model, input_size, batch_size, device, channels_last, amp)
    timer = timer_for(device)
    with _CudnnBenchmark(device):
        for _ in range(warmup):
            run()
        times = [timer(run) for _ in range(repeats)]
    deciles = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else [times[0]] * 9
    return {"median": statistics.median(times), "p10": deciles[0], "p90": deciles[-1],
            "mean": statistics.fmean(times), "repeats": repeats, "batch_size": batch_size, "batch": batch_size,
            "device": device_label(device)}


def latency_ms(model: nn.Module, input_size: Sequence[int] = (3, 32, 32), *, batch_size: int = 1,
               device: str | torch.device = "cpu", warmup: int = 10, repeats: int = 50,
               channels_last: bool | None = None, amp: bool | None = None) -> float:
    """Median forward latency in milliseconds (see :func:`latency_stats`)."""
    return float(latency_stats(model, input_size, batch_size=batch_size, device=device, warmup=warmup,
                               repeats=repeats, channels_last=channels_last, amp=amp)["median"])


def paired_timing(run: Callable[[], object], reference: Callable[[], object], *, warmup: int = 3,
                  repeats: int = 30, timer: Timer | None = None) -> dict:
    """Time ``run`` and ``reference`` alternately (a, b, a, b, ...) with ``timer`` (default :func:`wall_ms`).

    Returns ``ms`` and ``reference_ms`` (medians) and ``ratio``, the median of the per-pair
    ratios, with their spread: ``ratio_q1`` and ``ratio_q3``, the quartiles of the per-pair ratios
    (a wide interquartile range says the machine was busy while it was timed). Machine speed that drifts over seconds (shared hosts, frequency scaling: seen
    here as a twofold slow-down lasting half a minute; a GPU shared with other jobs) hits
    both halves of a pair alike, so the ratio stays meaningful where two separately
    measured medians would not.
    """
    timer = timer or wall_ms
    for _ in range(warmup):
        run()
        reference()
    pairs = [(timer(run), timer(reference)) for _ in range(repeats)]
    ratios = [a / b for a, b in pairs]
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return {"ms": statistics.median(a for a, _ in pairs), "reference_ms": statistics.median(b for _, b in pairs),
            "ratio": statistics.median(ratios), "ratio_q1": q1, "ratio_q3": q3, "repeats": repeats}


def relative_latency(model: nn.Module, reference: nn.Module, input_size: Sequence[int] = (3, 32, 32), *,
                     batch_size: int = 1, device: str | torch.device = "cpu", warmup: int = 3, repeats: int = 30,
                     channels_last: bool | None = None, amp: bool | None = None) -> dict:
    """Latency of ``model`` relative to ``reference`` (e.g. the unpruned model), timed in pairs
    (:func:`paired_timing`) with :func:`timer_for` ``device``; both are private copies run as in
    :func:`latency_stats`. The result also names the ``device`` (:func:`device_label`) and ``batch``."""
    check_timing_args(batch_size, repeats, warmup)
    device = _resolve_device(device)
    run = _forward_runner(model, input_size, batch_size, device, channels_last, amp)
    ref = _forward_runner(reference, input_size, batch_size, device, channels_last, amp)
    with _CudnnBenchmark(device):
        out = paired_timing(run, ref, warmup=warmup, repeats=repeats, timer=timer_for(device))
    return {**out, "device": device_label(device), "batch": batch_size}


# ---------------------------------------------------------------------- ONNX Runtime
def ort_device_label(sess) -> str:
    """``cuda`` when the session runs on ``CUDAExecutionProvider``, else ``cpu`` (the label an ORT latency carries)."""
    return "cuda" if sess.get_providers()[0] == "CUDAExecutionProvider" else "cpu"


def _ort_runner(path: str | Path, input_size: Sequence[int], batch_size: int, device: str | torch.device,
                spinning: bool = True):
    from .export import ort_session  # export verifies files with the same sessions

    sess = ort_session(path, device, spinning=spinning)
    feed = {sess.get_inputs()[0].name:
            np.random.default_rng(0).standard_normal((batch_size, *input_size)).astype(np.float32)}
    run = lambda: sess.run(None, feed)  # noqa: E731
    run.device = ort_device_label(sess)
    return run


def ort_latency_ms(path: str | Path, input_size: Sequence[int], *, batch_size: int = 1,
                   device: str | torch.device = "cpu", warmup: int = 10, repeats: int = 50) -> float:
    """Median ``session.run`` wall time in ms on a random batch (host-side inputs and outputs)."""
    check_timing_args(batch_size, repeats, warmup)
    run = _ort_runner(path, input_size, batch_size, device)
    for _ in range(warmup):
        run()
    return float(statistics.median(wall_ms(run) for _ in range(repeats)))


def ort_relative_latency(path: str | Path, reference_path: str | Path, input_size: Sequence[int], *,
                         batch_size: int = 1, device: str | torch.device = "cpu", warmup: int = 3,
                         repeats: int = 30) -> dict:
    """ONNX Runtime latency of ``path`` relative to ``reference_path``, timed in interleaved pairs
    (:func:`paired_timing`); ``device`` (:func:`ort_device_label`) and ``batch`` say where."""
    check_timing_args(batch_size, repeats, warmup)
    # without spin-waiting: one session's spinning workers would steal the cores from the other's
    run = _ort_runner(path, input_size, batch_size, device, spinning=False)
    out = paired_timing(run, _ort_runner(reference_path, input_size, batch_size, device, spinning=False),
                        warmup=warmup, repeats=repeats)
    return {**out, "device": run.device, "batch": batch_size}
