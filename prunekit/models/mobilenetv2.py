"""CIFAR-style MobileNetV2: stride-1 stem and first stages, depthwise convs, inverted residuals."""
from __future__ import annotations

import torch.nn as nn

from .registry import MODELS

# (expansion, out channels, repeats, stride) - CIFAR variant: stride 1 in the stem and stage 2.
CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, expansion, stride):
        super().__init__()
        hidden = cin * expansion
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, in_channels=3, num_classes=10, width=1.0):
        super().__init__()
        c = int(32 * width)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU6()]
        for t, co, n, s in CFG:
            co = int(co * width)
            for i in range(n):
                layers.append(InvertedResidual(c, co, t, s if i == 0 else 1))
                c = co
        last = int(1280 * max(1.0, width))
        layers += [nn.Conv2d(c, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


@MODELS.register("mobilenetv2")
def mobilenetv2(in_channels=3, input_size=32, num_classes=10, width=1.0):
    """MobileNetV2 (inverted residuals, depthwise convs), CIFAR-sized stem."""
    return MobileNetV2(in_channels, num_classes, width)
