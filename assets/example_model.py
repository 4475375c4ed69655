"""An example model file for the studio's "upload a .py" field (and ``--model file:example_model.py:build``).

The studio calls the factory as ``build(num_classes=N)``; any public function or class that returns
an ``nn.Module`` works. This one is a small CIFAR-sized CNN (32x32 RGB input): three conv-BN-ReLU
stages whose output channels are what pruning removes.
"""

import torch.nn as nn


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2))


def build(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(_stage(3, 32), _stage(32, 64), _stage(64, 128),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes))
