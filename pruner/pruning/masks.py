"""Scoring a pruned structure without surgery: channel masks on a copy of the unpruned model.

A :class:`ChannelMasker` keeps one working copy of the model. For a structure (channels
kept per group) it restores the copy's weights and zeroes, for every removed channel, the
parameters that *produce* it: the output rows (and bias) of every convolution and linear
layer of the group, the affine weight and bias of its batch norms, and the routing mask of
option-A shortcuts. A removed channel is then exactly zero wherever it is consumed, so a
consumer's weights on it contribute nothing and the forward pass computes the physically
pruned network's function. Batch-norm recalibration under the masks gives the kept channels
the same statistics as recalibrating the pruned model (their activations are the same), and
the removed ones stay zero (their affine parameters are zero).

What this needs from a model: every non-linearity between a group's producers and its
consumers maps 0 to 0 (ReLU, ReLU6, SiLU, GELU, hard-swish; a sigmoid gate multiplies a
zero channel), and no layer mixes channels other than convolutions and linear layers (no
LayerNorm or GroupNorm over channels). :meth:`ChannelMasker.verify` checks a structure
against physical pruning and the evaluator falls back to surgery when it differs.

The mapping from groups to module channels is computed once, from Torch-Pruning's
dependency graph; per structure there is no graph work, only a weight restore and one
multiply per producing tensor.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn as nn

from .shortcut import ZeroPadShortcut
from .space import PruningSpace, build_graph

_CONV_LINEAR = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class MaskingUnsupported(Exception):
    """The model has a layer that produces group channels and that masks cannot zero."""


class ChannelMasker:
    """A working copy of ``model`` that can take the shape of any structure of ``space``.

    Args:
        model: the (unpruned) model; it is copied, never modified.
        space: its pruning space; its ranking decides which channels a count keeps.
        device: where the working copy lives.
        channels_last: store the copy's 4-D weights channels-last (faster convolutions).
    """

    def __init__(self, model: nn.Module, space: PruningSpace, *, device: torch.device | str = "cpu",
                 channels_last: bool = False):
        self.space = space
        self.device = torch.device(device)
        self.model = copy.deepcopy(model).to(self.device).eval()
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._tensors = [*self.model.parameters(), *self.model.buffers()]
        self._base: list[torch.Tensor] = []
        self.load(model)
        self._targets = self._map_channels()
        self._sentinel = sum(g.channels for g in space.groups)  # flat index that is always "kept"

    # ---------------------------------------------------------------- set-up (once)
    def load(self, model: nn.Module) -> None:
        """Take the weights (and buffers) of ``model`` (same architecture) as the unmasked state."""
        src = [*model.parameters(), *model.buffers()]
        if len(src) != len(self._tensors):
            raise ValueError("ChannelMasker.load needs a model of the same architecture")
        with torch.no_grad():
            self._base = [s.detach().to(self.device).clone() for s in src]
            self.restore()

    def restore(self) -> None:
        """Undo every mask: the working copy equals the loaded model again."""
        with torch.no_grad():
            for t, b in zip(self._tensors, self._base):
                t.copy_(b)

    def _map_channels(self) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
        """For every module producing group channels: the tensors to multiply and, per output
        channel, its position in the space's flat channel vector (or the always-kept sentinel)."""
        space = self.space
        sentinel = sum(g.channels for g in space.groups)
        offsets = [0]
        for g in space.groups:
            offsets.append(offsets[-1] + g.channels)
        example = torch.randn(1, *space.input_size, device=self.device)
        graph = build_graph(self.model, example)
        modules = dict(self.model.named_modules())
        maps: dict[nn.Module, torch.Tensor] = {}
        for gi, g in enumerate(space.groups):
            root = modules[g.name]
            group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels,
                                            list(range(g.channels)))
            for item in group.items:
                dep, mod = item.dep, item.dep.target.module
                if not isinstance(mod, nn.Module) or not graph.is_out_channel_pruning_fn(dep.handler):
                    continue
                n_out = _out_size(mod)
                if n_out is None:
                    if any(True for _ in mod.parameters(recurse=False)) or any(True for _ in mod.buffers(recurse=False)):
                        raise MaskingUnsupported(f"cannot mask the outputs of {type(mod).__name__}")
                    continue  # a stateless layer passes zero channels through
                idxs = torch.as_tensor([int(i) for i in item.idxs], dtype=torch.long)
                roots = torch.as_tensor([int(i) for i in item.root_idxs], dtype=torch.long)
                m = maps.setdefault(mod, torch.full((n_out,), sentinel, dtype=torch.long))
                m[idxs] = offsets[gi] + roots
        targets = []
        for mod, m in maps.items():
            tensors = _producing_tensors(mod)
            targets.append((tensors, m.to(self.device)))
        return targets

    # ---------------------------------------------------------------- per structure
    def apply(self, counts: Sequence[int]) -> nn.Module:
        """Restore the weights, then zero the channels ``counts`` removes; returns the working copy."""
        kept = torch.cat([*self.space.kept_masks(counts), torch.ones(1, dtype=torch.bool)])
        keep = kept.to(self.device, dtype=torch.float32, non_blocking=True)
        self.restore()
        with torch.no_grad():
            for tensors, index in self._targets:
                factor = keep.index_select(0, index)
                for t in tensors:
                    t.mul_(factor.view(-1, *([1] * (t.dim() - 1))).to(t.dtype))
        return self.model

    def verify(self, counts: Sequence[int], inputs: torch.Tensor, *, atol: float = 1e-2) -> float:
        """Largest absolute difference between the masked and the physically pruned model's logits
        on ``inputs`` (eval mode, current batch-norm statistics); raises :class:`MaskingUnsupported`
        above ``atol`` times the logits' scale."""
        pruned, _ = self.space.prune(self.model_source(), list(counts))
        pruned.to(self.device).eval()
        masked = self.apply(counts)
        with torch.no_grad():
            a = masked(inputs.to(self.device)).float()
            b = pruned(inputs.to(self.device).contiguous()).float()
        self.restore()
        diff = float((a - b).abs().max())
        scale = float(b.abs().max()) + 1.0
        if diff > atol * scale:
            raise MaskingUnsupported(f"masked and physically pruned outputs differ by {diff:.3g}")
        return diff

    def model_source(self) -> nn.Module:
        """A fresh unmasked copy (for physical pruning; the working copy stays where it is)."""
        self.restore()
        return copy.deepcopy(self.model).to(memory_format=torch.contiguous_format)


def _out_size(mod: nn.Module) -> int | None:
    if isinstance(mod, _CONV_LINEAR) and not isinstance(mod, nn.modules.conv._ConvTransposeNd):
        return mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        if not mod.affine:
            raise MaskingUnsupported("cannot mask a batch norm without affine parameters")
        return mod.num_features
    if isinstance(mod, ZeroPadShortcut):
        return mod.out_channels
    return None


def _producing_tensors(mod: nn.Module) -> list[torch.Tensor]:
    if isinstance(mod, ZeroPadShortcut):
        return [mod.mask]
    return [t for t in (mod.weight, getattr(mod, "bias", None)) if t is not None]


class ChannelSlicer:
    """Physical pruning without per-structure graph work: a cached plan of Torch-Pruning's handlers.

    Torch-Pruning's surgery (:meth:`~pruner.pruning.space.PruningSpace.prune`) copies the model,
    traces its dependency graph and walks every group for every structure. The groups and the
    channel indices they touch in each module do not depend on the structure, so this class
    walks them once: per (module, handler) it keeps the local channel indices and the flat root
    channel each one belongs to. :meth:`prune` then copies the model and calls each handler once
    with the channels the structure removes (all in the unpruned model's index space), which is
    the same surgery (:meth:`verify` compares every tensor with Torch-Pruning's result and raises
    :class:`MaskingUnsupported` where it differs; unwrapped ``nn.Parameter`` groups are refused).
    """

    def __init__(self, model: nn.Module, space: PruningSpace):
        self.space = space
        self.model = model
        offsets = [0]
        for g in space.groups:
            offsets.append(offsets[-1] + g.channels)
        device = next(iter(model.parameters())).device
        graph = build_graph(model, torch.randn(1, *space.input_size, device=device))
        names = {m: n for n, m in model.named_modules()}
        plan: dict[tuple, tuple[list, list]] = {}
        for gi, g in enumerate(space.groups):
            root = dict(model.named_modules())[g.name]
            group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels,
                                            list(range(g.channels)))
            for item in group.items:
                dep, mod = item.dep, item.dep.target.module
                if not isinstance(mod, nn.Module):
                    raise MaskingUnsupported(f"a group prunes a bare {type(mod).__name__}")
                if mod not in names:
                    continue  # graph-internal ops (concat, split, element-wise): nothing to slice
                local, roots = plan.setdefault((names[mod], dep.handler, dep.target.pruning_dim), ([], []))
                local += [int(i) for i in item.idxs]
                roots += [offsets[gi] + int(i) for i in item.root_idxs]
        self._plan = [(name, handler, dim, torch.as_tensor(local, dtype=torch.long), torch.as_tensor(roots, dtype=torch.long))
                      for (name, handler, dim), (local, roots) in plan.items()]

    def prune(self, counts: Sequence[int]) -> nn.Module:
        """A physically pruned copy of the model for ``counts`` (aligned; the space's ranking)."""
        removed = ~torch.cat(self.space.kept_masks(counts))
        target = copy.deepcopy(self.model)
        modules = dict(target.named_modules())
        for name, handler, dim, local, roots in self._plan:
            idxs = torch.unique(local[removed[roots]])
            if len(idxs):
                handler.__self__.pruning_dim = dim  # as Torch-Pruning's Dependency.__call__ does
                handler(modules[name], idxs.tolist())
        return target

    def verify(self, counts: Sequence[int]) -> None:
        """Raise :class:`MaskingUnsupported` unless :meth:`prune` equals Torch-Pruning's surgery."""
        mine = self.prune(counts)
        theirs, _ = self.space.prune(self.model, list(counts))
        a, b = mine.state_dict(), theirs.state_dict()
        if a.keys() != b.keys() or any(a[k].shape != b[k].shape or not torch.equal(a[k], b[k]) for k in a):
            raise MaskingUnsupported("the sliced model differs from Torch-Pruning's surgery")
        for (n, ma), mb in zip(mine.named_modules(), theirs.modules()):
            if type(ma) is not type(mb) or any(getattr(ma, k, None) != getattr(mb, k, None) for k in
                                               ("in_channels", "out_channels", "groups", "in_features",
                                                "out_features", "num_features")):
                raise MaskingUnsupported(f"the sliced {n or 'model'} differs from Torch-Pruning's surgery")
        for (n, ta), tb in zip(mine.named_buffers(), theirs.buffers()):  # non-persistent ones too (routing)
            if ta.shape != tb.shape or not torch.equal(ta, tb):
                raise MaskingUnsupported(f"the sliced buffer {n} differs from Torch-Pruning's surgery")
