"""The pruned network as a graph for the studio's network view (in the spirit of Netron): layers as nodes,
the data flow as edges (skip connections and concatenations included), each node's output shape.

``torch.fx`` traces the model symbolically and ``ShapeProp`` runs one sample through it for the shapes.
To keep a ResNet readable, a chain of one-input, one-output element-wise modules (BatchNorm, activations,
dropout, identity) is folded into the layer that feeds it: ``Conv2d · BatchNorm2d · ReLU`` is one node.
A model that ``torch.fx`` cannot trace (data-dependent control flow) has no graph (:func:`model_graph`
returns None and the studio shows the per-layer view alone).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

#: modules folded into the node that feeds them (one input, one output, the shape unchanged)
FOLDED = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish,
          nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.Dropout, nn.Dropout2d,
          nn.Identity)
#: functions shown as nodes of their own (merges and reshapes); others fold like the modules above
MERGES = {"add": "add", "iadd": "add", "cat": "concat", "mul": "mul", "flatten": "flatten", "pad": "pad",
          "view": "reshape", "reshape": "reshape", "adaptive_avg_pool2d": "pool", "avg_pool2d": "pool",
          "max_pool2d": "pool", "mean": "mean", "getitem": "slice", "chunk": "split", "split": "split",
          "transpose": "transpose", "channel_shuffle": "shuffle"}
MAX_NODES = 2000


def _label(node) -> str | None:
    """What a call_function / call_method node is called on the graph (None: fold it)."""
    name = getattr(node.target, "__name__", str(node.target)).strip("_")
    return MERGES.get(name)


def _traced(model: nn.Module, input_size: Sequence[int]):
    """A ``torch.fx`` trace of a CPU copy of ``model`` with each node's output shape (``ShapeProp`` on a
    blank batch of one), or None when it cannot be traced."""
    import copy

    from torch.fx import symbolic_trace
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        m = copy.deepcopy(model).cpu().eval()
        gm = symbolic_trace(m)
        ShapeProp(gm).propagate(torch.zeros(1, *input_size))
    except Exception:  # noqa: BLE001 - data-dependent control flow, unsupported ops: no graph, said on the page
        return None
    return gm


def _shape_of(n) -> list[int] | None:
    """A traced node's output shape without the batch (None when it has none)."""
    meta = n.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return list(shape)[1:] if shape is not None else None


def model_graph(model: nn.Module, input_size: Sequence[int]) -> dict | None:
    """``{"nodes": [{"id", "op", "name", "shape"}], "edges": [[src, dst], ...]}`` of ``model`` (on CPU, batch
    1), or None when it cannot be traced. ``name`` is the module path of a layer (what ``summary["layers"]``
    names), ``op`` its class or the merge's kind, ``shape`` the output shape without the batch."""
    gm = _traced(model, input_size)
    if gm is None:
        return None
    modules = dict(gm.named_modules())
    rep: dict = {}             # fx node -> the graph node id it folded into
    nodes: list[dict] = []
    edges: set[tuple[int, int]] = set()

    def sources(n) -> list[int]:
        out = []
        for a in n.all_input_nodes:
            if a in rep and rep[a] not in out:
                out.append(rep[a])
        return out

    for n in gm.graph.nodes:
        if n.op == "placeholder":
            rep[n] = len(nodes)
            nodes.append({"id": rep[n], "op": "input", "name": "input", "shape": _shape_of(n)})
            continue
        if n.op == "output":
            srcs = sources(n)
            nid = len(nodes)
            nodes.append({"id": nid, "op": "output", "name": "output", "shape": nodes[srcs[0]]["shape"] if srcs
                          else None})
            edges.update((s, nid) for s in srcs)
            continue
        if n.op == "get_attr":
            continue
        srcs = sources(n)
        if n.op == "call_module":
            mod = modules.get(str(n.target))
            fold = isinstance(mod, FOLDED) and len(srcs) == 1
            op = type(mod).__name__ if mod is not None else str(n.target)
        else:
            label = _label(n)
            fold = label is None and len(srcs) == 1
            op = label or getattr(n.target, "__name__", str(n.target))
        if fold:
            rep[n] = srcs[0]
            node = nodes[srcs[0]]
            if n.op == "call_module" and node["op"] not in ("input",):
                node["folded"] = [*node.get("folded", []), op]
            node["shape"] = _shape_of(n) or node["shape"]
            continue
        nid = len(nodes)
        rep[n] = nid
        nodes.append({"id": nid, "op": op, "name": str(n.target) if n.op == "call_module" else op,
                      "shape": _shape_of(n)})
        edges.update((s, nid) for s in srcs)
        if len(nodes) > MAX_NODES:
            return None
    return {"nodes": nodes, "edges": sorted(edges)}
