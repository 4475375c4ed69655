"""Option-A (zero-padding) residual shortcuts, made visible to Torch-Pruning.

The classic CIFAR ResNets (He et al. 2016, option A) downsample the identity path with
``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))``: a parameter-free op that changes the
channel count. Torch-Pruning traces it as an element-wise op, so after pruning the
residual add receives tensors of different widths and the forward pass fails.

:class:`ZeroPadShortcut` expresses the same computation as a *channel routing*: output
channel ``j`` copies input channel ``gather[j]`` (or is zero when ``mask[j] == 0``).
Registered with :class:`ZeroPadShortcutPruner` through ``DependencyGraph``'s
``customized_pruners`` extension point, it becomes a boundary between two independent
channel groups, like a 1x1 convolution without weights:

* pruning an *output* channel drops that entry from the routing (the residual add it
  feeds is pruned with it);
* pruning an *input* channel turns the output channel it fed into a zero channel, so the
  block output keeps its width and the previous group can be pruned independently.

The routing tables are non-persistent buffers, so the public pretrained state dicts load
unchanged; a pruned model's tables are rebuilt by replaying its pruning record.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch_pruning as tp


class ZeroPadShortcut(nn.Module):
    """``x[:, :, ::stride, ::stride]`` with channels routed into a wider (zero-padded) output."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError("ZeroPadShortcut pads channels: out_channels must be >= in_channels")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        pad = (out_channels - in_channels) // 2
        gather = torch.zeros(out_channels, dtype=torch.long)
        mask = torch.zeros(out_channels)
        gather[pad:pad + in_channels] = torch.arange(in_channels)
        mask[pad:pad + in_channels] = 1.0
        self.register_buffer("gather", gather, persistent=False)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return x.index_select(1, self.gather) * self.mask.view(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class ZeroPadShortcutPruner(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning handler for :class:`ZeroPadShortcut` (in and out channels are independent)."""

    TARGET_MODULES = ZeroPadShortcut

    def prune_out_channels(self, layer: ZeroPadShortcut, idxs: Sequence[int]) -> ZeroPadShortcut:
        keep = torch.tensor(sorted(set(range(layer.out_channels)) - set(int(i) for i in idxs)), dtype=torch.long)
        layer.gather = layer.gather[keep.to(layer.gather.device)].contiguous()
        layer.mask = layer.mask[keep.to(layer.mask.device)].contiguous()
        layer.out_channels = len(keep)
        return layer

    def prune_in_channels(self, layer: ZeroPadShortcut, idxs: Sequence[int]) -> ZeroPadShortcut:
        removed = torch.zeros(layer.in_channels, dtype=torch.bool)
        removed[torch.as_tensor(list(idxs), dtype=torch.long)] = True
        new_index = torch.cumsum(~removed, 0) - 1  # old input index -> new input index
        gather = layer.gather.cpu()
        routed = layer.mask.cpu() > 0
        dropped = routed & removed[gather]
        mask = layer.mask.clone()
        mask[dropped.to(mask.device)] = 0.0
        gather = torch.where(routed & ~dropped, new_index[gather], torch.zeros_like(gather))
        layer.gather = gather.to(layer.gather.device)
        layer.mask = mask
        layer.in_channels = int((~removed).sum())
        return layer

    def get_out_channels(self, layer: ZeroPadShortcut) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: ZeroPadShortcut) -> int:
        return layer.in_channels


#: Pass as ``customized_pruners`` to ``tp.DependencyGraph().build_dependency``.
CUSTOM_PRUNERS = {ZeroPadShortcut: ZeroPadShortcutPruner()}
