"""The settings of a run: one typed, validated, JSON-serialisable object.

Constructing a :class:`RunConfig` checks everything that can be checked without data or a
model (numbers and their ranges, choices, the strategy and each of its hyperparameters), so
the CLI and the studio's form refuse a bad setting before any work starts, with the same
one-line ``PrunerError``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..budget import Budget
from ..data import PROTOCOLS
from ..data.load import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from ..errors import PrunerError
from ..checks import check_number
from ..finetune import MAX_SEED, FinetuneConfig
from ..pruning.importance import CRITERIA
from ..settings import check_device_name
from ..userfile import CONSENT_HINT, code_references
from ..pruning.space import check_round_to
from ..pruning.sparsity import check_pattern
from ..recipes import recipe_settings
from ..quantize import DEFAULT_CALIBRATION_IMAGES, QUANTIZE_CHOICES
from .rundir import find_sensitivity


#: most in-process scoring threads one run may use
MAX_SCORING_THREADS = 64
#: most Ray workers one run may start
MAX_WORKERS = 256


@dataclass
class RunConfig:
    # what to prune
    model: str = "resnet20"
    weights: str | None = "pretrained"     # "pretrained", a file path, or None for random init
    trust_checkpoint: bool = False
    trust_code: bool = False               # consent to run user code (file: model, python: costs); see userfile
    # data
    data: str = "digits"
    data_root: str | None = None
    protocol: str = PROTOCOLS[0]           # see pruner.data.PROTOCOLS
    val_size: int | None = None            # None: 10% of train, at most 5000
    image_size: int | None = None
    # search
    budget: str = "flops=0.5"
    sparsity_pattern: str = "unstructured"  # sparsity budgets: "unstructured" or "2:4" (pruner.pruning.sparsity)
    strategy: str = "rl"
    strategy_params: dict[str, Any] = field(default_factory=dict)
    importance: str = CRITERIA[0]          # see pruner.pruning.importance.CRITERIA
    search_evals: int | None = 100
    score: str = "top1"                    # what the search maximises: top1 or kl (pruner.search.evaluator.SCORES)
    search_images: int = 1000
    recal_images: int = 256
    max_prune: float = 0.9
    min_channels: int = 1
    round_to: int | None = None            # kept channels a multiple of this; None = auto (8 on CUDA, 1 on CPU)
    workers: int = 0                       # Ray actors scoring candidates in parallel; 0 = in the job's process
    scoring_threads: int | None = None     # in-process: structures scored at once on a CPU; None = auto (EvaluatorSettings.threads)
    ray_address: str | None = None         # an existing Ray cluster to join (else an embedded local Ray)
    # fine-tuning and reporting
    # a FinetuneConfig is taken whole; a dict overrides the recipe's settings (pruner.recipes), or the defaults
    finetune: FinetuneConfig | dict = field(default_factory=dict)
    recipe: str | None = None               # "quick", "standard" or "full" (pruner.recipes)
    report_images: int | None = None        # cap on report-split images (quick runs); None = all
    latency_repeats: int = 30
    latency_batch: int | None = None       # throughput batch timed besides 1 (None: 256 on CUDA, none on CPU); a latency budget is held at it
    export: bool = True
    quantize: str | None = None             # "int8": ONNX Runtime static quantization after export (pruner.quantize)
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES  # fine-tune-split images the INT8 model is calibrated on
    device: str = "auto"
    seed: int = 0

    def check_sources(self) -> None:
        """The model spec, weights file and dataset as far as they can be checked without loading
        anything (a zoo or torchvision name, the files exist, a known dataset or an existing folder):
        a one-line PrunerError before a run directory is created."""
        from ..data.sources import check_data_spec
        from ..models import parse_model_spec

        parse_model_spec(self.model, num_classes=1, weights=self.weights, trust_checkpoint=self.trust_checkpoint)
        check_data_spec(self.data, self.data_root)

    def __post_init__(self):
        """Every setting checked (and normalised) once, in this order, each failure one line."""
        self._check_finetune()
        self._check_sizes()
        self._check_search()
        self._check_output()

    def _check_finetune(self) -> None:
        """The recipe, then the fine-tuning settings (a dict: the recipe's, overridden by those given)."""
        if self.recipe is not None:
            recipe_settings(self.recipe)   # an unknown name: one line before anything else
        if isinstance(self.finetune, dict):
            unknown = set(self.finetune) - {f.name for f in fields(FinetuneConfig)}
            if unknown:
                raise PrunerError(f"unknown fine-tuning settings: {', '.join(sorted(unknown))}")
            self.finetune = FinetuneConfig(**{**(recipe_settings(self.recipe) if self.recipe else {}),
                                              **self.finetune})
        if not isinstance(self.finetune, FinetuneConfig):
            raise PrunerError(f"finetune must be fine-tuning settings, got {self.finetune!r}")

    def _check_sizes(self) -> None:
        """The budget, split protocol, importance, device, image counts, seed, image size and floor."""
        self.budget_obj  # validates
        if self.protocol not in PROTOCOLS:
            raise PrunerError(f"unknown protocol {self.protocol!r}; use {' or '.join(PROTOCOLS)}")
        if self.importance not in CRITERIA:
            raise PrunerError(f"unknown importance criterion {self.importance!r}; use one of {', '.join(CRITERIA)}")
        self.device = check_device_name(self.device)
        self.search_evals = check_number("search_evals", self.search_evals, int, low=1, optional=True,
                                         flag="--search-evals")
        self.val_size = check_number("val_size", self.val_size, int, low=1, optional=True, flag="--val-size")
        for name in ("search_images", "recal_images", "latency_repeats", "min_channels"):
            setattr(self, name, check_number(name, getattr(self, name), int, low=1,
                                             flag="--" + name.replace("_", "-")))
        self.report_images = check_number("report_images", self.report_images, int, low=1, optional=True,
                                          flag="--report-images")
        self.seed = check_number("seed", self.seed, int, low=0, high=MAX_SEED, flag="--seed")
        self.image_size = check_number("image_size", self.image_size, int, low=MIN_IMAGE_SIZE, high=MAX_IMAGE_SIZE,
                                       optional=True, flag="--image-size")
        self.max_prune = check_number("max_prune", self.max_prune, float, low=0.0, high=1.0, low_open=True,
                                      high_open=True, flag="--max-prune")

    def _check_search(self) -> None:
        """The strategy and its parameters, the search score, the sparsity pattern and the consent to
        run the code the settings name."""
        from ..search.base import validate_strategy  # the search package imports the data and model code

        if not isinstance(self.strategy, str):
            raise PrunerError(f"strategy must be a name, got {self.strategy!r}")
        self.strategy_params = validate_strategy(self.strategy, self.strategy_params, self.budget_obj.kind,
                                                 find_analysis=find_sensitivity)
        from ..search.base import strategy_class
        from ..search.evaluator import check_score

        if not isinstance(self.score, str):
            raise PrunerError(f"score must be a name (--score), got {self.score!r}")
        strategy_class(self.strategy).check_score(check_score(self.score), self.strategy_params)
        strategy_class(self.strategy).check_evaluations(self.search_evals, self.strategy_params)
        check_pattern(self.sparsity_pattern)
        if self.sparsity_pattern != "unstructured" and self.budget_obj.kind != "sparsity":
            raise PrunerError(f"sparsity pattern {self.sparsity_pattern} needs a sparsity budget (e.g. sparsity=0.5), "
                              f"not {self.budget}")
        if self.sparsity_pattern == "2:4" and self.budget_obj.value > 0.5:
            raise PrunerError(f"budget {self.budget_obj} cannot be reached with 2:4 sparsity, which zeroes at most "
                              "half of the weights; set sparsity to at most 0.5 or use the unstructured pattern")
        refs = code_references(self.model, self.strategy_params)
        if refs and self.trust_code is not True:
            raise PrunerError(f"{refs[0]} names Python code that would run in the job; {CONSENT_HINT}")

    def _check_output(self) -> None:
        """Channel alignment, the latency batch, workers and scoring threads, quantization, Ray."""
        if self.round_to is not None:
            self.round_to = check_round_to(self.round_to)
        self.latency_batch = check_number("latency_batch", self.latency_batch, int, low=1, optional=True,
                                          flag="--latency-batch")
        self.workers = check_number("workers", self.workers, int, low=0, high=MAX_WORKERS, flag="--workers")
        self.scoring_threads = check_number("scoring_threads", self.scoring_threads, int, low=1, high=MAX_SCORING_THREADS,
                                            optional=True, flag="--scoring-threads")
        if self.quantize not in QUANTIZE_CHOICES:
            raise PrunerError(f"unknown quantization {self.quantize!r} (--quantize); use int8, or leave it off")
        if self.quantize and not self.export:
            raise PrunerError("--quantize int8 quantizes the exported ONNX model: drop --no-export")
        self.calibration_images = check_number("calibration_images", self.calibration_images, int, low=1,
                                               flag="--calibration-images")
        if self.ray_address is not None:
            self.ray_address = check_ray_address(self.ray_address)
            if self.workers < 1:
                raise PrunerError("--ray-address needs --workers N (N >= 1): the workers are what runs on the cluster")

    def resolved_round_to(self, device) -> int:
        """``round_to``, with None (auto) resolved for the run's device: 8 on CUDA, 1 elsewhere."""
        if self.round_to is not None:
            return self.round_to
        return 8 if getattr(device, "type", str(device)).startswith("cuda") else 1

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


_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?)$")


def check_ray_address(address: str) -> str:
    """``address`` stripped, when it is a form ``ray.init`` joins: ``auto`` (the cluster `ray start`
    left on this machine), ``HOST:PORT`` or ``ray://HOST:PORT`` (port 1-65535; an IPv6 host in
    brackets); else a one-line PrunerError."""
    text = address.strip() if isinstance(address, str) else ""
    if text == "auto":
        return text
    hostport = text[len("ray://"):] if text.startswith("ray://") else text
    host, sep, port = hostport.rpartition(":")
    if not (sep and _HOST.match(host) and port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise PrunerError(f"ray_address (--ray-address) must be HOST:PORT, ray://HOST:PORT (port 1-65535) or auto, "
                          f"got {address!r}; `ray start --head` prints the address")
    return text
