"""GoogLeNet (Inception v1) for CIFAR, as in kuangliu/pytorch-cifar.

A single 3x3 conv stem (192 channels, stride 1) replaces the ImageNet stem, the 5x5
branch is two stacked 3x3 convs, every conv is followed by batch norm, and there are no
auxiliary classifiers. Branch outputs are joined with ``torch.cat`` along channels.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


class Inception(nn.Module):
    """Four parallel branches: 1x1 | 1x1->3x3 | 1x1->3x3->3x3 | maxpool->1x1, concatenated."""

    def __init__(self, in_ch: int, n1x1: int, n3x3_red: int, n3x3: int, n5x5_red: int, n5x5: int, pool_proj: int):
        super().__init__()
        self.b1 = nn.Sequential(*_conv_bn_relu(in_ch, n1x1, 1))
        self.b2 = nn.Sequential(*_conv_bn_relu(in_ch, n3x3_red, 1), *_conv_bn_relu(n3x3_red, n3x3, 3))
        self.b3 = nn.Sequential(*_conv_bn_relu(in_ch, n5x5_red, 1), *_conv_bn_relu(n5x5_red, n5x5, 3),
                                *_conv_bn_relu(n5x5, n5x5, 3))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), *_conv_bn_relu(in_ch, pool_proj, 1))
        self.out_channels = n1x1 + n3x3 + n5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class CifarGoogLeNet(nn.Module):
    """GoogLeNet with the Szegedy et al. (2015) Inception widths, for 32x32 inputs."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.pre_layers = nn.Sequential(*_conv_bn_relu(3, 192, 3))
        self.a3 = Inception(192, 64, 96, 128, 16, 32, 32)
        self.b3 = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.a4 = Inception(480, 192, 96, 208, 16, 48, 64)
        self.b4 = Inception(512, 160, 112, 224, 24, 64, 64)
        self.c4 = Inception(512, 128, 128, 256, 24, 64, 64)
        self.d4 = Inception(512, 112, 144, 288, 32, 64, 64)
        self.e4 = Inception(528, 256, 160, 320, 32, 128, 128)
        self.a5 = Inception(832, 256, 160, 320, 32, 128, 128)
        self.b5 = Inception(832, 384, 192, 384, 48, 128, 128)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.b3(self.a3(self.pre_layers(x)))
        out = self.maxpool(out)
        out = self.e4(self.d4(self.c4(self.b4(self.a4(out)))))
        out = self.maxpool(out)
        out = self.b5(self.a5(out))
        return self.linear(self.avgpool(out).flatten(1))


def cifar_googlenet(num_classes: int = 10) -> CifarGoogLeNet:
    return CifarGoogLeNet(num_classes)
