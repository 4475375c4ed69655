"""Accuracy and batch-norm recalibration of a (pruned) model on uint8 image tensors, and the lean
inference graph (:class:`LeanGraph`: element-wise ops in place, BN folded) the search scores with on CPUs."""

from __future__ import annotations

import operator
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .data import ImageTensors, batches


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


@torch.inference_mode()
def accuracy(model: nn.Module, data: ImageTensors, *, mean, std, device="cpu", batch_size: int = 500) -> dict[str, float]:
    """Top-1 and top-5 accuracy in percent; the model is put in eval mode (and restored)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct1 = correct5 = total = 0
    try:
        for x, y in batches(data, batch_size, mean=mean, std=std, device=device):
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device):
                logits = model(x)
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hit = top.eq(y.view(-1, 1))
            correct1 += int(hit[:, 0].sum())
            correct5 += int(hit.any(dim=1).sum())
            total += int(y.numel())
    finally:
        model.train(was_training)
    if total == 0:
        return {"top1": 0.0, "top5": 0.0}
    return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total}


@contextmanager
def bn_recalibration(model: nn.Module) -> Iterator[bool]:
    """Inside: every BatchNorm of ``model`` has fresh running statistics, accumulated as a
    cumulative average over the forward passes made (train mode for BN only, no weight
    updates); afterwards momentum and the model's mode are restored. Yields whether the model
    has BatchNorms at all."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_training = model.training
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the recalibration batches
    model.eval()
    for m in bns:
        m.train()
    try:
        with torch.no_grad():
            yield bool(bns)
    finally:
        for m, momentum in zip(bns, saved):
            m.momentum = momentum
        model.train(was_training)


def recalibrate_bn(model: nn.Module, data: ImageTensors, *, mean, std, device="cpu",
                   images: int = 512, batch_size: int = 128) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on ``images`` training images.

    Physical pruning removes channels that downstream layers' statistics were computed
    with, so stale running means/vars cost a lot of accuracy; a forward pass over a few
    hundred images in train mode (cumulative averaging, no weight updates) restores most
    of it.
    """
    if images <= 0:
        return model
    device = torch.device(device)
    with bn_recalibration(model) as has_bn:
        if has_bn:
            for x, _ in batches(data.subset(min(images, len(data))), batch_size, mean=mean, std=std, device=device):
                if device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                model(x)
    return model


# --------------------------------------------------------------------------- lean inference graphs
#: modules whose output is a new tensor that nothing else refers to (safe to overwrite in place)
_FRESH_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.modules.batchnorm._BatchNorm)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_RELU_FUNCTIONS = (F.relu, torch.relu)
_ADD_FUNCTIONS = (operator.add, torch.add)


class GraphUnsupported(Exception):
    """``torch.fx`` cannot trace the model (data-dependent control flow, unsupported calls)."""


def _add_into(target: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``target + other``, written into ``target`` when that gives the same tensor (shape, dtype)."""
    if (isinstance(target, torch.Tensor) and isinstance(other, torch.Tensor) and other.dtype == target.dtype
            and torch.broadcast_shapes(target.shape, other.shape) == target.shape):
        return target.add_(other)
    return target + other


class LeanGraph:
    """An FX trace of a model that computes its function with fewer passes over memory.

    * **in place**: a ReLU, or a residual add, whose input is a fresh tensor used by nothing
      else (the output of a convolution, linear layer, batch norm, or of an add or ReLU made
      in place) overwrites that tensor instead of allocating a new one (same values);
    * :meth:`fold` (eval mode only): every batch norm that directly follows a convolution
      whose output feeds nothing else is folded into that convolution's weights and bias
      (``torch.nn.utils.fusion.fuse_conv_bn_eval``), so a scoring pass makes one pass where
      it made two. Folding changes the arithmetic only by rounding (logits agree to ~1e-5).

    The graph shares the model's modules until folded (so recalibrating its batch norms
    through :attr:`module` recalibrates the model's); folded convolutions are new copies and
    the model itself is never changed. Raises :class:`GraphUnsupported` when the model cannot
    be traced.
    """

    def __init__(self, model: nn.Module):
        try:
            self.module: torch.fx.GraphModule = torch.fx.symbolic_trace(model)
        except Exception as exc:  # noqa: BLE001 - any tracing failure means: use the model as it is
            raise GraphUnsupported(f"{type(exc).__name__}: {exc}") from exc
        self.folded = 0
        self._made: set = set()  # nodes this class created: their outputs are fresh tensors
        self._in_place()

    def _modules(self) -> dict[str, nn.Module]:
        return dict(self.module.named_modules())

    def _fresh(self, node, modules) -> bool:
        if not isinstance(node, torch.fx.Node) or len(node.users) != 1:
            return False
        if node.op == "call_module":
            return isinstance(modules.get(node.target), _FRESH_MODULES)
        if node in self._made:
            return True
        if node.op == "call_function":
            return node.target in _ADD_FUNCTIONS or (node.target in _RELU_FUNCTIONS and not node.kwargs.get("inplace"))
        return node.op == "call_method" and node.target in ("add", "relu")

    def _in_place(self) -> None:
        graph, modules = self.module.graph, self._modules()
        for node in list(graph.nodes):
            relu = (node.op == "call_function" and node.target in _RELU_FUNCTIONS and len(node.args) == 1
                    or node.op == "call_module" and isinstance(modules.get(node.target), nn.ReLU))
            if relu and self._fresh(node.args[0], modules) and all(k == "inplace" for k in node.kwargs):
                with graph.inserting_after(node):
                    new = graph.call_method("relu_", (node.args[0],))
                self._made.add(new)
                node.replace_all_uses_with(new)
                graph.erase_node(node)
                continue
            if node.op == "call_function" and node.target in _ADD_FUNCTIONS and len(node.args) == 2 and not node.kwargs:
                a, b = node.args
                target, other = (a, b) if self._fresh(a, modules) else (b, a) if self._fresh(b, modules) else (None, None)
                if target is not None and isinstance(other, torch.fx.Node):
                    with graph.inserting_after(node):
                        new = graph.call_function(_add_into, (target, other))
                    self._made.add(new)
                    node.replace_all_uses_with(new)
                    graph.erase_node(node)
        graph.lint()
        self.module.recompile()

    def fold(self) -> "LeanGraph":
        """Fold batch norms into the convolutions before them (both must be in eval mode)."""
        graph, modules = self.module.graph, self._modules()
        for node in list(graph.nodes):
            if node.op != "call_module" or not isinstance(modules.get(node.target), nn.modules.batchnorm._BatchNorm):
                continue
            prev = node.args[0] if len(node.args) == 1 and not node.kwargs else None
            if not (isinstance(prev, torch.fx.Node) and prev.op == "call_module" and len(prev.users) == 1):
                continue
            conv, bn = modules.get(prev.target), modules[node.target]
            if not isinstance(conv, _CONVS) or conv.training or bn.training or not bn.track_running_stats \
                    or bn.running_mean is None or bn.num_features != conv.out_channels:
                continue
            parent, _, name = prev.target.rpartition(".")
            fused = fuse_conv_bn_eval(conv, bn)
            setattr(self.module.get_submodule(parent) if parent else self.module, name, fused)
            modules[prev.target] = fused
            node.replace_all_uses_with(prev)
            graph.erase_node(node)
            self.folded += 1
        graph.lint()
        self.module.delete_all_unused_submodules()  # the folded batch norms (the model keeps its own)
        self.module.recompile()
        return self
