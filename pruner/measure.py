"""Cost and speed of a model: MACs and parameters, PyTorch latency."""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Cost:
    macs: int
    params: int


def count_cost(model: nn.Module, input_size: Sequence[int] = (3, 32, 32)) -> Cost:
    """MACs of one image (``torch.utils.flop_counter`` FLOPs / 2) and the number of parameters."""
    device = next(iter(model.parameters())).device
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, *input_size, device=device))
    finally:
        model.train(was_training)
    return Cost(int(counter.get_total_flops()) // 2, sum(p.numel() for p in model.parameters()))


def latency_stats(model: nn.Module, input_size: Sequence[int] = (3, 32, 32), *, batch_size: int = 1,
                  device: str | torch.device = "cpu", warmup: int = 10, repeats: int = 50,
                  channels_last: bool | None = None, amp: bool | None = None) -> dict:
    """Forward-pass wall time (ms): warm-up, then median/p10/p90/mean of ``repeats`` runs."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    channels_last = cuda if channels_last is None else channels_last
    amp = cuda if amp is None else amp
    m = copy.deepcopy(model).to(device).eval()
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    x = torch.randn(batch_size, *input_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16 if cuda else torch.bfloat16, enabled=amp):
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            m(x)
            if cuda:
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000.0)
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return {"median": statistics.median(times), "p10": q[0], "p90": q[-1], "mean": statistics.fmean(times),
            "repeats": repeats, "batch_size": batch_size, "device": str(device)}


def latency_ms(model: nn.Module, input_size: Sequence[int] = (3, 32, 32), **kwargs) -> float:
    """Median forward latency in milliseconds (see :func:`latency_stats`)."""
    return float(latency_stats(model, input_size, **kwargs)["median"])
