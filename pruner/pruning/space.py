"""The pruning space of a model: its channel groups, a cost model over them, and surgery.

Torch-Pruning's dependency graph finds which channels must be removed together (residual
adds, concatenations, depthwise convolutions). A :class:`PruningSpace` is built once per
base model and answers, without touching the model:

* which groups exist (:attr:`PruningSpace.groups`) and what share of the MACs and
  parameters each one controls;
* how many channels each group keeps for given keep ratios (:meth:`counts`), aligned to a
  multiple of ``round_to`` (:meth:`align`: tensor-core friendly widths on GPUs);
* the MACs and parameters of the pruned model (:meth:`predict`), exact for conv/linear
  networks, so budget solvers can bisect without physical surgery.

The space owns *one* channel ranking (:meth:`set_ranking`): predictions and surgery both
use it, so what the cost model counts is exactly what the surgery keeps (where a group
spans a concatenation, which channels go decides which layers shrink).

:meth:`prune` builds the physically smaller copy (``nn.Module``, not masks) and returns a
:class:`PruningRecord` that replays the same surgery on a fresh base model (used to
rebuild pruned checkpoints). Every count that reaches :meth:`predict` or :meth:`prune` is
passed through :meth:`align` first, so no strategy can build an unaligned structure.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn as nn

from ..errors import PrunerError
from .opaque import FollowingGraph
from .shortcut import CUSTOM_PRUNERS

_PRUNABLE_TYPES = (nn.Conv2d, nn.Conv1d, nn.Linear)


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be pruned together, named after the layer whose outputs they are."""

    index: int
    name: str                 # root layer name, e.g. "layer1.0.conv1"
    channels: int             # channels before pruning
    min_channels: int         # never keep fewer than this
    layers: tuple[str, ...]   # layers whose output channels belong to the group
    macs: int                 # MACs of all layers the group touches (in or out side)
    params: int               # parameters of all modules the group touches

    @property
    def coupled(self) -> bool:
        """True when several layers share these channels (e.g. a residual stage)."""
        return len(self.layers) > 1

    def to_dict(self) -> dict:
        return {
            "index": self.index, "name": self.name, "channels": self.channels,
            "min_channels": self.min_channels, "layers": list(self.layers),
            "macs": self.macs, "params": self.params, "coupled": self.coupled,
        }


@dataclass(frozen=True)
class FrozenGroup:
    """Channels left out of the pruning space: the layers that produce them keep every channel."""

    name: str                 # root layer name
    channels: int
    layers: tuple[str, ...]   # layers whose output channels belong to the group
    reason: str               # why, naming the op that blocks it

    def to_dict(self) -> dict:
        return {"name": self.name, "channels": self.channels, "layers": list(self.layers), "reason": self.reason}


@dataclass
class PruningRecord:
    """What was removed: per group name, the removed channel indices (root index space)."""

    removed: dict[str, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"removed": self.removed}

    @classmethod
    def from_dict(cls, d: dict) -> "PruningRecord":
        return cls({str(k): [int(i) for i in v] for k, v in d["removed"].items()})


@dataclass
class _Term:
    """One parameter tensor or one layer's MACs, scaled by the kept fraction of its channels."""

    base: int
    out: dict[int, torch.Tensor]   # group index -> root indices of the group that reach this output dim
    out_total: int
    inp: dict[int, torch.Tensor]
    in_total: int


def build_graph(model: nn.Module, example_input: torch.Tensor) -> FollowingGraph:
    """Trace ``model`` with Torch-Pruning, including the project's custom layer handlers; the graph
    knows which ops it cannot follow (:class:`~pruner.pruning.opaque.FollowingGraph`)."""
    try:
        with torch.enable_grad():
            return FollowingGraph().build_dependency(
                model, example_input, customized_pruners=CUSTOM_PRUNERS, verbose=False
            )
    except MemoryError:
        raise
    except Exception as exc:  # tracing failures are model problems the user must hear about
        raise PrunerError(
            f"Torch-Pruning could not trace this model ({type(exc).__name__}: {exc}); "
            "models must be traceable by autograd on a single tensor input"
        ) from exc


def output_layers(model: nn.Module, example_input: torch.Tensor) -> list[nn.Module]:
    """Conv/linear layers whose output *is* the model output (the classifier): never pruned."""
    outputs: dict[int, nn.Module] = {}
    hooks = [
        m.register_forward_hook(lambda mod, _i, o: outputs.__setitem__(id(o), mod))
        for m in model.modules() if isinstance(m, _PRUNABLE_TYPES)
    ]
    try:
        with torch.no_grad():
            out = model(example_input)
    finally:
        for h in hooks:
            h.remove()
    outs = out if isinstance(out, (tuple, list)) else [out]
    return [outputs[id(o)] for o in outs if id(o) in outputs]


def _unsupported_layers(model: nn.Module) -> list[nn.Module]:
    """Grouped (non-depthwise) convolutions: Torch-Pruning cannot keep their group structure."""
    bad = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1 and not (m.groups == m.in_channels == m.out_channels):
            bad.append(m)
    return bad


class GroupedSpace:
    """What every pruning space shares (channel groups here, weight layers in
    :class:`~pruner.pruning.sparsity.SparsitySpace`): its unit groups in order, their names, and
    the check of one keep ratio per group."""

    groups: list
    unit = "group"   # what one entry of a keep-ratio list is, for messages
    frozen: list = []                          # what the space leaves unpruned (FrozenGroup), with why
    prunable_macs_share: float | None = None   # share of the MACs in layers that pruning shrinks (None: not known)

    def frozen_report(self) -> dict:
        """The frozen groups and the share of MACs left prunable, as plain data (summaries, pages)."""
        return {"groups": [f.to_dict() for f in self.frozen], "channels": sum(f.channels for f in self.frozen),
                "prunable_macs_share": self.prunable_macs_share}

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    def validate_ratios(self, keep_ratios: Sequence[float]) -> list[float]:
        ratios = [float(r) for r in keep_ratios]
        if len(ratios) != len(self.groups):
            raise PrunerError(f"expected {len(self.groups)} keep ratios (one per {self.unit}), got {len(ratios)}")
        for r in ratios:
            if not (0.0 <= r <= 1.0) or math.isnan(r):
                raise PrunerError(f"keep ratios must be in [0, 1], got {r}")
        return ratios


class PruningSpace(GroupedSpace):
    """Channel groups of a base model, a cost model over keep ratios, and physical pruning.

    Args:
        model: the base model (left untouched; only traced).
        input_size: ``(C, H, W)`` of one input image.
        min_channels: the fewest channels any group may keep.
        max_prune: the largest fraction of any group that may be removed.
        round_to: every pruned group keeps a multiple of this many channels (1 = any count);
            see :meth:`align`.
    """

    def __init__(self, model: nn.Module, input_size: Sequence[int] = (3, 32, 32), *,
                 min_channels: int = 1, max_prune: float = 0.95, round_to: int = 1):
        if not 0.0 < max_prune < 1.0:
            raise PrunerError(f"max_prune must be in (0, 1), got {max_prune}")
        self.round_to = check_round_to(round_to)
        self.input_size = tuple(int(s) for s in input_size)
        self.max_prune = float(max_prune)
        device = next(iter(model.parameters())).device
        example = torch.randn(1, *self.input_size, device=device)
        was_training = model.training
        model.eval()
        try:
            graph = build_graph(model, example)
            self._names = {m: n for n, m in model.named_modules()}
            self.groups, self._terms_macs, self._terms_params = self._analyse(
                model, graph, example, output_layers(model, example), _unsupported_layers(model), min_channels)
        except MemoryError as exc:   # Torch-Pruning's index mappings multiply through some reshape chains
            raise PrunerError(
                "Torch-Pruning ran out of memory following this model's channels through its reshapes (seen on Swin "
                "transformers, whose windows reshape channels-last tensors); this model cannot be channel-pruned here"
            ) from exc
        finally:
            model.train(was_training)
        if not self.groups:
            if self.frozen:
                f = self.frozen[0]
                raise PrunerError(f"every channel group of this model is frozen, so nothing can be pruned: the first, "
                                  f"{f.name}, because {f.reason}; a model whose layers' channels do not all pass through "
                                  "such an op can be pruned")
            raise PrunerError("this model has no prunable channel groups (only its classifier)")
        self.ranking: list[torch.Tensor] | None = None
        self._given: list[torch.Tensor] | None = None
        self.base_macs = sum(t.base for t in self._terms_macs)
        self.base_params = sum(p.numel() for p in model.parameters())
        del self._names
        self._compile_terms()

    def _compile_terms(self) -> None:
        """The cost model as two matrices over the flat channel vector of all groups, so that
        :meth:`predict` is a few vector operations (the solver calls it dozens of times)."""
        self._offsets = [0]
        for g in self.groups:
            self._offsets.append(self._offsets[-1] + g.channels)
        n = self._offsets[-1]

        def side(terms, attr_share, attr_total):
            rows = torch.zeros(len(terms), n, dtype=torch.float64)
            rest = torch.zeros(len(terms), dtype=torch.float64)
            total = torch.ones(len(terms), dtype=torch.float64)
            for k, t in enumerate(terms):
                share, tot = getattr(t, attr_share), getattr(t, attr_total)
                if tot <= 0:
                    rest[k] = 1.0
                    continue
                total[k] = tot
                for g, idx in share.items():
                    # one entry per index of the layer's dimension: a channel flattened into the classifier
                    # (C x H x W inputs) counts H x W times
                    rows[k].index_add_(0, self._offsets[g] + idx, torch.ones(len(idx), dtype=torch.float64))
                rest[k] = tot - sum(len(idx) for idx in share.values())
            return rows, rest, total

        self._cost_tables = []
        for terms in (self._terms_macs, self._terms_params):
            base = torch.tensor([float(t.base) for t in terms], dtype=torch.float64)
            self._cost_tables.append((base, side(terms, "out", "out_total"), side(terms, "inp", "in_total")))

    # ------------------------------------------------------------------ analysis
    def _analyse(self, model, graph, example, outputs, unsupported, min_channels):
        """The channel groups (frozen ones to ``self.frozen``) and the MACs and parameter terms of the cost model."""
        groups_raw = self._split_groups(graph, outputs, unsupported)
        out_share, in_share, out_layers, segments = self._shares(graph, groups_raw)
        terms_macs, terms_params, touched_macs, touched_params = self._terms(
            model, self._layer_macs(model, example), out_share, in_share)
        groups = []
        self._segments = [segments.get(gi, []) for gi in range(len(groups_raw))]
        for gi, (root, group) in enumerate(groups_raw):
            channels = len(group[0].idxs)
            parts = len(self._segments[gi]) if len(self._segments[gi]) > 1 else 1
            groups.append(ChannelGroup(
                index=gi, name=self._names[root], channels=channels,
                min_channels=min(channels, max(1, int(min_channels), parts)),
                layers=tuple(out_layers.get(gi, [self._names[root]])),
                macs=touched_macs.get(gi, 0), params=touched_params.get(gi, 0),
            ))
        return groups, terms_macs, terms_params

    def _split_groups(self, graph, outputs, unsupported) -> list:
        """Torch-Pruning's groups as (root layer, group) pairs to prune; the frozen ones go to ``self.frozen``,
        and a group that would change the model's output is left out."""
        groups_raw = []
        self.frozen = []
        for group in graph.get_all_groups(ignored_layers=outputs, root_module_types=_PRUNABLE_TYPES):
            if any(dep.target.module in outputs and graph.is_out_channel_pruning_fn(dep.handler) for dep, _ in group):
                continue  # it would change the model's output
            root = group[0].dep.target.module
            reason = self._frozen_reason(graph, group, unsupported)
            if reason is not None:
                self.frozen.append(FrozenGroup(self._names[root], len(group[0].idxs), tuple(dict.fromkeys(
                    self._names[dep.target.module] for dep, _ in group
                    if isinstance(dep.target.module, _PRUNABLE_TYPES) and graph.is_out_channel_pruning_fn(dep.handler)
                    and dep.target.module in self._names)) or (self._names[root],), reason))
                continue
            groups_raw.append((root, group))
        return groups_raw

    def _shares(self, graph, groups_raw):
        """Per module, which root channels of which group reach its output and input dimensions; per group,
        the layers whose outputs it owns and its distinct channel segments (the parts of a concatenation)."""
        out_share: dict[nn.Module, dict[int, torch.Tensor]] = {}
        in_share: dict[nn.Module, dict[int, torch.Tensor]] = {}
        out_layers: dict[int, list[str]] = {}
        segments: dict[int, list[torch.Tensor]] = {}
        for gi, (_root, group) in enumerate(groups_raw):
            for item in group.items:
                dep, mod = item.dep, item.dep.target.module
                if not isinstance(mod, nn.Module) or mod not in self._names:
                    continue
                root_idxs = torch.as_tensor(sorted({int(i) for i in item.root_idxs}), dtype=torch.long)
                # the root channel of every index of this layer's dimension (repeated where a flatten maps one
                # channel to several features)
                each = torch.as_tensor(sorted(int(i) for i in item.root_idxs), dtype=torch.long)
                if graph.is_out_channel_pruning_fn(dep.handler):
                    out_share.setdefault(mod, {})[gi] = each
                    if isinstance(mod, _PRUNABLE_TYPES):
                        out_layers.setdefault(gi, []).append(self._names[mod])
                        segs = segments.setdefault(gi, [])
                        if not any(torch.equal(root_idxs, other) for other in segs):
                            segs.append(root_idxs)
                elif graph.is_in_channel_pruning_fn(dep.handler):
                    in_share.setdefault(mod, {})[gi] = each
        return out_share, in_share, out_layers, segments

    @staticmethod
    def _terms(model, macs_of, out_share, in_share):
        """The cost model's terms (one per layer's MACs, one per parameter tensor) and the MACs and parameters
        each group touches."""
        terms_macs, terms_params = [], []
        touched_macs: dict[int, int] = {}
        touched_params: dict[int, int] = {}
        for mod in model.modules():
            own = list(mod.parameters(recurse=False))
            is_layer = isinstance(mod, _PRUNABLE_TYPES)
            if not own and not is_layer:
                continue
            depthwise = isinstance(mod, nn.Conv2d) and mod.groups > 1 and mod.groups == mod.in_channels
            outs = out_share.get(mod, {})
            ins = {} if depthwise else in_share.get(mod, {})
            out_total = _out_channels(mod)
            in_total = _in_channels(mod)
            if is_layer and mod in macs_of:
                terms_macs.append(_Term(macs_of[mod], outs, out_total, ins, in_total))
                for g in set(outs) | set(ins):
                    touched_macs[g] = touched_macs.get(g, 0) + macs_of[mod]
            for p in own:
                t = _param_term(mod, p, outs, out_total, ins, in_total)
                terms_params.append(t)
                for g in set(t.out) | set(t.inp):
                    touched_params[g] = touched_params.get(g, 0) + p.numel()
        return terms_macs, terms_params, touched_macs, touched_params

    def _frozen_reason(self, graph: FollowingGraph, group, unsupported) -> str | None:
        """Why ``group`` stays out of the pruning space (``None``: it is pruned): it reaches an op
        the graph cannot follow, or a grouped convolution."""
        op = graph.crosses_opaque(group)
        if op is not None:
            return f"its channels reach {op.describe()}"
        for dep, _ in group:
            if dep.target.module in unsupported:
                conv = dep.target.module
                return (f"its channels reach the grouped convolution {self._names.get(conv, '?')} (groups={conv.groups}), "
                        "whose group structure Torch-Pruning cannot keep")
        return None

    @property
    def prunable_macs_share(self) -> float:
        """The share of the model's MACs in layers that at least one pruning group shrinks."""
        touched = sum(t.base for t in self._terms_macs if t.out or t.inp)
        return touched / self.base_macs if self.base_macs else 0.0

    @staticmethod
    def _layer_macs(model: nn.Module, example: torch.Tensor) -> dict[nn.Module, int]:
        macs: dict[nn.Module, int] = {}

        def hook(mod, inputs, out):
            if isinstance(mod, nn.Linear):
                n = out.numel() // out.shape[-1] // example.shape[0]
                macs[mod] = macs.get(mod, 0) + n * mod.in_features * mod.out_features
            else:
                k = math.prod(mod.kernel_size)
                macs[mod] = macs.get(mod, 0) + out.numel() // example.shape[0] * (mod.in_channels // mod.groups) * k

        hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _PRUNABLE_TYPES)]
        try:
            with torch.no_grad():
                model(example)
        finally:
            for h in hooks:
                h.remove()
        return macs

    # ------------------------------------------------------------------ queries
    def min_keep(self, group: ChannelGroup) -> int:
        """The fewest channels ``group`` may keep: ``min_channels`` and ``max_prune`` honoured, then
        rounded up to a multiple of ``round_to`` (the whole group when that exceeds its size)."""
        floor = max(group.min_channels, int(math.ceil(group.channels * (1.0 - self.max_prune))))
        n = self.round_to
        aligned = -(-floor // n) * n
        return group.channels if aligned >= group.channels else aligned

    def align(self, counts: Sequence[int]) -> list[int]:
        """The counts that will actually be built: each clipped to ``[min_keep, channels]`` and,
        with ``round_to = N > 1``, rounded to the nearest multiple of N (halves up).

        A group keeps either all its channels (unpruned: any size) or a multiple of N; a group
        whose smallest allowed multiple of N is not below its size (e.g. 6 channels with N = 8)
        is never pruned. Idempotent, so aligning twice changes nothing.
        """
        if len(counts) != len(self.groups):
            raise PrunerError(f"expected {len(self.groups)} channel counts (one per group), got {len(counts)}")
        out = []
        n = self.round_to
        for g, c in zip(self.groups, counts):
            c = int(c)
            if c >= g.channels:
                out.append(g.channels)
                continue
            if n > 1:
                c = int(math.floor(c / n + 0.5)) * n
            c = max(c, self.min_keep(g))
            out.append(g.channels if c >= g.channels else c)
        return out

    def counts(self, keep_ratios: Sequence[float]) -> list[int]:
        """Channels each group keeps: ``round(channels * ratio)``, aligned (:meth:`align`)."""
        ratios = self.validate_ratios(keep_ratios)
        return self.align([round(g.channels * r) for g, r in zip(self.groups, ratios)])

    def set_ranking(self, ranking: Sequence[torch.Tensor]) -> None:
        """The channel order (least important first) that :meth:`predict` and :meth:`prune` use.

        Needed for exact predictions where a group spans several layers unevenly (a
        concatenation): which channels go decides which layers shrink. Whoever ranks the
        channels sets it here before any prediction (the run's session and the evaluator do)."""
        if len(ranking) != len(self.groups):
            raise PrunerError("set_ranking needs one channel order per group")
        given = [torch.as_tensor(r, dtype=torch.long).cpu() for r in ranking]
        if self._given is not None and all(torch.equal(a, b) for a, b in zip(given, self._given)):
            return
        self._given = given
        self.ranking = [self._protect_segments(i, r) for i, r in enumerate(given)]
        position = torch.empty(self._offsets[-1], dtype=torch.long)
        for i, order in enumerate(self.ranking):
            position[self._offsets[i] + order] = torch.arange(len(order))
        self._position = position  # flat: rank of each channel within its group (0 = removed first)

    def _protect_segments(self, gi: int, order: torch.Tensor) -> torch.Tensor:
        """Move each concatenated part's best channel to the end, so no layer loses all its outputs."""
        segs = self._segments[gi]
        if len(segs) < 2:
            return order
        position = torch.empty_like(order)
        position[order] = torch.arange(len(order))
        protect = [int(seg[position[seg].argmax()]) for seg in segs]
        rest = [int(i) for i in order if int(i) not in set(protect)]
        return torch.tensor(rest + sorted(protect, key=lambda i: int(position[i])), dtype=torch.long)

    def _flat_kept(self, counts: Sequence[int]) -> torch.Tensor:
        """Kept channels of all groups as one flat boolean vector (aligned ``counts``, the space's ranking)."""
        counts = self.align(counts)
        channels = torch.tensor([g.channels for g in self.groups])
        removed = torch.repeat_interleave(channels - torch.tensor(counts), channels)
        if self.ranking is None:
            if any(len(s) > 1 for s in self._segments) and any(c < g.channels for c, g in zip(counts, self.groups)):
                raise RuntimeError("PruningSpace.set_ranking must be called before predicting a structure of a model "
                                   "whose groups span concatenations (which channels go decides the cost)")
            # any order gives the same cost when every layer of a group loses the same channels
            position = torch.cat([torch.arange(g.channels) for g in self.groups])
        else:
            position = self._position
        return position >= removed

    def kept_masks(self, counts: Sequence[int]) -> list[torch.Tensor]:
        """Per group, which channels (root index space) the surgery keeps for ``counts``."""
        flat = self._flat_kept(counts)
        return [flat[a:b] for a, b in zip(self._offsets[:-1], self._offsets[1:])]

    def predict(self, keep_ratios: Sequence[float] | None = None, *, counts: Sequence[int] | None = None) -> tuple[int, int]:
        """(MACs, params) of the model pruned to ``keep_ratios`` (or explicit ``counts``, aligned
        first), with the channels the surgery would remove (the space's ranking)."""
        if counts is None:
            counts = self.counts(keep_ratios if keep_ratios is not None else [1.0] * len(self.groups))
        kept = self._flat_kept(counts).to(torch.float64)
        out = []
        for base, (o_rows, o_rest, o_total), (i_rows, i_rest, i_total) in self._cost_tables:
            frac_out = (o_rows @ kept + o_rest) / o_total
            frac_in = (i_rows @ kept + i_rest) / i_total
            out.append(int(round(float((base * frac_out * frac_in).sum()))))
        return out[0], out[1]

    # ------------------------------------------------------------------ surgery
    def prune(self, model: nn.Module, counts: Sequence[int], ranking: Sequence[torch.Tensor] | None = None, *,
              inplace: bool = False) -> tuple[nn.Module, PruningRecord]:
        """Physically remove channels: group ``i`` keeps its ``counts[i]`` (aligned) highest-ranked channels.

        ``ranking[i]`` lists the group's channel indices from least to most important; it
        becomes the space's ranking (so later predictions match); ``None`` uses the current one.
        The base ``model`` is left untouched unless ``inplace``.
        """
        if ranking is not None:
            if len(ranking) != len(self.groups):
                raise PrunerError("prune needs one ranking per group")
            self.set_ranking(ranking)
        if self.ranking is None:
            raise PrunerError("prune needs a channel ranking: pass one or call set_ranking first")
        counts = self.align(counts)
        removed = {}
        for g, c, order in zip(self.groups, counts, self.ranking):
            n_remove = g.channels - int(c)
            if n_remove > 0:
                removed[g.name] = sorted(int(i) for i in order[:n_remove])
        record = PruningRecord(removed)
        return apply_record(model, record, self.input_size, inplace=inplace), record


def frozen_note(report: dict | None) -> str | None:
    """One sentence on a :meth:`PruningSpace.frozen_report` (``None`` when nothing is frozen): how many
    groups, the first one and why, the share of MACs still prunable."""
    groups = (report or {}).get("groups") or []
    if not groups:
        return None
    first = groups[0]
    layers = sum(len(g.get("layers") or []) for g in groups)
    share = report.get("prunable_macs_share")
    return (f"{len(groups)} channel group{'s' if len(groups) > 1 else ''} frozen ({report.get('channels', 0):,} "
            f"channels of {layers} layer{'s' if layers != 1 else ''} keep their width), e.g. {first['name']}: "
            f"{first['reason']}"
            + (f"; {100 * share:.0f} % of the MACs are in layers that pruning shrinks, and the budget's floor counts "
               "the frozen channels as kept" if share is not None else ""))


def apply_record(model: nn.Module, record: PruningRecord, input_size: Sequence[int], *, inplace: bool = False) -> nn.Module:
    """Replay a :class:`PruningRecord` on a model with the base architecture."""
    target = model if inplace else copy.deepcopy(model)
    if not record.removed:
        return target
    was_training = target.training
    target.eval()
    device = next(iter(target.parameters())).device
    graph = build_graph(target, torch.randn(1, *input_size, device=device))
    modules = dict(target.named_modules())
    for name, idxs in record.removed.items():
        if name not in modules:
            raise PrunerError(f"pruning record names layer {name!r}, which this model does not have")
        root = modules[name]
        pruner = graph.get_pruner_of_module(root)
        group = graph.get_pruning_group(root, pruner.prune_out_channels, list(idxs))
        group.prune()
    target.train(was_training)
    return target


def check_round_to(value) -> int:
    """``round_to`` must be a whole number >= 1 (1 = no alignment)."""
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (isinstance(value, float) and value.is_integer()):
        raise PrunerError(f"round_to must be a whole number >= 1 (1 = off, 8 suits GPU tensor cores), got {value!r}")
    if int(value) < 1 or int(value) > 1024:
        raise PrunerError(f"round_to must be between 1 (off) and 1024, got {value}")
    return int(value)


def _out_channels(mod: nn.Module) -> int:
    for attr in ("out_channels", "out_features", "num_features", "normalized_shape"):
        v = getattr(mod, attr, None)
        if v is not None:
            return int(v[0] if isinstance(v, (tuple, list)) else v)
    return 0


def _in_channels(mod: nn.Module) -> int:
    for attr in ("in_channels", "in_features"):
        v = getattr(mod, attr, None)
        if v is not None:
            return int(v)
    return 0


def _param_term(mod, p, outs, out_total, ins, in_total) -> _Term:
    """How a parameter tensor shrinks: dim 0 with the output group(s), dim 1 with the input ones."""
    scales_out = p.dim() >= 1 and out_total > 0 and p.shape[0] == out_total
    scales_in = isinstance(mod, _PRUNABLE_TYPES) and p.dim() >= 2 and in_total > 0 and p.shape[1] * getattr(mod, "groups", 1) == in_total
    return _Term(
        p.numel(),
        outs if scales_out else {}, out_total if scales_out else 0,
        ins if scales_in else {}, in_total if scales_in else 0,
    )
