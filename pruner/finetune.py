"""Fine-tuning a pruned model with knowledge distillation from the original."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, asdict
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_number
from .data import DataBundle, ImageTensors, batches
from .errors import CancelledError, PrunerError
from .evaluate import accuracy


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
    seed: int = 0

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
        self.max_batches_per_epoch = check_number("batches per epoch", self.max_batches_per_epoch, int, low=1,
                                                  optional=True, flag="--max-batches-per-epoch")
        self.seed = check_number("seed", self.seed, int, low=0, high=MAX_SEED, flag="--seed")

    def to_dict(self) -> dict:
        return asdict(self)


EpochCallback = Callable[[dict], None]


def distillation_loss(student_logits, teacher_logits, labels, temperature: float, weight: float) -> torch.Tensor:
    """Hinton et al.: ``weight * T^2 * KL(teacher_T || student_T) + (1 - weight) * CE(labels)``."""
    ce = F.cross_entropy(student_logits, labels)
    if teacher_logits is None or weight <= 0:
        return ce
    t = temperature
    kd = F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                  reduction="batchmean", log_target=True) * (t * t)
    return weight * kd + (1.0 - weight) * ce


def finetune(student: nn.Module, data: DataBundle, config: FinetuneConfig, *, teacher: nn.Module | None = None,
             device="cpu", eval_data: ImageTensors | None = None, on_epoch: EpochCallback | None = None,
             checkpoint_dir: str | Path | None = None, start_epoch: int = 0,
             should_stop: Callable[[], bool] | None = None) -> list[dict]:
    """Train ``student`` in place: SGD + cosine schedule, distillation from ``teacher``.

    AMP and channels_last are used on CUDA. After each epoch, ``on_epoch`` gets a dict
    (epoch, loss, lr, val_top1 when ``eval_data`` is given, seconds) and, with
    ``checkpoint_dir``, ``epoch-<n>.pt`` holds the student's state, optimizer and
    scheduler so :func:`finetune` can resume from ``start_epoch``.
    """
    device = torch.device(device)
    history: list[dict] = []
    if config.epochs == 0:
        return history
    student.to(device)
    if teacher is not None and config.kd_weight > 0:
        teacher.to(device).eval()
    else:
        teacher = None
    cuda = device.type == "cuda"
    if cuda:
        student.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(student.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay, nesterov=True)
    per_epoch = math.ceil(len(data.fit) / config.batch_size)
    if config.max_batches_per_epoch:
        per_epoch = min(per_epoch, config.max_batches_per_epoch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, config.epochs * per_epoch))
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
    if start_epoch > 0:
        if ckpt_dir is None or not (ckpt_dir / f"epoch-{start_epoch}.pt").exists():
            raise PrunerError(f"cannot resume fine-tuning at epoch {start_epoch}: its checkpoint is missing")
        state = torch.load(ckpt_dir / f"epoch-{start_epoch}.pt", map_location=device, weights_only=True)
        student.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        sched.T_max = max(1, config.epochs * per_epoch)   # a resume may change epochs or batch size: anneal to the new end
        history = list(state.get("history", []))

    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        student.train()
        total, n = 0.0, 0
        for i, (x, y) in enumerate(batches(data.fit, config.batch_size, mean=data.mean, std=data.std, device=device,
                                          shuffle=True, augment=True, generator=gen, drop_last=True)):
            if i >= per_epoch:
                break
            if should_stop is not None and should_stop():
                raise CancelledError("fine-tuning cancelled")
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
                logits = student(x)
                with torch.no_grad():
                    t_logits = teacher(x) if teacher is not None else None
                loss = distillation_loss(logits.float(), None if t_logits is None else t_logits.float(), y,
                                         config.kd_temperature, config.kd_weight)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            total += float(loss.detach()) * y.numel()
            n += y.numel()
        record = {"epoch": epoch + 1, "epochs": config.epochs, "loss": total / max(1, n),
                  "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        if eval_data is not None:
            record["val_top1"] = accuracy(student, eval_data, mean=data.mean, std=data.std, device=device)["top1"]
        history.append(record)
        if ckpt_dir is not None:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            tmp = ckpt_dir / f".epoch-{epoch + 1}.pt.tmp"
            torch.save({"model": student.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "history": history}, tmp)
            tmp.replace(ckpt_dir / f"epoch-{epoch + 1}.pt")
        if on_epoch is not None:
            on_epoch(record)
    student.eval()
    return history
