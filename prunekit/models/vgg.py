"""CIFAR-style VGG with BatchNorm and a single Linear classifier (as in the GraSP/ESPN/TPP code)."""
from __future__ import annotations

import torch.nn as nn

from .registry import MODELS

CFGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}


class VGG(nn.Module):
    def __init__(self, depth, in_channels=3, num_classes=10, width=1.0):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in CFGS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                w = max(1, int(round(v * width)))
                layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
                c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def _make(depth):
    def builder(in_channels=3, input_size=32, num_classes=10, width=1.0):
        """VGG with batch norm, CIFAR-sized classifier."""
        return VGG(depth, in_channels, num_classes, width)

    return builder


for _d in (11, 16, 19):
    MODELS.register(f"vgg{_d}-bn", _make(_d))
