"""CIFAR VGG-16/19 with batch norm (32x32 input, 512-d features).

The layer layout (``features`` / ``classifier`` with a 512-512 MLP head) follows the common
CIFAR VGG-BN models, so their state dicts use torchvision-style keys
(``features.0.weight``, ``classifier.6.weight``, ...).
"""

from __future__ import annotations

import torch
import torch.nn as nn

#: Channel widths per conv layer; ``"M"`` is a 2x2 max-pool (Simonyan & Zisserman, configs D and E).
CFGS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


def _features(cfg: list[int | str]) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            out_ch = int(v)
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
            in_ch = out_ch
    return nn.Sequential(*layers)


class CifarVGG(nn.Module):
    """VGG-BN for 32x32 images: five conv stages, global average pool, 512-512-``num_classes`` MLP."""

    def __init__(self, cfg: list[int | str], num_classes: int = 10):
        super().__init__()
        self.features = _features(cfg)
        self.pool = nn.AdaptiveAvgPool2d(1)  # 1x1 already for 32x32 input; keeps other sizes working
        self.classifier = nn.Sequential(
            nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(512, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def cifar_vgg(name: str, num_classes: int = 10) -> CifarVGG:
    """``name`` is ``vgg16`` or ``vgg19``."""
    return CifarVGG(CFGS[name], num_classes)
