"""Operations Torch-Pruning's dependency graph cannot follow, and the channel groups they freeze.

Torch-Pruning traces a model through autograd and treats every operation it does not know as
element-wise: channel ``i`` in is channel ``i`` out. That holds for additions, activations and
axis moves (``permute``: a channel keeps its identity wherever its axis goes), but not for:

* a **view that splits or merges the channel axis** with another one (ShuffleNet's channel
  shuffle: ``view(N, g, C/g, H, W)``, ``transpose``, ``view(N, C, H, W)``): which channel lands
  where is a permutation the graph does not model (Torch-Pruning's own mapping divides by zero
  on it, or silently maps the wrong channels);
* a **split of the channel axis** (``torch.chunk``, ``torch.split``, ``unbind``): the model's code
  splits at fixed sizes when it runs, so removing channels on one side moves the boundary;
* an op that **changes the channel count without weights** (``pixel_shuffle``, ``einsum`` over
  channels, …) or a **custom autograd function**, whose channel mapping is unknown.

:class:`FollowingGraph` is a :class:`torch_pruning.DependencyGraph` (its subclass, Torch-Pruning's
own class) that records every op's input and output shapes while it traces (a
``TorchFunctionMode``), marks the ops above as *opaque* before Torch-Pruning maps indices
across them, and keeps them out of that mapping. A channel group that reaches an opaque op is
*frozen*: the pruning space leaves it out (its layers keep every channel), and says which op
froze it and why. Channels that never cross such an op (e.g. the inner width of every
ShuffleNet branch) are pruned as usual.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch.overrides import TorchFunctionMode

#: torch functions and tensor methods that reshape (their channel axis is checked)
_RESHAPES = {"view", "reshape", "flatten", "unflatten", "_unsafe_view", "view_as", "reshape_as"}
#: functions that split a tensor along an axis (opaque when that axis is the channel axis)
_SPLITS = {"chunk", "split", "split_with_sizes", "unbind", "tensor_split", "hsplit", "vsplit", "unsafe_split",
           "unsafe_chunk"}
#: axis moves: a channel keeps its identity (Torch-Pruning's element-wise pass-through is right)
_AXIS_MOVES = {"permute", "transpose", "movedim", "moveaxis", "swapaxes", "swapdims", "t", "contiguous",
               "clone", "to", "float", "half", "bfloat16", "type_as", "detach"}


@dataclass(frozen=True)
class OpaqueOp:
    """One op the dependency graph cannot follow: what it is, its shapes, and why."""

    op: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    reason: str

    def describe(self) -> str:
        shapes = f"{_shape(self.in_shape)} -> {_shape(self.out_shape)}" if self.in_shape else ""
        return f"{self.op} {shapes}: {self.reason}".replace("  ", " ")

    def to_dict(self) -> dict:
        return {"op": self.op, "in_shape": list(self.in_shape), "out_shape": list(self.out_shape),
                "reason": self.reason}


def _shape(shape) -> str:
    return "(" + ", ".join(["N", *(str(s) for s in shape[1:])]) + ")" if shape else "()"


def _tensors(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


class _ShapeRecorder(TorchFunctionMode):
    """Records, for every op whose result carries a ``grad_fn``, the op's name, its first tensor
    argument's shape, its first result's shape and its ``dim`` argument (for splits)."""

    def __init__(self):
        super().__init__()
        self.ops: dict = {}   # grad_fn -> (name, in_shape, out_shape, dim)
        self.inside = 0       # > 0 while a layer with its own Torch-Pruning handler runs (its ops are its own)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        ins, outs = _tensors(args), _tensors(result)
        if len(ins) > 1 and name not in _SPLITS:
            try:   # an element-wise op between broadcast operands keeps every channel where it is
                if tuple(torch.broadcast_shapes(*(t.shape for t in ins))) == tuple(outs[0].shape):
                    return result
            except (RuntimeError, IndexError):
                pass
        if ins and outs and not self.inside:
            dim = kwargs.get("dim", args[2] if len(args) > 2 and isinstance(args[2], int) else None)
            if name in _SPLITS and dim is None and len(args) < 3:
                dim = 0
            for out in outs:
                fn = out.grad_fn
                if fn is not None and fn not in self.ops:
                    self.ops[fn] = (name, tuple(ins[0].shape), tuple(out.shape), dim)
        return result


def classify(name: str, in_shape: tuple, out_shape: tuple, dim) -> str | None:
    """Why an op with these shapes cannot be followed across the channel axis (``None``: it can)."""
    if len(in_shape) < 2 or in_shape == out_shape or name in _AXIS_MOVES:
        return None
    if name in _RESHAPES:
        if len(out_shape) >= 2 and out_shape[:2] == in_shape[:2]:
            return None          # the channel axis is kept (e.g. (N, C, H, W) -> (N, C, H*W))
        if len(out_shape) == 2 and out_shape[1] == math.prod(in_shape[1:]):
            return None          # flatten to the classifier: Torch-Pruning maps it
        if len(in_shape) == 2 and len(out_shape) >= 2 and in_shape[1] == math.prod(out_shape[1:]) \
                and out_shape[1] == in_shape[1]:
            return None          # (N, C) -> (N, C, 1, 1)
        return "it splits or merges the channel axis with another one (a channel shuffle or a similar view)"
    if name in _SPLITS:
        if dim is not None and dim % len(in_shape) == 1:
            return "it splits the channel axis at sizes fixed in the model's code"
        return None
    if len(out_shape) >= 2 and out_shape[1] != in_shape[1]:
        return "it changes the channel count without weights, so which channel goes where is unknown"
    return None


#: the op nodes whose channel mapping Torch-Pruning guesses (pass-through) or cannot always compute
_CHECKED_OPS = (tp.ops._ElementWiseOp, tp.ops._ReshapeOp, tp.ops._SplitOp, tp.ops._UnbindOp)


class FollowingGraph(tp.DependencyGraph):
    """Torch-Pruning's dependency graph that knows which ops it cannot follow.

    After tracing, :attr:`opaque` maps each op node the graph cannot follow to an
    :class:`OpaqueOp`; those nodes are left out of Torch-Pruning's index mapping (they pass
    indices through unchanged), and :meth:`crosses_opaque` tells whether a group reaches one.
    """

    def build_dependency(self, model, example_inputs, *args, **kwargs):
        self._recorder = recorder = _ShapeRecorder()
        self.opaque: dict = {}
        custom = tuple(t for t in (kwargs.get("customized_pruners") or {}) if isinstance(t, type))

        def enter(*_):
            recorder.inside += 1

        def leave(*_):
            recorder.inside -= 1

        hooks = [h for m in model.modules() if custom and isinstance(m, custom)
                 for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
        try:
            with recorder:
                return super().build_dependency(model, example_inputs, *args, **kwargs)
        finally:
            for h in hooks:
                h.remove()

    def _build_dependency(self, module2node):
        super()._build_dependency(module2node)
        recorded = self._recorder.ops
        for module, node in module2node.items():
            if not isinstance(module, _CHECKED_OPS):
                continue          # a layer, or an op Torch-Pruning maps itself (concat, slice, expand)
            fn = node.grad_fn
            if isinstance(fn, torch.autograd.function.BackwardCFunction):
                op = OpaqueOp(type(fn).__name__.removesuffix("Backward"), (), (),
                              "a custom autograd function: its channel mapping is unknown")
            elif fn in recorded:
                name, in_shape, out_shape, dim = recorded[fn]
                why = classify(name, in_shape, out_shape, dim)
                op = OpaqueOp(name, in_shape, out_shape, why) if why else None
            else:
                op = None
            if op is not None:
                self.opaque[node] = op
                node.type = tp.ops.OPTYPE.ELEMENTWISE   # keep Torch-Pruning's index mapping off it

    def crosses_opaque(self, group) -> OpaqueOp | None:
        """The first opaque op ``group`` (a Torch-Pruning group) reaches, or ``None``."""
        for dep, _ in group:
            for node in (dep.source, dep.target):
                if node in self.opaque:
                    return self.opaque[node]
        return None
