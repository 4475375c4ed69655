"""The settings of a run: one typed, validated, JSON-serialisable object."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..budget import Budget
from ..errors import PrunerError
from ..finetune import FinetuneConfig


@dataclass
class RunConfig:
    # what to prune
    model: str = "resnet20"
    weights: str | None = "pretrained"     # "pretrained", a file path, or None for random init
    trust_checkpoint: bool = False
    # data
    data: str = "digits"
    data_root: str | None = None
    protocol: str = "val-from-train"       # or "test-halves"
    val_size: int | None = None            # None: 10% of train, at most 5000
    image_size: int | None = None
    # search
    budget: str = "flops=0.5"
    strategy: str = "rl"
    strategy_params: dict[str, Any] = field(default_factory=dict)
    importance: str = "l1"
    search_evals: int | None = 100
    search_images: int = 1000
    recal_images: int = 256
    max_prune: float = 0.9
    min_channels: int = 1
    # fine-tuning and reporting
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    report_images: int | None = None        # cap on report-split images (quick runs); None = all
    latency_repeats: int = 30
    latency_batch: int | None = None       # throughput batch timed besides 1 (None: 256 on CUDA, none on CPU); a latency budget is held at it
    export: bool = True
    device: str = "auto"
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.finetune, dict):
            self.finetune = FinetuneConfig(**self.finetune)
        self.budget_obj  # validates
        if self.protocol not in ("val-from-train", "test-halves"):
            raise PrunerError(f"unknown protocol {self.protocol!r}; use val-from-train or test-halves")
        if self.search_evals is not None and self.search_evals < 1:
            raise PrunerError(f"--search-evals must be >= 1, got {self.search_evals}")
        if self.val_size is not None and self.val_size < 1:
            raise PrunerError(f"val_size must be >= 1, got {self.val_size}")
        for name in ("search_images", "recal_images", "latency_repeats"):
            if getattr(self, name) < 1:
                raise PrunerError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.latency_batch is not None and (isinstance(self.latency_batch, bool)
                                               or not isinstance(self.latency_batch, int) or self.latency_batch < 1):
            raise PrunerError(f"latency_batch must be a whole number >= 1 (or unset), got {self.latency_batch!r}")
        if not 0.0 < self.max_prune < 1.0:
            raise PrunerError(f"max_prune must be in (0, 1), got {self.max_prune}")

    @property
    def budget_obj(self) -> Budget:
        return Budget.parse(self.budget)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise PrunerError(f"unknown run settings: {', '.join(sorted(unknown))}")
        return cls(**d)
