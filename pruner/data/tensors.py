"""In-memory dataset containers: :class:`ImageTensors` (images + labels) and :class:`DataBundle`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import PrunerError


@dataclass
class ImageTensors:
    """A set of images kept as raw pixels: ``x`` uint8 ``[N, C, H, W]``, ``y`` int64 ``[N]``."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(f"x must be a uint8 [N, C, H, W] tensor, got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.dtype != torch.int64 or self.y.dim() != 1:
            raise ValueError(f"y must be an int64 [N] tensor, got {self.y.dtype} {tuple(self.y.shape)}")
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} images but y has {self.y.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, indices_or_n: int | Sequence[int] | torch.Tensor) -> ImageTensors:
        """``int n``: the first ``n`` rows (all of them if fewer); a tensor or list: those rows."""
        if isinstance(indices_or_n, bool):
            raise TypeError("subset() takes an int count or a sequence of indices, not a bool")
        if isinstance(indices_or_n, int):
            if indices_or_n < 0:
                raise PrunerError(f"cannot take a subset of {indices_or_n} images; use a count >= 0")
            return ImageTensors(self.x[:indices_or_n], self.y[:indices_or_n])
        index = torch.as_tensor(indices_or_n, device=self.y.device)
        if index.dtype != torch.bool:
            index = index.long()
        return ImageTensors(self.x[index], self.y[index])

    def to(self, device: torch.device | str) -> ImageTensors:
        """A copy on ``device`` (the same object's tensors when already there)."""
        return ImageTensors(self.x.to(device), self.y.to(device))


@dataclass
class DataBundle:
    """A dataset split three ways for pruning.

    ``fit`` fine-tunes and recalibrates BatchNorm, ``search`` scores candidates, and ``report``
    is only for the final numbers (the search never sees it). Each split is stored in a seeded
    random order, so ``split.subset(n)`` is a random sample rather than one class.
    """

    name: str
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int, int]
    protocol: str
    fit: ImageTensors
    search: ImageTensors
    report: ImageTensors

    @property
    def num_classes(self) -> int:
        """Number of classes (the model's output width)."""
        return len(self.classes)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary: name, classes, split sizes, protocol, input size, normalization."""
        return {
            "name": self.name,
            "classes": list(self.classes),
            "num_classes": self.num_classes,
            "protocol": self.protocol,
            "input_size": list(self.input_size),
            "sizes": {"fit": len(self.fit), "search": len(self.search), "report": len(self.report)},
            "mean": list(self.mean),
            "std": list(self.std),
        }
