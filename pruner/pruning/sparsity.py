"""Weight sparsity: the second kind of pruning, behind the same strategies, evaluator and solver.

Channel pruning (:class:`~pruner.pruning.space.PruningSpace`) removes whole channels; a
``sparsity=F`` budget instead sets a fraction ``F`` of the *prunable weights* (every conv and
linear weight tensor, the classifier included) to zero and keeps every shape.
:class:`SparsitySpace` presents those weights to the search exactly as a pruning space
presents channels: one *unit group* per weight tensor, whose ``channels`` is its number of
weights, ``counts`` are weights kept per layer, :meth:`SparsitySpace.align` clips each count
to the layer's limits (``max_prune``), and the cost of a structure is its *density* (kept
weights over prunable weights; the budget is met when the density is at most ``1 - F``). So
``uniform``, ``global``, ``random``, ``sensitivity`` and ``rl`` propose per-layer counts through
the same :func:`~pruner.budget.solve` and :class:`~pruner.search.evaluator.Evaluator` without a
line changed; a strategy tied to channels declares so (``Strategy.budget_kinds``) and is
refused before any work.

Which weights go inside a layer is the space's ranking (:meth:`SparsitySpace.set_ranking`),
least important first, from :func:`weight_scores` (``l1``/``l2``: magnitude, ``taylor``:
``|w * dL/dw|``, ``random``). With ``pattern="2:4"`` (semi-structured sparsity, what sparse
tensor cores accelerate) a layer is either dense or keeps exactly the 2 best of every 4
consecutive weights along its flattened input dimension; layers whose input length is not a
multiple of 4 stay dense, so the floor is about ``1 - 0.5`` of the eligible weights.

Scoring a candidate (:meth:`SparsitySpace.prune`) multiplies a copy's weights by the masks;
the final model keeps its masks through fine-tuning with PyTorch's own reparametrisation
(:func:`apply_masks`: ``torch.nn.utils.prune.custom_from_mask``, so ``weight = weight_orig *
weight_mask`` in every forward pass) and :func:`make_permanent` folds them in before export.
:func:`sparsity_report` measures the final weights (zeros, non-zeros, dense and compressed
sizes) and :func:`onnx_sparsity` counts the zeros in an exported file's initialisers.
"""

from __future__ import annotations

import copy
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as torch_prune

from ..errors import PrunerError
from .space import GroupedSpace, PruningSpace

#: ``unstructured``: any weights of a layer; ``2:4``: 2 of every 4 consecutive input weights.
PATTERNS = ("unstructured", "2:4")
_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)
#: bytes of one stored float32 value / one CSR column index (int32) / one row pointer (int32)
_VALUE_BYTES = _INDEX_BYTES = 4


def check_pattern(pattern) -> str:
    if pattern not in PATTERNS:
        raise PrunerError(f"unknown sparsity pattern {pattern!r}; use {' or '.join(PATTERNS)} (2:4 needs a "
                          "sparsity budget of at most 0.5)")
    return pattern


@dataclass(frozen=True)
class WeightGroup:
    """The weights of one layer as a unit group: ``channels`` is its number of weights."""

    index: int
    name: str                 # the layer, e.g. "layer1.0.conv1"
    channels: int             # weights in the tensor (the units a count keeps)
    min_channels: int
    layers: tuple[str, ...]
    macs: int                 # the layer's MACs (dense)
    params: int               # == channels
    shape: tuple[int, ...] = ()
    eligible: bool = True     # 2:4: the input length is a multiple of 4

    coupled = False           # a layer's weights are never shared with another layer

    def to_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "channels": self.channels, "units": "weights",
                "min_channels": self.min_channels, "layers": list(self.layers), "macs": self.macs,
                "params": self.params, "coupled": False, "shape": list(self.shape)}


@dataclass
class SparsityRecord:
    """What a sparse structure keeps: weights per layer (the masks come from the ranking). Its
    ``to_dict`` is a pruning record with no channel removed, so a sparse checkpoint (zeros in
    the weights, shapes unchanged) loads with :func:`~pruner.models.checkpoints.load_checkpoint`."""

    kept: dict[str, int] = field(default_factory=dict)
    pattern: str = "unstructured"

    removed = property(lambda self: {})

    def to_dict(self) -> dict:
        return {"removed": {}, "sparsity": {"pattern": self.pattern, "kept_weights": dict(self.kept)}}


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every conv/linear layer with a weight tensor, in module order."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, _LAYER_TYPES) and isinstance(getattr(m, "weight", None), torch.Tensor)]


class SparsitySpace(GroupedSpace):
    """The prunable weights of a model as unit groups (one per layer), a density cost model,
    and masking; a duck-typed :class:`~pruner.pruning.space.PruningSpace` for the search."""

    kind = "sparsity"
    unit = "layer"
    round_to = 1

    def __init__(self, model: nn.Module, input_size: Sequence[int] = (3, 32, 32), *, max_prune: float = 0.9,
                 pattern: str = "unstructured"):
        if not 0.0 < max_prune < 1.0:
            raise PrunerError(f"max_prune must be in (0, 1), got {max_prune}")
        self.pattern = check_pattern(pattern)
        self.input_size = tuple(int(s) for s in input_size)
        self.max_prune = float(max_prune)
        device = next(iter(model.parameters())).device
        was_training = model.training
        model.eval()
        try:
            macs = PruningSpace._layer_macs(model, torch.randn(1, *self.input_size, device=device))
        finally:
            model.train(was_training)
        layers = prunable_layers(model)
        if not layers:
            raise PrunerError("this model has no conv or linear weights to sparsify")
        self.groups = [WeightGroup(i, name, m.weight.numel(), 1, (name,), int(macs.get(m, 0)), m.weight.numel(),
                                   tuple(m.weight.shape), m.weight[0].numel() % 4 == 0)
                       for i, (name, m) in enumerate(layers)]
        self.prunable = sum(g.channels for g in self.groups)
        self.base_macs = sum(int(v) for v in macs.values())
        self.base_params = sum(p.numel() for p in model.parameters())
        self.ranking: list[torch.Tensor] | None = None
        if self.pattern == "2:4" and self.floor() >= 1.0:
            raise PrunerError("no layer of this model can hold 2:4 sparsity (each needs an input length that is a "
                              "multiple of 4, and max_prune >= 0.5); use the unstructured pattern")

    # ------------------------------------------------------------------ the PruningSpace interface

    def min_keep(self, group: WeightGroup) -> int:
        """The fewest weights ``group`` may keep: ``max_prune`` honoured; with 2:4 half the layer
        (when it is eligible and ``max_prune >= 0.5``), else the whole layer."""
        n = group.channels
        if self.pattern == "2:4":
            return n // 2 if group.eligible and self.max_prune >= 0.5 else n
        return min(n, max(1, int(math.ceil(n * (1.0 - self.max_prune) - 1e-9))))

    def align(self, counts: Sequence[int]) -> list[int]:
        """The counts that will be built: clipped to ``[min_keep, weights]``; with 2:4 snapped to
        the nearer of half the layer and the whole layer. Idempotent."""
        if len(counts) != len(self.groups):
            raise PrunerError(f"expected {len(self.groups)} weight counts (one per layer), got {len(counts)}")
        out = []
        for g, c in zip(self.groups, counts):
            lo, c = self.min_keep(g), int(c)
            c = min(g.channels, max(lo, c))
            if self.pattern == "2:4" and lo < g.channels:
                c = lo if c <= (3 * g.channels) // 4 else g.channels
            out.append(c)
        return out

    def counts(self, keep_ratios: Sequence[float]) -> list[int]:
        ratios = self.validate_ratios(keep_ratios)
        return self.align([round(g.channels * r) for g, r in zip(self.groups, ratios)])

    def set_ranking(self, ranking: Sequence[torch.Tensor]) -> None:
        """Per layer, its flat weight indices from least to most important (:func:`ranking_from_scores`)."""
        if len(ranking) != len(self.groups):
            raise PrunerError("set_ranking needs one weight order per layer")
        given = [torch.as_tensor(r, dtype=torch.long).cpu() for r in ranking]
        for g, r in zip(self.groups, given):
            if r.numel() != g.channels:
                raise PrunerError(f"the weight order of {g.name} has {r.numel()} entries, the layer {g.channels}")
        self.ranking = given

    def density(self, counts: Sequence[int]) -> float:
        """Kept (non-zero) fraction of the prunable weights: the cost a sparsity budget bounds."""
        return sum(self.align(counts)) / self.prunable

    def floor(self) -> float:
        """The smallest density allowed (every layer at :meth:`min_keep`)."""
        return self.density([self.min_keep(g) for g in self.groups])

    def predict(self, keep_ratios: Sequence[float] | None = None, *,
                counts: Sequence[int] | None = None) -> tuple[int, int]:
        """(MACs, non-zero parameters): the dense MACs (shapes do not change) and the parameters a
        sparse format stores."""
        if counts is None:
            counts = self.counts(keep_ratios if keep_ratios is not None else [1.0] * len(self.groups))
        return self.base_macs, self.base_params - (self.prunable - sum(self.align(counts)))

    # ------------------------------------------------------------------ masks
    def masks(self, counts: Sequence[int]) -> list[torch.Tensor]:
        """Per layer, the boolean mask (the weight's shape) of the weights ``counts`` keeps."""
        if self.ranking is None:
            raise PrunerError("masks need a weight ranking: call set_ranking first")
        out = []
        for g, c, order in zip(self.groups, self.align(counts), self.ranking):
            if c >= g.channels:
                out.append(torch.ones(g.shape, dtype=torch.bool))
                continue
            position = torch.empty(g.channels, dtype=torch.long)
            position[order] = torch.arange(g.channels)
            if self.pattern == "2:4":  # in each run of 4 input weights, the 2 best ranked
                rows = position.view(g.shape[0], -1, 4)
                keep = torch.zeros_like(rows, dtype=torch.bool)
                keep.scatter_(2, rows.topk(2, dim=2).indices, True)
                out.append(keep.view(g.shape))
            else:
                out.append((position >= g.channels - c).view(g.shape))
        return out

    def prune(self, model: nn.Module, counts: Sequence[int], ranking: Sequence[torch.Tensor] | None = None, *,
              inplace: bool = False) -> tuple[nn.Module, SparsityRecord]:
        """A copy of ``model`` whose weights outside the masks are zero (plain tensors: for scoring)."""
        if ranking is not None:
            self.set_ranking(ranking)
        target = model if inplace else copy.deepcopy(model)
        counts = self.align(counts)
        modules = dict(target.named_modules())
        with torch.no_grad():
            for g, mask in zip(self.groups, self.masks(counts)):
                w = modules[g.name].weight
                w.mul_(mask.to(w.device, w.dtype))
        return target, self.record(counts)

    def record(self, counts: Sequence[int]) -> SparsityRecord:
        return SparsityRecord({g.name: int(c) for g, c in zip(self.groups, self.align(counts))}, self.pattern)


# ---------------------------------------------------------------------- importance
def weight_scores(model: nn.Module, space: SparsitySpace, criterion: str = "l1", *,
                  batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
                  seed: int = 0) -> list[torch.Tensor]:
    """One score per weight (flat, per layer; higher = more important): ``l1``/``l2`` the magnitude,
    ``taylor`` ``|w * dL/dw|`` accumulated over ``batches``, ``random`` uniform noise."""
    modules = dict(model.named_modules())
    weights = [modules[g.name].weight for g in space.groups]
    if criterion in ("l1", "l2"):
        return [w.detach().abs().float().cpu().reshape(-1) for w in weights]
    if criterion == "random":
        gen = torch.Generator().manual_seed(seed)
        return [torch.rand(w.numel(), generator=gen) for w in weights]
    if criterion != "taylor":
        raise PrunerError(f"unknown importance criterion {criterion!r} for weight sparsity; use l1, l2, taylor or random")
    if batches is None:
        raise PrunerError("the taylor criterion needs data: pass a few training batches")
    was_training = model.training
    model.eval()
    device = weights[0].device
    model.zero_grad(set_to_none=True)
    try:
        with torch.enable_grad():
            for x, y in batches:
                F.cross_entropy(model(x.to(device)), y.to(device)).backward()
        return [torch.nan_to_num((w.detach() * w.grad).abs().float().cpu().reshape(-1) if w.grad is not None
                                 else torch.zeros(w.numel()), nan=0.0) for w in weights]
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


# ---------------------------------------------------------------------- the final model
def apply_masks(model: nn.Module, space: SparsitySpace, counts: Sequence[int]) -> tuple[nn.Module, SparsityRecord]:
    """A copy of ``model`` with each layer's mask attached by ``torch.nn.utils.prune.custom_from_mask``:
    fine-tuning updates ``weight_orig`` and every forward pass uses ``weight_orig * weight_mask``, so
    the zeros survive training (and a fine-tuning checkpoint holds the masks)."""
    target = copy.deepcopy(model)
    counts = space.align(counts)
    modules = dict(target.named_modules())
    for g, mask in zip(space.groups, space.masks(counts)):
        m = modules[g.name]
        torch_prune.custom_from_mask(m, "weight", mask.to(m.weight.device))
    return target, space.record(counts)


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every ``torch.nn.utils.prune`` mask into its weight (``prune.remove``): plain tensors with
    the zeros, ready for export and checkpoints. Returns ``model``."""
    for m in model.modules():
        for hook in list(m._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(m, hook._tensor_name)
    return model


def is_masked(model: nn.Module) -> bool:
    return any(isinstance(h, torch_prune.BasePruningMethod) for m in model.modules()
               for h in m._forward_pre_hooks.values())


def sparsity_report(model: nn.Module, names: Sequence[str] | None = None) -> dict:
    """Zeros measured on the final weights of the prunable layers (``names``; default every conv/linear).

    Sizes (float32): ``dense_bytes`` all parameters stored densely; ``bitmask_bytes`` the prunable
    weights as a bitmask (1 bit per weight) plus their non-zero values, the other parameters
    dense; ``csr_bytes`` each prunable weight as a CSR matrix (rows = output channels: values,
    int32 column indices, int32 row pointers), the other parameters dense.
    """
    if is_masked(model):
        raise PrunerError("sparsity_report measures final weights: call make_permanent first")
    modules = dict(model.named_modules())
    layers = names if names is not None else [n for n, _ in prunable_layers(model)]
    rows, prunable, zeros, bitmask, csr = [], 0, 0, 0, 0
    for name in layers:
        w = modules[name].weight.detach()
        n, z = w.numel(), int((w == 0).sum())
        nz = n - z
        rows.append({"name": name, "weights": n, "zeros": z, "sparsity": z / n})
        prunable += n
        zeros += z
        bitmask += math.ceil(n / 8) + nz * _VALUE_BYTES
        csr += nz * (_VALUE_BYTES + _INDEX_BYTES) + (w.shape[0] + 1) * _INDEX_BYTES
    total = sum(p.numel() for p in model.parameters())
    other = (total - prunable) * _VALUE_BYTES
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    return {"sparsity": zeros / prunable, "prunable_weights": prunable, "zeros": zeros,
            "nonzero_weights": prunable - zeros, "params": total, "nonzero_params": nonzero,
            "dense_bytes": total * _VALUE_BYTES, "bitmask_bytes": bitmask + other, "csr_bytes": csr + other,
            "layers": rows}


def onnx_sparsity(path: str | Path) -> dict:
    """The zeros of an ONNX file's weight initialisers (the second input of Conv, Gemm and MatMul
    nodes), the file's size and its size compressed with zlib (deflate, level 9)."""
    import onnx
    from onnx import numpy_helper

    data = Path(path).read_bytes()
    proto = onnx.load_model_from_string(data)
    inits = {t.name: t for t in proto.graph.initializer}
    seen, weights, zeros = set(), 0, 0
    for node in proto.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in inits:
            name = node.input[1]
            if name in seen:
                continue
            seen.add(name)
            arr = numpy_helper.to_array(inits[name])
            weights += arr.size
            zeros += int((arr == 0).sum())
    return {"weights": weights, "zeros": zeros, "sparsity": zeros / weights if weights else 0.0,
            "bytes": len(data), "zipped_bytes": len(zlib.compress(data, 9))}


def holds_2to4(weight: torch.Tensor) -> bool:
    """Whether every run of 4 consecutive input weights of ``weight`` has at least 2 zeros."""
    rows = weight.detach().reshape(weight.shape[0], -1)
    if rows.shape[1] % 4:
        return False
    return bool(((rows.view(rows.shape[0], -1, 4) == 0).sum(2) >= 2).all())


def measure_sparsity(model: nn.Module, space: SparsitySpace, budget) -> dict:
    """:func:`sparsity_report` of the final (permanent) weights, checked against ``budget``
    (``sparsity=F``: at least ``F`` of the prunable weights are zero) and, for 2:4, the pattern
    of every sparsified layer; a :class:`PrunerError` when either fails."""
    rep = sparsity_report(model, space.names)
    rep.update(pattern=space.pattern, target=budget.value)
    if rep["sparsity"] < budget.value - 1e-9:
        raise PrunerError(f"the final model has {rep['sparsity']:.4f} of its prunable weights at zero, below the "
                          f"budget {budget}; this is a bug: report it with the run directory")
    if space.pattern == "2:4":
        modules = dict(model.named_modules())
        sparse = [r["name"] for r in rep["layers"] if r["zeros"] > 0 and space.groups[space.names.index(r["name"])].eligible]
        bad = [n for n in sparse if not holds_2to4(modules[n].weight)]
        if bad:
            raise PrunerError(f"layers {', '.join(bad[:3])} lost their 2:4 pattern; this is a bug: report it")
        rep["layers_2to4"] = len(sparse)
    return rep
