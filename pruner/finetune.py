"""Fine-tuning a pruned model with knowledge distillation from the original.

On a CUDA device the training images stay on the GPU as uint8 (:func:`~pruner.data.batching.resident`),
shuffling and augmentation (random crop with padding, flip) run there batched from a GPU
generator, the forward passes run under bfloat16 autocast (no loss scaling needed) in
channels-last memory format, and the loop never waits for the GPU inside an epoch (the loss is
summed on the device). ``FinetuneConfig.compile`` adds ``torch.compile`` (falls back to eager,
with a warning, when compiling fails). On a CPU with native bf16 kernels (AVX-512 BF16 or AMX:
:func:`~pruner.settings.native_bf16`) the forward passes run under bfloat16 autocast too (measured
2.08x faster for a pruned ResNet-56, same loss: bench/finetune_speed.py, README); channels-last
stays off there (no gain over bf16 alone in that measurement); other CPUs keep float32.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, asdict
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .atomic import torch_save_atomic
from .checks import check_number
from .data import DataBundle, ImageTensors, batches
from .data.batching import resident
from .errors import CancelledError, PrunerError
from .evaluate import accuracy
from .settings import native_bf16

log = logging.getLogger(__name__)


#: the largest seed numpy and scikit-learn accept
MAX_SEED = 2**32 - 1


@dataclass
class FinetuneConfig:
    epochs: int = 0
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    kd_temperature: float = 4.0
    kd_weight: float = 0.9          # share of the loss from distillation; 0 disables the teacher
    max_batches_per_epoch: int | None = None   # cap for quick runs (tests, search-time fine-tuning)
    warmup: float = 0.0             # share of the steps the learning rate rises linearly, before the cosine decay
    seed: int = 0
    amp: bool | None = None            # bfloat16 autocast; None = where it is native (settings.native_bf16)
    channels_last: bool | None = None  # channels-last memory format; None = on CUDA only
    compile: bool = False              # torch.compile student and teacher (eager with a warning if it fails)

    def __post_init__(self):
        """Every setting checked (and whole numbers made ints) before any work: a one-line error each."""
        self.epochs = check_number("fine-tune epochs", self.epochs, int, low=0, flag="--finetune-epochs")
        self.lr = check_number("learning rate", self.lr, float, low=0.0, low_open=True, flag="--lr")
        self.momentum = check_number("momentum", self.momentum, float, low=0.0, high=1.0, high_open=True)
        self.weight_decay = check_number("weight decay", self.weight_decay, float, low=0.0)
        self.batch_size = check_number("batch size", self.batch_size, int, low=1, flag="--batch-size")
        self.kd_temperature = check_number("distillation temperature", self.kd_temperature, float, low=0.0,
                                           low_open=True, flag="--kd-temperature")
        self.kd_weight = check_number("distillation weight", self.kd_weight, float, low=0.0, high=1.0,
                                      flag="--kd-weight")
        self.warmup = check_number("warm-up share", self.warmup, float, low=0.0, high=1.0, high_open=True,
                                   flag="--warmup")
        self.max_batches_per_epoch = check_number("batches per epoch", self.max_batches_per_epoch, int, low=1,
                                                  optional=True, flag="--max-batches-per-epoch")
        self.seed = check_number("seed", self.seed, int, low=0, high=MAX_SEED, flag="--seed")
        for name, optional in (("amp", True), ("channels_last", True), ("compile", False)):
            value = getattr(self, name)
            if not (isinstance(value, bool) or (optional and value is None)):
                raise PrunerError(f"fine-tune setting {name} must be true or false{' (or unset: CUDA only)' if optional else ''}"
                                  f", got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def lr_factor(steps: int, warmup: float) -> Callable[[int], float]:
    """The learning-rate factor at each optimiser step of a ``steps``-step fine-tune: a linear rise
    over the first ``warmup`` share of the steps, then a cosine decay to zero (no warm-up: plain
    cosine annealing)."""
    steps = max(1, int(steps))
    rise = min(steps - 1, int(round(warmup * steps)))

    def factor(step: int) -> float:
        if step < rise:
            return (step + 1) / (rise + 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - rise) / max(1, steps - rise))))

    return factor


EpochCallback = Callable[[dict], None]
BatchCallback = Callable[[int, int, int], None]   # (epoch running, 1-based; batches done in it; batches per epoch)


def distillation_loss(student_logits, teacher_logits, labels, temperature: float, weight: float) -> torch.Tensor:
    """Hinton et al.: ``weight * T^2 * KL(teacher_T || student_T) + (1 - weight) * CE(labels)``."""
    ce = F.cross_entropy(student_logits, labels)
    if teacher_logits is None or weight <= 0:
        return ce
    t = temperature
    kd = F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                  reduction="batchmean", log_target=True) * (t * t)
    return weight * kd + (1.0 - weight) * ce


def _compiled(module: nn.Module | None, on: bool) -> nn.Module | None:
    if module is None or not on:
        return module
    try:
        return torch.compile(module)
    except Exception as exc:  # noqa: BLE001 - any backend problem means: run eagerly
        _compile_failed(exc)
        return module


def _compile_failed(exc: BaseException) -> None:
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    log.warning("torch.compile failed (%s: %s); fine-tuning runs eagerly", type(exc).__name__, first)


def finetune(student: nn.Module, data: DataBundle, config: FinetuneConfig, *, teacher: nn.Module | None = None,
             device="cpu", eval_data: ImageTensors | None = None, on_epoch: EpochCallback | None = None,
             checkpoint_dir: str | Path | None = None, start_epoch: int = 0,
             should_stop: Callable[[], bool] | None = None, on_batch: BatchCallback | None = None) -> list[dict]:
    """Train ``student`` in place: SGD + cosine schedule, distillation from ``teacher``.

    bfloat16 autocast defaults to on for CUDA and CPUs with native bf16 (``config.amp``),
    channels_last to on for CUDA (``config.channels_last``), the training images are kept on the GPU when they fit, and
    ``config.compile`` compiles the student and teacher. After each epoch, ``on_epoch`` gets a
    dict (epoch, loss, lr, val_top1 when ``eval_data`` is given, seconds, images_per_s) and, with
    ``checkpoint_dir``, ``epoch-<n>.pt`` holds the student's state, optimizer and scheduler so
    :func:`finetune` can resume from ``start_epoch``. ``on_batch(epoch, batch, batches)`` is called
    after every optimiser step (the job turns it into throttled ``progress`` events for the ETA).
    """
    device = torch.device(device)
    if config.epochs == 0:
        return []
    amp = native_bf16(device) if config.amp is None else bool(config.amp)
    channels_last = device.type == "cuda" if config.channels_last is None else bool(config.channels_last)
    teacher = _place(student, teacher if config.kd_weight > 0 else None, device, channels_last)
    opt = torch.optim.SGD(student.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay, nesterov=True)
    per_epoch = batches_per_epoch(config, len(data.fit))   # the steps an epoch takes (drop_last below)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(config.epochs * per_epoch, config.warmup))
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
    history = _resume(student, opt, sched, ckpt_dir, start_epoch, device)
    trainer = _Trainer(student, teacher, opt, sched, config, device, amp, channels_last,
                       resident(data.fit, device), data, per_epoch)
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        total, n = trainer.epoch(epoch, should_stop, on_batch)
        seconds = time.perf_counter() - t0 if device.type != "cuda" else _synchronized_seconds(device, t0)
        record = {"epoch": epoch + 1, "epochs": config.epochs, "loss": float(total) / max(1, n),
                  "lr": opt.param_groups[0]["lr"], "seconds": seconds, "images_per_s": n / max(seconds, 1e-9)}
        if eval_data is not None:
            record["val_top1"] = accuracy(student, eval_data, mean=data.mean, std=data.std, device=device)["top1"]
        history.append(record)
        if ckpt_dir is not None:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            torch_save_atomic({"model": student.state_dict(), "optimizer": opt.state_dict(),
                               "scheduler": sched.state_dict(), "history": history}, ckpt_dir / f"epoch-{epoch + 1}.pt")
        if on_epoch is not None:
            on_epoch(record)
    _unplace(student, teacher, channels_last)
    return history


def _place(student: nn.Module, teacher: nn.Module | None, device: torch.device,
           channels_last: bool) -> nn.Module | None:
    """Move the student (and the teacher, in eval mode) to ``device``, channels_last when asked;
    returns the teacher."""
    student.to(device)
    if teacher is not None:
        teacher.to(device).eval()
    if channels_last:
        student.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher.to(memory_format=torch.channels_last)
    return teacher


def _unplace(student: nn.Module, teacher: nn.Module | None, channels_last: bool) -> None:
    """The student in eval mode, both models back in the contiguous format."""
    student.eval()
    if channels_last:
        student.to(memory_format=torch.contiguous_format)
        if teacher is not None:
            teacher.to(memory_format=torch.contiguous_format)


def _resume(student: nn.Module, opt, sched, ckpt_dir: Path | None, start_epoch: int,
            device: torch.device) -> list[dict]:
    """The history so far: empty for a fresh start; at ``start_epoch > 0`` the student, optimiser and
    schedule are loaded from that epoch's checkpoint (a one-line error when it is missing)."""
    if start_epoch <= 0:
        return []
    if ckpt_dir is None or not (ckpt_dir / f"epoch-{start_epoch}.pt").exists():
        raise PrunerError(f"cannot resume fine-tuning at epoch {start_epoch}: its checkpoint is missing")
    state = torch.load(ckpt_dir / f"epoch-{start_epoch}.pt", map_location=device, weights_only=True)
    student.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    # the factor is a function of the step: a resume that changes epochs or batch size anneals to the new end
    sched.last_epoch = int(state["scheduler"]["last_epoch"])
    return list(state.get("history", []))


class _Trainer:
    """An epoch of training (the optimiser and schedule step per batch) and its step: the student's
    loss, distilled from the teacher, under bf16 autocast when ``amp``. With ``config.compile`` both
    models are compiled (the student's parameters are shared); a compile failure, at wrapping or at a
    call (the first, or a recompile), falls back to eager for the rest of the run."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, opt, sched, config: FinetuneConfig,
                 device: torch.device, amp: bool, channels_last: bool, fit: ImageTensors, data: DataBundle,
                 per_epoch: int):
        self.student, self.teacher, self.opt, self.sched, self.config = student, teacher, opt, sched, config
        self.device, self.amp, self.channels_last, self.fit, self.per_epoch = device, amp, channels_last, fit, per_epoch
        self.fwd, self.t_fwd = _compiled(student, config.compile), _compiled(teacher, config.compile)
        self.mean = torch.tensor(data.mean, dtype=torch.float32, device=device)
        self.std = torch.tensor(data.std, dtype=torch.float32, device=device)

    def epoch(self, epoch: int, should_stop: Callable[[], bool] | None,
              on_batch: BatchCallback | None) -> tuple[torch.Tensor, int]:
        """Train one epoch (``per_epoch`` batches); returns the summed loss (on the device) and the images."""
        config, device, fit = self.config, self.device, self.fit
        # the generator lives where the images do, so shuffling and augmentation need no host round trip
        gen = torch.Generator(device=fit.x.device).manual_seed(config.seed * 1000 + epoch)
        self.student.train()
        total = torch.zeros((), device=device)
        n = 0
        for i, (x, y) in enumerate(batches(fit, config.batch_size, mean=self.mean, std=self.std, device=device,
                                          shuffle=True, augment=True, generator=gen, drop_last=True,
                                          channels_last=self.channels_last)):
            if i >= self.per_epoch:
                break
            if should_stop is not None and should_stop():
                raise CancelledError("fine-tuning cancelled")
            loss = self(x, y)
            self.opt.step()
            self.sched.step()
            total += loss.detach() * y.numel()  # summed on the device: no wait for the GPU per batch
            n += y.numel()
            if on_batch is not None:
                on_batch(epoch + 1, i + 1, self.per_epoch)
        return total, n

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.fwd is self.student:
            return self._step(x, y)
        try:
            return self._step(x, y)
        except Exception as exc:  # noqa: BLE001
            _compile_failed(exc)
            self.fwd, self.t_fwd = self.student, self.teacher
            return self._step(x, y)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        config = self.config
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.fwd(x)
            with torch.no_grad():
                t_logits = self.t_fwd(x) if self.t_fwd is not None else None
        loss = distillation_loss(logits.float(), None if t_logits is None else t_logits.float(), y,
                                 config.kd_temperature, config.kd_weight)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        return loss


def _synchronized_seconds(device: torch.device, t0: float) -> float:
    torch.cuda.synchronize(device)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------- the expected time, before a run
#: batch size of the pre-run timing (a larger run batch is timed at this one and scaled per image)
TIMING_BATCH = 64


@dataclass(frozen=True)
class StepTiming:
    """Seconds per image of one fine-tuning step of an unpruned model on one device, timed on random
    images (the cost does not depend on their values): ``train_s`` the student's forward, backward and
    SGD step; ``teacher_s`` the distillation teacher's forward."""

    device: str
    batch_size: int
    train_s: float
    teacher_s: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StepTiming":
        return cls(str(d["device"]), int(d["batch_size"]), float(d["train_s"]), float(d["teacher_s"]))


def time_steps(model: nn.Module, input_size, num_classes: int, *, device="cpu", batch_size: int = TIMING_BATCH,
               amp: bool | None = None, channels_last: bool | None = None, steps: int = 2) -> StepTiming:
    """:class:`StepTiming` of ``model`` (left untouched: a copy is trained): one warm-up step, then the
    median of ``steps`` timed ones, with the same autocast and memory format defaults as :func:`finetune`."""
    import copy
    import statistics

    device = torch.device(device)
    cuda = device.type == "cuda"
    amp = native_bf16(device) if amp is None else bool(amp)
    fmt = torch.channels_last if (cuda if channels_last is None else channels_last) else torch.contiguous_format
    student = copy.deepcopy(model).to(device).train().to(memory_format=fmt)
    teacher = copy.deepcopy(model).to(device).eval().to(memory_format=fmt)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, *input_size, generator=gen).to(device).contiguous(memory_format=fmt)
    y = torch.randint(0, max(1, num_classes), (batch_size,), generator=gen).to(device)
    opt = torch.optim.SGD(student.parameters(), lr=1e-3, momentum=0.9)

    def timed(fn) -> float:
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    def train():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(student(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def teach():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            teacher(x)

    train_s = statistics.median([timed(train) for _ in range(steps + 1)][1:])
    teacher_s = statistics.median([timed(teach) for _ in range(steps + 1)][1:])
    return StepTiming(str(device), int(batch_size), train_s / batch_size, teacher_s / batch_size)


def batches_per_epoch(config: FinetuneConfig, fit_images: int) -> int:
    """Optimiser steps in one epoch of :func:`finetune` (full batches only, capped by ``max_batches_per_epoch``)."""
    n = int(fit_images) // config.batch_size
    return min(n, config.max_batches_per_epoch) if config.max_batches_per_epoch else n


def expected_seconds(timing: StepTiming | dict, config: FinetuneConfig, fit_images: int) -> float:
    """The expected seconds of fine-tuning with ``config`` on ``fit_images`` images, from ``timing``
    (the unpruned model's): an upper bound, since the pruned student is timed at its unpruned size.
    It is not scaled down by the MACs removed: on a 2-core CPU a ResNet-20 pruned to half its MACs
    took 0.88-0.91 of the unpruned model's training-step time (``bench/finetune_speed.py``)."""
    t = StepTiming.from_dict(timing) if isinstance(timing, dict) else timing
    per_image = t.train_s + (t.teacher_s if config.kd_weight > 0 else 0.0)
    return config.epochs * batches_per_epoch(config, fit_images) * config.batch_size * per_image


def finetune_plan(timing: StepTiming | dict, config: FinetuneConfig, fit_images: int) -> dict:
    """What fine-tuning with ``config`` will do and its expected seconds (:func:`expected_seconds`),
    as plain data: the job's ``finetune_plan`` (summary, ``base`` event) and the New run page's."""
    t = StepTiming.from_dict(timing) if isinstance(timing, dict) else timing
    return {"seconds": expected_seconds(t, config, fit_images), "timing": t.to_dict(), "epochs": config.epochs,
            "batches": batches_per_epoch(config, fit_images), "batch_size": config.batch_size,
            "distillation": config.kd_weight > 0}
